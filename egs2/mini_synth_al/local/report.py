#!/usr/bin/env python3
"""The active-learning report: ``EXP/results.json``, ``EXP/RESULTS.md``, ``EXP/figures/learning_curves.png``.

``results.json``: one row per (method, seed, round): ``{method, seed, round, labelled_seconds,
num_utts, wer, cer}`` (WER / CER in %, test set, greedy CTC). Round 0 (the seed set) is the same
model for every method of a seed and is repeated under each method.

``RESULTS.md`` states, for this data, the paper's two headline figures (Huang et al., 2016):

1. each method's WER relative to random at equal labels: ``(WER_m - WER_random) / WER_random``
   of the means over seeds, per round (every method adds the same budget of seconds per round,
   so a round is an equal amount of labelled audio);
2. the labelled minutes each method needs to reach random's final WER (mean over seeds), by
   linear interpolation along its mean learning curve, and that amount relative to random's.

Both also for the CER (a small model on little data can sit near 100 % WER while its CER moves).

Plus scoring throughput (pool utterances per second of scoring, per method, from the rounds'
``selection.json``), the mean duration of what each method selected, and the rank correlation
between the egl and confidence scores of the same pool under the same model (round 1 of a seed),
which the paper found to be low.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from espnet_plugin.utils.machine import cpu_name

ROW_KEYS = ("method", "seed", "round", "labelled_seconds", "num_utts", "wer", "cer")
ORDER = ["random", "confidence", "entropy", "egl", "badge"]


def mean_sd(values: List[float]) -> Tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def curves(rows: List[Dict]) -> Dict[str, List[Dict]]:
    """Per method: per round, mean / sd / min / max over seeds of WER, CER and labelled minutes."""
    out: Dict[str, List[Dict]] = {}
    for method in sorted({r["method"] for r in rows}, key=lambda m: (ORDER.index(m) if m in ORDER else 99, m)):
        points = []
        for rnd in sorted({r["round"] for r in rows if r["method"] == method}):
            sel = [r for r in rows if r["method"] == method and r["round"] == rnd]
            point = {"round": rnd, "seeds": len(sel), "minutes": statistics.fmean(r["labelled_seconds"] for r in sel) / 60}
            for key in ("wer", "cer"):
                values = [r[key] for r in sel]
                point[key], point[key + "_sd"] = mean_sd(values)
                point[key + "_min"], point[key + "_max"] = min(values), max(values)
            points.append(point)
        out[method] = points
    return out


def minutes_to_reach(points: List[Dict], target: float, key: str = "wer") -> Optional[float]:
    """Labelled minutes at which the mean curve first reaches ``target`` (linear interpolation)."""
    for a, b in zip(points, points[1:]):
        if a[key] <= target:
            return a["minutes"]
        if b[key] <= target:
            frac = (a[key] - target) / (a[key] - b[key])
            return a["minutes"] + frac * (b["minutes"] - a["minutes"])
    return points[0]["minutes"] if points and points[0][key] <= target else None


def spearman(x: List[float], y: List[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else float("nan")


def read_scores(path: Path) -> Dict[str, float]:
    lines = path.read_text().splitlines()[1:]
    out = {}
    for line in lines:
        cols = line.split("\t")
        if cols[2] != "nan":
            out[cols[0]] = float(cols[2])
    return out


def selection_stats(exp: Path) -> Tuple[Dict[str, Dict], List[Tuple[int, float]]]:
    """Per method: scoring throughput and the mean duration selected; egl-vs-confidence correlations."""
    stats: Dict[str, Dict] = {}
    for summary_path in sorted((exp / "al").glob("*/seed*/round*/select/selection.json")):
        method = summary_path.parts[-5]
        summary = json.loads(summary_path.read_text())
        s = stats.setdefault(method, {"utts": 0, "seconds": 0.0, "selected_utts": 0, "selected_seconds": 0.0, "speakers": []})
        utt2spk = summary_path.parent / "data" / "utt2spk"
        if utt2spk.is_file():
            s["speakers"].append(len({line.split()[1] for line in utt2spk.read_text().splitlines() if line.strip()}))
        s["utts"] += summary["scoring"]["utterances"]
        s["seconds"] += summary["scoring"]["seconds"]
        s["selected_utts"] += summary["selected_utts"]
        s["selected_seconds"] += summary["selected_seconds"]
    correlations = []
    for egl_scores in sorted((exp / "al" / "egl").glob("seed*/round1/select/scores.tsv")):
        seed = egl_scores.parts[-4]
        conf_scores = exp / "al" / "confidence" / seed / "round1" / "select" / "scores.tsv"
        if conf_scores.is_file():
            a, b = read_scores(egl_scores), read_scores(conf_scores)
            common = sorted(set(a) & set(b))
            if len(common) > 2:
                correlations.append((int(seed[4:]), spearman([a[u] for u in common], [b[u] for u in common])))
    return stats, correlations


def read_hyps(path: Path) -> Dict[str, str]:
    out = {}
    for line in path.read_text().splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) >= 7 and cols[2] != "nan":
            out[cols[0]] = cols[6]
    return out


def round_one_analysis(exp: Path) -> List[str]:
    """What each method picked in round 1, judged with the transcripts afterwards (analysis only).

    In round 1 every method of a seed chooses from the same pool with the same round-0 model, and
    egl's ``scores.tsv`` holds that model's best hypothesis for every pool utterance: so the
    round-0 model's CER on each pool utterance is known, and so are its speaking rate (characters
    per second) and duration. Per method: means over the utterances it selected (all seeds).
    """
    import editdistance

    oracle_path = exp / "data" / "oracle" / "pool_text"
    if not oracle_path.is_file():
        return []
    oracle = dict(line.split(" ", 1) for line in oracle_path.read_text().splitlines() if " " in line)
    per_method: Dict[str, Dict[str, List[float]]] = {}
    pool_stats: Dict[str, List[float]] = {"cer": [], "rate": []}
    egl_vs_cer = []
    for egl_scores in sorted((exp / "al" / "egl").glob("seed*/round1/select/scores.tsv")):
        seed = egl_scores.parts[-4]
        hyps, egl = read_hyps(egl_scores), read_scores(egl_scores)
        secs = {line.split("\t")[0]: float(line.split("\t")[1]) for line in egl_scores.read_text().splitlines()[1:]}
        cer, rate = {}, {}
        for utt, hyp in hyps.items():
            ref = oracle[utt].replace(" ", "")
            cer[utt] = 100.0 * editdistance.eval(ref, " ".join(hyp.split()).replace(" ", "")) / max(len(ref), 1)
            rate[utt] = len(ref) / secs[utt]
        pool_stats["cer"] += list(cer.values())
        pool_stats["rate"] += list(rate.values())
        common = sorted(set(egl) & set(cer))
        egl_vs_cer.append((seed, spearman([egl[u] - math.log(secs[u]) for u in common], [cer[u] for u in common])))
        for summary in sorted((exp / "al").glob(f"*/{seed}/round1/select/selection.json")):
            method = summary.parts[-5]
            chosen = [u for u in json.loads(summary.read_text())["selected"] if u in cer]
            m = per_method.setdefault(method, {"cer": [], "rate": [], "dur": []})
            m["cer"] += [cer[u] for u in chosen]
            m["rate"] += [rate[u] for u in chosen]
            m["dur"] += [secs[u] for u in chosen]
    if not per_method:
        return []
    lines = ["", "## What round 1 selected, judged afterwards with the transcripts", "",
             "Same pool, same round-0 model for every method of a seed; CER of that model's best hypothesis on each "
             "selected utterance, speaking rate (characters per second), duration; means over all seeds.", "",
             "| selection | round-0 CER on it (%) | chars / s | duration (s) |", "|---|---:|---:|---:|",
             f"| whole pool | {statistics.fmean(pool_stats['cer']):.1f} | {statistics.fmean(pool_stats['rate']):.1f} | |"]
    for method in sorted(per_method, key=lambda m: ORDER.index(m) if m in ORDER else 99):
        m = per_method[method]
        if m["cer"]:
            lines.append(f"| {method} | {statistics.fmean(m['cer']):.1f} | {statistics.fmean(m['rate']):.1f} | {statistics.fmean(m['dur']):.2f} |")
    lines += ["", "Spearman rank correlation of the per-second EGL score with the round-0 model's CER on the pool utterance: "
              + ", ".join(f"{seed}: {c:+.2f}" for seed, c in egl_vs_cer) + "."]
    return lines


def plot(curve: Dict[str, List[Dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "wer", "WER (%)"), (axes[1], "cer", "CER (%)")):
        for method, points in curve.items():
            x = [p["minutes"] for p in points]
            y = [p[key] for p in points]
            line = ax.plot(x, y, marker="o", label=method)[0]
            ax.fill_between(x, [p[key] - p[key + "_sd"] for p in points], [p[key] + p[key + "_sd"] for p in points],
                            color=line.get_color(), alpha=0.15)
        ax.set_xlabel("labelled audio (minutes)")
        ax.set_ylabel(label + ", test")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Active learning on mini_synth: mean over seeds, band = +-1 sd")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def git_hash() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fmt(x: Optional[float], digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def load_rows(exp: Path) -> List[Dict]:
    """``al/rows.json``, or, for a run still going (or stopped), every finished round's ``result.json``."""
    if (exp / "al" / "rows.json").is_file():
        return json.loads((exp / "al" / "rows.json").read_text())
    rows = []
    chains = sorted(p.parent for p in (exp / "al").glob("*/seed*/revealed.tsv"))
    methods = sorted({c.parts[-2] for c in chains})
    for zero in sorted((exp / "al").glob("seed*/round0/result.json")):
        row = json.loads(zero.read_text())
        rows.extend({**row, "method": m} for m in methods if (exp / "al" / m / zero.parts[-3]).is_dir())
    rows.extend(json.loads(p.read_text()) for p in sorted((exp / "al").glob("*/seed*/round*/result.json")))
    return rows


