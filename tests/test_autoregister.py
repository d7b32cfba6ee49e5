"""The start-up hook (``espnet_compress_autoload``, installed as a .pth file): stock ESPnet and
stock s3prl find the plugin in fresh Python processes whose code never imports
``espnet_plugin`` or ``s3prl_upstream``.

Importing ESPnet's ASR task or ``s3prl.hub`` takes 20-30 s, so the three heavy subprocesses
(stock s3prl front-end / upstream and an ``asr_train`` dry run with the encoder; the switched-off
check; the example recipe ``egs2/stock_espnet_example/run.sh``: train one epoch with
``python -m espnet2.bin.asr_train``, decode with ``python -m espnet2.bin.asr_inference``) start
together, once, and each test reads its results.
"""
import json
import os
import site
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
EXAMPLE = REPO / "egs2" / "stock_espnet_example"
HOOK = "espnet_compress_autoload"
OURS = ("espnet_plugin", "s3prl_upstream")
SENTENCES = ["the cat sat on the mat", "a quick brown fox", "prune the heads", "hello world again"]
SPLITS = {"train": ["en-us", "en-gb"], "dev": ["en-us+f3"], "test": ["en-us+m3"]}

# printed by every subprocess below: what of this project got imported, and what the hook did
REPORT = textwrap.dedent("""\
    import json as _json, sys as _sys
    _hook = _sys.modules.get("espnet_compress_autoload")
    print("REPORT " + _json.dumps({
        "ours": sorted(m for m in _sys.modules if m.split(".")[0] in ("espnet_plugin", "s3prl_upstream")),
        "status": dict(getattr(_hook, "STATUS", {})),
        "finder": any(type(f).__name__ == "AutoloadFinder" for f in _sys.meta_path),
    }))
    """)


