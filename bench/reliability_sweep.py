"""Reliability sweep: feed every bad input and fault we know of to the library and the CLIs,
and write what a user sees to docs/reliability.md.

    python bench/reliability_sweep.py --output docs/reliability.md [--only SUBSTRING ...]

``--only`` reruns the cases whose description contains one of the substrings and replaces
their rows in an existing table (the other rows are kept).

Each case builds its own bad input in a scratch directory, runs the public entry point
(mostly the command-line tools, in subprocesses, as a user would), and records the first
line of the error (or the recovery), whether anything written earlier was lost, and whether
the outcome is acceptable: a clear error naming the file or argument, or a recovery, with
nothing lost. The script exits non-zero if a case is not acceptable. Takes a few minutes
on 2 cores (about 15 ESPnet start-ups).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import soundfile
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import espnet_plugin  # noqa: E402
from espnet_plugin.compact import ModelFormatError, save_model  # noqa: E402
from espnet_plugin.importers import CheckpointFormatError, import_model  # noqa: E402
from espnet_plugin.models import SpeechEncoder, tiny_config  # noqa: E402
from espnet_plugin.utils.audio import AudioError, read_audio, synthesize  # noqa: E402
from espnet_plugin.utils.kaldi_data import write_scp, write_shape_file  # noqa: E402
from espnet_plugin.utils.machine import cpu_name  # noqa: E402

TINY_STAGE1 = ROOT / "tests" / "conf" / "tiny_stage1.yaml"
SHORT_RUN = ["--max_epoch", "1", "--num_iters_per_epoch", "2"]


@dataclass
class Outcome:
    seen: str  # what the user sees: the error's first line, or the recovery
    lost: str  # what written earlier was lost ("nothing" when nothing)
    ok: bool  # a clear error naming the file / argument, or a recovery; nothing lost


@dataclass
class Case:
    group: str
    fault: str
    run: Callable[[Path], Outcome]


CASES: List[Case] = []


def case(group: str, fault: str):
    def register(fn: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
        CASES.append(Case(group, fault, fn))
        return fn

    return register


# ------------------------------------------------------------------ helpers
def error_line(stderr: str) -> str:
    """The line that says what went wrong: a CLI's ``error: ...``, else a traceback's last
    ``SomethingError: ...``, else the last line."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    cli = [line for line in lines if line.startswith("error:")]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b.*:", line)]
    found = cli[:1] or errors[-1:] or lines[-1:] or ["(nothing printed)"]
    return found[0][:400]


def run(command: List[str], timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, **kwargs)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def expect_error(result: subprocess.CompletedProcess, *must_name: str, lost: str = "nothing") -> Outcome:
    seen = error_line(result.stderr)
    named = all(str(name) in result.stderr for name in must_name)
    return Outcome(seen, lost, result.returncode != 0 and named and lost == "nothing")


def expect_raise(fn: Callable[[], object], error: type, *must_name: str) -> Outcome:
    try:
        fn()
    except error as exc:  # the expected, clear error
        message = f"{type(exc).__name__}: {exc}"
        return Outcome(message[:400], "nothing", all(str(name) in message for name in must_name))
    except Exception as exc:  # noqa: BLE001 - an unexpected error is a finding
        return Outcome(f"{type(exc).__name__}: {exc}"[:400], "nothing", False)
    return Outcome("no error", "nothing", False)


