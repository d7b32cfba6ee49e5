"""espnet-compress models as s3prl upstreams: registration, s3prl's upstream conformance,
equality with espnet_plugin, SUPERB's legacy runner on a tiny synthesised KS set, and one
test per compat shim (s3prl_upstream.compat).

``import s3prl.hub`` takes ~15 s, so it happens once (module fixture); the runner runs in
subprocesses (train, evaluate, resume: ~15 s each).
"""
import argparse
import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import espnet_plugin
from espnet_plugin.models import SpeechEncoder
from tests.conftest import randomize_, tiny_config

REPO = Path(__file__).resolve().parents[1]
NAME = "espnet_compress_local"


def save_tiny(directory, seed=0, **config):
    model = randomize_(SpeechEncoder(tiny_config(**config)), seed=seed, std=0.2).eval()
    espnet_plugin.save_model(model, directory)
    return Path(directory)


@pytest.fixture(scope="module")
def hub():
    import s3prl_upstream

    s3prl_upstream.register()
    import s3prl.hub

    return s3prl.hub


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("model") / "hubert_tiny")


def upstream(hub, path):
    from s3prl.nn import S3PRLUpstream

    return S3PRLUpstream(NAME, path_or_url=str(path))


def padded_batch(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    wavs = torch.randn(len(lengths), max(lengths), generator=gen) * 0.5
    for i, length in enumerate(lengths):
        wavs[i, length:] = 0
    return wavs, torch.tensor(lengths)


# ------------------------------------------------------------------ registration
def test_import_is_lazy():
    code = "import sys, s3prl_upstream; print(any(m in sys.modules for m in ('s3prl', 'torch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_register_is_idempotent_and_listed(hub):
    import s3prl_upstream
    from s3prl.nn import S3PRLUpstream
    from s3prl_upstream.espnet_compress import hubconf

    assert s3prl_upstream.register() == s3prl_upstream.register() == [
        "espnet_compress_local", "espnet_compress", "espnet_compress_onnx"]
    for name in s3prl_upstream.UPSTREAM_NAMES:
        assert name in S3PRLUpstream.available_names() and name in hub.options()
        assert getattr(hub, name) is getattr(hubconf, name)
    assert NAME not in hub.options(only_registered_ckpt=True)  # needs a path, like hubert_local


def test_register_refuses_to_replace_another_upstream(hub, monkeypatch):
    import s3prl_upstream

    monkeypatch.setattr(hub, "espnet_compress", lambda **kwargs: None, raising=False)
    with pytest.raises(RuntimeError, match="already has an upstream named 'espnet_compress'"):
        s3prl_upstream.register()


# ------------------------------------------------------------------ conformance
def test_conformance_layers_widths_rates_lengths(hub, model_dir):
    up = upstream(hub, model_dir).eval()
    assert up.num_layers == 4  # N + 1 for 3 layers
    assert up.hidden_sizes == [32] * 4 and up.downsample_rates == [320] * 4
    lengths = [16000, 12000, 800]
    wavs, wavs_len = padded_batch(lengths)
    with torch.no_grad():
        all_hs, all_lens = up(wavs, wavs_len)
        again, _ = up(wavs, wavs_len)
    expected = torch.tensor([(n - 1) // 320 + 1 for n in lengths])  # s3prl's length convention
    assert len(all_hs) == 4
    for h, h_len, h2 in zip(all_hs, all_lens, again):
        assert h.shape == (3, 50, 32) and torch.equal(h_len, expected)
        assert torch.equal(h, h2)  # deterministic in eval mode


def test_forward_backward_on_shortest_input_and_featurizer(hub, model_dir):
    from s3prl.nn import Featurizer

    up = upstream(hub, model_dir).train()
    featurizer = Featurizer(up)
    assert featurizer.output_size == 32 and featurizer.downsample_rate == 320
    wavs, wavs_len = padded_batch([800, 800])  # s3prl's minimum: 0.05 s
    wavs.requires_grad_(True)
    all_hs, all_lens = up(wavs, wavs_len)
    hs, hs_len = featurizer(all_hs, all_lens)
    assert hs.shape == (2, 3, 32) and hs_len.tolist() == [3, 3]
    hs.pow(2).mean().backward()
    assert featurizer.weights.grad is not None and wavs.grad is not None
    grads = [p.grad for p in up.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_matches_espnet_plugin_hidden_states(hub, tmp_path):
    for config in (dict(), dict(model_type="wavlm", large=True, normalize_waveform=True)):
        directory = save_tiny(tmp_path / config.get("model_type", "hubert"), seed=3, **config)
        up = upstream(hub, directory).eval()
        wavs, wavs_len = padded_batch([16000, 11000, 4321], seed=1)
        with torch.no_grad():
            all_hs, _ = up(wavs, wavs_len)
            reference, frames = espnet_plugin.load_model(directory).extract_hidden_states(wavs, wavs_len)
        assert len(all_hs) == len(reference)
        for ours, ref in zip(all_hs, reference):
            for b, n in enumerate(frames.tolist()):
                torch.testing.assert_close(ours[b, :n], ref[b, :n], rtol=1e-5, atol=1e-5)


def test_espnet_s3prl_frontend(hub, model_dir):
    from espnet2.asr.frontend.s3prl import S3prlFrontend

    frontend = S3prlFrontend(
        frontend_conf={"upstream": NAME, "path_or_url": str(model_dir)}, multilayer_feature=True
    ).eval()
    assert frontend.output_size() == 32 and frontend.hop_length == 320
    wavs, wavs_len = padded_batch([16000, 12000])
    with torch.no_grad():
        feats, feats_len = frontend(wavs, wavs_len)
    assert feats.shape == (2, 50, 32) and feats_len.tolist() == [50, 38]


def test_expert_padded_batches_and_short_input(hub, tmp_path):
    # pre-LN / layer-norm CNN: an utterance's valid frames do not depend on its batch
    directory = save_tiny(tmp_path / "large", large=True)
    expert = getattr(hub, NAME)(ckpt=str(directory), model_config=None, refresh=False).eval()
    assert expert.get_downsample_rates("hidden_states") == 320
    gen = torch.Generator().manual_seed(5)
    wavs = [torch.randn(n, generator=gen) for n in (16000, 8000, 300)]
    with torch.no_grad():
        out = expert(wavs)
        alone = [expert([w])["hidden_states"] for w in wavs]
    hidden = out["hidden_states"]
    assert len(hidden) == 4 and out["last_hidden_state"] is hidden[-1]
    assert torch.equal(out["hidden_state_0"], hidden[0])
    frames = expert.frame_lengths(torch.tensor([16000, 8000, 300])).tolist()
    assert frames == [49, 24, 1]  # floor((L - 400) / 320) + 1; 300 samples are padded to 400
    for layer, h in enumerate(hidden):
        assert h.shape == (3, 49, 32)
        for b, n in enumerate(frames):
            torch.testing.assert_close(h[b, :n], alone[b][layer][0, :n], rtol=1e-5, atol=1e-5)
            assert not h[b, n:].any()  # frames past the utterance are zero
    with pytest.raises(ValueError, match="empty"):
        expert([torch.zeros(16000), torch.zeros(0)])
    with pytest.raises(ValueError, match="1-D"):
        expert([torch.zeros(1, 16000)])


def test_entry_reads_checkpoint_files_and_model_config(hub, tmp_path, model_dir):
    import torchaudio
    import yaml

    from espnet_plugin.importers import import_model
    from tests.conftest import TINY_CONV

    ref = torchaudio.models.wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[tuple(c) for c in TINY_CONV],
        extractor_conv_bias=False, encoder_embed_dim=32, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4,
        encoder_attention_dropout=0.0, encoder_ff_interm_features=48, encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None,
    )
    randomize_(ref, std=0.2)
    torch.save(ref.state_dict(), tmp_path / "w2v.pt")
    (tmp_path / "heads.yaml").write_text(yaml.safe_dump({"num_heads": 4}))
    entry = getattr(hub, NAME)
    expert = entry(ckpt=str(tmp_path / "w2v.pt"), model_config=str(tmp_path / "heads.yaml"), refresh=False).eval()
    assert expert.provenance["source_format"] == "torchaudio"
    wav = torch.randn(6000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, _ = import_model(ref)[0].eval().extract_hidden_states(wav[None])
        got = expert([wav])["hidden_states"]
    assert len(got) == 3
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    # extra_conf of S3PRLUpstream carries the same option; DIR/config.yaml stands for DIR
    assert entry(ckpt=str(tmp_path / "w2v.pt"), num_heads=4).model.config == expert.model.config
    assert entry(ckpt=str(model_dir / "config.yaml")).model.config.embed_dim == 32
    (tmp_path / "bad.yaml").write_text("heads: 4\n")
    with pytest.raises(ValueError, match=r"unknown keys \['heads'\]"):
        entry(ckpt=str(model_dir), model_config=str(tmp_path / "bad.yaml"))
    with pytest.raises(ValueError, match="no checkpoint given"):
        entry(ckpt=None)
    with pytest.raises(ValueError, match="local path"):
        entry(ckpt="https://example.org/model.pt")
    with pytest.raises(ValueError, match="no such file"):
        entry(ckpt=str(tmp_path / "missing"))


# ------------------------------------------------------------------ SUPERB runner (KS)
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
UNKNOWN = ["bed", "cat"]


def _split_of(speaker: str) -> str:
    """s3prl's KS split (speech_commands/expert.py: split_dataset): sha1 of the speaker id."""
    percentage = (int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 2**27) * (100.0 / (2**27 - 1))
    return "dev" if percentage < 10 else "discarded" if percentage < 20 else "train"


def _speakers(split: str, count: int):
    found, i = [], 0
    while len(found) < count:
        if _split_of(f"{i:08x}") == split:
            found.append(f"{i:08x}")
        i += 1
    return found


def make_speech_commands(root: Path) -> None:
    """Speech Commands v1 layout, tiny: train/WORD/SPEAKER_nohash_0.wav (+ _background_noise_),
    test/CLASS/*.wav with _unknown_ and _silence_; 1 s, 16 kHz, 16-bit, espeak-ng voices."""
    from espnet_plugin.utils.audio import synthesize

    rng = np.random.default_rng(0)

    def write(path, wav):
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), wav, 16000, subtype="PCM_16")

    def clip(word, voice):
        speech = synthesize(word, voice)[:16000].numpy()
        out = np.zeros(16000, dtype=np.float32)
        start = (16000 - len(speech)) // 2
        out[start : start + len(speech)] = speech
        return out

    voices = {"train": ["en-us+m1", "en-us+f2"], "dev": ["en-us+m3"]}
    for split, names in voices.items():
        for speaker, voice in zip(_speakers(split, len(names)), names):
            for word in KEYWORDS + UNKNOWN:
                write(root / "train" / word / f"{speaker}_nohash_0.wav", clip(word, voice))
    for k in range(2):  # longer than 1 s: the _silence_ class crops a random second
        write(root / "train" / "_background_noise_" / f"noise_{k}.wav", rng.standard_normal(24000) * 0.05)
    for word in KEYWORDS:
        write(root / "test" / word / "f00d0000_nohash_0.wav", clip(word, "en-gb"))
    write(root / "test" / "_unknown_" / "f00d0001_nohash_0.wav", clip("bed", "en-gb"))
    write(root / "test" / "_silence_" / "f00d0002_nohash_0.wav", rng.standard_normal(16000) * 0.05)


def run_downstream(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "s3prl_upstream.run_downstream", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def test_runner_dependencies_installed():
    from s3prl_upstream import compat

    compat.check_runner_dependencies()  # the message says what to install


def test_run_downstream_ks_train_evaluate_resume(hub, model_dir, tmp_path):
    from s3prl_upstream import compat, config_path

    compat.check_runner_dependencies()
    make_speech_commands(tmp_path / "sc")
    from s3prl.downstream.speech_commands.expert import split_dataset

    train, dev = split_dataset(tmp_path / "sc" / "train")
    assert len(train) == 24 and len(dev) == 12
    exp = tmp_path / "exp"
    data = (
        f"config.downstream_expert.datarc.speech_commands_root={tmp_path / 'sc' / 'train'},,"
        f"config.downstream_expert.datarc.speech_commands_test_root={tmp_path / 'sc' / 'test'}"
    )
    run_downstream(
        ["-m", "train", "-u", NAME, "-k", model_dir, "-d", "speech_commands", "-c", config_path("ks/tiny.yaml"),
         "-p", exp, "--device", "cpu", "-o", data],
        cwd=tmp_path,
    )
    assert (exp / "states-2.ckpt").is_file() and (exp / "states-4.ckpt").is_file()
    assert "dev at step 4" in (exp / "log.log").read_text()

    output = run_downstream(["-m", "evaluate", "-e", exp / "states-4.ckpt", "-t", "test", "--device", "cpu"], cwd=tmp_path)
    assert "test acc:" in output
    predictions = (exp / "test_predict.txt").read_text()
    assert len(predictions.splitlines()) == 12

    # the same trained downstream on the model's ONNX export (how bench/bench_export_accuracy.py
    # measures each deployed format): identical predictions in fp32
    from espnet_plugin.deploy.onnx_export import export_onnx

    onnx_file = export_onnx(espnet_plugin.load_model(model_dir), tmp_path / "model.onnx")
    run_downstream(["-m", "evaluate", "-e", exp / "states-4.ckpt", "-t", "test", "--device", "cpu",
                    "-o", f"args.upstream=espnet_compress_onnx,,args.upstream_ckpt={onnx_file}"], cwd=tmp_path)
    assert (exp / "test_predict.txt").read_text() == predictions

    output = run_downstream(["-m", "train", "-e", exp, "-o", "config.runner.total_steps=6", "--device", "cpu"], cwd=tmp_path)
    assert f"Resume from {exp / 'states-4.ckpt'}" in output
    state = torch.load(exp / "states-6.ckpt", map_location="cpu")  # weights_only, via the torch_load shim
    assert state["Step"] == 6 and state["Args"].upstream == NAME and "Featurizer" in state
    before = torch.load(exp / "states-4.ckpt", map_location="cpu")
    assert not torch.equal(before["Featurizer"]["weights"], state["Featurizer"]["weights"])


def test_run_downstream_without_config_says_what_to_pass(tmp_path, monkeypatch):
    from s3prl_upstream import run_downstream as wrapper

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no -c/--config given"):
        wrapper.main(["-m", "train", "-u", NAME, "-k", "x", "-d", "speech_commands"])


def test_shipped_ks_configs():
    import yaml

    from s3prl_upstream import config_path

    superb = yaml.safe_load(config_path("ks/superb.yaml").read_text())
    assert superb["runner"]["total_steps"] == 200000 and superb["optimizer"]["lr"] == 1.0e-4
    assert superb["downstream_expert"]["datarc"]["batch_size"] == 32
    assert superb["downstream_expert"]["modelrc"] == {
        "projector_dim": 256, "select": "UtteranceLevel", "UtteranceLevel": {"pooling": "MeanPooling"}
    }
    tiny = yaml.safe_load(config_path("ks/tiny.yaml").read_text())
    assert tiny["downstream_expert"]["datarc"]["num_workers"] == 0
    with pytest.raises(FileNotFoundError, match="shipped"):
        config_path("ks/missing.yaml")


# ------------------------------------------------------------------ compat shims
def test_compat_apply_is_idempotent(hub):
    from s3prl_upstream import compat

    first = compat.apply()
    assert compat.apply() == first and set(first) == set(compat.SHIMS)
    assert set(first.values()) <= {"installed", "not needed"}


def write_wav(path, wav, rate):
    soundfile.write(str(path), wav, rate, subtype="PCM_16")
    return str(path)


def test_shim_sox_effects_ks_chain(hub, tmp_path):
    import torchaudio.functional as AF
    from torchaudio.sox_effects import apply_effects_file

    from s3prl.downstream.speech_commands.dataset import EFFECTS

    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((22050, 2)) * 0.2).astype(np.float32)
    path = write_wav(tmp_path / "stereo.wav", stereo, 22050)
    wav, rate = apply_effects_file(path, EFFECTS)  # channels 1, rate 16000, gain -3
    assert rate == 16000 and wav.shape == (1, 16000) and wav.dtype == torch.float32
    data, _ = soundfile.read(path, dtype="float32")
    expected = AF.resample(torch.from_numpy(data.T.copy()).mean(0, keepdim=True), 22050, 16000) * 10 ** (-3 / 20)
    torch.testing.assert_close(wav, expected)


def test_shim_sox_effects_match_the_sox_binary(hub, tmp_path):
    import shutil

    from torchaudio.sox_effects import apply_effects_file, apply_effects_tensor

    from s3prl_upstream import sox_effects

    if shutil.which("sox") is None:
        pytest.skip("the sox binary is not installed")
    rng = np.random.default_rng(1)
    path = write_wav(tmp_path / "mono.wav", (rng.standard_normal(8000) * 0.3).astype(np.float32), 16000)
    chain = [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"], ["pad", "0.01", "0.02"],
             ["trim", "0.005", "0.3"], ["reverse"], ["norm"]]
    ours, rate = apply_effects_file(path, chain)
    reference, ref_rate = sox_effects._run_sox(path, chain)
    assert rate == ref_rate == 16000 and ours.shape == reference.shape == (1, 4800)
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=0)
    # effects left to the binary (silence / vad) still work, on files and tensors
    padded = np.concatenate([np.zeros(8000, np.float32), (rng.standard_normal(8000) * 0.3).astype(np.float32)])
    trimmed, _ = apply_effects_file(write_wav(tmp_path / "lead.wav", padded, 16000),
                                    [["silence", "1", "0.1", "0.1%"]])
    assert 7000 < trimmed.shape[1] < 9000
    out, _ = apply_effects_tensor(torch.from_numpy(padded)[None], 16000, [["silence", "1", "0.1", "0.1%"]])
    assert out.shape == trimmed.shape


def test_shim_huggingface_hub(hub, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import HfFolder, Repository, constants

    with pytest.raises(RuntimeError, match="upload_folder"):
        Repository(local_dir=str(tmp_path), clone_from="x")
    if getattr(HfFolder, "__module__", "") == "s3prl_upstream.compat":
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
        HfFolder.save_token("hf_test")
        assert (tmp_path / "hf" / "token").read_text() == "hf_test"
        HfFolder.delete_token()
        assert not (tmp_path / "hf" / "token").exists()
        assert HfFolder.get_token() == huggingface_hub.get_token()


def test_shim_catalyst_sampler_wrapper(hub):
    from catalyst.data.sampler import DistributedSamplerWrapper

    import s3prl.downstream.speech_commands.expert  # noqa: F401  (imports catalyst)

    draws = [7, 3, 3, 9, 0, 5, 1]
    shards = [list(DistributedSamplerWrapper(draws, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert shards == [[7, 3, 0, 1], [3, 9, 5, 7]]  # DistributedSampler pads the last shard
    shuffled = [DistributedSamplerWrapper(draws, num_replicas=2, rank=r, shuffle=True) for r in (0, 1)]
    for wrapper in shuffled:
        wrapper.set_epoch(3)
    together = Counter(list(shuffled[0]) + list(shuffled[1]))
    assert not Counter(draws) - together and sum((together - Counter(draws)).values()) == 1


def test_shim_sed_eval_dcase_util(hub):
    from s3prl_upstream import compat

    compat.check_runner_dependencies()  # s3prl.problem needs pandas (and tensorboardX via the tensorboard shim)
    import sed_eval
    from dcase_util.containers import MetaDataContainer

    import s3prl.problem  # noqa: F401  (imports sed_eval and dcase_util)

    if getattr(sed_eval, "__espnet_compress_stub__", False):
        with pytest.raises(ImportError, match="pip install sed_eval"):
            sed_eval.sound_event.SegmentBasedMetrics(event_label_list=["a"])
        with pytest.raises(ImportError, match="pip install dcase_util"):
            MetaDataContainer([])


def test_shim_tensorboard(hub, tmp_path):
    from s3prl_upstream import compat

    compat.check_runner_dependencies()
    from torch.utils.tensorboard.writer import SummaryWriter

    if compat.STATUS["tensorboard"] == "installed":
        import tensorboardX

        assert SummaryWriter is tensorboardX.SummaryWriter
    writer = SummaryWriter(str(tmp_path))
    writer.add_scalar("x", 1.0, 1)
    writer.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_shim_torch_load_namespace(hub, tmp_path):
    import torch.serialization

    assert argparse.Namespace in torch.serialization.get_safe_globals()
    torch.save({"Args": argparse.Namespace(upstream=NAME, seed=1337), "Step": 4}, tmp_path / "states-4.ckpt")
    state = torch.load(tmp_path / "states-4.ckpt", map_location="cpu")  # weights_only=True by default
    assert state["Args"].upstream == NAME and state["Step"] == 4


def test_shim_asr_dictionary_finds_the_shipped_char_dict(tmp_path, monkeypatch):
    from s3prl_upstream import compat

    compat.apply()
    from s3prl.downstream.asr.dictionary import Dictionary

    monkeypatch.chdir(tmp_path)  # the configs' repository-relative path does not exist here
    dictionary = Dictionary.load("s3prl_upstream/configs/asr/char.dict")
    assert dictionary.index("A") != dictionary.unk() and len(dictionary) == 32
    with pytest.raises(FileNotFoundError):
        Dictionary.load(str(tmp_path / "other.dict"))  # only char.dict falls back


def test_shim_sid_cache_is_per_dataset(tmp_path, monkeypatch):
    from s3prl_upstream import compat

    compat.apply()
    from s3prl.downstream.voxceleb1 import dataset as sid

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seen = []
    for name in ("a", "b"):
        root = tmp_path / name
        wav = root / "vox1_dev_wav" / "wav" / "id10001" / "vid" / "00001.wav"
        wav.parent.mkdir(parents=True)
        wav.write_bytes(b"")
        split = root / "iden_split.txt"
        split.write_text("1 id10001/vid/00001.wav\n")
        data = sid.SpeakerClassifiDataset("train", root, str(split))
        seen.append((sid.CACHE_PATH, data.dataset))
    (cache_a, files_a), (cache_b, files_b) = seen
    assert cache_a != cache_b and str(tmp_path / "cache") in cache_a
    assert files_a != files_b  # dataset b did not reuse a's cached list


# ------------------------------------------------------------------ deployed formats
@pytest.fixture(scope="module")
def onnx_files(model_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from espnet_plugin.deploy.onnx_export import export_onnx, quantize_int8

    fp32 = export_onnx(espnet_plugin.load_model(model_dir), tmp_path_factory.mktemp("onnx") / "model.onnx")
    return fp32, quantize_int8(fp32)


def test_onnx_upstream_matches_the_torch_upstream(hub, model_dir, onnx_files):
    """The exported file through s3prl (fp32: within the export's 1e-4; int8: same shapes and
    lengths, close) and the torch model under bf16 autocast (close, not equal)."""
    from s3prl.nn import S3PRLUpstream

    fp32, int8 = onnx_files
    wavs, wavs_len = padded_batch([16000, 12000, 800])
    with torch.no_grad():
        reference, ref_len = upstream(hub, model_dir).eval()(wavs, wavs_len)
        onnx_hs, onnx_len = S3PRLUpstream("espnet_compress_onnx", path_or_url=str(fp32)).eval()(wavs, wavs_len)
        int8_hs, int8_len = S3PRLUpstream("espnet_compress_onnx", path_or_url=str(int8)).eval()(wavs, wavs_len)
        bf16 = S3PRLUpstream(NAME, path_or_url=str(model_dir), extra_conf={"precision": "bf16"}).eval()
        bf16_hs, bf16_len = bf16(wavs, wavs_len)
    assert len(onnx_hs) == len(int8_hs) == len(bf16_hs) == len(reference) == 4
    for ref, lens, hs, hs_len in zip(reference, ref_len, onnx_hs, onnx_len):
        assert torch.equal(hs_len, lens) and (hs - ref).abs().max() < 1e-4
    scale = max(h.abs().max() for h in reference)
    for other, other_len in ((int8_hs, int8_len), (bf16_hs, bf16_len)):
        worst = max((h - ref).abs().max() for h, ref in zip(other, reference))
        assert all(torch.equal(a, b) for a, b in zip(other_len, ref_len))
        assert 0 < worst < 0.2 * scale
        assert all(h.dtype == torch.float32 for h in other)


def test_onnx_upstream_refuses_files_it_cannot_run(hub, tmp_path, model_dir):
    from s3prl_upstream.espnet_compress.expert import OnnxUpstreamExpert, UpstreamExpert

    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        OnnxUpstreamExpert(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=f"{garbage}: not a loadable ONNX file"):
        OnnxUpstreamExpert(garbage)
    plain = tmp_path / "plain.onnx"  # a graph exported without this package's metadata
    torch.onnx.export(torch.nn.Linear(4, 4), (torch.zeros(1, 4),), str(plain), dynamo=False)
    with pytest.raises(ValueError, match="no .*downsample_rate.* export it with"):
        OnnxUpstreamExpert(plain)
    with pytest.raises(ValueError, match="precision 'fp16'"):
        UpstreamExpert(model_dir, model_config={"precision": "fp16"})
