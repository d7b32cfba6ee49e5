#!/usr/bin/env bash
# Stock ESPnet ASR (espnet2.bin.asr_train, espnet2.bin.asr_inference; no wrapper, no import of
# espnet-compress) on the mini_synth corpus, with a compressed model as the s3prl front-end
# (conf/asr_s3prl_frontend.yaml, the default) or as the encoder (conf/asr_compressed_encoder.yaml).
# The installed espnet-compress package registers the names by itself.
#
#   bash run.sh [--config conf/asr_s3prl_frontend.yaml] [--mini_synth_exp ../mini_synth/exp]
#               [--model_dir DIR] [--exp DIR] [--train_args "ESPnet options"] [--decode_args "..."]
#
# Needs mini_synth's corpus and a compact model (by default its compressed student):
# bash ../mini_synth/run.sh --stop_stage 6
set -euo pipefail

config=conf/asr_s3prl_frontend.yaml
mini_synth_exp=../mini_synth/exp
model_dir=""     # default: ${mini_synth_exp}/compressed
exp=""           # default: exp/<config name>
train_args=""    # extra options for espnet2.bin.asr_train (e.g. "--max_epoch 1")
decode_args=""   # extra options for espnet2.bin.asr_inference
python=${PYTHON:-python3}

. "$(dirname "$0")/../utils/parse_options.sh"  # --name VALUE sets any variable above

cd "$(dirname "$0")"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
model_dir=${model_dir:-${mini_synth_exp}/compressed}
exp=${exp:-exp/$(basename "${config}" .yaml)}
data=${mini_synth_exp}/corpus/data
for path in "${data}/train/wav.scp" "${data}/dev/wav.scp" "${data}/test/wav.scp" "${model_dir}"; do
  [ -e "${path}" ] || { echo "${path} not found: run bash ../mini_synth/run.sh --stop_stage 6 first" >&2; exit 1; }
done
mkdir -p "${exp}"

# the model directory: where the config names it (the s3prl front-end's path_or_url, or the encoder's model_dir)
if grep -q "^encoder: espnet_compress" "${config}"; then
  model_arg=(--encoder_conf "model_dir=${model_dir}")
else
  model_arg=(--frontend_conf "frontend_conf.path_or_url=${model_dir}")
fi

echo "=== 1. character token list"
${python} - "${data}/train/text" "${exp}/tokens.txt" <<'PY'
import sys
text, out = sys.argv[1:]
chars = sorted({c for line in open(text, encoding="utf-8") for c in line.split(maxsplit=1)[-1].strip() if c != " "})
with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(["<blank>", "<unk>", "<space>", *chars, "<sos/eos>"]) + "\n")
PY

echo "=== 2. train: python -m espnet2.bin.asr_train --config ${config}"
# shellcheck disable=SC2086
${python} -m espnet2.bin.asr_train --config "${config}" --output_dir "${exp}" "${model_arg[@]}" \
  --ngpu 0 --token_type char --token_list "${exp}/tokens.txt" \
  --train_data_path_and_name_and_type "${data}/train/wav.scp,speech,sound" \
  --train_data_path_and_name_and_type "${data}/train/text,text,text" \
  --train_shape_file "${data}/train/speech_shape" \
  --valid_data_path_and_name_and_type "${data}/dev/wav.scp,speech,sound" \
  --valid_data_path_and_name_and_type "${data}/dev/text,text,text" \
  --valid_shape_file "${data}/dev/speech_shape" ${train_args}

echo "=== 3. decode the test set: python -m espnet2.bin.asr_inference (CTC prefix beam search)"
# shellcheck disable=SC2086
${python} -m espnet2.bin.asr_inference --ngpu 0 --batch_size 1 --beam_size 4 --ctc_weight 1.0 \
  --asr_train_config "${exp}/config.yaml" --asr_model_file "${exp}/valid.loss.best.pth" \
  --data_path_and_name_and_type "${data}/test/wav.scp,speech,sound" --key_file "${data}/test/wav.scp" \
  --output_dir "${exp}/decode_test" ${decode_args}

echo "=== 4. character error rate"
${python} - "${data}/test/text" "${exp}/decode_test/1best_recog/text" "${exp}/decode_test/cer.txt" <<'PY'
import sys

def read(path):
    with open(path, encoding="utf-8") as f:
        return dict((line.rstrip("\n").split(maxsplit=1) + [""])[:2] for line in f if line.strip())

def distance(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]

refs, hyps = read(sys.argv[1]), read(sys.argv[2])
errors = sum(distance(ref, hyps.get(utt, "")) for utt, ref in refs.items())
chars = sum(len(ref) for ref in refs.values())
line = f"CER {100 * errors / max(chars, 1):.1f} % ({errors} errors / {chars} characters, {len(refs)} utterances)"
open(sys.argv[3], "w").write(line + "\n")
print(line)
PY
