"""End to end: ESPnet's own trainer (``python -m espnet2.bin.hubert_train``) trains a tiny
``torchaudio_hubert`` encoder for one epoch on espeak-ng speech, and ``import_model`` reads
the experiment it wrote: the same hidden states as ESPnet's model, and trained weights.

The data preparation is what a pip-installed ESPnet needs without egs2/Kaldi: a wav.scp, a
shape file of ``utt_id num_samples`` lines, a ``text`` file of one pseudo cluster id per
20 ms frame, and a token list of the cluster ids plus ``<unk>``.
"""
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from espnet_plugin.utils.audio import read_audio, synthesize
from espnet_plugin.importers import import_model
from tests.conftest import TINY_CONV
from tests.test_import_hf_torchaudio import assert_matches, rel_err, torchaudio_reference

pytest.importorskip("espnet2.tasks.hubert")
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SENTENCES = [
    "hello world",
    "the quick brown fox",
    "speech models can be small",
    "one two three four",
    "a tiny hubert model",
    "espnet trains on the cpu",
    "pruning makes it faster",
    "good morning",
]
NUM_CLUSTERS = 10
TOKENS = [str(k) for k in range(NUM_CLUSTERS)] + ["<unk>"]  # CommonPreprocessor requires <unk>
SEED = 0
# ESPnet's defaults otherwise (group_norm extractor without conv bias, post-LN transformer):
# those keys are absent from the config.yaml the trainer writes, so the importer must cope.
ENCODER_CONF = dict(
    extractor_conv_layer_config=[list(c) for c in TINY_CONV],
    encoder_embed_dim=32,
    encoder_projection_dropout=0.0,
    encoder_pos_conv_kernel=16,
    encoder_pos_conv_groups=4,
    encoder_num_layers=2,
    encoder_num_heads=4,
    encoder_attention_dropout=0.0,
    encoder_ff_interm_features=48,
    encoder_ff_interm_dropout=0.0,
    encoder_dropout=0.0,
    encoder_layer_drop=0.0,
    final_dim=16,
)
TRAIN_CONFIG = dict(
    encoder="torchaudio_hubert",
    encoder_conf=ENCODER_CONF,
    num_classes=len(TOKENS),  # top level: HubertTask passes it to the encoder itself
    model="torchaudio",
    input_size=1,  # raw waveform in; without it an 80-dim fbank frontend feeds the encoder
    frontend=None,
    normalize=None,  # else utterance_mvn runs on the waveform before the encoder (not at import)
    specaug=None,
    optim="adam",
    optim_conf=dict(lr=0.001),
    max_epoch=1,
    batch_type="numel",
    batch_bins=100000,
    num_workers=0,
    num_att_plot=0,
    best_model_criterion=[["valid", "loss", "min"]],
    keep_nbest_models=1,
)


def num_frames(num_samples: int) -> int:
    """Frames of the 7-layer CNN (400-sample receptive field, 320-sample stride)."""
    return (num_samples - 400) // 320 + 1


