"""A whole short stage-1 run through ``distill_prune_train`` (ESPnet's trainer, data loading,
validation and checkpoints included): full size against shrinking (+ skipping in fp32) + fused
AdamW.

    python bench/bench_train_run.py --output docs/benchmarks.md [--baseline DIR] [--pairs N] [--use_amp] [--quick]

The run the issue measured the official code against (200 steps, batch 4 x 1 s, HuBERT Base
teacher and gated student, conv channels + heads + FFN units, L1 + cosine on layers
0/4/8/12, the MAC sparsity target 0.75 ramped over 40 steps, fp32), written as two ESPnet
configs that differ only in the speed settings: the full-size run keeps torch's default AdamW
as the official code does; ours sets ``model_conf.shrink_threshold`` / ``shrink_interval`` /
``skip_closed_units`` (0 in bf16, see ``OURS_BF16``) and ``optim_conf.fused``. Both runs get
the same seed and batches.
``--baseline DIR`` adds the full-size run of another checkout (e.g. ``git worktree add DIR
<commit>``): the code before a speed change, whose whole run the official code's was measured
against. ``--use_amp`` runs both under ESPnet's ``--use_amp`` (bf16 autocast on a CPU, see
``espnet_plugin/tasks/trainer.py``), the precision the official recipe trains in. Writes its
own section of the benchmarks file (between ``<!-- bench_train_run:start/end -->``, or
``bench_train_run_bf16`` with ``--use_amp``).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import soundfile
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import run_lines, markers, write_section  # noqa: E402
from espnet_plugin.compact import save_model  # noqa: E402
from espnet_plugin.models import SpeechEncoder, hubert_base_config, tiny_config  # noqa: E402
from espnet_plugin.utils.kaldi_data import write_scp, write_shape_file  # noqa: E402

MARK = "bench_train_run"
FULL = "full size"
OURS = {"shrink_threshold": 0.05, "shrink_interval": 10, "skip_closed_units": 0.5}
# In bf16 skipping costs more than it saves: the gathers, casts and scatter-adds of the open
# units' weights are memory passes that bf16 does not speed up, while its GEMMs run ~2x faster
# (two students trained in lockstep, steps 41-200: 146.8 s without skipping, 150.4 s with 0.5)
OURS_BF16 = {**OURS, "skip_closed_units": 0.0}


def ours_settings(args: argparse.Namespace) -> Dict[str, object]:
    return OURS_BF16 if args.use_amp else OURS


def ours_name(args: argparse.Namespace) -> str:
    skipping = ours_settings(args)["skip_closed_units"] > 0
    return f"shrinking{' + skipping' if skipping else ''} + fused AdamW"


def mark(args: argparse.Namespace) -> str:
    """The section of the benchmarks file: one per precision."""
    return f"{MARK}_bf16" if args.use_amp else MARK


def write_data(root: Path, count: int, seed: int) -> Path:
    """``count`` utterances of 1 s of noise as a Kaldi-style data dir (wav.scp, speech_shape)."""
    gen = torch.Generator().manual_seed(seed)
    entries = {}
    for i in range(count):
        path = root / "wav" / f"utt{i:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, (torch.randn(16000, generator=gen) * 0.1).numpy(), 16000)
        entries[f"utt{i:03d}"] = str(path)
    write_scp(root / "wav.scp", entries)
    write_shape_file(root / "wav.scp", root / "speech_shape")
    return root


def config(args: argparse.Namespace, ours: bool) -> Dict[str, object]:
    layers = 12 if not args.quick else 2
    model_conf: Dict[str, object] = {
        "distill_losses": [{"name": "layer_to_layer",
                            "conf": {"layer_map": [[i, i] for i in range(0, layers + 1, layers // 3 or 1)]}}],
        "target_sparsity": 0.75, "sparsity_metric": "macs", "sparsity_warmup_steps": 40,
    }
    optim_conf: Dict[str, object] = {"lr": 2e-4, "weight_decay": 0.0}
    if ours:
        model_conf.update(ours_settings(args))
        optim_conf["fused"] = True
    return {
        "gates_conf": {"conv_channels": True, "attention_heads": True, "ffn_units": True},
        "model": "distill_prune", "model_conf": model_conf,
        "optim": "adamw", "optim_conf": optim_conf, "gate_lr": args.gate_lr, "lambda_lr": args.lambda_lr,
        "grad_clip": 10, "batch_type": "sorted", "batch_size": 4,
        "num_iters_per_epoch": args.steps // args.epochs, "max_epoch": args.epochs, "num_workers": 0,
        "keep_nbest_models": 1, "best_model_criterion": [["valid", "distill", "min"]],
        "use_tensorboard": False, "use_matplotlib": False, "use_amp": args.use_amp,
    }


def trains_bf16_on_cpu(checkout: Path) -> bool:
    """Whether ``checkout``'s trainer turns ``--use_amp`` into CPU bf16 autocast."""
    trainer = checkout / "espnet_plugin" / "tasks" / "trainer.py"
    return trainer.exists() and "def cpu_autocast" in trainer.read_text(encoding="utf-8")


