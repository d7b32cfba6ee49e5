"""ESPnet ASR with compressed models: the espnet_compress encoder, the s3prl front-end path,
registration in spawned DDP workers, and the error when a config is loaded without the plugin."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import soundfile
import torch
import yaml

from espnet_plugin.compact import load_model, save_model
from espnet_plugin.models import SpeechEncoder
from espnet_plugin.utils.audio import synthesize
from espnet_plugin.utils.kaldi_data import write_scp, write_shape_file
from tests.conftest import randomize_, tiny_config

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "the cat sat on the mat", "a quick brown fox", "speech models are large", "prune the heads",
    "keep what matters", "distil the teacher", "small devices need small models", "hello world again",
]
VOICES = ["en-us", "en-us+f3", "en-gb", "en-us+m3"]

# raw waveforms straight into the encoder: no ESPnet front-end, no feature normalisation
ENCODER_CONFIG = """\
input_size: 1
frontend: null
normalize: null
specaug: null
encoder: espnet_compress
encoder_conf:
    model_dir: {model_dir}
    layer: null
    freeze: true
decoder: null
model_conf:
    ctc_weight: 1.0
token_type: char
batch_type: unsorted
batch_size: 4
max_epoch: 1
num_workers: 0
num_att_plot: 0
optim: adam
optim_conf:
    lr: 0.01
use_tensorboard: false
"""

# the compact model through ESPnet's s3prl front-end (frozen), a tiny transformer on top
S3PRL_CONFIG = """\
frontend: s3prl
frontend_conf:
    frontend_conf:
        upstream: espnet_compress_local
        path_or_url: {model_dir}
    download_dir: null
    multilayer_feature: true
freeze_param:
- frontend.upstream
normalize: utterance_mvn
encoder: transformer
encoder_conf:
    output_size: 16
    attention_heads: 2
    linear_units: 32
    num_blocks: 1
    input_layer: linear
decoder: null
model_conf:
    ctc_weight: 1.0
token_type: char
"""


def run(command, expect_ok=True, **kwargs):
    # one thread per process: tiny models gain nothing from more, and idle threads spin on a loaded machine;
    # the repository on the path: the scripts below run from elsewhere, and s3prl_upstream may not be installed
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, **kwargs)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def asr():
    import espnet_plugin.asr

    return espnet_plugin.asr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Eight espeak-ng utterances with transcripts, a char token list, a tiny compact model."""
    root = tmp_path_factory.mktemp("asr")
    wavs, texts = {}, {}
    for i, text in enumerate(SENTENCES):
        path = root / "wav" / f"utt{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, synthesize(text, VOICES[i % len(VOICES)], speed=150 + 10 * i).numpy(), 16000)
        wavs[f"utt{i:02d}"], texts[f"utt{i:02d}"] = str(path), text
    data = root / "data"
    write_scp(data / "wav.scp", wavs)
    write_scp(data / "text", texts)
    write_shape_file(data / "wav.scp", data / "speech_shape")
    chars = sorted(set("".join(SENTENCES)) - {" "})
    (data / "tokens.txt").write_text("\n".join(["<blank>", "<unk>", "<space>", *chars, "<sos/eos>"]) + "\n")
    torch.manual_seed(0)
    save_model(randomize_(SpeechEncoder(tiny_config(num_layers=2)), std=0.1), root / "compact")
    return root


def train_command(workdir: Path, output_dir: Path, config_text: str, *extra: str):
    data = workdir / "data"
    config = output_dir.parent / f"{output_dir.name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(config_text.format(model_dir=workdir / "compact"))
    pairs = [f"{data / 'wav.scp'},speech,sound", f"{data / 'text'},text,text"]
    return [
        sys.executable, "-m", "espnet_plugin.bin.asr_train",
        "--config", str(config),
        "--output_dir", str(output_dir),
        "--token_list", str(data / "tokens.txt"),
        "--ngpu", "0",
        "--seed", "0",
        *[arg for pair in pairs for arg in ("--train_data_path_and_name_and_type", pair)],
        "--train_shape_file", str(data / "speech_shape"),
        *[arg for pair in pairs for arg in ("--valid_data_path_and_name_and_type", pair)],
        "--valid_shape_file", str(data / "speech_shape"),
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(workdir):
    """One epoch of CTC training on the frozen compressed encoder (weighted sum of layers)."""
    exp = workdir / "exp" / "asr_encoder"
    run(train_command(workdir, exp, ENCODER_CONFIG))
    return exp


def padded_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4000, generator=gen) * 0.5, torch.tensor([4000, 2900])


