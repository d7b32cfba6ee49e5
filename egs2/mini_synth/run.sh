#!/usr/bin/env bash
# Compress a speech SSL model end to end on a CPU, from nothing: synthesise a corpus,
# pretrain a small HuBERT teacher with ESPnet, distil + prune it (DPHuBERT), distil a
# DistilHuBERT-style baseline, then evaluate teacher, compressed student, baseline and an fbank
# control on SUPERB KS, ASR and PR (IC on request) with s3prl (runner, problem API), write RESULTS.md /
# results.json.
# Re-runnable: a finished stage leaves a stamp and is skipped (stages 9 and 10 have no stamp:
# stage 9 skips each finished downstream run itself, stage 10 rewrites the report).
#
#   bash run.sh [--stage N] [--stop_stage M] [--seed S] [--exp DIR]
#               [--teacher_args "ESPnet options"] [--distill_args "ESPnet options"]
#               [--superb_tasks "ks asr ic pr"] [--superb_steps N] [--superb_nj J]
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
superb_steps=""   # SUPERB training steps per run (default: total_steps of conf/superb_<task>.yaml)
superb_nj=2       # SUPERB runs at a time (the OMP threads are shared out between them)
python=${PYTHON:-python3}

. "$(dirname "$0")/../utils/parse_options.sh"  # --name VALUE sets any variable above

cd "$(dirname "$0")"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
corpus=${exp}/corpus
data=${corpus}/data
. ../utils/stages.sh  # run_stage N NAME, finish N (stamps in ${exp}/stamps)

data_args() {  # TRAIN_DIR DEV_DIR [EXTRA_NAME_TYPE...]
  echo --train_data_path_and_name_and_type "$1/wav.scp,speech,sound" --train_shape_file "$1/speech_shape" \
       --valid_data_path_and_name_and_type "$2/wav.scp,speech,sound" --valid_shape_file "$2/speech_shape"
}

if run_stage 1 "synthesise the corpus with espeak-ng"; then
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

if run_stage 5 "DPHuBERT stage 1: distil + prune"; then
  distill conf/distill_prune_stage1.yaml "${exp}/stage1"
  ${python} -m espnet_plugin.bin.export_model --config "${exp}/stage1/config.yaml" \
    --checkpoint "${exp}/stage1/latest.pth" --output_dir "${exp}/stage1_pruned"
  finish 5
fi

if run_stage 6 "DPHuBERT stage 2: final distillation"; then
  distill conf/distill_prune_stage2.yaml "${exp}/stage2" --student_path "${exp}/stage1_pruned" \
    --init_param "${exp}/stage1_pruned/distill_loss.pth"
  ${python} -m espnet_plugin.bin.export_model --config "${exp}/stage2/config.yaml" \
    --checkpoint "${exp}/stage2/valid.loss.best.pth" --output_dir "${exp}/compressed"
  finish 6
fi

if run_stage 7 "DistilHuBERT-style baseline"; then
  distill conf/distilhubert.yaml "${exp}/baseline_train"
  ${python} -m espnet_plugin.bin.export_model --config "${exp}/baseline_train/config.yaml" \
    --checkpoint "${exp}/baseline_train/valid.loss.best.pth" --output_dir "${exp}/baseline"
  finish 7
fi

superb_data=${exp}/superb_data

if run_stage 8 "SUPERB layouts: Speech Commands (KS), LibriSpeech (ASR), Fluent Commands (IC), PR CSVs"; then
  rm -rf "${superb_data}"
  for task in ks asr ic pr; do
    ${python} local/superb_layouts.py --task "${task}" --data "${data}" --out "${superb_data}/${task}" --seed "${seed}"
  done
  finish 8
fi

# always_stage N NAME: true when stage N is selected (no stamp: the stage skips finished work itself)
always_stage() {
  [ "$1" -ge "${stage}" ] && [ "$1" -le "${stop_stage}" ] || return 1
  echo "=== stage $1: $2"
}

if always_stage 9 "SUPERB ${superb_tasks} with s3prl (runner / problem API): teacher, compressed, baseline, fbank"; then
  ${python} local/evaluate_superb.py --out "${exp}/superb" --seed "${seed}" --nj "${superb_nj}" --python "${python}" \
    --models teacher="${exp}/teacher" compressed="${exp}/compressed" baseline="${exp}/baseline" fbank=s3prl:fbank_no_cmvn \
    --tasks ${superb_tasks} --ks_data "${superb_data}/ks" --asr_data "${superb_data}/asr" \
    --ic_data "${superb_data}/ic" --pr_data "${superb_data}/pr" ${superb_steps:+--steps "${superb_steps}"}
fi

if always_stage 10 "report: RESULTS.md, results.json, figures/"; then
  ${python} local/report.py --exp "${exp}"
fi