def clean_env(**extra):
    """The caller's environment without the hook's switches and without this repository on the
    path: the subprocesses must get the plugin from the installed package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPNET_COMPRESS_AUTOLOAD")}
    env.pop("PYTHONPATH", None)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def python(code, cwd, expect_ok=True, **env):
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=clean_env(**env), timeout=300
    )
    if expect_ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def report(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1][len("REPORT "):])


def import_check(code):
    """A script that must not import this project itself."""
    assert not any(f"import {name}" in code or f"from {name}" in code for name in OURS)
    return code + REPORT


@pytest.fixture(scope="module")
def installed():
    pth = [Path(p) / f"{HOOK}.pth" for p in site.getsitepackages() if (Path(p) / f"{HOOK}.pth").is_file()]
    if not pth:
        pytest.fail(f"{HOOK}.pth is not in {site.getsitepackages()}: install the package (pip install -e .)")
    assert pth[0].read_text().strip() == f"import {HOOK}"
    return pth[0]


# ------------------------------------------------------------------ start-up: cheap, silent, switchable
def test_startup_imports_nothing_and_reaches_spawned_workers(installed, tmp_path):
    code = import_check(textwrap.dedent("""\
        import multiprocessing, sys
        heavy = ("torch", "numpy", "yaml", "espnet", "espnet2", "s3prl")
        print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in heavy))
        finder = [f for f in sys.meta_path if type(f).__name__ == "AutoloadFinder"]
        print("PENDING", sorted(finder[0].pending) if finder else None)
        CHECK = ("import sys\\n"
                 "f = [f for f in sys.meta_path if type(f).__name__ == 'AutoloadFinder']\\n"
                 "sys.exit(0 if f and sorted(f[0].pending) == ['espnet2.tasks.asr', 's3prl.hub'] else 3)\\n")
        if __name__ == "__main__":
            child = multiprocessing.get_context("spawn").Process(target=exec, args=(CHECK,))
            child.start()
            child.join()
            print("SPAWNED", child.exitcode)
        """))
    result = python(code, tmp_path)
    assert "HEAVY []" in result.stdout and "PENDING ['espnet2.tasks.asr', 's3prl.hub']" in result.stdout
    assert "SPAWNED 0" in result.stdout, result.stdout + result.stderr
    assert result.stderr == ""
    assert report(result.stdout) == {"ours": [], "status": {}, "finder": True}
    for off in ("0", "false", "off"):
        result = python(code, tmp_path, ESPNET_COMPRESS_AUTOLOAD=off)
        assert "PENDING None" in result.stdout and "SPAWNED 3" in result.stdout
        assert not report(result.stdout)["finder"]


def test_offline_switch_stops_nltk_downloads(installed, tmp_path):
    """ESPnet's task modules (and so s3prl.hub) import g2p_en, which calls nltk.download at import
    time; with ESPNET_COMPRESS_OFFLINE (set by the recipes) nothing is fetched or printed."""
    code = import_check("import g2p_en, nltk\nprint('DOWNLOAD', nltk.download('cmudict'))\n")
    result = python(code, tmp_path, ESPNET_COMPRESS_OFFLINE="1")
    assert "DOWNLOAD False" in result.stdout
    assert "nltk_data" not in result.stdout + result.stderr
    assert report(result.stdout)["status"] == {"nltk": "registered nltk.download off"}
    result = python("import nltk\nprint(nltk.download.__module__)", tmp_path)  # off by default
    assert result.stdout.strip() == "nltk.downloader"


def test_silent_when_frameworks_are_missing(installed, tmp_path):
    # s3prl and ESPnet not installed (blocked right after the hook's finder), or installed without
    # the watched modules (fake packages): the usual ModuleNotFoundError, nothing from the hook
    fake = tmp_path / "fake"
    for path in ("s3prl/__init__.py", "espnet2/__init__.py", "espnet2/tasks/__init__.py"):
        (fake / path).parent.mkdir(parents=True, exist_ok=True)
        (fake / path).write_text("")
    code = import_check(textwrap.dedent("""\
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        BLOCKED = sys.argv[1:]
        sys.meta_path.insert(1, Block())  # after the hook's finder
        for name in ("s3prl.hub", "espnet2.tasks.asr", "s3prl.nn"):
            try:
                __import__(name)
            except ModuleNotFoundError as exc:
                print("MISSING", exc.name)
        """))
    blocked = subprocess.run(
        [sys.executable, "-c", code, "s3prl", "espnet2"], capture_output=True, text=True, cwd=tmp_path,
        env=clean_env(ESPNET_COMPRESS_AUTOLOAD_DEBUG="1"), timeout=300,
    )
    fakes = python(code, tmp_path, PYTHONPATH=str(fake), ESPNET_COMPRESS_AUTOLOAD_DEBUG="1")
    assert blocked.returncode == 0 and blocked.stderr == "", blocked.stderr[-3000:]
    assert blocked.stdout.count("MISSING") == 3 and "MISSING s3prl\n" in blocked.stdout
    assert fakes.stderr == "" and "MISSING s3prl.hub\nMISSING espnet2.tasks.asr\nMISSING s3prl.nn\n" in fakes.stdout
    for result in (blocked, fakes):
        assert report(result.stdout) == {"ours": [], "status": {}, "finder": True}


def test_silent_when_registration_fails(installed, tmp_path):
    # an s3prl and an ESPnet of another shape (shadowing the real ones): registration fails, silently
    fake = tmp_path / "fake"
    for path, text in {
        "s3prl/__init__.py": "",
        "s3prl/hub.py": "def hubert(**kwargs):\n    return None\n",
        "espnet2/__init__.py": "",
        "espnet2/tasks/__init__.py": "",
        "espnet2/tasks/asr.py": "ENCODERS = {}\n",
    }.items():
        (fake / path).parent.mkdir(parents=True, exist_ok=True)
        (fake / path).write_text(text)
    code = import_check("import s3prl.hub, espnet2.tasks.asr\nprint('IMPORTED', s3prl.hub.hubert(), espnet2.tasks.asr.ENCODERS)\n")
    result = python(code, tmp_path, PYTHONPATH=str(fake))
    assert "IMPORTED None {}" in result.stdout
    assert result.stderr == "", result.stderr[-3000:]
    status = report(result.stdout)
    assert status["ours"] == [] and sorted(status["status"]) == ["espnet2.tasks.asr", "s3prl.hub"]
    assert all(value.startswith("failed: RuntimeError") for value in status["status"].values()), status
    # the debug switch says why
    result = python(code, tmp_path, PYTHONPATH=str(fake), ESPNET_COMPRESS_AUTOLOAD_DEBUG="1")
    assert "IMPORTED None {}" in result.stdout
    assert "[espnet_compress_autoload] s3prl.hub: registration failed" in result.stderr
    assert "[espnet_compress_autoload] espnet2.tasks.asr: registration failed" in result.stderr
    # a hub that looks right, and a failure deep inside s3prl_upstream.register(): still silent
    (fake / "s3prl" / "hub.py").write_text("def options():\n    return []\n")
    result = python(import_check("import s3prl.hub\nprint('IMPORTED', s3prl.hub.options())\n"), tmp_path, PYTHONPATH=str(fake))
    assert "IMPORTED []" in result.stdout and result.stderr == "", result.stderr[-3000:]
    status = report(result.stdout)
    assert "s3prl_upstream" in status["ours"] and status["status"]["s3prl.hub"].startswith("failed: ")


# ------------------------------------------------------------------ stock ESPnet / s3prl, real
def write_corpus(root: Path) -> Path:
    """mini_synth's layout in small: corpus/data/{train,dev,test}/{wav.scp,text,speech_shape} and
    a compact model in compressed/."""
    for split, voices in SPLITS.items():
        wavs, texts = {}, {}
        for v, voice in enumerate(voices):
            for i, text in enumerate(SENTENCES):
                utt = f"{split}{v}-{i:02d}"
                path = root / "corpus" / "wav" / f"{utt}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, synthesize(text, voice, speed=170).numpy(), 16000)
                wavs[utt], texts[utt] = str(path), text
        data = root / "corpus" / "data" / split
        write_scp(data / "wav.scp", wavs)
        write_scp(data / "text", texts)
        write_shape_file(data / "wav.scp", data / "speech_shape")
    torch.manual_seed(0)
    save_model(randomize_(SpeechEncoder(tiny_config(num_layers=2)), std=0.1), root / "compressed")
    return root


STOCK_SCRIPT = """\
import sys
import torch
from espnet2.asr.frontend.s3prl import S3prlFrontend

