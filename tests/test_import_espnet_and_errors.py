"""ESPnet HuBERT importer, the import CLI, the compact format, and clear errors on bad input."""
import subprocess
import sys

import pytest
import torch
import yaml

import espnet_plugin
from espnet_plugin.compact import ModelFormatError, save_model
from espnet_plugin.models import ConfigError, EncoderConfig, SpeechEncoder
from espnet_plugin.importers import CheckpointFormatError, import_model
from tests.conftest import TINY_CONV, randomize_, tiny_config
from tests.test_import_hf_torchaudio import assert_matches, torchaudio_reference

ESPNET_ENCODER_CONF = dict(
    extractor_mode="layer_norm",
    extractor_conv_layer_config=[list(c) for c in TINY_CONV],
    extractor_conv_bias=True,
    encoder_embed_dim=32,
    encoder_projection_dropout=0.0,
    encoder_pos_conv_kernel=16,
    encoder_pos_conv_groups=4,
    encoder_num_layers=2,
    encoder_num_heads=2,  # 16-dim heads: must come from config.yaml, not shapes
    encoder_attention_dropout=0.0,
    encoder_ff_interm_features=48,
    encoder_dropout=0.0,
    encoder_layer_norm_first=True,
    encoder_layer_drop=0.0,
    num_classes=10,
    final_dim=16,
)


@pytest.fixture(scope="module")
def espnet_encoder():
    from espnet2.asr.encoder.hubert_encoder import TorchAudioHuBERTPretrainEncoder

    return randomize_(TorchAudioHuBERTPretrainEncoder(input_size=1, **ESPNET_ENCODER_CONF), std=0.2).eval()


@pytest.mark.parametrize("layout", ["model_file", "trainer_checkpoint"])
def test_espnet_hubert_experiment_matches_espnet_encoder(espnet_encoder, layout, tmp_path, wavs):
    exp = tmp_path / "exp" / "hubert_tiny"
    exp.mkdir(parents=True)
    config = {"encoder": "torchaudio_hubert", "encoder_conf": ESPNET_ENCODER_CONF, "num_classes": 10}
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    state = {f"encoder.{k}": v for k, v in espnet_encoder.state_dict().items()}
    if layout == "model_file":
        torch.save(state, exp / "valid.loss.best.pth")
        source = exp
    else:
        torch.save({"model": state, "optimizers": [{}], "reporter": {}}, exp / "checkpoint.pth")
        source = exp / "checkpoint.pth"
    ours, info = import_model(source)
    assert info["source_format"] == "espnet"
    assert ours.config.layers[0].num_heads == 2 and ours.config.layer_norm_first
    lengths = torch.tensor([4000, 2600])
    with torch.no_grad():
        hidden, frames = ours.extract_hidden_states(wavs, lengths)
    assert_matches(hidden, torchaudio_reference(espnet_encoder.hubert_pretrain_model.wav2vec2, wavs, lengths), frames)