def report(exp: Path) -> str:
    raw = load_rows(exp)
    rows = [{k: r[k] for k in ROW_KEYS} for r in raw]
    # a run stopped early: keep only the (method, seed) runs that reached the last round
    last = max((r["round"] for r in rows), default=0)
    reached = {(r["method"], r["seed"]) for r in rows if r["round"] == last}
    unfinished = sorted({(r["method"], r["seed"]) for r in rows} - reached)
    rows = [r for r in rows if (r["method"], r["seed"]) in reached]
    (exp / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    curve = curves(rows)
    plot(curve, exp / "figures" / "learning_curves.png")
    stats, correlations = selection_stats(exp)
    seeds = sorted({r["seed"] for r in rows})
    seeds_of = {m: sorted({r["seed"] for r in rows if r["method"] == m}) for m in {r["method"] for r in rows}}
    lines = [
        "# mini_synth_al: active learning for ESPnet ASR",
        "",
        f"- date: {datetime.datetime.now():%Y-%m-%d %H:%M}; git {git_hash()}; Python {platform.python_version()}; CPU: {cpu_name()}",
        f"- seeds: {'; '.join(f'{m} ' + ' '.join(map(str, seeds_of[m])) for m in curve)}; test: greedy CTC decoding, WER / CER in %",
        "- learning curves: `figures/learning_curves.png`; every row: `results.json`",
        *([f"- **partial run**: left out, unfinished (method, seed): {', '.join(f'{m} {sd}' for m, sd in unfinished)}"] if unfinished else []),
        "",
        "## WER (%) by round: mean +- sd over seeds (labelled minutes)",
        "",
    ]
    rounds = sorted({r["round"] for r in rows})
    lines.append("| method | " + " | ".join(f"round {r}" for r in rounds) + " |")
    lines.append("|---|" + "---:|" * len(rounds))
    for method, points in curve.items():
        by_round = {p["round"]: p for p in points}
        cells = [f"{by_round[r]['wer']:.1f} +- {by_round[r]['wer_sd']:.1f} ({by_round[r]['minutes']:.1f})" if r in by_round else "" for r in rounds]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "## CER (%) by round: mean +- sd over seeds", ""]
    lines.append("| method | " + " | ".join(f"round {r}" for r in rounds) + " |")
    lines.append("|---|" + "---:|" * len(rounds))
    for method, points in curve.items():
        by_round = {p["round"]: p for p in points}
        lines.append(f"| {method} | " + " | ".join(f"{by_round[r]['cer']:.1f} +- {by_round[r]['cer_sd']:.1f}" if r in by_round else "" for r in rounds) + " |")
    if "random" in curve:
        rand = {p["round"]: p for p in curve["random"]}
        final = curve["random"][-1]
        later = [r for r in rounds if r > 0]
        lines += [
            "",
            "## The paper's two headline figures, on this data",
            "",
            "1. Error rate relative to random at equal labels (same round = same budget of labelled seconds): "
            "`(ER_method - ER_random) / ER_random` of the means over seeds; negative = fewer errors than random.",
            "",
            "| method | metric | " + " | ".join(f"round {r}" for r in later) + " | mean over rounds |",
            "|---|---|" + "---:|" * (len(later) + 1),
        ]
        for key in ("wer", "cer"):
            for method, points in curve.items():
                if method == "random":
                    continue
                rel = [(p[key] - rand[p["round"]][key]) / rand[p["round"]][key] * 100 for p in points if p["round"] > 0 and p["round"] in rand]
                if rel:
                    lines.append(f"| {method} | {key.upper()} | " + " | ".join(f"{x:+.1f} %" for x in rel) + f" | {statistics.fmean(rel):+.1f} % |")
        lines += [
            "",
            f"2. Labelled audio needed to reach random's final error rate (WER {final['wer']:.1f} %, CER {final['cer']:.1f} % "
            f"after {final['minutes']:.2f} min), by linear interpolation along each mean curve:",
            "",
            "| method | minutes to random's final WER | vs random | minutes to random's final CER | vs random |",
            "|---|---:|---:|---:|---:|",
        ]
        for method, points in curve.items():
            cells = []
            for key in ("wer", "cer"):
                m = minutes_to_reach(points, final[key], key)
                cells += [fmt(m, 2), f"{(m / final['minutes'] - 1) * 100:+.0f} %" if m is not None else f"not reached in {points[-1]['minutes']:.2f} min"]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if stats:
        lines += ["", "## Scoring and selection", "",
                  "| method | pool utterances scored | scoring utt/s (1 thread) | mean selected duration (s) | speakers per selection |",
                  "|---|---:|---:|---:|---:|"]
        for method in curve:
            s = stats.get(method)
            if s:
                rate = s["utts"] / s["seconds"] if s["seconds"] else None
                mean_dur = s["selected_seconds"] / s["selected_utts"] if s["selected_utts"] else None
                spk = statistics.fmean(s["speakers"]) if s["speakers"] else None
                lines.append(f"| {method} | {s['utts']} | {fmt(rate, 2)} | {fmt(mean_dur, 2)} | {fmt(spk)} |")
    if correlations:
        lines += ["", "Spearman rank correlation of the egl and confidence scores of the same pool under the same model "
                  "(round 1): " + ", ".join(f"seed {s}: {c:+.2f}" for s, c in correlations) + "."]
    lines += round_one_analysis(exp)
    text = "\n".join(lines) + "\n"
    (exp / "RESULTS.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", type=Path, required=True)
    args = parser.parse_args()
    print(report(args.exp))


if __name__ == "__main__":
    main()