model_dir, out, data = sys.argv[1:]
wavs = torch.load(f"{out}/wavs.pt")
lengths = torch.tensor([16000, 11000, 4321])

# ESPnet's s3prl front-end, as an ASR config builds it
frontend = S3prlFrontend(frontend_conf={"upstream": "espnet_compress_local", "path_or_url": model_dir},
                         multilayer_feature=True).eval()
with torch.no_grad():
    feats, feats_lengths = frontend(wavs, lengths)
print("FRONTEND", frontend.output_size(), list(feats.shape), feats_lengths.tolist())

# s3prl's own upstream API
from s3prl.nn import S3PRLUpstream
assert "espnet_compress_local" in S3PRLUpstream.available_names()
upstream = S3PRLUpstream("espnet_compress_local", path_or_url=model_dir).eval()
with torch.no_grad():
    hidden, hidden_lengths = upstream(wavs, lengths)
torch.save({"hidden": hidden, "lengths": hidden_lengths}, f"{out}/upstream.pt")

# ESPnet's stock trainer with the example's encoder config (a dry run: builds the model, writes config.yaml)
from espnet2.bin.asr_train import main
from espnet2.tasks.asr import ASRTask
config = "%s"
main(cmd=["--config", config, "--encoder_conf", f"model_dir={model_dir}", "--output_dir", f"{out}/dry_encoder",
          "--token_list", f"{out}/tokens.txt", "--ngpu", "0", "--dry_run", "true",
          "--train_data_path_and_name_and_type", f"{data}/wav.scp,speech,sound",
          "--train_data_path_and_name_and_type", f"{data}/text,text,text", "--train_shape_file", f"{data}/speech_shape",
          "--valid_data_path_and_name_and_type", f"{data}/wav.scp,speech,sound",
          "--valid_data_path_and_name_and_type", f"{data}/text,text,text", "--valid_shape_file", f"{data}/speech_shape"])
model, args = ASRTask.build_model_from_file(f"{out}/dry_encoder/config.yaml", None, "cpu")
with torch.no_grad():
    encoded, encoded_lengths = model.eval().encode(wavs, lengths)
print("ENCODER", type(model.encoder).__name__, args.encoder, list(encoded.shape), encoded_lengths.tolist())
""" % (EXAMPLE / "conf" / "asr_compressed_encoder.yaml")

# (ESPnet's ASR task is not imported here: it adds 5-10 s; no finder, no encoder registration)
OFF_SCRIPT = """\
import sys
from espnet2.asr.frontend.s3prl import S3prlFrontend
from s3prl.nn import S3PRLUpstream
print("NAMES", "espnet_compress_local" in S3PRLUpstream.available_names())
try:
    S3prlFrontend(frontend_conf={"upstream": "espnet_compress_local", "path_or_url": sys.argv[1]})
except AssertionError:
    print("FRONTEND refused")