def test_cli_writes_a_compact_model_that_loads_back(tmp_path, wavs):
    model = randomize_(SpeechEncoder(tiny_config("wavlm", large=True))).eval()
    save_model(model, tmp_path / "src", {"source": "test"})
    out = tmp_path / "imported"
    result = subprocess.run(
        [sys.executable, "-m", "espnet_plugin.bin.import_model", "--input", str(tmp_path / "src"), "--output_dir", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "params" in result.stderr
    loaded = espnet_plugin.load_model(out)
    document = yaml.safe_load((out / "config.yaml").read_text())
    assert document["provenance"]["source_format"] == "espnet-compress"
    assert document["provenance"]["params"] == model.num_params() and "date" in document["provenance"]
    with torch.no_grad():
        for a, b in zip(model(wavs)[0], loaded.extract_hidden_states(wavs)[0]):
            assert torch.equal(a, b)
    # weights load with torch + safetensors alone
    from safetensors.torch import load_file

    assert set(load_file(out / "model.safetensors")) == set(model.state_dict())


def test_cli_rejects_unknown_checkpoint(tmp_path):
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(3)}, bogus)
    result = subprocess.run(
        [sys.executable, "-m", "espnet_plugin.bin.import_model", "--input", str(bogus), "--output_dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert str(bogus) in result.stderr and "accepted formats" in result.stderr and "fairseq" in result.stderr


def test_truncated_and_empty_checkpoints_are_named(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(SpeechEncoder(tiny_config()).state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointFormatError, match="truncated.pt.*truncated, corrupt"):
        import_model(truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match="empty.pt: the file is empty"):
        import_model(empty)
    with pytest.raises(CheckpointFormatError, match="no such file"):
        import_model(tmp_path / "missing.pt")


def test_a_text_file_named_like_a_checkpoint_is_named(tmp_path):
    text = tmp_path / "model.pt"
    text.write_text("epoch 3 loss 0.25\n")
    with pytest.raises(CheckpointFormatError, match="model.pt: not a readable PyTorch checkpoint.*accepted formats"):
        import_model(text)


def test_non_finite_audio_is_rejected_by_extract_hidden_states():
    model = SpeechEncoder(tiny_config()).eval()
    wavs = torch.zeros(3, 1600)
    wavs[1, 100] = float("nan")
    wavs[2, 5] = float("inf")
    with pytest.raises(ValueError, match=r"utterance\(s\) \[1, 2\] of the batch contain NaN or infinite"):
        model.extract_hidden_states(wavs)


def test_compact_files_are_readable_by_everyone_like_other_outputs(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        out = save_model(SpeechEncoder(tiny_config()), tmp_path / "m")
    finally:
        os.umask(old)
    for name in ("config.yaml", "model.safetensors"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_compact_model_of_a_newer_format_version_says_upgrade(tmp_path):
    out = save_model(SpeechEncoder(tiny_config()), tmp_path / "m")
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("espnet-compress-model/1", "espnet-compress-model/2"))
    with pytest.raises(ModelFormatError, match="config.yaml: written by a newer espnet-compress .*version 2"):
        espnet_plugin.load_model(out)


def test_compact_config_edited_to_disagree_with_the_weights_is_named(tmp_path):
    out = save_model(SpeechEncoder(tiny_config()), tmp_path / "m")
    config = out / "config.yaml"
    document = yaml.safe_load(config.read_text())
    document["architecture"]["layers"][0]["ffn_dim"] += 8
    config.write_text(yaml.safe_dump(document))
    with pytest.raises(ModelFormatError, match=r"model.safetensors \(architecture of .*config.yaml\): weights do not "
                       r"match the architecture; other shapes: .*'layers.0.ffn.intermediate.weight \(48, 32\) "
                       r"\(expected \(56, 32\)\)"):
        espnet_plugin.load_model(out)


def test_truncated_compact_weights_are_named(tmp_path):
    save_model(SpeechEncoder(tiny_config()), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelFormatError, match="model.safetensors: unreadable weights"):
        espnet_plugin.load_model(tmp_path / "m")


def test_config_with_unknown_keys_is_rejected(tmp_path):
    save_model(SpeechEncoder(tiny_config()), tmp_path / "m")
    path = tmp_path / "m" / "config.yaml"
    document = yaml.safe_load(path.read_text())
    document["architecture"]["num_hedas"] = 4
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ModelFormatError, match=r"config.yaml.*unknown keys \['num_hedas'\]"):
        espnet_plugin.load_model(tmp_path / "m")
    document["architecture"].pop("num_hedas")
    document["architecture"]["layers"][1]["heads"] = 3
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ModelFormatError, match=r"layers\[1\].*unknown keys \['heads'\]"):
        espnet_plugin.load_model(tmp_path / "m")
    with pytest.raises(ConfigError, match="unknown keys"):
        EncoderConfig.from_dict({"embed_dim": 32, "gates": {"heads": True}})


def test_audio_shorter_than_receptive_field_is_rejected():
    model = SpeechEncoder(tiny_config()).eval()
    assert model.receptive_field == 400
    with pytest.raises(ValueError, match="wavs: an utterance has 399 samples.*receptive field of 400"):
        model.extract_hidden_states(torch.zeros(1, 399))
    with pytest.raises(ValueError, match="receptive field"):
        model.extract_hidden_states(torch.zeros(2, 1000), torch.tensor([1000, 300]))
    with pytest.raises(ValueError, match="wavs: expected a float tensor"):
        model.extract_hidden_states(torch.zeros(1000))
    hidden, frames = model.extract_hidden_states(torch.zeros(1, 400))
    assert frames.tolist() == [1] and hidden[0].shape == (1, 1, 32)


def test_importing_espnet_plugin_does_not_import_heavy_packages():
    code = "import sys, espnet_plugin; print(any(m in sys.modules for m in ('s3prl', 'espnet2', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_waveform_normalisation_is_per_utterance_over_valid_samples(wavs):
    from espnet_plugin.models.model import normalize_waveforms

    lengths = torch.tensor([4000, 2600])
    out = normalize_waveforms(wavs * 3 + 1, lengths)
    expected = torch.nn.functional.layer_norm(wavs[1, :2600] * 3 + 1, (2600,))
    assert torch.allclose(out[1, :2600], expected, atol=1e-5)
    assert torch.all(out[1, 2600:] == 0)
    model = SpeechEncoder(tiny_config(normalize_waveform=True)).eval()
    with torch.no_grad():
        a = model.extract_hidden_states(wavs[1:, :2600])[0][-1]
        b = model.extract_hidden_states(wavs[1:, :2600] * 5 + 0.3)[0][-1]
    assert torch.allclose(a, b, atol=1e-4)  # invariant to gain and offset