def prepare_data(data):
    import soundfile

    data.mkdir(parents=True)
    scp, shapes, text = [], [], []
    for i, sentence in enumerate(SENTENCES):
        uid = f"utt{i:02d}"
        wav = synthesize(sentence).numpy()
        soundfile.write(str(data / f"{uid}.wav"), wav, 16000)
        labels = [str((k // 3 + i) % NUM_CLUSTERS) for k in range(num_frames(len(wav)))]
        scp.append(f"{uid} {data / f'{uid}.wav'}")
        shapes.append(f"{uid} {len(wav)}")
        text.append(f"{uid} {' '.join(labels)}")
    (data / "wav.scp").write_text("\n".join(scp) + "\n")
    (data / "speech_shape").write_text("\n".join(shapes) + "\n")
    (data / "text").write_text("\n".join(text) + "\n")
    (data / "tokens.txt").write_text("\n".join(TOKENS) + "\n")


def train_command(root):
    data = root / "data"
    inputs = []
    for split in ("train", "valid"):
        inputs += [
            f"--{split}_data_path_and_name_and_type", f"{data / 'wav.scp'},speech,sound",
            f"--{split}_data_path_and_name_and_type", f"{data / 'text'},text,text",
            f"--{split}_shape_file", str(data / "speech_shape"),
        ]
    return [
        sys.executable, "-m", "espnet2.bin.hubert_train",
        "--config", str(root / "train.yaml"),
        "--output_dir", str(root / "exp"),
        "--ngpu", "0",
        "--seed", str(SEED),
        "--use_tensorboard", "false",  # tensorboard is not installed: the trainer imports it otherwise
        "--use_matplotlib", "false",
        "--use_preprocessor", "true",
        "--token_type", "word",
        "--token_list", str(data / "tokens.txt"),
        "--bpemodel", "none",
        "--non_linguistic_symbols", "none",
        "--cleaner", "none",
        "--g2p", "none",
        *inputs,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(experiment dir, data dir) of a one-epoch run of ESPnet's trainer."""
    root = tmp_path_factory.mktemp("espnet_hubert")
    prepare_data(root / "data")
    (root / "train.yaml").write_text(yaml.safe_dump(TRAIN_CONFIG))
    result = subprocess.run(train_command(root), cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"hubert_train failed:\n{result.stderr[-6000:]}"
    exp = root / "exp"
    assert "The training was finished at 1 epochs" in result.stderr, result.stderr[-3000:]
    assert (exp / "config.yaml").is_file() and (exp / "valid.loss.best.pth").exists()
    return exp, root / "data"


@pytest.fixture(scope="module")
def padded_batch(trained):
    _, data = trained
    first, second = read_audio(data / "utt05.wav"), read_audio(data / "utt07.wav")  # longest, shortest
    assert len(first) > len(second)
    wavs = torch.zeros(2, len(first))
    wavs[0] = first
    wavs[1, : len(second)] = second
    return wavs, torch.tensor([len(first), len(second)])


def espnet_model(exp, model_file):
    from espnet2.tasks.hubert import HubertTask

    model, _ = HubertTask.build_model_from_file(exp / "config.yaml", model_file, device="cpu")
    return model.eval()


def test_trained_experiment_imports_with_espnet_provenance(trained):
    exp, _ = trained
    sources = [exp]
    if (exp / "checkpoint.pth").is_file():  # the trainer's resumable {"model", "optimizers", ...}
        sources.append(exp / "checkpoint.pth")
    for source in sources:
        ours, info = import_model(source)
        assert info["source_format"] == "espnet", source
        assert len(ours.config.layers) == 2 and ours.config.embed_dim == 32
        assert all(layer.num_heads == 4 for layer in ours.config.layers)
        assert not ours.config.layer_norm_first


@pytest.mark.parametrize("source", ["exp_dir", "checkpoint.pth"])
def test_trained_experiment_matches_espnet_model(trained, padded_batch, source):
    exp, _ = trained
    if source == "checkpoint.pth" and not (exp / "checkpoint.pth").is_file():
        pytest.skip("the trainer wrote no checkpoint.pth")
    ours, _ = import_model(exp if source == "exp_dir" else exp / source)
    wav2vec2 = espnet_model(exp, exp / "valid.loss.best.pth").encoder.hubert_pretrain_model.wav2vec2
    wavs, lengths = padded_batch
    expected = torchaudio_reference(wav2vec2, wavs, lengths)
    with torch.no_grad():
        hidden, frames = ours.extract_hidden_states(wavs, lengths)
    assert frames.tolist() == [num_frames(n) for n in lengths.tolist()]
    assert len(hidden) == 3
    assert_matches(hidden, expected, frames)


def test_imported_weights_are_the_trained_ones(trained, padded_batch):
    exp, _ = trained
    trained_state = espnet_model(exp, exp / "valid.loss.best.pth").state_dict()
    # the trainer seeds everything with --seed before building the model: the same seed
    # rebuilds its initial weights
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    fresh = espnet_model(exp, None)
    fresh_state = fresh.state_dict()
    prefix = "encoder.hubert_pretrain_model.wav2vec2."
    names = [k for k in trained_state if k.startswith(prefix) and trained_state[k].is_floating_point()]
    assert len(names) > 40
    # key biases get (almost) no gradient: softmax ignores a constant added to every score
    unchanged = {k for k in names if (trained_state[k] - fresh_state[k]).abs().max() <= 1e-4}
    assert all(k.endswith("k_proj.bias") for k in unchanged), sorted(unchanged)
    # and what import_model read is the trained encoder, not a fresh one
    ours, _ = import_model(exp)
    wavs, lengths = padded_batch
    with torch.no_grad():
        hidden, frames = ours.extract_hidden_states(wavs, lengths)
    untrained = torchaudio_reference(fresh.encoder.hubert_pretrain_model.wav2vec2, wavs, lengths)
    valid = torch.arange(hidden[-1].shape[1])[None] < frames[:, None]
    assert rel_err(hidden[-1][valid], untrained[-1][valid]) > 1e-3
