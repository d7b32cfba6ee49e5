"""ONNX export (espnet_plugin.deploy.onnx_export, bin/export_onnx): onnxruntime reproduces every
hidden state of the torch model within 1e-4, on padded batches and at lengths other than the
one traced at export; the CLI end to end, int8 included; clear errors for bad inputs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from espnet_plugin.bin import export_onnx as cli
from espnet_plugin.compact import ModelFormatError, load_model, save_model
from espnet_plugin.deploy.onnx_export import (
    EXPORT_SECONDS,
    FRAME_LENGTHS,
    TOLERANCE,
    OnnxExportError,
    example_batch,
    export_onnx,
    max_error,
    resolve_layers,
    run_onnx,
    session,
)
from espnet_plugin.models import SpeechEncoder, tiny_config

from conftest import randomize_

onnxruntime = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "hubert": lambda: tiny_config("hubert"),
    # Large layout: layer-norm CNN with bias, pre-LN, waveform normalisation
    "wav2vec2_large": lambda: tiny_config("wav2vec2", large=True, normalize_waveform=True),
    "wavlm": lambda: tiny_config("wavlm"),
}
# (seconds per utterance): the export length padded, then two other lengths (dynamic axes)
BATCHES = [
    (EXPORT_SECONDS, EXPORT_SECONDS * 0.6),
    (0.7, 0.45, 0.3),
    (2.3,),
]


def tiny_model(name: str) -> SpeechEncoder:
    return randomize_(SpeechEncoder(CONFIGS[name]()), seed=3, std=0.2).eval()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, tmp_path_factory):
    model = tiny_model(request.param)
    path = export_onnx(model, tmp_path_factory.mktemp(request.param) / "model.onnx")
    return model, path


def test_every_hidden_state_matches_torch_padded_and_dynamic(exported):
    model, path = exported
    sess = session(path)
    n = model.config.num_layers
    assert [i.name for i in sess.get_inputs()] == ["wavs", "wav_lengths"]
    assert [o.name for o in sess.get_outputs()] == [f"hidden_state_{i}" for i in range(n + 1)] + [FRAME_LENGTHS]
    frames_seen = set()
    for k, seconds in enumerate(BATCHES):
        wavs, lengths = example_batch(seconds, seed=10 + k)
        worst, per_output = max_error(model, sess, wavs, lengths)
        assert len(per_output) == n + 1
        assert worst < TOLERANCE, per_output
        outputs = run_onnx(sess, wavs, lengths)
        frames = model.frame_lengths(lengths)
        assert outputs[FRAME_LENGTHS].tolist() == frames.tolist()
        assert outputs["hidden_state_0"].shape == (len(seconds), int(frames.max()), model.config.embed_dim)
        # padded frames of hidden state 0 are zero, as in torch
        for b, valid in enumerate(frames.tolist()):
            assert not np.any(outputs["hidden_state_0"][b, valid:])
        frames_seen.add(int(frames.max()))
    assert len(frames_seen) == len(BATCHES)  # really three different lengths


def test_chosen_layers(tmp_path):
    model = tiny_model("wavlm")
    path = export_onnx(model, tmp_path / "some.onnx", layers=[3, 0, 1])
    sess = session(path)
    assert [o.name for o in sess.get_outputs()] == ["hidden_state_3", "hidden_state_0", "hidden_state_1", FRAME_LENGTHS]
    wavs, lengths = example_batch((0.8, 0.5), seed=4)
    worst, per_output = max_error(model, sess, wavs, lengths)
    assert sorted(per_output) == ["hidden_state_0", "hidden_state_1", "hidden_state_3"] and worst < TOLERANCE
    assert resolve_layers(3, None) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"\[4\] out of range.*0\.\.3"):
        resolve_layers(3, [0, 4])
    with pytest.raises(ValueError, match="at most once"):
        resolve_layers(3, [1, 1])


def test_cli_end_to_end_with_int8(tmp_path):
    model_dir = save_model(tiny_model("hubert"), tmp_path / "model")
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "espnet_plugin.bin.export_onnx", "--model_dir", str(model_dir),
         "--output", str(output), "--layers", "0", "2", "--int8"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout + proc.stderr
    assert f"wrote {output}" in log and "max abs error" in log
    assert "Quantization parameters" not in log  # the quantiser's chatter is kept out
    int8 = output.with_name("model.int8.onnx")
    assert int8.is_file() and int8.stat().st_size < output.stat().st_size
    reloaded = load_model(model_dir)
    wavs, lengths = example_batch((0.9, 0.6), seed=5)
    for path, limit in ((output, TOLERANCE), (int8, None)):
        sess = session(path)
        assert [o.name for o in sess.get_outputs()] == ["hidden_state_0", "hidden_state_2", FRAME_LENGTHS]
        worst, _ = max_error(reloaded, sess, wavs, lengths)
        assert np.isfinite(worst) and (limit is None or worst < limit)


def test_cli_fails_loudly_when_the_check_fails(tmp_path, monkeypatch, capsys):
    model_dir = save_model(tiny_model("hubert"), tmp_path / "model")
    monkeypatch.setattr(cli, "verify_onnx", lambda model, path: 3e-3)
    assert cli.main(["--model_dir", str(model_dir), "--output", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "max abs error 0.003" in err and "do not deploy" in err


def test_not_a_compact_model_dir(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="not a compact model directory"):
        load_model(tmp_path / "ckpt")
    assert cli.main(["--model_dir", str(tmp_path / "ckpt"), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a compact model directory" in err and str(tmp_path / "ckpt") in err
    assert not (tmp_path / "m.onnx").exists()


def test_unwritable_output(tmp_path, capsys):
    model = tiny_model("hubert")
    model_dir = save_model(model, tmp_path / "model")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    bad = [a_file / "m.onnx", tmp_path / "missing" / "m.onnx", tmp_path]
    if os.geteuid() != 0:  # root writes anywhere: a read-only directory only stops other users
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o500)
        bad.append(read_only / "m.onnx")
    for path in bad:
        with pytest.raises(OnnxExportError, match=str(path)):
            export_onnx(model, path)
    assert cli.main(["--model_dir", str(model_dir), "--output", str(bad[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad[0]) in err and "cannot write" in err
    # --int8: the int8 file's path is checked before anything is written
    (tmp_path / "x.int8.onnx").mkdir()
    assert cli.main(["--model_dir", str(model_dir), "--output", str(tmp_path / "x.onnx"), "--int8"]) == 2
    assert "x.int8.onnx: is a directory" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
