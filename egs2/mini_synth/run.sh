#!/usr/bin/env bash
# Compress a speech SSL model end to end on a CPU, from nothing: synthesise a corpus (espeak-ng
# and flite voices; one voice family held out as an unseen-voices test split), pretrain a small
# HuBERT teacher with ESPnet, distil + prune it (DPHuBERT) to a parameter budget and to a MAC
# budget, distil a DistilHuBERT-style baseline, then evaluate teacher, both compressed students,
# baseline and an fbank control on SUPERB KS (several seeds), ASR and PR (IC on request) with
# s3prl (runner, problem API), in-domain and on the unseen voices; write RESULTS.md / results.json.
# Nothing is downloaded (ESPNET_COMPRESS_OFFLINE=1, HF_HUB_OFFLINE=1).
# Re-runnable: a finished stage leaves a stamp and is skipped (stages 7 and 8 have no stamp:
# stage 7 skips each finished downstream run itself, stage 8 rewrites the report; stage 5 keeps
# each finished export).
#
#   bash run.sh [--stage N] [--stop_stage M] [--seed S] [--exp DIR]
#               [--teacher_args "ESPnet options"] [--distill_args "ESPnet options"]
#               [--superb_tasks "ks asr ic pr"] [--superb_seeds "ks=3 asr=1 pr=1"]
#               [--superb_steps N] [--superb_nj J]
set -euo pipefail

stage=1
stop_stage=100
seed=0
exp=exp
num_speakers=32
utts_per_speaker=40
num_clusters=50
teacher_args=""   # extra options for espnet2.bin.hubert_train (e.g. "--max_epoch 2")
distill_args=""   # extra options for every distill_prune_train run
superb_tasks="ks asr pr"  # SUPERB tasks evaluated in stage 9 (any of ks asr ic pr)
superb_seeds="ks=3 asr=1 pr=1"  # seeds per SUPERB task (mean and spread reported)
superb_steps=""   # SUPERB training steps per run (default: total_steps of conf/superb_<task>.yaml)
superb_nj=2       # SUPERB runs at a time (the OMP threads are shared out between them)
python=${PYTHON:-python3}

. "$(dirname "$0")/../utils/parse_options.sh"  # --name VALUE sets any variable above

cd "$(dirname "$0")"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# nothing is downloaded: g2p_en's import-time NLTK downloads (through ESPnet's and s3prl's imports)
# are switched off by the plugin's start-up hook; the Hugging Face libraries stay offline
export ESPNET_COMPRESS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
corpus=${exp}/corpus
data=${corpus}/data
. ../utils/stages.sh  # run_stage N NAME, finish N (stamps in ${exp}/stamps)

data_args() {  # TRAIN_DIR DEV_DIR [EXTRA_NAME_TYPE...]
  echo --train_data_path_and_name_and_type "$1/wav.scp,speech,sound" --train_shape_file "$1/speech_shape" \
       --valid_data_path_and_name_and_type "$2/wav.scp,speech,sound" --valid_shape_file "$2/speech_shape"
}

if run_stage 1 "synthesise the corpus with espeak-ng and flite (flite's kal voices held out: test_unseen)"; then
  ${python} local/synth_corpus.py --out "${corpus}" --num_speakers "${num_speakers}" \
    --utts_per_speaker "${utts_per_speaker}" --seed "${seed}"
  finish 1
fi

if run_stage 2 "MFCC k-means targets for HuBERT"; then
  ${python} local/mfcc_kmeans.py --fit_dir "${data}/train" --label_dir "${data}/train" --label_dir "${data}/dev" \
    --num_clusters "${num_clusters}" --token_list "${exp}/hubert_tokens.txt" --seed "${seed}"
  finish 2
fi

if run_stage 3 "pretrain the HuBERT teacher (espnet2.bin.hubert_train)"; then
  ${python} -m espnet2.bin.hubert_train --config conf/teacher_hubert.yaml --output_dir "${exp}/teacher_hubert" \
    --ngpu 0 --seed "${seed}" --num_classes "$(wc -l < "${exp}/hubert_tokens.txt")" \
    --use_preprocessor true --token_type word --token_list "${exp}/hubert_tokens.txt" \
    --bpemodel none --non_linguistic_symbols none --cleaner none --g2p none \
    $(data_args "${data}/train" "${data}/dev") \
    --train_data_path_and_name_and_type "${data}/train/hubert_labels,text,text" \
    --valid_data_path_and_name_and_type "${data}/dev/hubert_labels,text,text" ${teacher_args}
  finish 3
fi

if run_stage 4 "import the teacher"; then
  ${python} -m espnet_plugin.bin.import_model --input "${exp}/teacher_hubert" --output_dir "${exp}/teacher"
  finish 4
