"""Helpers shared by the benchmark scripts: each writes its own section of docs/benchmarks.md."""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from espnet_plugin.utils.machine import cpu_name

HEADER = "# Benchmarks\n\nEach section is written by the script named in its heading; rerun it to refresh.\n"


def markers(mark: str) -> tuple:
    return f"<!-- {mark}:start -->", f"<!-- {mark}:end -->"


def write_section(path: Path, mark: str, section: str) -> None:
    """Replace the section between ``mark``'s markers (``section`` includes them) in place, or
    append it; other scripts' sections are kept."""
    start, end = markers(mark)
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def run_lines(precision: str = "fp32") -> List[str]:
    """The machine and the moment of a training benchmark, written after the run: CPU, threads,
    torch version, precision, date and the load average then (a busy machine shows there)."""
    load = os.getloadavg()
    return [
        f"- CPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; {precision}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
    ]


def interleaved_ms(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> Dict[str, float]:
    """Median milliseconds of each function over ``repeats`` rounds in which the functions take
    turns (so that machine load affects them alike), after ``warmup`` untimed rounds."""
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                samples[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in samples.items()}


def kernel_bench_args(doc: str, quick_help: str) -> argparse.Namespace:
    """The command line of the kernel benchmarks (--output, --repeats, --threads, --quick),
    parsed and applied: torch's thread count, seed 0, and 2 repeats with --quick."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quick:
        args.repeats = 2
    return args