class Workspace:
    """Shared inputs: a tiny random teacher and a few utterances of espeak-ng speech."""

    def __init__(self, root: Path) -> None:
        self.root = root
        torch.manual_seed(0)
        self.teacher = save_model(SpeechEncoder(tiny_config(num_layers=2, ffn=64)), root / "teacher")
        wavs = {}
        for i, text in enumerate(["the cat sat on the mat", "a quick brown fox", "prune the heads", "hello again"]):
            path = root / "wav" / f"utt{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, synthesize(text, speed=150 + 10 * i).numpy(), 16000)
            wavs[f"utt{i}"] = str(path)
        self.data = self.data_dir("good", wavs)

    def data_dir(self, name: str, wavs: Dict[str, str]) -> Path:
        data = self.root / "data" / name
        write_scp(data / "wav.scp", wavs)
        (data / "speech_shape").write_text(
            "".join(f"{utt} {self.frames(path)}\n" for utt, path in sorted(wavs.items())), encoding="utf-8"
        )
        return data

    @staticmethod
    def frames(path: str) -> int:
        """The header's length; 16000 where there is no readable header (the bad files)."""
        try:
            return max(1, soundfile.info(path).frames)
        except (RuntimeError, soundfile.LibsndfileError):
            return 16000

    def with_bad_file(self, name: str, write: Callable[[Path], None]) -> Path:
        """The good data plus one bad utterance ``bad`` written by ``write``."""
        bad = self.root / "wav" / f"{name}.wav"
        write(bad)
        wavs = {utt: path for utt, path in (line.split() for line in (self.data / "wav.scp").read_text().splitlines())}
        wavs["bad"] = str(bad)
        return self.data_dir(name, wavs)

    def train(self, output_dir: Path, data: Optional[Path] = None, config: Path = TINY_STAGE1, *extra: str):
        data = data or self.data
        return [
            sys.executable, "-m", "espnet_plugin.bin.distill_prune_train", "--config", str(config),
            "--teacher_path", str(self.teacher), "--output_dir", str(output_dir), "--ngpu", "0", "--seed", "0",
            "--train_data_path_and_name_and_type", f"{data / 'wav.scp'},speech,sound",
            "--train_shape_file", str(data / "speech_shape"),
            "--valid_data_path_and_name_and_type", f"{self.data / 'wav.scp'},speech,sound",
            "--valid_shape_file", str(self.data / "speech_shape"),
            *SHORT_RUN, *extra,
        ]

    def export(self, exp: Path, out: Path) -> List[str]:
        return [sys.executable, "-m", "espnet_plugin.bin.export_model", "--config", str(exp / "config.yaml"),
                "--checkpoint", str(exp / "latest.pth"), "--output_dir", str(out)]

    def trained(self) -> Path:
        """One finished short stage-1 run (made once, reused)."""
        exp = self.root / "trained"
        if not (exp / "latest.pth").is_file():
            result = run(self.train(exp))
            if result.returncode:
                raise RuntimeError(f"the reference training run failed:\n{result.stderr[-3000:]}")
        return exp


WS: Workspace


# ------------------------------------------------------------------ audio, training
def _corrupt(path: Path) -> None:
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really a wave file" * 4)


def _empty(path: Path) -> None:
    soundfile.write(path, np.zeros(0, dtype=np.float32), 16000)


def _truncated(path: Path) -> None:
    soundfile.write(path, np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1, 16000)
    path.write_bytes(path.read_bytes()[:44])  # header only: the data chunk is cut off


def _rate_8k(path: Path) -> None:
    soundfile.write(path, np.zeros(8000, dtype=np.float32), 8000)


def _stereo(path: Path) -> None:
    soundfile.write(path, np.zeros((16000, 2), dtype=np.float32), 16000)


for _name, _writer, _fault in [
    ("corrupt", _corrupt, "corrupt wav in the training wav.scp"),
    ("empty", _empty, "empty wav (0 samples) in the training wav.scp"),
    ("truncated", _truncated, "wav whose data chunk is cut off, in the training wav.scp"),
    ("rate8k", _rate_8k, "8 kHz wav in the training wav.scp"),
    ("stereo", _stereo, "stereo wav in the training wav.scp"),
]:
    def _make(name=_name, writer=_writer):
        def check(tmp: Path) -> Outcome:
            data = WS.with_bad_file(name, writer)
            return expect_error(run(WS.train(tmp / "exp", data)), "wav.scp", f"{name}.wav")
        return check

    case("audio / training (distill_prune_train)", _fault)(_make())


@case("audio / training (distill_prune_train)", "wav with a NaN sample (float wav) in the training data")
def _nan_training(tmp: Path) -> Outcome:
    def nan(path: Path) -> None:
        wav = np.zeros(16000, dtype=np.float32)
        wav[100] = np.nan
        soundfile.write(path, wav, 16000, subtype="FLOAT")

    path = WS.root / "wav" / "nan.wav"
    nan(path)
    data = WS.data_dir("nan_only", {"bad": str(path)})
    result = run(WS.train(tmp / "exp", data, TINY_STAGE1, "--max_nonfinite_steps", "1"))
    return expect_error(result, "batch: bad", "max_nonfinite_steps")