def checkout_env(code: Optional[Path]) -> Tuple[Dict[str, str], Path]:
    """The environment and working directory in which ``python -m`` imports the ``espnet_plugin``
    of ``code`` (of this checkout without one). ``python -m`` puts the working directory first
    on ``sys.path``, ahead of ``PYTHONPATH``: a baseline started from this checkout's root would
    run this checkout's code."""
    checkout = (code if code is not None else REPO).resolve()
    return dict(os.environ, PYTHONPATH=str(checkout)), checkout


def warm_up(code: Optional[Path]) -> None:
    """Import the task once (a cold first start takes ~2x) and check whose code a run imports."""
    env, cwd = checkout_env(code)
    done = subprocess.run(
        [sys.executable, "-c", "import espnet_plugin.tasks.distill_prune, espnet_plugin; print(espnet_plugin.__file__)"],
        env=env, cwd=cwd, capture_output=True, text=True, check=True,
    )
    imported = Path(done.stdout.strip().splitlines()[-1]).resolve()
    if cwd not in imported.parents:
        raise RuntimeError(f"a run meant for {cwd} imports {imported}")


def train(root: Path, name: str, conf: Dict[str, object], code: Optional[Path] = None) -> Dict[str, object]:
    """One run through distill_prune_train; ``code``: a checkout whose ``espnet_plugin`` runs it."""
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(conf))
    command = [
        sys.executable, "-m", "espnet_plugin.bin.distill_prune_train", "--config", str(path),
        "--teacher_path", str(root / "teacher"), "--output_dir", str(root / name), "--ngpu", "0", "--seed", "0",
        "--train_data_path_and_name_and_type", f"{root / 'train' / 'wav.scp'},speech,sound",
        "--train_shape_file", str(root / "train" / "speech_shape"),
        "--valid_data_path_and_name_and_type", f"{root / 'valid' / 'wav.scp'},speech,sound",
        "--valid_shape_file", str(root / "valid" / "speech_shape"),
    ]
    env, cwd = checkout_env(code)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name}: distill_prune_train failed:\n{done.stderr[-3000:]}")
    last = [line for line in done.stderr.splitlines() if "epoch results:" in line][-1]
    train_part, valid_part = last.split("[valid]")

    def value(part: str, key: str) -> float:
        return float(re.search(rf"\b{key}=([-\d.e+]+)", part).group(1))

    batches = re.search(r"\[train\] mini-batch sizes summary: N-batch=\d+, (.*)", done.stderr).group(1)
    phases = phase_seconds(done.stderr, conf["num_iters_per_epoch"], seconds)
    shrinks = re.findall(r"closed units removed from the student, ([\d.]+) M params left", done.stderr)
    return {
        "seconds": seconds, "train_time": value(train_part, "train_time"),
        "sparsity": value(train_part, "expected_sparsity"), "distill": value(train_part, "distill"),
        "valid_distill": value(valid_part, "distill"), "shrinks": len(shrinks),
        "params_left": float(shrinks[-1]) if shrinks else None, "batches": batches, "phases": phases,
    }


PHASES = ("start-up", "steps 1-40", "steps 41-100", "steps 101-", "rest of the loop")
STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def phase_seconds(log: str, steps_per_epoch: int, wall: float) -> Dict[str, float]:
    """Where a run's wall time went, from ESPnet's log: the start-up (imports, building the
    models: the wall time before the first epoch starts), the training steps of the sparsity
    ramp (1-40), while the gates close (41-100) and after (ESPnet's train_time per logged
    interval times its steps), and the rest of the training loop (data loading, validation,
    checkpoints, shrinking)."""
    def stamp(pattern: str) -> datetime.datetime:
        match = re.search(STAMP + r".*" + pattern, log)
        return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")

    loop = (stamp(r"The training was finished") - stamp(r"1/\d+epoch started")).total_seconds()
    phases = dict.fromkeys(PHASES, 0.0)
    for epoch, first, last, step_time in re.findall(
            r"(\d+)epoch:train:(\d+)-(\d+)batch: .*?\btrain_time=([\d.]+)", log):
        step = (int(epoch) - 1) * steps_per_epoch + int(last)
        name = "steps 1-40" if step <= 40 else "steps 41-100" if step <= 100 else "steps 101-"
        phases[name] += float(step_time) * (int(last) - int(first) + 1)
    phases["start-up"] = wall - loop
    phases["rest of the loop"] = loop - sum(phases[name] for name in PHASES[1:4])
    return phases


