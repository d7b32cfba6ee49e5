#!/usr/bin/env python3
"""Side-by-side report of the recipe's models: ``EXP/RESULTS.md``, ``EXP/results.json``, figures.

Per model (teacher, the two compressed students - ``compressed``: parameter budget,
``compressed_macs``: MAC budget -, the baseline, and the fbank control):

- params and MACs per second of audio: ``model.num_params()`` and ``model.expected_macs()`` of
  the compact model, counted for utterances of the length the pruning budget used (the
  export's ``cost_seconds``, the training data's mean duration) and divided by it (``espnet_plugin.load_model``); fbank (s3prl's ``fbank_no_cmvn``): 0 params,
  MACs n/a (null);
- CPU real-time factor: seconds to compute the hidden states of ``--rtf_seconds`` of audio
  (batch 1, ``extract_hidden_states`` under ``torch.inference_mode``; fbank: s3prl's upstream
  forward), divided by the audio's duration; median of ``--rtf_runs`` runs after one warm-up, on
  ONE thread (``torch.set_num_threads(1)``);
- the SUPERB test metrics written by local/evaluate_superb.py
  (``EXP/superb/<model>_<task>_seed<S>.json``, one per seed): the mean over the seeds under the
  metric's key (``ks_accuracy``, ``asr_wer``, ``asr_cer``, ``pr_per``, ``ic_accuracy``), the same
  on the held-out voices under ``<key>_unseen``, and, per key, ``<key>_std`` (sample standard
  deviation over the seeds; null for one seed) and ``<key>_seeds`` (the values, seed order).

Each compressed row also carries the target its pruning config asked for (``target`` in its
export's summary.yaml, ``{metric, sparsity}`` relative to the teacher), as an absolute
``{"params": N}`` or ``{"macs_per_second": N}``. Every comparison the report states ("beats")
is one of means; the spread is shown beside it.

Figures in ``EXP/figures/``: ``architecture.png`` and ``training.png`` (per-layer architecture
against the teacher, sparsity / Lagrange multipliers / losses over the pruning run) copied from
each stage-1 export (``*_macs.png`` for the MAC budget), and ``metric_vs_params.png`` /
``metric_vs_macs.png`` (each task's mean metric against params / MACs, error bars: the spread
over seeds; open markers: the unseen voices).
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
from typing import Any, Callable, Dict, List, Optional, Tuple

from espnet_plugin.utils.audio import SAMPLE_RATE
from espnet_plugin.utils.machine import cpu_name

MODELS = ["teacher", "compressed", "compressed_macs", "baseline", "fbank"]
COMPRESSED = {"compressed": "", "compressed_macs": "_macs"}  # model -> suffix of its stage directories
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


def pruning_target(exp: Path, model: str = "compressed") -> Optional[Dict[str, Any]]:
    """The summary.yaml (the compressed model's, else its stage-1 export's) that records the target."""
    import yaml

    suffix = COMPRESSED[model]
    for summary_path in (exp / model / "summary.yaml", exp / f"stage1{suffix}_pruned" / "summary.yaml"):
        if summary_path.is_file():
            summary = yaml.safe_load(summary_path.read_text(encoding="utf-8")) or {}
            if summary.get("target"):
                return dict(summary, path=str(summary_path))
    return None


def target_of(exp: Path, model: str = "compressed") -> Optional[Dict[str, int]]:
    """A compressed model's target as an absolute number, from the export's summary."""
    summary = pruning_target(exp, model)
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
    """One model's runs of one task, over its seeds: the first seed's run (checkpoint, schedule,
    error breakdown) with ``runs`` (every seed's result, seed order)."""
    paths = sorted(
        (exp / "superb").glob(f"{model}_{task}_seed*.json"), key=lambda p: int(p.stem.rsplit("_seed", 1)[1])
    )
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    return dict(runs[0], runs=runs) if runs else None


def spread(values: List[float]) -> Dict[str, Any]:
    """Mean, sample standard deviation (None for one value) and the values, rounded."""
    return {
        "mean": round(statistics.fmean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
        "values": [round(v, 2) for v in values],
    }


def seed_values(task: str, run: Dict[str, Any], field: str, unseen: bool = False) -> List[float]:
    """A field of every seed's result, in % (``value`` or ``uer``), on the in-domain test split
    or (``unseen``) on the held-out voices; seeds without it are left out."""
    out = []
    for one in run["runs"]:
        source = one.get("unseen") or {} if unseen else one
        if source.get(field) is not None:
            out.append(in_percent(task, source[field]) if field == "value" else float(source[field]))
    return out


def pm(mean: Optional[float], std: Optional[float]) -> str:
    return fmt(mean, ".2f") + (f" ± {std:.2f}" if std is not None else "")


def markdown(
    exp: Path, env: Dict[str, Any], rows: List[Dict[str, Any]], runs: Dict, rtf_info: str, target_texts: Dict[str, str]
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
        "rate on the test split (s3prl's problem API). *unseen*: the same on the held-out voice family "
        "(corpus split test_unseen; never heard in any training: teacher, distillation or probe). "
        "Frozen upstreams, SUPERB's downstream models (learned weighted sum of the layers) trained with "
        "the short CPU schedules of conf/superb_{ks,asr,ic,pr}.yaml; numbers are in %, the mean over "
        "the seeds ± their sample standard deviation (no ± where one seed ran).",
        "",
    ]
    columns = []  # (heading, results.json key)
    for task in tasks:
        key, label, higher = TASK_COLUMNS[task]
        arrow = " ↑" if higher else " ↓"
        columns.append((label + arrow, key))
        if task == "asr":
            columns.append(("ASR CER ↓", "asr_cer"))
        if any(row.get(f"{key}_unseen") is not None for row in rows):
            columns.append((label + " unseen" + arrow, f"{key}_unseen"))
            if task == "asr":
                columns.append(("ASR CER unseen ↓", "asr_cer_unseen"))
    out += ["|model|params|MACs/s (G)|RTF|" + "".join(f"{h}|" for h, _ in columns)]
    out += ["|---|---|---|---|" + "---|" * len(columns)]
    for row in rows:
        macs = None if row["macs_per_second"] is None else row["macs_per_second"] / 1e9
        cells = [pm(row.get(key), row.get(f"{key}_std")) for _, key in columns]
        out.append(
            f"|{row['model']}|{row['params']:,}|{fmt(macs, '.4f')}|{fmt(row['rtf'], '.4f')}|"
            + "".join(f"{c}|" for c in cells)
        )
    teacher = next((r for r in rows if r["model"] == "teacher"), None)
    out.append("")
    for row in rows:
        if row["model"] in COMPRESSED and row.get("target") and teacher:
            (metric, goal), = row["target"].items()
            reached = row[metric]
            out.append(
                f"- {row['model']}, target (pruning config, {target_texts.get(row['model'], 'none')}): "
                f"{metric} = {goal:,}; reached {reached:,} ({100 * reached / teacher[metric]:.1f} % of the teacher's "
                f"{teacher[metric]:,}); params {100 * row['params'] / teacher['params']:.1f} %, MACs "
                f"{100 * row['macs_per_second'] / teacher['macs_per_second']:.1f} % of the teacher's."
            )
    out += comparisons(rows, columns)
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
        out += ["", "### ASR WER (first seed)", "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|",
                "|---|---|---|---|---|---|---|---|---|"]
        out += details_rows
    out += [
        "",
        "## Figures",
        "- Per-layer architecture of each compressed model against the teacher: "
        "![architecture](figures/architecture.png) (parameter budget), "
        "![architecture, MAC budget](figures/architecture_macs.png) (MAC budget)",
        "- Sparsity (expected vs target), Lagrange multipliers and losses over the pruning runs: "
        "![training](figures/training.png), ![training, MAC budget](figures/training_macs.png)",
        "- Downstream metrics against params and against MACs (error bars: spread over seeds; open "
        "markers: unseen voices): ![metric vs params](figures/metric_vs_params.png) "
        "![metric vs MACs](figures/metric_vs_macs.png)",
        "",
    ]
    return "\n".join(out)


def comparisons(rows: List[Dict[str, Any]], columns: List[Tuple[str, str]]) -> List[str]:
    """Each compressed model against the baseline and the teacher against fbank, column by column:
    the difference of the means, with the larger of the two spreads beside it ("within the
    spread" when the difference is not larger)."""
    by_model = {r["model"]: r for r in rows}
    pairs = [(m, "baseline") for m in COMPRESSED] + [("teacher", "fbank")]
    out = ["", "### Comparisons (differences of the means; ± the larger spread of the two)"]
    for first, second in pairs:
        a, b = by_model.get(first), by_model.get(second)
        if not a or not b:
            continue
        items = []
        for heading, key in columns:
            if a.get(key) is None or b.get(key) is None:
                continue
            higher = heading.endswith("↑")
            diff = a[key] - b[key]
            better = diff > 0 if higher else diff < 0
            stds = [s for s in (a.get(f"{key}_std"), b.get(f"{key}_std")) if s is not None]
            noise = f" ± {max(stds):.2f}" if stds else ""
            verdict = "better" if better else "worse" if diff else "equal"
            if stds and diff and abs(diff) <= max(stds):
                verdict += ", within the spread"
            items.append(f"{heading[:-2]} {diff:+.2f}{noise} ({verdict})")
        if items:
            out.append(f"- {first} vs {second}: " + "; ".join(items))
    return out


TASK_TITLES = {
    "ks": "KS (speech_commands), test, accuracy",
    "asr": "ASR (LibriSpeech layout), test-clean, greedy CTC, no LM",
    "ic": "IC (fluent_commands), test, accuracy",
    "pr": "PR (s3prl.problem.SuperbPR), test, PER",
}


def task_table(exp: Path, task: str, models: List[str], runs: Dict) -> List[str]:
    """One task's runs, one line per seed: steps, the checkpoint tested, dev and test metric (in %),
    the unseen voices' metric, timings."""
    asr = task == "asr"
    out = ["", f"## {exp}/superb/*_{task}_seed*: {TASK_TITLES[task]}"]
    extra = "test CER|" if asr else ""
    out += [f"|model|seed|steps|checkpoint|dev|test|{extra}unseen|train (s)|evaluate (s)|"]
    out += ["|---|---|---|---|---|---|" + "---|" * (4 if asr else 3)]
    for model in models:
        run = runs.get((model, task))
        if not run:
            out.append(f"|{model}|not run|" + "|" * (7 if asr else 6))
            continue
        for one in run["runs"]:
            cer = f"{fmt(one.get('uer'), '.2f')}|" if asr else ""
            unseen = (one.get("unseen") or {}).get("value")
            out.append(
                f"|{model}|{one.get('seed')}|{one.get('total_steps')}|{Path(one['checkpoint']).name}|"
                f"{fmt(in_percent(task, one.get('dev_best')), '.2f')}|{fmt(in_percent(task, one['value']), '.2f')}|{cer}"
                f"{fmt(in_percent(task, unseen), '.2f')}|"
                f"{fmt(one.get('train_seconds'), '.0f')}|{fmt(one.get('evaluate_seconds'), '.0f')}|"
            )
    return out


def task_metrics(runs: Dict, model: str) -> Dict[str, Any]:
    """results.json's metric keys for one model, in %, means over the seeds: ks_accuracy, asr_wer,
    asr_cer always (null when not run), ic_accuracy and pr_per only where run; each with ``_std``
    and ``_seeds``, and the same three for the unseen voices (``<key>_unseen...``) where tested."""
    out: Dict[str, Any] = {}
    for task, (key, _, _) in TASK_COLUMNS.items():
        run = runs.get((model, task))
        if run is None:
            if task in ("ks", "asr"):
                out.update({key: None, **({"asr_cer": None} if task == "asr" else {})})
            continue
        fields = [(key, "value")] + ([("asr_cer", "uer")] if task == "asr" else [])
        for name, field in fields:
            for unseen, suffix in ((False, ""), (True, "_unseen")):
                values = seed_values(task, run, field, unseen)
                if not values:
                    if not unseen:
                        out[name] = None
                    continue
                stats = spread(values)
                out[name + suffix] = stats["mean"]
                out[f"{name}{suffix}_std"] = stats["std"]
                out[f"{name}{suffix}_seeds"] = stats["values"]
    return out


def in_percent(task: str, value: Optional[float]) -> Optional[float]:
    """A run's metric in %: the runner's KS / IC accuracies are fractions, WER / PER already %."""
    if value is None or task not in ("ks", "ic"):
        return value
    return 100.0 * value


COLORS = {"teacher": "#444444", "compressed": "#2c7fb8", "compressed_macs": "#7b3294", "baseline": "#f03b20",
          "fbank": "#31a354"}


def plot_metric_vs_cost(rows: List[Dict[str, Any]], path: Path, cost: str = "params") -> None:
    """One panel per task: each model's mean metric (error bar: spread over seeds) against its
    params or MACs per second; open markers: the unseen voices. fbank has no MACs (left out there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, xlabel = (1e6, "params (M)") if cost == "params" else (1e9, "MACs per second of audio (G)")
    cost_key = "params" if cost == "params" else "macs_per_second"
    points = [r for r in rows if r.get(cost_key) is not None]
    panels = [(key, f"{label} (%)", higher) for key, label, higher in TASK_COLUMNS.values()
              if any(row.get(key) is not None for row in rows)] or [("ks_accuracy", "KS acc (%)", True)]
    ncols = min(2, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, grid = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (key, label, higher_better) in zip(axes, panels):
        for row in points:
            x = row[cost_key] / scale
            color = COLORS.get(row["model"], "#888888")
            for suffix, face in (("", color), ("_unseen", "none")):
                if row.get(key + suffix) is None:
                    continue
                ax.errorbar([x], [row[key + suffix]], yerr=[row.get(f"{key}{suffix}_std") or 0.0], fmt="o", ms=7,
                            color=color, mfc=face, capsize=3, zorder=3)
            if row.get(key) is not None:
                offset = (-10, -14) if row["model"] == "teacher" else (5, 6)
                ax.annotate(row["model"], (x, row[key]), textcoords="offset points", xytext=offset, fontsize=8)
        for row in points:
            target = row.get("target") or {}
            if cost_key in target:
                ax.axvline(target[cost_key] / scale, color=COLORS.get(row["model"]), linestyle="--", linewidth=1,
                           label=f"{row['model']}: target")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label + (" (higher is better)" if higher_better else " (lower is better)"))
        ax.grid(alpha=0.3)
        ax.set_xlim(left=-0.05 * max((r[cost_key] / scale for r in points), default=1.0))
    fig.suptitle(f"SUPERB (short CPU schedules) vs {'model size' if cost == 'params' else 'compute'}; "
                 "filled: test, open: unseen voices")
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
    target_texts: Dict[str, str] = {}
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
        if model in COMPRESSED:
            row["target"] = target_of(exp, model)
            summary = pruning_target(exp, model)
            if summary:
                target = summary["target"]
                target_texts[model] = f"{target['metric']} sparsity {target['sparsity']:g} relative to the teacher"
        rows.append(row)
        print(f"{model}: {row}")

    figures = exp / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for model, suffix in COMPRESSED.items():
        for name in ("architecture", "training"):
            for source in (exp / f"stage1{suffix}_pruned" / f"{name}.png", exp / model / f"{name}.png"):
                if source.is_file():
                    shutil.copyfile(source, figures / f"{name}{suffix}.png")
                    break
            else:
                print(f"no {name}.png in {exp}/stage1{suffix}_pruned or {exp}/{model}")
    plot_metric_vs_cost(rows, figures / "metric_vs_params.png", "params")
    plot_metric_vs_cost(rows, figures / "metric_vs_macs.png", "macs")

    repo = Path(__file__).resolve().parents[3]
    env = environment(repo)
    (exp / "RESULTS.md").write_text(markdown(exp, env, rows, runs, rtf_info, target_texts), encoding="utf-8")
    (exp / "results.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {exp / 'RESULTS.md'}, {exp / 'results.json'}, {figures}/")


if __name__ == "__main__":
    main()
