#!/usr/bin/env bash
# DPHuBERT at paper scale on LibriSpeech 960 h, for users with GPUs and a local corpus.
#
#   bash run.sh --librispeech_root /data/LibriSpeech --teacher /ckpt/hubert_base_ls960.pt \
#       [--model hubert_base|wavlm_base_plus|hubert_large] [--ngpu 4] [--stage N] [--stop_stage M]
#
# The teacher may be any checkpoint the plugin imports: a Hugging Face directory, a fairseq
# HuBERT / wav2vec 2.0 .pt, an official WavLM .pt, an ESPnet HuBERT experiment.
# Stages: 1 data prep, 2 import teacher, 3 stage 1 (distil + prune), 4 export,
# 5 stage 2 (final distillation), 6 export, 7 SUPERB KS / ASR through s3prl's runner
# (KS needs --speech_commands_root, ASR uses --librispeech_root; skip with --stop_stage 6).
set -euo pipefail

stage=1
stop_stage=100
librispeech_root=
teacher=
model=hubert_base
ngpu=1
exp=exp
speech_commands_root=
python=${PYTHON:-python3}

. "$(dirname "$0")/../utils/parse_options.sh"  # --name VALUE sets any variable above

cd "$(dirname "$0")"
conf=$(pwd)/conf
data=${exp}/data
multi_gpu=""
[ "${ngpu}" -gt 1 ] && multi_gpu="--multiprocessing_distributed true"

need() { [ -n "$2" ] || { echo "run.sh: --$1 is required for stage $3" >&2; exit 2; }; }
selected() { [ "$1" -ge "${stage}" ] && [ "$1" -le "${stop_stage}" ]; }

train() {  # CONFIG OUTPUT_DIR [EXTRA...]
  local config=$1 out=$2; shift 2
  ${python} -m espnet_plugin.bin.distill_prune_train --config "${config}" --teacher_path "${exp}/teacher" \
    --output_dir "${out}" --ngpu "${ngpu}" ${multi_gpu} \
    --train_data_path_and_name_and_type "${data}/train_960/wav.scp,speech,sound" \
    --train_shape_file "${data}/train_960/speech_shape" \
    --valid_data_path_and_name_and_type "${data}/dev_clean/wav.scp,speech,sound" \
    --valid_shape_file "${data}/dev_clean/speech_shape" "$@"
}

if selected 1; then
  need librispeech_root "${librispeech_root}" 1
  ${python} local/data_prep.py --librispeech_root "${librispeech_root}" --out "${data}" --merge train_960 \
    --subsets train-clean-100 train-clean-360 train-other-500 --bucket_dir "${exp}/len_for_bucket"
  ${python} local/data_prep.py --librispeech_root "${librispeech_root}" --out "${data}" \
    --subsets dev-clean test-clean --bucket_dir "${exp}/len_for_bucket"
fi

if selected 2; then
  need teacher "${teacher}" 2
  ${python} -m espnet_plugin.bin.import_model --input "${teacher}" --output_dir "${exp}/teacher"
fi

if selected 3; then
  train "${conf}/${model}_stage1.yaml" "${exp}/stage1"
fi

if selected 4; then
  ${python} -m espnet_plugin.bin.export_model --config "${exp}/stage1/config.yaml" \
    --checkpoint "${exp}/stage1/latest.pth" --output_dir "${exp}/stage1_pruned"
fi

if selected 5; then
  train "${conf}/${model}_stage2.yaml" "${exp}/stage2" --student_path "${exp}/stage1_pruned" \
    --init_param "${exp}/stage1_pruned/distill_loss.pth"
fi

if selected 6; then
  ${python} -m espnet_plugin.bin.export_model --config "${exp}/stage2/config.yaml" \
    --checkpoint "${exp}/stage2/valid.loss.best.pth" --output_dir "${exp}/compressed"
fi

if selected 7; then
  need speech_commands_root "${speech_commands_root}" 7
  superb=$(${python} -c "import s3prl_upstream; print(s3prl_upstream.CONFIG_DIR)")
  device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)
  ${python} -m s3prl_upstream.run_downstream -m train -u espnet_compress_local -k "${exp}/compressed" \
    -d speech_commands -c "${superb}/ks/superb.yaml" -p "${exp}/superb_ks" --device "${device}" \
    -o "config.downstream_expert.datarc.speech_commands_root='${speech_commands_root}/speech_commands_v0.01',,config.downstream_expert.datarc.speech_commands_test_root='${speech_commands_root}/speech_commands_test_set_v0.01'"
  ${python} -m s3prl_upstream.run_downstream -m evaluate -e "${exp}/superb_ks/dev-best.ckpt" --device "${device}"
  ${python} -m s3prl_upstream.run_downstream -m train -u espnet_compress_local -k "${exp}/compressed" \
    -d asr -c "${superb}/asr/superb.yaml" -p "${exp}/superb_asr" --device "${device}" \
    -o "config.downstream_expert.datarc.libri_root='${librispeech_root}',,config.downstream_expert.datarc.bucket_file='${exp}/len_for_bucket'"
  ${python} -m s3prl_upstream.run_downstream -m evaluate -e "${exp}/superb_asr/dev-clean-best.ckpt" -t test-clean --device "${device}"
fi