def section(args: argparse.Namespace, results: Dict[str, Dict[str, object]], references: Dict[str, str],
            full_params: float) -> str:
    """``references``: the run each run's time is divided by."""
    rows: List[str] = []
    for name, r in results.items():
        params = r["params_left"] if r["params_left"] is not None else full_params
        rows.append(
            f"| {name} | {r['seconds']:.0f} | {r['seconds'] / results[references[name]]['seconds']:.2f}x | "
            f"{r['train_time']:.3f} | {params:.2f} | {r['sparsity']:.4f} | {r['distill']:.4f} | "
            f"{r['valid_distill']:.4f} |"
        )
    options = " ".join(f"{k}: {v}" for k, v in ours_settings(args).items())
    ratios = [results[name]["seconds"] / results[ref]["seconds"] for name, ref in references.items() if name != ref]
    summary = []
    if args.pairs > 1:
        against = "the baseline" if args.baseline is not None else "the full-size run"
        summary = ["", f"Ours / {against}, pair by pair: {', '.join(f'{r:.3f}' for r in ratios)}; "
                       f"median **{statistics.median(ratios):.3f}**."]
    return "\n".join([
        markers(mark(args))[0],
        f"## A whole stage-1 run through `distill_prune_train`{', bf16 (`--use_amp`)' if args.use_amp else ''} "
        "(`bench/bench_train_run.py`)",
        "",
        *run_lines("bf16 autocast (`--use_amp true`)" if args.use_amp else "fp32"),
        f"- command: `python bench/bench_train_run.py --steps {args.steps} --epochs {args.epochs}"
        f"{' --baseline DIR' if args.baseline else ''}{f' --pairs {args.pairs}' if args.pairs > 1 else ''}"
        f"{' --use_amp' if args.use_amp else ''}`",
        f"- run: ESPnet's trainer, {args.steps} steps ({args.epochs} epochs, a validation batch and a checkpoint "
        "after each), HuBERT Base teacher and gated student (conv channels, heads, FFN units), random weights, "
        f"L1 + cosine on layers 0/4/8/12, AdamW (lr 0.0002, gates {args.gate_lr}, multipliers {args.lambda_lr}, "
        "weight decay 0), gradient clipping 10, batch 4 x 1 s of noise, MAC sparsity target 0.75 ramped over "
        f"40 steps; ours: `model_conf` {options} and `optim_conf.fused: true`",
        f"- mini-batch sizes (ESPnet's summary): {next(iter(results.values()))['batches']}",
        "",
        "| run | wall s (process) | vs reference | train s per step (ESPnet's train_time, last epoch) "
        "| student params at the end (M) | expected MAC sparsity, last epoch | distill loss, last epoch "
        "| valid distill loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        *summary,
        "",
        "Where each run's wall time went, in seconds (from ESPnet's log: the start-up before the first epoch, "
        "ESPnet's train_time of the steps in each phase of the sparsity schedule, and the rest of the training "
        "loop: data loading, validation, checkpoints, shrinking):",
        "",
        "| run | " + " | ".join(PHASES) + " |",
        "|---|" + "---:|" * len(PHASES),
        *[f"| {name} | " + " | ".join(f"{r['phases'][p]:.0f}" for p in PHASES) + " |" for name, r in results.items()],
        markers(mark(args))[1],
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--gate_lr", type=float, default=0.2)
    parser.add_argument("--lambda_lr", type=float, default=0.05)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of an earlier commit: its full-size run is added as a row")
    parser.add_argument("--use_amp", action="store_true",
                        help="both runs under ESPnet's --use_amp (bf16 autocast on a CPU)")
    parser.add_argument("--pairs", type=int, default=1,
                        help="N alternating pairs of runs instead of one run each (a machine whose speed drifts "
                             "over minutes compares fairly only pair by pair): the baseline's full-size run, or "
                             "without --baseline this checkout's, against ours")
    parser.add_argument("--quick", action="store_true", help="a tiny teacher: checks the script, times nothing")
    args = parser.parse_args()
    if args.use_amp and args.baseline is not None and not trains_bf16_on_cpu(args.baseline):
        parser.error(f"--use_amp with --baseline {args.baseline}: its code trains in fp32 on a CPU whatever "
                     "--use_amp says (CPU autocast came with espnet_plugin/tasks/trainer.py's cpu_autocast)")
    runs = [(FULL, False, None, FULL), (ours_name(args), True, None, FULL)]  # name, ours?, code, reference
    base, code = FULL, None
    if args.baseline is not None:
        commit = subprocess.run(["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        base, code = f"full size, code of {commit}", args.baseline.resolve()
        runs.insert(0, (base, False, code, FULL))
    if args.pairs > 1:
        runs = [run for k in range(1, args.pairs + 1)
                for run in ((f"{base} #{k}", False, code, f"{base} #{k}"),
                            (f"{ours_name(args)} #{k}", True, None, f"{base} #{k}"))]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root / "train", 32, seed=0)
        write_data(root / "valid", 4, seed=1)
        torch.manual_seed(0)
        teacher = SpeechEncoder(tiny_config(num_layers=2) if args.quick else hubert_base_config())
        save_model(teacher, root / "teacher", {"source": "random weights (bench_train_run)"})
        for checkout in {run[2] for run in runs}:
            warm_up(checkout)
        results = {}
        for i, (name, ours, code, _) in enumerate(runs):
            print(name, flush=True)
            results[name] = train(root, f"run{i}", config(args, ours), code)
            print(results[name], flush=True)
        text = section(args, results, {name: ref for name, _, _, ref in runs}, teacher.num_params() / 1e6)
    print(text)
    if not args.quick:
        write_section(args.output, mark(args), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
