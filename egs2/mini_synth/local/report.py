#!/usr/bin/env python3
"""Side-by-side report of the recipe's models: ``EXP/RESULTS.md``, ``EXP/results.json``, figures.

Per model (teacher, compressed, baseline, and the fbank control):

- params and MACs per second of audio: ``model.num_params()`` and ``model.expected_macs()`` of
  the compact model, counted for utterances of the length the pruning budget used (the
  export's ``cost_seconds``, the training data's mean duration) and divided by it (``espnet_plugin.load_model``); fbank (s3prl's ``fbank_no_cmvn``): 0 params,
  MACs n/a (null);
- CPU real-time factor: seconds to compute the hidden states of ``--rtf_seconds`` of audio
  (batch 1, ``extract_hidden_states`` under ``torch.inference_mode``; fbank: s3prl's upstream
  forward), divided by the audio's duration; median of ``--rtf_runs`` runs after one warm-up, on
  ONE thread (``torch.set_num_threads(1)``);
- the SUPERB test metrics written by local/evaluate_superb.py (``EXP/superb/<model>_<task>.json``).

The compressed row also carries the target its pruning config asked for (``target`` in the
stage-1 export's summary.yaml, ``{metric, sparsity}`` relative to the teacher), as an absolute
``{"params": N}`` or ``{"macs_per_second": N}``.

Figures in ``EXP/figures/``: ``architecture.png`` and ``training.png`` (per-layer architecture
against the teacher, sparsity / Lagrange multipliers / losses over the pruning run) copied from
the stage-1 export, and ``metric_vs_params.png`` (each task's metric against params).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from espnet_plugin.utils.audio import SAMPLE_RATE
from espnet_plugin.utils.machine import cpu_name

MODELS = ["teacher", "compressed", "baseline", "fbank"]
# task -> (results.json key, table heading, higher is better); error rates and accuracies in %
TASK_COLUMNS = {
    "ks": ("ks_accuracy", "KS acc", True),
    "asr": ("asr_wer", "ASR WER", False),
    "ic": ("ic_accuracy", "IC acc", True),
    "pr": ("pr_per", "PR PER", False),
}
FBANK_UPSTREAM = "fbank_no_cmvn"


# ----------------------------------------------------------------------------- measurements
def median_seconds(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_compact(model_dir: Path, seconds: float, runs: int, cost_seconds: float = 1.0) -> Dict[str, Any]:
    import torch

    from espnet_plugin import load_model

    model = load_model(model_dir)
    wav = 0.1 * torch.randn(1, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.inference_mode():
            model.extract_hidden_states(wav)

    return {
        "params": int(model.num_params()),
        "macs_per_second": int(round(float(model.expected_macs(seconds=cost_seconds)) / cost_seconds)),
        "rtf": median_seconds(forward, runs) / seconds,
    }


def measure_fbank(seconds: float, runs: int) -> Dict[str, Any]:
    import torch

    import s3prl_upstream

    s3prl_upstream.register()
    import s3prl.hub as hub

    upstream = getattr(hub, FBANK_UPSTREAM)().eval()
    wav = 0.1 * torch.randn(int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.inference_mode():
            upstream([wav])

    params = sum(p.numel() for p in upstream.parameters())
    return {"params": int(params), "macs_per_second": None, "rtf": median_seconds(forward, runs) / seconds}


def pruning_target(exp: Path) -> Optional[Dict[str, Any]]:
    """The summary.yaml (compressed model's, else the stage-1 export's) that records the target."""
    import yaml

    for summary_path in (exp / "compressed" / "summary.yaml", exp / "stage1_pruned" / "summary.yaml"):
        if summary_path.is_file():
            summary = yaml.safe_load(summary_path.read_text(encoding="utf-8")) or {}
            if summary.get("target"):
                return dict(summary, path=str(summary_path))
    return None


def target_of(exp: Path) -> Optional[Dict[str, int]]:
    """The compressed model's target as an absolute number, from the export's summary."""
    summary = pruning_target(exp)
    if summary is None:
        return None
    metric, sparsity = summary["target"]["metric"], float(summary["target"]["sparsity"])
    if metric == "params":
        return {"params": int(round(summary["teacher_params"] * (1.0 - sparsity)))}
    if metric == "macs":
        return {"macs_per_second": int(round(summary["teacher_macs_per_second"] * (1.0 - sparsity)))}
    raise ValueError(f"{summary['path']}: unknown target metric {metric!r}")


# ----------------------------------------------------------------------------- environment
def run_text(cmd: List[str], cwd: Optional[Path] = None) -> Optional[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=cwd).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "n/a"


def s3prl_version() -> str:
    try:
        import s3prl

        return getattr(s3prl, "__version__", None) or version("s3prl")
    except ImportError:
        return "n/a"


def environment(repo: Path) -> Dict[str, Any]:
    import os

    import torch

    return {
        "date": datetime.datetime.now().astimezone().strftime("%a %b %d %H:%M:%S %Z %Y"),
        "python": platform.python_version(),
        "espnet": version("espnet"),
        "espnet_compress": version("espnet-compress"),
        "torch": torch.__version__,
        "s3prl": s3prl_version(),
        "git_hash": run_text(["git", "rev-parse", "HEAD"], repo),
        "commit_date": run_text(["git", "log", "-1", "--format=%cd"], repo),
        "dirty": bool(run_text(["git", "status", "--porcelain", "--untracked-files=no"], repo)),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }


# ----------------------------------------------------------------------------- formatting
def fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def superb(exp: Path, model: str, task: str) -> Optional[Dict[str, Any]]:
    path = exp / "superb" / f"{model}_{task}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def markdown(
    exp: Path, env: Dict[str, Any], rows: List[Dict[str, Any]], runs: Dict, rtf_info: str, target_text: str
) -> str:
    tasks = [t for t in TASK_COLUMNS if any((model, t) in runs for model in (r["model"] for r in rows))]
    out = ["<!-- Generated by egs2/mini_synth/local/report.py -->", "# RESULTS", "## Environments"]
    out += [
        f"- date: `{env['date']}`",
        f"- python version: `{env['python']}`",
        f"- espnet version: `espnet {env['espnet']}`",
        f"- espnet-compress version: `espnet-compress {env['espnet_compress']}`",
        f"- s3prl version: `s3prl {env['s3prl']}`",
        f"- pytorch version: `pytorch {env['torch']}`",
        f"- Git hash: `{env['git_hash'] or 'n/a'}`" + (" (uncommitted changes)" if env["dirty"] else ""),
        f"  - Commit date: `{env['commit_date'] or 'n/a'}`",
        f"- CPU: `{env['cpu']}`, {env['cpu_count']} logical cores",
        "",
        f"## {exp}: models side by side",
        "Params: `num_params()` of the compact model; MACs per second of audio: `expected_macs()` for "
        "utterances of the budget's `cost_seconds` (see the export's summary.yaml), divided by it; "
        f"RTF: {rtf_info}. KS: accuracy on the Speech Commands-style test split (12 classes); ASR: "
        "WER / CER (the runner's character-level UER) on test-clean, greedy CTC, no LM; IC: accuracy "
        "(action, object and location all right) on the Fluent Commands-style test split; PR: phone error "
        "rate on the test split (s3prl's problem API). Frozen upstreams, SUPERB's downstream models "
        "(learned weighted sum of the layers) trained with the short CPU schedules of "
        "conf/superb_{ks,asr,ic,pr}.yaml; numbers are in %.",
        "",
    ]
    headings = [TASK_COLUMNS[t][1] + (" ↑" if TASK_COLUMNS[t][2] else " ↓") for t in tasks]
    if "asr" in tasks:
        headings.insert(tasks.index("asr") + 1, "ASR CER ↓")
    out += ["|model|params|MACs/s (G)|RTF|" + "".join(f"{h}|" for h in headings)]
    out += ["|---|---|---|---|" + "---|" * len(headings)]
    for row in rows:
        macs = None if row["macs_per_second"] is None else row["macs_per_second"] / 1e9
        cells = []
        for task in tasks:
            cells.append(fmt(row.get(TASK_COLUMNS[task][0]), ".2f"))
            if task == "asr":
                cells.append(fmt(row.get("asr_cer"), ".2f"))
        out.append(
            f"|{row['model']}|{row['params']:,}|{fmt(macs, '.4f')}|{fmt(row['rtf'], '.4f')}|"
            + "".join(f"{c}|" for c in cells)
        )
    compressed = next((r for r in rows if r["model"] == "compressed"), None)
    teacher = next((r for r in rows if r["model"] == "teacher"), None)
    if compressed and compressed.get("target") and teacher:
        (metric, goal), = compressed["target"].items()
        reached = compressed[metric]
        out += [
            "",
            f"Compressed model, target (pruning config, {target_text}): {metric} = {goal:,}; "
            f"reached {reached:,} ({100 * reached / teacher[metric]:.1f} % of the teacher's {teacher[metric]:,}).",
        ]
    models = [r["model"] for r in rows]
    for task in tasks:
        out += task_table(exp, task, models, runs)
    details_rows = []
    for model in models:
        details = (runs.get((model, "asr")) or {}).get("wer_details")
        if details:
            cells = "|".join(fmt(details[k], "") for k in ("Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"))
            details_rows.append(f"|{model}/test-clean|{cells}|")
    if details_rows:
        out += ["", "### ASR WER", "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|", "|---|---|---|---|---|---|---|---|---|"]
        out += details_rows
    out += [
        "",
        "## Figures",
        "- Per-layer architecture of the compressed model against the teacher: "
        "![architecture](figures/architecture.png)",
        "- Sparsity (expected vs target), Lagrange multipliers and losses over the pruning run: "
        "![training](figures/training.png)",
        "- Downstream metrics against params: ![metric vs params](figures/metric_vs_params.png)",
        "",
    ]
    return "\n".join(out)


TASK_TITLES = {
    "ks": "KS (speech_commands), test, accuracy",
    "asr": "ASR (LibriSpeech layout), test-clean, greedy CTC, no LM",
    "ic": "IC (fluent_commands), test, accuracy",
    "pr": "PR (s3prl.problem.SuperbPR), test, PER",
}


def task_table(exp: Path, task: str, models: List[str], runs: Dict) -> List[str]:
    """One task's runs: steps, the checkpoint tested, dev and test metric, timings (in %)."""
    asr = task == "asr"
    out = ["", f"## {exp}/superb/*_{task}: {TASK_TITLES[task]}"]
    extra = "test CER|" if asr else ""
    out += [f"|model|steps|checkpoint|dev|test|{extra}train (s)|evaluate (s)|"]
    out += ["|---|---|---|---|---|" + "---|" * (3 if asr else 2)]
    for model in models:
        run = runs.get((model, task))
        if not run:
            out.append(f"|{model}|not run|" + "|" * (6 if asr else 5))
            continue
        cer = f"{fmt(run.get('uer'), '.2f')}|" if asr else ""
        out.append(
            f"|{model}|{run.get('total_steps')}|{Path(run['checkpoint']).name}|"
            f"{fmt(in_percent(task, run.get('dev_best')), '.2f')}|{fmt(in_percent(task, run['value']), '.2f')}|{cer}"
            f"{fmt(run.get('train_seconds'), '.0f')}|{fmt(run.get('evaluate_seconds'), '.0f')}|"
        )
    return out