"""


class Job:
    def __init__(self, name, command, cwd, log_dir, **env):
        self.name = name
        self.stdout_path, self.stderr_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(command, cwd=cwd, env=clean_env(**env), stdout=out, stderr=err)

    def result(self, timeout=600):
        code = self.process.wait(timeout=timeout)
        stdout, stderr = self.stdout_path.read_text(), self.stderr_path.read_text()
        assert code == 0, f"{self.name}: exit {code}\n{stderr[-4000:]}\n{stdout[-2000:]}"
        return stdout


@pytest.fixture(scope="module")
def jobs(installed, tmp_path_factory):
    root = write_corpus(tmp_path_factory.mktemp("stock"))
    out = root / "out"
    out.mkdir()
    gen = torch.Generator().manual_seed(1)
    wavs = torch.randn(3, 16000, generator=gen) * 0.5
    for b, n in enumerate([16000, 11000, 4321]):
        wavs[b, n:] = 0
    torch.save(wavs, out / "wavs.pt")
    (out / "tokens.txt").write_text("\n".join(["<blank>", "<unk>", "<space>", *sorted(set("".join(SENTENCES)) - {" "}), "<sos/eos>"]) + "\n")
    model_dir, train = str(root / "compressed"), str(root / "corpus" / "data" / "train")
    started = {
        "recipe": Job("recipe", ["bash", str(EXAMPLE / "run.sh"), "--mini_synth_exp", str(root), "--exp", str(root / "recipe"),
                                 "--train_args", "--max_epoch 1", "--decode_args", "--beam_size 2"],
                      root, out, PYTHON=sys.executable),
        "stock": Job("stock", [sys.executable, "-c", import_check(STOCK_SCRIPT), model_dir, str(out), train], root, out),
        "off": Job("off", [sys.executable, "-c", import_check(OFF_SCRIPT), model_dir], root, out, ESPNET_COMPRESS_AUTOLOAD="0"),
    }
    yield root, started
    for job in started.values():
        if job.process.poll() is None:
            job.process.kill()
            job.process.wait()


def test_stock_s3prl_frontend_and_upstream(jobs):
    root, started = jobs
    stdout = started["stock"].result()
    assert "FRONTEND 32 [3, 50, 32] [50, 35, 14]" in stdout
    status = report(stdout)["status"]["s3prl.hub"]  # by the hook, or again by espnet_plugin.asr.register()
    assert status == "registered upstreams espnet_compress_local, espnet_compress, espnet_compress_onnx"
    # S3PRLUpstream("espnet_compress_local", DIR) == espnet_plugin.load_model(DIR).extract_hidden_states
    saved = torch.load(root / "out" / "upstream.pt")
    wavs = torch.load(root / "out" / "wavs.pt")
    with torch.no_grad():
        reference, frames = load_model(root / "compressed").eval().extract_hidden_states(wavs, torch.tensor([16000, 11000, 4321]))
    assert len(saved["hidden"]) == len(reference) == 3
    for ours, ref, ours_len in zip(saved["hidden"], reference, saved["lengths"]):
        assert ours_len.tolist() == [50, 35, 14]  # s3prl's length convention
        for b, n in enumerate(frames.tolist()):
            torch.testing.assert_close(ours[b, :n], ref[b, :n], rtol=1e-5, atol=1e-5)


def test_stock_asr_train_with_the_encoder_config(jobs):
    root, started = jobs
    stdout = started["stock"].result()
    assert "ENCODER CompressedEncoder espnet_compress [3, 49, 32] [49, 34, 13]" in stdout
    assert report(stdout)["status"]["espnet2.tasks.asr"] == "registered encoder espnet_compress"
    config = yaml.safe_load((root / "out" / "dry_encoder" / "config.yaml").read_text())
    assert config["encoder"] == "espnet_compress" and config["encoder_conf"]["model_dir"] == str(root / "compressed")


def test_switched_off(jobs):
    _, started = jobs
    stdout = started["off"].result()
    assert "NAMES False" in stdout and "FRONTEND refused" in stdout
    assert report(stdout) == {"ours": [], "status": {}, "finder": False}


def test_example_recipe_trains_and_decodes(jobs):
    # egs2/stock_espnet_example/run.sh: python -m espnet2.bin.asr_train (s3prl front-end config),
    # one epoch, then python -m espnet2.bin.asr_inference on the test set
    root, started = jobs
    stdout = started["recipe"].result()
    exp = root / "recipe"
    assert (exp / "1epoch.pth").is_file() and (exp / "valid.loss.best.pth").exists()
    config = yaml.safe_load((exp / "config.yaml").read_text())  # plain names: loads without the plugin
    assert config["frontend_conf"]["frontend_conf"] == {"upstream": "espnet_compress_local", "path_or_url": str(root / "compressed")}
    state = torch.load(exp / "1epoch.pth", map_location="cpu", weights_only=True)
    reference = load_model(root / "compressed").state_dict()
    upstream = {k.split("frontend.upstream.upstream.model.", 1)[1]: v for k, v in state.items() if k.startswith("frontend.upstream.upstream.model.")}
    assert upstream.keys() == reference.keys()  # the frozen compact model, unchanged
    assert all(torch.equal(upstream[k], reference[k]) for k in reference)
    hyps = dict((line.split(maxsplit=1) + [""])[:2] for line in (exp / "decode_test" / "1best_recog" / "text").read_text().splitlines())
    assert sorted(hyps) == sorted(f"test0-{i:02d}" for i in range(len(SENTENCES)))
    assert "CER " in stdout and (exp / "decode_test" / "cer.txt").is_file()