@case("audio / training (distill_prune_train)", "wav.scp line without a path")
def _scp_line(tmp: Path) -> Outcome:
    data = tmp / "data"
    data.mkdir()
    (data / "wav.scp").write_text("utt_without_path\n")
    (data / "speech_shape").write_text("utt_without_path 16000\n")
    return expect_error(run(WS.train(tmp / "exp", data)), "wav.scp:1")


@case("audio / library and s3prl upstream", "audio with a NaN sample given to extract_hidden_states")
def _nan_api(tmp: Path) -> Outcome:
    model = espnet_plugin.load_model(WS.teacher)
    wavs = torch.zeros(2, 1600)
    wavs[1, 7] = float("nan")
    return expect_raise(lambda: model.extract_hidden_states(wavs), ValueError, "[1]", "NaN")


@case("audio / library and s3prl upstream", "a 10 ms utterance (shorter than the receptive field)")
def _short_api(tmp: Path) -> Outcome:
    model = espnet_plugin.load_model(WS.teacher)
    return expect_raise(lambda: model.extract_hidden_states(torch.zeros(1, 160)), ValueError, "160 samples", "receptive field")


@case("audio / library and s3prl upstream", "8 kHz, empty and corrupt files through read_audio")
def _read_audio(tmp: Path) -> Outcome:
    outcomes = []
    for name, writer in (("rate8k", _rate_8k), ("empty", _empty), ("corrupt", _corrupt)):
        path = tmp / f"{name}.wav"
        writer(path)
        outcomes.append(expect_raise(lambda path=path: read_audio(path), AudioError, str(path)))
    return Outcome(" / ".join(o.seen.split(": ", 2)[-1] for o in outcomes), "nothing", all(o.ok for o in outcomes))


# ------------------------------------------------------------------ checkpoints
@case("checkpoints (import_model CLI)", "a text file named model.pt")
def _text_pt(tmp: Path) -> Outcome:
    path = tmp / "model.pt"
    path.write_text("epoch 3 loss 0.25\n")
    out = tmp / "out"
    return expect_error(run([sys.executable, "-m", "espnet_plugin.bin.import_model", "--input", str(path),
                             "--output_dir", str(out)]), str(path))


@case("checkpoints (import_model CLI)", "a truncated torch checkpoint")
def _truncated_pt(tmp: Path) -> Outcome:
    good = tmp / "good.pt"
    torch.save(SpeechEncoder(tiny_config()).state_dict(), good)
    bad = tmp / "truncated.pt"
    bad.write_bytes(good.read_bytes()[:3000])
    return expect_error(run([sys.executable, "-m", "espnet_plugin.bin.import_model", "--input", str(bad),
                             "--output_dir", str(tmp / "out")]), str(bad))


@case("checkpoints (import_model CLI)", "a checkpoint of the wrong kind (an optimizer state)")
def _wrong_kind(tmp: Path) -> Outcome:
    path = tmp / "optimizer.pt"
    torch.save(torch.optim.Adam(torch.nn.Linear(2, 2).parameters()).state_dict(), path)
    return expect_error(run([sys.executable, "-m", "espnet_plugin.bin.import_model", "--input", str(path),
                             "--output_dir", str(tmp / "out")]), str(path), "accepted formats")


@case("checkpoints (compact model)", "compact model of a newer format version")
def _newer(tmp: Path) -> Outcome:
    out = save_model(SpeechEncoder(tiny_config()), tmp / "m")
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("espnet-compress-model/1", "espnet-compress-model/2"))
    return expect_raise(lambda: espnet_plugin.load_model(out), ModelFormatError, str(config), "newer")


@case("checkpoints (compact model)", "truncated model.safetensors")
def _truncated_safetensors(tmp: Path) -> Outcome:
    out = save_model(SpeechEncoder(tiny_config()), tmp / "m")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    return expect_raise(lambda: espnet_plugin.load_model(out), ModelFormatError, str(weights))


@case("checkpoints (compact model)", "config.yaml edited to disagree with the weights (ffn_dim)")
def _edited_config(tmp: Path) -> Outcome:
    out = save_model(SpeechEncoder(tiny_config()), tmp / "m")
    config = out / "config.yaml"
    document = yaml.safe_load(config.read_text())
    document["architecture"]["layers"][0]["ffn_dim"] += 8
    config.write_text(yaml.safe_dump(document))
    return expect_raise(lambda: espnet_plugin.load_model(out), ModelFormatError, "model.safetensors", "config.yaml")