def task_metrics(runs: Dict, model: str) -> Dict[str, Optional[float]]:
    """results.json's metric keys for one model, in %: ks_accuracy, asr_wer, asr_cer always (null
    when not run), ic_accuracy and pr_per only where run."""
    out: Dict[str, Optional[float]] = {}
    for task, (key, _, _) in TASK_COLUMNS.items():
        run = runs.get((model, task))
        if run is None:
            if task in ("ks", "asr"):
                out[key] = None
            continue
        out[key] = round(in_percent(task, run["value"]), 2)
    if "asr_wer" in out:  # CER: the runner's unit error rate (characters and word-boundary tokens)
        asr = runs.get((model, "asr"))
        out["asr_cer"] = None if asr is None or asr.get("uer") is None else round(asr["uer"], 2)
    return out


def in_percent(task: str, value: Optional[float]) -> Optional[float]:
    """A run's metric in %: the runner's KS / IC accuracies are fractions, WER / PER already %."""
    if value is None or task not in ("ks", "ic"):
        return value
    return 100.0 * value


def plot_metric_vs_params(rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, f"{label} (%)", higher) for key, label, higher in TASK_COLUMNS.values()
              if any(row.get(key) is not None for row in rows)] or [("ks_accuracy", "KS acc (%)", True)]
    ncols = min(2, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, grid = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    colors = {"teacher": "#444444", "compressed": "#2c7fb8", "baseline": "#f03b20", "fbank": "#31a354"}
    for ax, (key, label, higher_better) in zip(axes, panels):
        for row in rows:
            if row.get(key) is None:
                continue
            x = row["params"] / 1e6
            ax.scatter([x], [row[key]], s=50, color=colors.get(row["model"], "#888888"), zorder=3)
            offset = (-10, -14) if row["model"] == "teacher" else (5, 6)  # teacher and compressed may be close
            ax.annotate(row["model"], (x, row[key]), textcoords="offset points", xytext=offset, fontsize=8)
        target = next((r.get("target") for r in rows if r["model"] == "compressed"), None) or {}
        if "params" in target:
            ax.axvline(
                target["params"] / 1e6, color="#2c7fb8", linestyle="--", linewidth=1, label="compressed: target params"
            )
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel("params (M)")
        ax.set_ylabel(label + (" (higher is better)" if higher_better else " (lower is better)"))
        ax.grid(alpha=0.3)
        ax.set_xlim(left=-0.05 * max((r["params"] / 1e6 for r in rows), default=1.0))
    fig.suptitle("SUPERB (short CPU schedules) vs model size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", type=Path, required=True)
    parser.add_argument("--rtf_seconds", type=float, default=10.0, help="audio length for the RTF")
    parser.add_argument("--rtf_runs", type=int, default=5, help="timed runs (median) after one warm-up")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    exp = args.exp
    rtf_info = (
        f"seconds of compute per second of audio, {args.rtf_seconds:g} s of audio, batch 1, median of "
        f"{args.rtf_runs} runs after a warm-up, 1 CPU thread (torch.set_num_threads(1))"
    )
    # MACs at the utterance length the budget used (the export records it), for every model alike
    cost_seconds = float((pruning_target(exp) or {}).get("cost_seconds", 1.0))
    rows: List[Dict[str, Any]] = []
    runs: Dict[Any, Any] = {}
    for model in MODELS:
        if model == "fbank":
            measured = measure_fbank(args.rtf_seconds, args.rtf_runs)
        else:
            model_dir = exp / model
            if not (model_dir / "config.yaml").is_file():
                print(f"{model}: no model in {model_dir}, left out")
                continue
            measured = measure_compact(model_dir, args.rtf_seconds, args.rtf_runs, cost_seconds)
        row: Dict[str, Any] = {"model": model, **measured}
        row["rtf"] = round(row["rtf"], 5)
        for task in TASK_COLUMNS:
            run = superb(exp, model, task)
            if run:
                runs[(model, task)] = run
        row.update(task_metrics(runs, model))
        if model == "compressed":
            row["target"] = target_of(exp)
        rows.append(row)
        print(f"{model}: {row}")
    summary = pruning_target(exp)
    target_text = (
        f"{summary['target']['metric']} sparsity {summary['target']['sparsity']:g} relative to the teacher"
        if summary
        else "none"
    )

    figures = exp / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name in ("architecture.png", "training.png"):
        for source in (exp / "stage1_pruned" / name, exp / "compressed" / name):
            if source.is_file():
                shutil.copyfile(source, figures / name)
                break
        else:
            print(f"no {name} in {exp}/stage1_pruned or {exp}/compressed")
    plot_metric_vs_params(rows, figures / "metric_vs_params.png")

    repo = Path(__file__).resolve().parents[3]
    env = environment(repo)
    (exp / "RESULTS.md").write_text(markdown(exp, env, rows, runs, rtf_info, target_text), encoding="utf-8")
    (exp / "results.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {exp / 'RESULTS.md'}, {exp / 'results.json'}, {figures}/")


if __name__ == "__main__":
    main()
