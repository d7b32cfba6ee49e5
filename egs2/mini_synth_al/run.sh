#!/usr/bin/env bash
# Active learning for ESPnet ASR on the mini_synth corpus, on a CPU, from nothing: which
# utterances to transcribe next, chosen by random / confidence / entropy / EGL / BADGE.
#
#   bash run.sh [--stage N] [--stop_stage M] [--exp DIR] [--seeds "0 1 2"] [--methods "..."]
#               [--rounds R] [--budget_seconds S] [--upstream fbank|teacher] [--compact_model DIR] [--nj J] ...
#
# stage 1: the corpus (egs2/mini_synth/local/synth_corpus.py) and the AL splits: seed set, pool
#          (no transcripts), dev, test
# stage 2: only with --upstream teacher: mini_synth's HuBERT teacher (its stages 2-4 on this
#          corpus) as a frozen upstream; --compact_model DIR takes an existing compact model
#          directory instead; the default (--upstream fbank) needs none
# stage 3: the rounds (local/al_loop.py): train, score the pool, select, reveal, retrain, test
# stage 4: the report (local/report.py): exp/RESULTS.md, exp/results.json, exp/figures/
set -euo pipefail

stage=1
stop_stage=100
exp=exp
seed=0                  # corpus, splits and the teacher
seeds="0 1 2"           # active-learning runs per method (training and selection seeds)
methods="random egl entropy confidence badge"  # run in this order, each over all seeds
rounds=3
budget_seconds=60       # audio selected per round
seed_utts=40
pool_utts=120
nbest=8
nj=2                    # AL chains at a time (one thread each)
upstream=fbank          # fbank: ESPnet fbank + transformer from scratch (conf/train_asr.yaml);
                        # teacher: build mini_synth's HuBERT teacher (stage 2) and train on it frozen
compact_model=""        # a compact model directory: frozen upstream (conf/train_asr_compact.yaml)
teacher_args=""         # extra options for mini_synth's teacher (espnet2.bin.hubert_train)
train_args=""           # extra ESPnet options for every ASR training (e.g. "--max_epoch 2")
num_speakers=32
utts_per_speaker=40
python=${PYTHON:-python3}

. "$(dirname "$0")/../utils/parse_options.sh"  # --name VALUE sets any variable above

here=$(cd "$(dirname "$0")" && pwd)
cd "${here}"
mkdir -p "${exp}"
exp=$(cd "${exp}" && pwd)
[ -z "${compact_model}" ] || compact_model=$(cd "${compact_model}" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export ESPNET_COMPRESS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing is downloaded (docs/s3prl_and_espnet.md)
. ../utils/stages.sh  # run_stage N NAME, finish N (stamps in ${exp}/stamps)
stamp_time() { date +%s > "${exp}/stamps/$1.start"; }

if run_stage 1 "corpus (mini_synth's synth_corpus.py) and the seed / pool / dev / test splits"; then
  stamp_time 1
  ${python} local/prepare_data.py --corpus "${exp}/corpus" --out "${exp}/data" --seed "${seed}" \
    --num_speakers "${num_speakers}" --utts_per_speaker "${utts_per_speaker}" \
    --seed_utts "${seed_utts}" --pool_utts "${pool_utts}"
  finish 1
fi

conf=conf/train_asr.yaml
if [ -n "${compact_model}" ]; then
  conf=conf/train_asr_compact.yaml
elif [ "${upstream}" = teacher ]; then
  conf=conf/train_asr_compact.yaml
  compact_model=${exp}/upstream/teacher
  if run_stage 2 "the frozen upstream: mini_synth's HuBERT teacher (its stages 2-4 on this corpus)"; then
    stamp_time 2
    # mini_synth's run.sh, in its own experiment directory, reading this corpus (a link)
    mkdir -p "${exp}/upstream"
    ln -sfn "${exp}/corpus" "${exp}/upstream/corpus"
    PYTHON=${python} OMP_NUM_THREADS=2 bash ../mini_synth/run.sh --exp "${exp}/upstream" --stage 2 --stop_stage 4 \
      --seed "${seed}" ${teacher_args:+--teacher_args "${teacher_args}"}
    finish 2
  fi
elif [ "${upstream}" != fbank ]; then
  echo "--upstream must be fbank or teacher, got ${upstream}" >&2; exit 2
fi

if run_stage 3 "active-learning rounds: ${methods} x seeds ${seeds}, ${rounds} rounds of ${budget_seconds} s"; then
  stamp_time 3
  ${python} local/al_loop.py --exp "${exp}" --data "${exp}/data" --conf "${conf}" \
    ${compact_model:+--compact_model "${compact_model}"} --methods ${methods} --seeds ${seeds} --rounds "${rounds}" \
    --budget_seconds "${budget_seconds}" --nbest "${nbest}" --nj "${nj}" --train_args "${train_args}"
  finish 3
fi

if [ 4 -ge "${stage}" ] && [ 4 -le "${stop_stage}" ]; then
  echo "=== stage 4: report"
  ${python} local/report.py --exp "${exp}"
fi
