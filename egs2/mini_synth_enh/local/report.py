#!/usr/bin/env python3
"""The comparison's report: ``EXP/results.json``, ``EXP/RESULTS.md``, ``EXP/figures/``.

Reads the per-utterance scores that ``espnet2.bin.enh_scoring`` wrote for every model
(``EXP/scores/<key>/scoring/{SDR,SI_SNR,STOI,ESTOI,PESQ_WB}_spk1``, see local/score.py) and
the input SNR of every test utterance (``utt2snr``).

``results.json``: a list of rows, one per model and input SNR::

    {"method": "two_step_sp_time", "size": "30k", "seed": 0, "params": 30601, "snr_db": -5.0,
     "sdr": ..., "si_snr": ..., "stoi": ..., "pesq": ..., "estoi": ..., "sdr_improvement": ...,
     "num_utts": 16}

``method`` is one of ``METHODS``; STOI / ESTOI are in percent, as enh_scoring writes them; ``noisy`` (the unprocessed input: size, seed null, 0 params)
and ``teacher`` (size "teacher", seed null) are the references. Metrics are means over the
utterances at that SNR; ``sdr_improvement`` is the mean of (model SDR - input SDR) per utterance.

``RESULTS.md``: the models (params, compression, measured algorithmic latency, one-thread RTF
from :mod:`espnet_plugin.enh.costs`), per student size a table of mean SDR by input SNR (mean
+- std over seeds), the overall means, and the verdict: does the best two-step method beat
supervised-only training at -5 dB input SNR at 30x or more compression, which distillation loss
wins, and whether noise (GDD) or masking (MGD) helps. ``figures/sdr_improvement.png``: SDR
improvement against input SNR per method, the band spanning the seeds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from espnet_plugin.utils.kaldi_data import read_scp
from espnet_plugin.utils.machine import cpu_name

METHODS = ("noisy", "teacher", "supervised", "one_step_kd", "output_kd", "two_step_sp_time",
           "two_step_sp_batch", "two_step_gdd", "two_step_mgd")
STUDENT_METHODS = METHODS[2:]
TWO_STEP = tuple(m for m in METHODS if m.startswith("two_step"))
LABELS = {
    "noisy": "noisy input", "teacher": "teacher", "supervised": "supervised only",
    "one_step_kd": "one-step KD (SP time)", "output_kd": "output KD", "two_step_sp_time": "two-step, SP time",
    "two_step_sp_batch": "two-step, SP batch", "two_step_gdd": "two-step, GDD", "two_step_mgd": "two-step, MGD",
}
# results.json key -> ESPnet's scoring file
METRIC_FILES = {"sdr": "SDR_spk1", "si_snr": "SI_SNR_spk1", "stoi": "STOI_spk1", "estoi": "ESTOI_spk1",
                "pesq": "PESQ_WB_spk1"}
COMPRESSION_BAR = 30.0  # the "30x or more"
LOW_SNR = -5.0


# ----------------------------------------------------------------------------- parsing
def read_metric(path: Path) -> Dict[str, float]:
    """ESPnet's per-utterance score file (``utt value`` lines)."""
    return {utt: float(value) for utt, value in read_scp(path)}


def parse_key(key: str) -> Tuple[str, Optional[str], Optional[int]]:
    """``noisy`` / ``teacher`` / ``<method>/<size>/seed<S>`` -> (method, size, seed)."""
    if key == "noisy":
        return "noisy", None, None
    if key == "teacher":
        return "teacher", "teacher", None
    method, size, seed = key.split("/")
    if method not in METHODS or not seed.startswith("seed"):
        raise ValueError(f"unexpected score directory {key!r}")
    return method, size, int(seed[len("seed"):])


def score_keys(exp: Path) -> List[str]:
    keys = []
    for done in sorted((exp / "scores").rglob("done")):
        keys.append("/".join(done.parent.relative_to(exp / "scores").parts))
    return keys


