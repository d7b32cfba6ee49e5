#!/usr/bin/env bash
# Two-step knowledge distillation for tiny speech enhancement, end to end on a CPU, from
# nothing: synthesise noisy / clean speech, train a 2 M-parameter causal teacher with ESPnet's
# enh_train, distil it into 60 k and 30 k students with every method (supervised only, one-step
# KD, output KD, two-step with fine-grained / batch similarity preserving, generative denoise,
# masked generative), three seeds each, score everything with ESPnet's enh_scoring by input
# SNR, and write RESULTS.md / results.json / figures.
# Re-runnable: a finished stage leaves a stamp and is skipped; stages 3 and 4 skip each finished
# run themselves (and resume unfinished ones); stage 5 rewrites the report.
#
#   bash run.sh [--stage N] [--stop_stage M] [--exp DIR] [--seed S] [--seeds "0 1 2"]
#               [--sizes "30k 60k"] [--methods "supervised two_step_sp_time ..."]
#               [--kd_epochs N] [--sup_epochs N] [--nj J]
#               [--num_train N] [--num_valid N] [--num_test N] [--reverb_prob P]
#               [--teacher_args "ESPnet options"] [--student_args "ESPnet options"]
set -euo pipefail

stage=1
stop_stage=100
exp=exp
seed=0             # data and teacher seed
seeds="0 1 2"      # student seeds
sizes="30k 60k"
methods="supervised one_step_kd output_kd two_step_sp_time two_step_sp_batch two_step_gdd two_step_mgd"
kd_epochs=2        # step-1 epochs (num_iters_per_epoch in conf/train_student.yaml); one-stage runs get kd + sup
sup_epochs=2       # step-2 epochs
nj=2               # runs at a time (one thread each)
num_train=1600
num_valid=24
num_test=16        # clean test utterances, each at -5 0 5 10 15 dB
num_speakers=24
reverb_prob=0
teacher_args=""    # extra options for espnet2.bin.enh_train (e.g. "--max_epoch 2")
student_args=""    # extra options for every student run (e.g. "--num_iters_per_epoch 5")
python=${PYTHON:-python3}

. "$(dirname "$0")/../utils/parse_options.sh"  # --name VALUE sets any variable above

cd "$(dirname "$0")"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export ESPNET_COMPRESS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing is downloaded (docs/s3prl_and_espnet.md)
data=${exp}/corpus/data
. ../utils/stages.sh  # run_stage / always_stage N NAME, finish N (stamps in ${exp}/stamps)

if run_stage 1 "synthesise noisy / clean speech (espeak-ng, sox)"; then
  ${python} local/prepare_data.py --out "${exp}/corpus" --num_train "${num_train}" --num_valid "${num_valid}" \
    --num_test "${num_test}" --num_speakers "${num_speakers}" --reverb_prob "${reverb_prob}" --seed "${seed}"
  finish 1
fi

if run_stage 2 "train the teacher (espnet2.bin.enh_train)"; then
  ${python} -m espnet2.bin.enh_train --config conf/teacher.yaml --output_dir "${exp}/teacher" --ngpu 0 \
    --seed "${seed}" --resume true \
    --train_data_path_and_name_and_type "${data}/train/wav.scp,speech_mix,sound" \
    --train_data_path_and_name_and_type "${data}/train/spk1.scp,speech_ref1,sound" \
    --train_shape_file "${data}/train/speech_mix_shape" \
    --valid_data_path_and_name_and_type "${data}/valid/wav.scp,speech_mix,sound" \
    --valid_data_path_and_name_and_type "${data}/valid/spk1.scp,speech_ref1,sound" \
    --valid_shape_file "${data}/valid/speech_mix_shape" ${teacher_args} > "${exp}/teacher.log" 2>&1 \
    || { tail -n 30 "${exp}/teacher.log" >&2; exit 1; }
  finish 2
fi

if always_stage 3 "students: ${methods} x ${sizes} x seeds ${seeds} (EnhDistillTask, ${nj} at a time)"; then
  OMP_NUM_THREADS=1 ${python} local/train_students.py --exp "${exp}" --data "${data}" --teacher "${exp}/teacher" \
    --methods ${methods} --sizes ${sizes} --seeds ${seeds} --kd_epochs "${kd_epochs}" --sup_epochs "${sup_epochs}" \
    --nj "${nj}" --extra "${student_args}"
fi

if always_stage 4 "enhance and score the test set (enh_inference, enh_scoring)"; then
  OMP_NUM_THREADS=1 ${python} local/score.py --exp "${exp}" --test "${data}/test" --nj "${nj}"
fi

if always_stage 5 "report: RESULTS.md, results.json, figures/"; then
  ${python} local/report.py --exp "${exp}" --test "${data}/test"
fi