# ------------------------------------------------------------------ the encoder, in-process
def test_encoder_outputs_equal_load_model(asr, workdir):
    from espnet2.tasks.asr import encoder_choices

    encoder_class = encoder_choices.get_class("espnet_compress")
    assert encoder_class is asr.CompressedEncoder
    reference = load_model(workdir / "compact")
    wavs, lengths = padded_batch()
    with torch.no_grad():
        hidden, frame_lengths = reference(wavs, lengths)

    encoder = encoder_class(input_size=1, model_dir=str(workdir / "compact"), layer=None, freeze=True).eval()
    assert encoder.output_size() == reference.config.embed_dim == 32
    with torch.no_grad():
        encoder.layer_weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
        weights = torch.softmax(encoder.layer_weights, 0)
        expected = sum(w * h for w, h in zip(weights, hidden))
        for xs in (wavs, wavs[..., None]):  # (B, T) and (B, T, 1)
            features, out_lengths, states = encoder(xs, lengths)
            torch.testing.assert_close(features, expected)
            assert torch.equal(out_lengths, frame_lengths) and states is None

    for layer, index in ((0, 0), (1, 1), (-1, 2)):
        single = encoder_class(input_size=1, model_dir=str(workdir / "compact"), layer=layer, freeze=False).eval()
        assert single.layer_weights is None
        with torch.no_grad():
            features, out_lengths, _ = single(wavs, lengths)
        assert torch.equal(features, hidden[index]) and torch.equal(out_lengths, frame_lengths)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_encoder_gets_no_gradient(asr, workdir, freeze):
    encoder = asr.CompressedEncoder(input_size=1, model_dir=str(workdir / "compact"), freeze=freeze)
    encoder.train()
    assert encoder.training and encoder.upstream.training is not freeze
    wavs, lengths = padded_batch(1)
    features, _, _ = encoder(wavs, lengths)
    features.square().mean().backward()
    upstream_grads = [p.grad for p in encoder.upstream.parameters()]
    assert encoder.layer_weights.grad is not None and encoder.layer_weights.grad.abs().sum() > 0
    if freeze:
        assert all(g is None for g in upstream_grads)
        assert not any(p.requires_grad for p in encoder.upstream.parameters())
    else:
        assert all(g is not None for g in upstream_grads)
        assert sum(float(g.abs().sum()) for g in upstream_grads) > 0


def test_encoder_settings_errors(asr, workdir):
    from espnet2.tasks.asr import ASRTask

    with pytest.raises(ValueError, match="input_size: 1"):
        asr.CompressedEncoder(input_size=80, model_dir=str(workdir / "compact"))
    with pytest.raises(ValueError, match="out of range.*3 hidden states"):
        asr.CompressedEncoder(input_size=1, model_dir=str(workdir / "compact"), layer=3)
    with pytest.raises(ValueError, match="model_dir"):
        asr.CompressedEncoder(input_size=1)
    args = ASRTask.get_parser().parse_args(["--encoder", "espnet_compress", "--token_list", "x"])
    with pytest.raises(ValueError, match=r"input_size: None \(needs 1.*normalize: 'utterance_mvn'"):
        asr.mark_plugin_args(args)


# ------------------------------------------------------------------ ESPnet's trainer, subprocesses
def test_dry_run_with_encoder(workdir):
    exp = workdir / "exp" / "dry_encoder"
    run(train_command(workdir, exp, ENCODER_CONFIG, "--dry_run", "true"))
    text = (exp / "config.yaml").read_text()
    assert "encoder: !<this%20ESPnet%20config%20needs%20the%20espnet-compress%20plugin" in text


@pytest.fixture(scope="module")
def s3prl_dry_run(workdir):
    exp = workdir / "exp" / "dry_s3prl"
    run(train_command(workdir, exp, S3PRL_CONFIG, "--dry_run", "true"))
    return exp


def test_dry_run_with_s3prl_frontend(asr, workdir, s3prl_dry_run):
    config = yaml.safe_load((s3prl_dry_run / "config.yaml").read_text())  # loads: the plugin is imported here
    assert isinstance(config["frontend_conf"]["frontend_conf"]["upstream"], asr.PluginName)
    model, _ = asr.load_asr_model(s3prl_dry_run / "config.yaml")
    assert model.frontend.output_size() == 32
    wavs, lengths = padded_batch()
    with torch.no_grad():
        features, feature_lengths = model.eval().frontend(wavs, lengths)
    assert features.shape[0] == 2 and features.shape[-1] == 32 and features.shape[1] == int(feature_lengths.max())