fi

distill() {  # CONFIG OUTPUT_DIR [EXTRA...]
  local config=$1 out=$2; shift 2
  ${python} -m espnet_plugin.bin.distill_prune_train --config "${config}" --teacher_path "${exp}/teacher" \
    --output_dir "${out}" --ngpu 0 --seed "${seed}" $(data_args "${data}/train" "${data}/dev") ${distill_args} "$@"
}

# the two budgets: the compressed model of each (suffix of its directories, stage-1 config)
suffix() { [ "$1" = params ] && echo "" || echo "_$1"; }

exported() { [ -f "$1/config.yaml" ] && [ -f "$1/model.safetensors" ]; }

compress() {  # params | macs: DPHuBERT stage 1 (distil + prune to that budget) and stage 2 (final
              # distillation), each exported; baseline: the DistilHuBERT-style baseline. A finished
              # export is kept when the stage runs again.
  local s
  if [ "$1" = baseline ]; then
    exported "${exp}/baseline" && return 0
    distill conf/distilhubert.yaml "${exp}/baseline_train"
    ${python} -m espnet_plugin.bin.export_model --config "${exp}/baseline_train/config.yaml" \
      --checkpoint "${exp}/baseline_train/valid.loss.best.pth" --output_dir "${exp}/baseline"
    return
  fi
  s=$(suffix "$1")
  if ! exported "${exp}/stage1${s}_pruned"; then
    distill "conf/distill_prune_stage1${s}.yaml" "${exp}/stage1${s}"
    ${python} -m espnet_plugin.bin.export_model --config "${exp}/stage1${s}/config.yaml" \
      --checkpoint "${exp}/stage1${s}/latest.pth" --output_dir "${exp}/stage1${s}_pruned"
  fi
  exported "${exp}/compressed${s}" && return 0
  distill conf/distill_prune_stage2.yaml "${exp}/stage2${s}" --student_path "${exp}/stage1${s}_pruned" \
    --init_param "${exp}/stage1${s}_pruned/distill_loss.pth"
  ${python} -m espnet_plugin.bin.export_model --config "${exp}/stage2${s}/config.yaml" \
    --checkpoint "${exp}/stage2${s}/valid.loss.best.pth" --output_dir "${exp}/compressed${s}"
}

at_once() {  # FUNCTION ARG...: FUNCTION ARG for every ARG at the same time, one thread each,
             # each logged to ${exp}/logs/FUNCTION_ARG.log; fails if any of them failed
  local fn=$1 pids=() failed=0 arg i; shift
  mkdir -p "${exp}/logs"
  for arg in "$@"; do
    echo "  ${fn} ${arg} (log: ${exp}/logs/${fn}_${arg}.log)"
    OMP_NUM_THREADS=1 "${fn}" "${arg}" > "${exp}/logs/${fn}_${arg}.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      arg=${*:$((i + 1)):1}
      echo "${fn} ${arg} failed; the end of ${exp}/logs/${fn}_${arg}.log:" >&2
      tail -n 20 "${exp}/logs/${fn}_${arg}.log" >&2
      failed=1
    fi
  done
  return ${failed}
}

if run_stage 5 "compress, three runs at once: DPHuBERT to 25 % of the teacher's params, to 25 % of its MACs, and the DistilHuBERT-style baseline"; then
  at_once compress params macs baseline
  finish 5
fi

superb_data=${exp}/superb_data

if run_stage 6 "SUPERB layouts: Speech Commands (KS), LibriSpeech (ASR), Fluent Commands (IC), PR CSVs"; then
  rm -rf "${superb_data}"
  for task in ks asr ic pr; do
    ${python} local/superb_layouts.py --task "${task}" --data "${data}" --out "${superb_data}/${task}" --seed "${seed}"
  done
  finish 6
fi

if always_stage 7 "SUPERB ${superb_tasks} with s3prl (runner / problem API): teacher, compressed x 2, baseline, fbank"; then
  ${python} local/evaluate_superb.py --out "${exp}/superb" --seed "${seed}" --nj "${superb_nj}" --python "${python}" \
    --models teacher="${exp}/teacher" compressed="${exp}/compressed" compressed_macs="${exp}/compressed_macs" \
    baseline="${exp}/baseline" fbank=s3prl:fbank_no_cmvn --seeds ${superb_seeds} \
    --tasks ${superb_tasks} --ks_data "${superb_data}/ks" --asr_data "${superb_data}/asr" \
    --ic_data "${superb_data}/ic" --pr_data "${superb_data}/pr" ${superb_steps:+--steps "${superb_steps}"}
fi

if always_stage 8 "report: RESULTS.md, results.json, figures/"; then
  ${python} local/report.py --exp "${exp}"
fi