def read_scores(exp: Path) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{key: {metric: {utt: value}}}`` of every scored model."""
    return {key: {metric: read_metric(exp / "scores" / key / "scoring" / name) for metric, name in METRIC_FILES.items()}
            for key in score_keys(exp)}


def build_rows(scores: Dict[str, Dict[str, Dict[str, float]]], utt2snr: Dict[str, float],
               params: Dict[str, int]) -> List[Dict[str, Any]]:
    """The rows of results.json; ``params`` maps a key (or its size) to its parameter count."""
    if "noisy" not in scores:
        raise ValueError("no scores of the noisy input (EXP/scores/noisy): run stage 4")
    noisy_sdr = scores["noisy"]["sdr"]
    rows = []
    for key, metrics in sorted(scores.items()):
        method, size, seed = parse_key(key)
        by_snr: Dict[float, List[str]] = {}
        for utt in metrics["sdr"]:
            by_snr.setdefault(utt2snr[utt], []).append(utt)
        for snr, utts in sorted(by_snr.items()):
            row: Dict[str, Any] = {"method": method, "size": size, "seed": seed,
                                   "params": params.get(key, params.get(size or "", 0)), "snr_db": snr}
            for metric in METRIC_FILES:
                row[metric] = statistics.fmean(metrics[metric][u] for u in utts)
            row["sdr_improvement"] = statistics.fmean(metrics["sdr"][u] - noisy_sdr[u] for u in utts)
            row["num_utts"] = len(utts)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- summaries
def seed_values(rows: Iterable[Dict[str, Any]], method: str, size: Optional[str], snr: Optional[float],
                metric: str) -> List[float]:
    """One value per seed (mean over the SNRs when ``snr`` is None)."""
    per_seed: Dict[Any, List[float]] = {}
    for row in rows:
        if row["method"] != method or (method not in ("noisy", "teacher") and row["size"] != size):
            continue
        if snr is None or row["snr_db"] == snr:
            per_seed.setdefault(row["seed"], []).append(row[metric])
    return [statistics.fmean(values) for _, values in sorted(per_seed.items(), key=lambda kv: str(kv[0]))]


def mean_std(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: List[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")


def verdict(rows: List[Dict[str, Any]], sizes: List[str], compression: Dict[str, float]) -> List[str]:
    """The sentences the issue asks for, computed from the rows."""
    lines = []
    for size in sizes:
        base = seed_values(rows, "supervised", size, LOW_SNR, "sdr")
        ranked = sorted(((statistics.fmean(v), m) for m in TWO_STEP if (v := seed_values(rows, m, size, LOW_SNR, "sdr"))),
                        reverse=True)
        if not base or not ranked:
            continue
        best_value, best = ranked[0]
        delta = best_value - statistics.fmean(base)
        ratio = compression.get(size)
        where = f"{size} ({ratio:.0f}x compression)" if ratio else size
        if delta > 0:
            lines.append(f"- {where}: the best two-step student ({LABELS[best]}) beats supervised-only training at "
                         f"{LOW_SNR:g} dB input SNR by **{delta:+.2f} dB** SDR (mean over seeds: {best_value:.2f} vs "
                         f"{statistics.fmean(base):.2f} dB).")
        else:
            lines.append(f"- {where}: **no** two-step student beats supervised-only training at {LOW_SNR:g} dB input "
                         f"SNR; the best ({LABELS[best]}) is {-delta:.2f} dB SDR behind ({best_value:.2f} vs "
                         f"{statistics.fmean(base):.2f} dB, mean over seeds).")
        for method in ("two_step_sp_time",):
            values = seed_values(rows, method, size, LOW_SNR, "sdr")
            if values and method != best:
                lines.append(f"  - {LABELS[method]} (the paper's loss): {statistics.fmean(values) - statistics.fmean(base):+.2f} dB "
                             f"against supervised only.")
        order = ", ".join(f"{LABELS[m]} {v:.2f}" for v, m in ranked)
        lines.append(f"  - two-step losses at {LOW_SNR:g} dB, best first: {order} dB SDR.")
        gdd, mgd = (seed_values(rows, m, size, None, "sdr") for m in ("two_step_gdd", "two_step_mgd"))
        if gdd and mgd:
            diff = statistics.fmean(gdd) - statistics.fmean(mgd)
            winner = "noise (GDD)" if diff > 0 else "masking (MGD)"
            sup_all = seed_values(rows, "supervised", size, None, "sdr")
            vs = ""
            if sup_all:
                vs = (f"; against supervised only: GDD {statistics.fmean(gdd) - statistics.fmean(sup_all):+.2f} dB, "
                      f"MGD {statistics.fmean(mgd) - statistics.fmean(sup_all):+.2f} dB")
            lines.append(f"  - noise vs masking (mean SDR over all input SNRs): {winner} by {abs(diff):.2f} dB{vs}.")
    return lines


# ----------------------------------------------------------------------------- models
def model_costs(exp: Path, sizes: List[str]) -> Dict[str, Dict[str, float]]:
    """params, latency and one-thread RTF of the teacher and each student size."""
    from espnet2.tasks.enh import EnhancementTask

    from espnet_plugin.enh.costs import model_costs as measure

    models = {}
    if (exp / "teacher" / "valid.loss.best.pth").exists():
        models["teacher"] = (exp / "teacher" / "config.yaml", exp / "teacher" / "valid.loss.best.pth")
    for size in sizes:
        exports = sorted((exp / "students").glob(f"*/{size}/seed*/export/done"))
        if exports:
            models[size] = (exports[0].parent / "config.yaml", exports[0].parent / "model.pth")
    costs = {}
    for name, (config, model_file) in models.items():
        model, _ = EnhancementTask.build_model_from_file(config, model_file, device="cpu")
        costs[name] = measure(model)
    return costs


# ----------------------------------------------------------------------------- outputs
def plot(rows: List[Dict[str, Any]], sizes: List[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snrs = sorted({row["snr_db"] for row in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), sharey=True, squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for method in ("teacher",) + STUDENT_METHODS:
            per_snr = [seed_values(rows, method, size, snr, "sdr_improvement") for snr in snrs]
            if not all(per_snr):
                continue
            means = [statistics.fmean(v) for v in per_snr]
            style = dict(color="black", linestyle="--") if method == "teacher" else {}
            line, = ax.plot(snrs, means, marker="o", label=LABELS[method], **style)
            if method != "teacher":
                ax.fill_between(snrs, [min(v) for v in per_snr], [max(v) for v in per_snr],
                                color=line.get_color(), alpha=0.15)
        ax.set_title(f"student {size}")
        ax.set_xlabel("input SNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("SDR improvement (dB)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("SDR improvement by input SNR (line: mean over seeds, band: min-max)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_md(rows: List[Dict[str, Any]], sizes: List[str], costs: Dict[str, Dict[str, float]],
               environment: Dict[str, str]) -> str:
    snrs = sorted({row["snr_db"] for row in rows})
    teacher_params = costs.get("teacher", {}).get("params")
    compression = {s: teacher_params / costs[s]["params"] for s in sizes if teacher_params and s in costs}
    out = ["# Results: two-step knowledge distillation for tiny speech enhancement (egs2/mini_synth_enh)", ""]
    out += [f"- {key}: {value}" for key, value in environment.items()]
    out += ["", "## Models", "",
            "Algorithmic latency measured by perturbing the input (`espnet_plugin.enh.costs`); RTF: "
            "one thread, batch 1, 4 s of audio.", "",
            "| model | params | compression | latency (ms) | RTF (1 thread) |", "|---|---:|---:|---:|---:|"]
    for name, cost in costs.items():
        ratio = "1x" if name == "teacher" else f"{compression.get(name, 0):.0f}x"
        out.append(f"| {name} | {cost['params']:,} | {ratio} | {cost['latency_ms']:.1f} | {cost['rtf']:.4f} |")
    for size in sizes:
        out += ["", f"## Student {size}: SDR (dB) by input SNR, mean ± std over seeds", "",
                "| method | " + " | ".join(f"{snr:g} dB" for snr in snrs) + " | mean SDR | SI-SNR | STOI (%) | PESQ |",
                "|---|" + "---:|" * (len(snrs) + 4)]
        for method in METHODS:
            if not seed_values(rows, method, size, None, "sdr"):
                continue
            cells = [fmt(seed_values(rows, method, size, snr, "sdr")) for snr in snrs]
            cells += [fmt(seed_values(rows, method, size, None, m), 1 if m == "stoi" else 2)
                      for m in ("sdr", "si_snr", "stoi", "pesq")]
            out.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    out += ["", "## Verdict", ""]
    out += verdict(rows, sizes, compression) or ["- not enough runs scored for a verdict"]
    out += ["", "![SDR improvement](figures/sdr_improvement.png)", ""]
    return "\n".join(out)


def environment() -> Dict[str, str]:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "machine": f"{cpu_name()}, {os.cpu_count()} logical cores",
        "load average when reported (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load) if load else "n/a",
        "software": f"torch {torch.__version__}, Python {platform.python_version()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True, help="the test data directory (utt2snr)")
    parser.add_argument("--no_costs", action="store_true", help="skip latency / RTF measurements")
    args = parser.parse_args()
    utt2snr = {utt: float(value) for utt, value in read_scp(args.test / "utt2snr")}
    scores = read_scores(args.exp)
    sizes = sorted({parse_key(k)[1] for k in scores if parse_key(k)[0] not in ("noisy", "teacher")},
                   key=lambda s: float(s.rstrip("k")) if s.rstrip("k").replace(".", "").isdigit() else 0)
    costs = {} if args.no_costs else model_costs(args.exp, sizes)
    params = {name: int(cost["params"]) for name, cost in costs.items()}
    rows = build_rows(scores, utt2snr, params)
    (args.exp / "results.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if costs:
        (args.exp / "costs.json").write_text(json.dumps(costs, indent=1) + "\n", encoding="utf-8")
    plot(rows, sizes, args.exp / "figures" / "sdr_improvement.png")
    (args.exp / "RESULTS.md").write_text(results_md(rows, sizes, costs, environment()), encoding="utf-8")
    print(f"wrote {args.exp / 'RESULTS.md'}, {args.exp / 'results.json'}, {args.exp / 'figures'}")


if __name__ == "__main__":
    main()