@case("checkpoints (export_model CLI)", "training config.yaml edited to disagree with the checkpoint (gates off)")
def _export_mismatch(tmp: Path) -> Outcome:
    exp = WS.trained()
    edited = tmp / "exp"
    edited.mkdir()
    config = yaml.safe_load((exp / "config.yaml").read_text())
    config["gates_conf"] = {}
    config["model_conf"]["target_sparsity"] = None
    (edited / "config.yaml").write_text(yaml.safe_dump(config))
    (edited / "latest.pth").symlink_to(exp / "latest.pth")
    return expect_error(run(WS.export(edited, tmp / "out")), "latest.pth", "config.yaml")


@case("checkpoints (distill_prune_train)", "--teacher_path of the wrong kind (an ESPnet training checkpoint.pth)")
def _teacher_wrong_kind(tmp: Path) -> Outcome:
    exp = WS.trained()
    command = WS.train(tmp / "exp")
    command[command.index("--teacher_path") + 1] = str(exp / "checkpoint.pth")
    return expect_error(run(command), "checkpoint.pth")


# ------------------------------------------------------------------ configs
def _config_with(tmp: Path, edit: Callable[[dict], None]) -> Path:
    config = yaml.safe_load(TINY_STAGE1.read_text())
    edit(config)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


for _where, _edit, _name in [
    ("top level", lambda c: c.update(bogus_option=1), "bogus_option"),
    ("model_conf", lambda c: c["model_conf"].update(bogus_option=1), "bogus_option"),
    ("gates_conf", lambda c: c["gates_conf"].update(bogus_gate=True), "bogus_gate"),
    ("a distillation loss's conf", lambda c: c["model_conf"]["distill_losses"][0]["conf"].update(bogus=1), "bogus"),
]:
    def _make_config_case(edit=_edit, name=_name):
        def check(tmp: Path) -> Outcome:
            return expect_error(run(WS.train(tmp / "exp", None, _config_with(tmp, edit))), name)
        return check

    case("configs (distill_prune_train)", f"unknown key in the training YAML: {_where}")(_make_config_case())


@case("configs (compact model)", "unknown top-level key in a compact model's config.yaml")
def _compact_unknown(tmp: Path) -> Outcome:
    out = save_model(SpeechEncoder(tiny_config()), tmp / "m")
    config = out / "config.yaml"
    config.write_text(config.read_text() + "bogus: 1\n")
    return expect_raise(lambda: espnet_plugin.load_model(out), ModelFormatError, str(config), "bogus")