def test_one_epoch_and_reload(asr, workdir, trained):
    from espnet2.tasks.asr import ASRTask

    state = torch.load(trained / "1epoch.pth", map_location="cpu", weights_only=True)
    model, args = ASRTask.build_model_from_file(trained / "config.yaml", trained / "1epoch.pth")
    assert isinstance(model.encoder, asr.CompressedEncoder) and args.encoder == "espnet_compress"
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    # frozen upstream: the compact model's weights, unchanged; the layer weights learned
    reference = load_model(workdir / "compact")
    for key, value in reference.state_dict().items():
        assert torch.equal(state[f"encoder.upstream.{key}"], value), key
    assert state["encoder.layer_weights"].abs().sum() > 0
    # CTC posteriors over the encoder's frames
    wav, _ = soundfile.read(workdir / "wav" / "utt00.wav", dtype="float32")
    with torch.no_grad():
        out, out_lengths = model.eval().encode(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        log_probs = model.ctc.log_softmax(out)
    assert out.shape[-1] == 32 and int(out_lengths[0]) == out.shape[1] == reference.frame_lengths(torch.tensor([len(wav)]))[0]
    assert log_probs.shape[-1] == len(args.token_list)
    # a re-dumped config keeps the tag (e.g. espnet2.bin.pack rewriting config.yaml)
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    assert "encoder: !<this%20ESPnet%20config" in yaml_no_alias_safe_dump(vars(args))


def test_registration_reaches_spawned_workers(workdir):
    # ESPnet's DDP launcher spawns ASRTask.main_worker; the child re-imports only the main
    # script's top-level imports. The child's target here (builtins.exec) imports nothing of ours.
    script = workdir / "spawn_check.py"
    script.write_text(textwrap.dedent("""\
        import multiprocessing
        import sys

        import espnet_plugin.bin.asr_train  # noqa: F401

        CHECK = (
            "import sys, s3prl.hub\\n"
            "from espnet2.tasks.asr import encoder_choices\\n"
            "ok = 'espnet_compress' in encoder_choices.classes and 'espnet_compress_local' in s3prl.hub.options()\\n"
            "sys.exit(0 if ok else 3)\\n"
        )

        if __name__ == "__main__":
            process = multiprocessing.get_context("spawn").Process(target=exec, args=(CHECK,))
            process.start()
            process.join()
            sys.exit(process.exitcode)
        """))
    result = run([sys.executable, str(script)], expect_ok=False)
    assert result.returncode == 0, f"spawned worker: exit {result.returncode}\n{result.stderr[-3000:]}"


def test_missing_plugin_error(trained, s3prl_dry_run, monkeypatch):
    # a fresh Python that never imports espnet_plugin: both paths' configs, two ways of loading
    # (the installed package's start-up hook switched off, as if the plugin were not installed)
    monkeypatch.setenv("ESPNET_COMPRESS_AUTOLOAD", "0")
    code = textwrap.dedent(f"""\
        import sys
        from espnet2.bin.asr_inference import Speech2Text
        from espnet2.tasks.asr import ASRTask, encoder_choices
        assert "espnet_compress" not in encoder_choices.classes
        for load in (
            lambda: ASRTask.build_model_from_file({str(trained / 'config.yaml')!r}, {str(trained / '1epoch.pth')!r}),
            lambda: Speech2Text({str(trained / 'config.yaml')!r}, {str(trained / '1epoch.pth')!r}),
            lambda: ASRTask.build_model_from_file({str(s3prl_dry_run / 'config.yaml')!r}),
        ):
            try:
                load()
            except Exception as exc:
                print(type(exc).__name__, exc)
            else:
                sys.exit("loaded without the plugin")
        assert not any(name.startswith("espnet_plugin") for name in sys.modules)
        """)
    result = run([sys.executable, "-c", code])
    lines = result.stdout.strip().splitlines()
    messages = [line for line in lines if line.startswith("ConstructorError")]
    assert len(messages) == 3, result.stdout
    for message in messages:
        assert "needs the espnet-compress plugin: import espnet_plugin.asr before loading it" in message
        assert "python -m espnet_plugin.bin.asr_train" in message
