#!/usr/bin/env bash
# Two-step knowledge distillation for tiny speech enhancement at paper scale, on DNS Challenge
# data (Interspeech 2020 / ICASSP 2021): stage 1 writes the Kaldi data directories from the DNS
# files (local/prepare_dns.py), stages 2-5 are egs2/mini_synth_enh's (teacher, students,
# scoring, report) with paper-scale schedules, on a GPU by default.
#
#   bash run.sh --train_dir /data/dns/training --test_dir /data/dns/test_set/synthetic/no_reverb
#   bash run.sh --train_dir ... --test_clean_dir /data/dns/test/clean --test_noise_dir /data/dns/test/noise \
#               [--test_snrs "-5 0 5 10 15"] [--noisy_only_dir /data/dns/real_recordings]
#   bash run.sh --stage 2 [--stop_stage M] [--ngpu 0] [--nj J] [--seeds "0 1 2"] [--sizes "30k 60k"]
#               [--methods "..."] [--kd_epochs N] [--sup_epochs N] [--teacher_args "..."] [--student_args "..."]
#
# Data paths are taken relative to where run.sh is called; a relative --exp lies in this
# directory, as in the other recipes. A finished stage leaves EXP/stamps/N.done and is skipped.
set -euo pipefail

stage=1
stop_stage=100
exp=exp
train_dir=         # noisyspeech_synthesizer output: noisy/ and clean/
test_dir=          # a DNS test set with noisy/ and clean/ (names with snrN) ...
test_clean_dir=    # ... or clean test speech re-mixed with the noise of
test_noise_dir=    #     this directory at each of test_snrs
test_snrs="-5 0 5 10 15"
noisy_only_dir=    # optional: unlabelled noisy recordings, added to step 1's data
valid_fraction=0.02
seed=0             # valid split, re-mixing and teacher
seeds="0 1 2"      # student seeds
sizes="30k 60k"
methods="supervised one_step_kd output_kd two_step_sp_time two_step_sp_batch two_step_gdd two_step_mgd"
kd_epochs=25       # step-1 epochs; one-stage methods get kd + sup
sup_epochs=25      # step-2 epochs
nj=4               # student runs at a time
ngpu=1             # appended as --ngpu N to teacher_args and student_args
teacher_args="--max_epoch 100 --num_iters_per_epoch 2000 --batch_size 16"
student_args="--num_iters_per_epoch 2000 --batch_size 16"
python=${PYTHON:-python3}

. "$(dirname "$0")/../utils/parse_options.sh"  # --name VALUE sets any variable above

for name in train_dir test_dir test_clean_dir test_noise_dir noisy_only_dir; do
  [ -z "${!name}" ] || printf -v "${name}" '%s' "$(realpath -m "${!name}")"
done
cd "$(dirname "$0")"
mkdir -p "${exp}"
exp=$(cd "${exp}" && pwd)  # absolute: mini_synth_enh's run.sh works in its own directory
data=${exp}/corpus/data
. ../utils/stages.sh  # run_stage N NAME, finish N (stamps in ${exp}/stamps)

if run_stage 1 "DNS Challenge data directories (local/prepare_dns.py)"; then
  options=(--out "${data}" --valid_fraction "${valid_fraction}" --seed "${seed}")
  for name in train_dir test_dir test_clean_dir test_noise_dir noisy_only_dir; do
    [ -z "${!name}" ] || options+=("--${name}" "${!name}")
  done
  ${python} local/prepare_dns.py "${options[@]}" --test_snrs ${test_snrs}  # unquoted: one argument per SNR
  finish 1  # the same EXP/stamps/1.done by which mini_synth_enh's run.sh knows its stage 1 is done
fi

if [ "${stop_stage}" -ge 2 ] && [ "${stage}" -le 5 ]; then
  if [ ! -e "${exp}/stamps/1.done" ]; then
    echo "run.sh: ${exp}/stamps/1.done is missing: run stage 1 first (or write ${data} yourself and touch it)" >&2
    exit 1
  fi
  bash ../mini_synth_enh/run.sh --exp "${exp}" --stage "$(( stage > 2 ? stage : 2 ))" --stop_stage "${stop_stage}" \
    --seed "${seed}" --seeds "${seeds}" --sizes "${sizes}" --methods "${methods}" \
    --kd_epochs "${kd_epochs}" --sup_epochs "${sup_epochs}" --nj "${nj}" --python "${python}" \
    --teacher_args "${teacher_args} --ngpu ${ngpu}" --student_args "${student_args} --ngpu ${ngpu}"
fi