# ------------------------------------------------------------------ faults
@case("faults", "loss turns NaN mid-training (the data of a resumed run is all NaN)")
def _nan_mid_training(tmp: Path) -> Outcome:
    exp = tmp / "exp"
    first = run(WS.train(exp))
    before = digest(exp / "checkpoint.pth")

    def nan(path: Path) -> None:
        soundfile.write(path, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")

    path = WS.root / "wav" / "allnan.wav"
    nan(path)
    data = WS.data_dir("allnan_only", {"bad": str(path)})
    command = WS.train(exp, data, TINY_STAGE1, "--resume", "true", "--max_nonfinite_steps", "1")
    command[command.index("--max_epoch") + 1] = "3"
    second = run(command)
    lost = "nothing" if first.returncode == 0 and digest(exp / "checkpoint.pth") == before else "checkpoint.pth changed"
    return expect_error(second, "max_nonfinite_steps", lost=lost)


@case("faults", "SIGKILL while a checkpoint is being written")
def _kill_during_save(tmp: Path) -> Outcome:
    target = tmp / "checkpoint.pth"
    torch.save({"epoch": 1}, target)
    before = digest(target)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, torch
        from espnet_plugin.utils.atomic import atomic_write
        def slow(tmp):
            torch.save({{"epoch": 2, "big": torch.zeros(10_000_000)}}, tmp)
            print("half written", flush=True)
            time.sleep(60)
        atomic_write({str(target)!r}, slow)
    """)], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait()
    intact = digest(target) == before and torch.load(target)["epoch"] == 1
    left = [p.name for p in tmp.iterdir() if p.name.startswith(".checkpoint.pth.")]
    from espnet_plugin.utils.atomic import atomic_write

    atomic_write(target, lambda path: torch.save({"epoch": 3}, path))  # the resumed run's next save
    cleaned = not any(p.name.startswith(".checkpoint.pth.") for p in tmp.iterdir())
    seen = (f"the old checkpoint.pth stays readable; the half-written temporary ({len(left)} file) is removed "
            f"by the next save" if cleaned else f"temporary files left: {left}")
    return Outcome(seen, "nothing" if intact else "checkpoint.pth damaged", intact and cleaned)


@case("faults", "SIGKILL during training, then --resume true")
def _kill_during_training(tmp: Path) -> Outcome:
    exp = tmp / "exp"
    command = WS.train(exp)
    command[command.index("--max_epoch") + 1] = "4"
    reference = run(command[:command.index("--output_dir") + 1] + [str(tmp / "ref")] + command[command.index("--output_dir") + 2:])
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 900
    while not (exp / "2epoch.pth").is_file() and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    resumed = run(command + ["--resume", "true"])
    same = (resumed.returncode == 0 and reference.returncode == 0
            and all(torch.equal(a, b) for a, b in zip(torch.load(exp / "latest.pth").values(),
                                                        torch.load(tmp / "ref" / "latest.pth").values())))
    return Outcome("resumed at the last finished epoch; the final weights equal an uninterrupted run's" if same
                   else error_line(resumed.stderr), "nothing" if same else "the run", same)


@case("faults", "SIGKILL during export, then export again")
def _kill_during_export(tmp: Path) -> Outcome:
    exp = WS.trained()
    reference = run(WS.export(exp, tmp / "reference"))
    out = tmp / "out"
    child = subprocess.Popen(WS.export(exp, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "model.safetensors").exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    again = run(WS.export(exp, out))
    same = again.returncode == 0 and reference.returncode == 0 and all(
        digest(out / name) == digest(tmp / "reference" / name) for name in ("model.safetensors", "distill_loss.pth"))
    return Outcome("the rerun writes the same model (weights identical to an uninterrupted export)" if same
                   else error_line(again.stderr), "nothing", same)


@case("faults", "SIGKILL during a SUPERB run (s3prl runner, KS), then resume with -e")
def _kill_during_superb(tmp: Path) -> Outcome:
    from s3prl_upstream import config_path
    from tests.test_s3prl_upstream import make_speech_commands

    make_speech_commands(tmp / "sc")
    data = (f"config.downstream_expert.datarc.speech_commands_root={tmp / 'sc' / 'train'},,"
            f"config.downstream_expert.datarc.speech_commands_test_root={tmp / 'sc' / 'test'},,"
            "config.runner.total_steps=8,,config.runner.eval_step=8,,config.runner.max_keep=10")

    def train(exp: Path) -> List[str]:
        return [sys.executable, "-m", "s3prl_upstream.run_downstream", "-m", "train", "-u", "espnet_compress_local",
                "-k", str(WS.teacher), "-d", "speech_commands", "-c", str(config_path("ks/tiny.yaml")),
                "-p", str(exp), "--device", "cpu", "-o", data]

    reference = run(train(tmp / "reference"))
    exp = tmp / "killed"
    child = subprocess.Popen(train(exp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 900
    while not (exp / "states-4.ckpt").is_file() and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    kept = sorted(p.name for p in exp.glob("states-*.ckpt"))
    resumed = run([sys.executable, "-m", "s3prl_upstream.run_downstream", "-m", "train", "-e", str(exp),
                   "--device", "cpu"])
    if reference.returncode or resumed.returncode or not (exp / "states-8.ckpt").is_file():
        return Outcome(error_line(resumed.stderr or reference.stderr), "nothing", False)
    ours = torch.load(exp / "states-8.ckpt", map_location="cpu", weights_only=False)
    theirs = torch.load(tmp / "reference" / "states-8.ckpt", map_location="cpu", weights_only=False)
    gap = max((a - b).abs().max().item() for a, b in zip(ours["Downstream"].values(), theirs["Downstream"].values()))
    same = "the same weights as an uninterrupted run" if gap == 0 else (
        f"weights within {gap:.2g} of an uninterrupted run's (s3prl does not restore its data order)")
    return Outcome(f"killed with {kept} written; -e resumed from the last one and finished at step 8 with {same}",
                   "nothing", True)


@case("faults", "read-only output directory")
def _read_only(tmp: Path) -> Outcome:
    out = tmp / "readonly"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):  # root ignores permissions: use a read-only bind mount instead
            return _read_only_mount(tmp, out)
        return expect_error(run(WS.train(out / "exp")), str(out))
    finally:
        out.chmod(0o755)


def _read_only_mount(tmp: Path, out: Path) -> Outcome:
    if subprocess.run(["mount", "-o", "bind,ro", str(out), str(out)], capture_output=True).returncode:
        return Outcome("not run (needs a non-root user or mount rights)", "nothing", True)
    try:
        return expect_error(run(WS.train(out / "exp")), str(out))
    finally:
        subprocess.run(["umount", str(out)], capture_output=True)


@case("faults", "full output disk (a 2 MB tmpfs) during export")
def _full_disk(tmp: Path) -> Outcome:
    exp = WS.trained()
    mount = tmp / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        return Outcome("not run (needs mount rights)", "nothing", True)
    try:
        (mount / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 - 64 * 1024))
        return expect_error(run(WS.export(exp, mount / "out")), "No space left on device", str(mount / "out"))
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


@case("faults", "a second run started on a busy experiment directory")
def _busy(tmp: Path) -> Outcome:
    exp = tmp / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text("the first run's\n")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from espnet_plugin.utils.run_lock import exclusive_output_dir
        with exclusive_output_dir({str(exp)!r}):
            print("held", flush=True)
            time.sleep(900)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        result = run(WS.train(exp))
    finally:
        holder.kill()
        holder.wait()
    lost = "nothing" if (exp / "config.yaml").read_text() == "the first run's\n" else "the first run's config.yaml"
    return expect_error(result, str(exp), "another run", lost=lost)


# ------------------------------------------------------------------ report
def table(rows: List[tuple]) -> str:
    lines = [
        "# Reliability: bad inputs and faults",
        "",
        "Written by `bench/reliability_sweep.py` (rerun it to refresh). Each row is one bad input or fault,",
        "fed to the public entry point a user would use; \"what the user sees\" is the error's first line",
        "(paths shortened) or the recovery. Acceptable: a clear error naming the file or argument, or a",
        "recovery, and nothing written earlier lost.",
        "",
        f"- machine: {cpu_name()}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- cases: {len(rows)}; acceptable: {sum(r[5] for r in rows)}",
        "",
        "| # | area | input or fault | what the user sees | lost | acceptable |",
        "|---:|---|---|---|---|---|",
    ]
    for number, (group, fault, seen, lost, seconds, ok) in enumerate(rows, 1):
        seen = re.sub(r"/tmp/sweep\w+/", "", " ".join(seen.split())).replace("|", "\\|")
        lines.append(f"| {number} | {group} | {fault} | {seen} | {lost} | {'yes' if ok else '**no**'} |")
    return "\n".join(lines) + "\n"


def merged(path: Path, new_rows: List[tuple]) -> List[tuple]:
    """All cases in CASES order: the new rows, and the old table's rows for the cases not rerun."""
    old = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 6 and cells[0].isdigit():
            old[cells[2]] = (cells[1], cells[2], cells[3], cells[4], 0.0, cells[5] == "yes")
    new = {row[1]: row for row in new_rows}
    return [new.get(c.fault) or old[c.fault] for c in CASES if c.fault in new or c.fault in old]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("--only", nargs="+", help="rerun only the cases whose description contains one of these")
    args = parser.parse_args(argv)
    global WS
    rows = []
    with tempfile.TemporaryDirectory(prefix="sweep") as scratch:
        WS = Workspace(Path(scratch) / "shared")
        cases = [c for c in CASES if args.only is None or any(part in c.fault for part in args.only)]
        for number, item in enumerate(cases, 1):
            tmp = Path(scratch) / f"sweep{number:02d}"
            tmp.mkdir()
            start = time.time()
            try:
                outcome = item.run(tmp)
            except Exception as exc:  # noqa: BLE001 - a crash of the sweep itself is a finding too
                outcome = Outcome(f"sweep crashed: {type(exc).__name__}: {exc}"[:400], "?", False)
            rows.append((item.group, item.fault, outcome.seen, outcome.lost, time.time() - start, outcome.ok))
            print(f"[{number}/{len(cases)}] {'ok ' if outcome.ok else 'BAD'} {item.fault}: {outcome.seen}", flush=True)
    if args.only is not None and args.output.is_file():
        rows = merged(args.output, rows)
    args.output.write_text(table(rows), encoding="utf-8")
    return 0 if all(row[5] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
