"""Training-step time of DPHuBERT stage 1 against plain distillation of the same student.

    python bench/bench_distill_step.py --output docs/benchmarks.md [--quick]

One step = frozen teacher forward + student forward + distillation loss (+ the sparsity
Lagrangian for stage 1) + backward + AdamW step, through ``DistillPruneModel`` exactly as
ESPnet's trainer calls it. Batch 4 x 1 s of 16 kHz audio. Writes its own section of the
benchmarks file (between ``<!-- bench_distill_step:start/end -->``).
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from espnet_plugin.distill.model import DistillPruneModel  # noqa: E402
from espnet_plugin.distill.student import build_student  # noqa: E402
from espnet_plugin.models import GateConfig, SpeechEncoder  # noqa: E402
from espnet_plugin.models import hubert_base_config, tiny_config  # noqa: E402
from bench.common import markers, write_section  # noqa: E402
from espnet_plugin.utils.machine import cpu_name  # noqa: E402

MARK = "bench_distill_step"


def make_step(teacher: SpeechEncoder, gated: bool, layer_map: List[List[int]]) -> Callable[[], None]:
    gates = GateConfig.all_on() if gated else GateConfig()
    model = DistillPruneModel(
        build_student(teacher, gates), teacher,
        [{"name": "layer_to_layer", "conf": {"layer_map": layer_map}}],
        target_sparsity=0.75 if gated else None, sparsity_warmup_steps=100,
    ).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(2e-4, 0.02, 0.02), lr=2e-4)
    speech = torch.randn(4, 16000) * 0.1
    lengths = torch.full((4,), 16000)

    def step() -> None:
        loss, _, _ = model(speech=speech, speech_lengths=lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def time_steps(steps: Dict[str, Callable[[], None]], warmup: int, repeats: int) -> Dict[str, List[float]]:
    """Interleave the variants so that machine load affects them alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def section(rows: List[str], repeats: Dict[str, int]) -> str:
    return "\n".join([
        markers(MARK)[0],
        "## DistillPruneTask: stage-1 step vs plain distillation (`bench/bench_distill_step.py`)",
        "",
        f"- CPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"repeats: {repeats}; median (min) in ms",
        "- step: teacher forward (no grad) + student forward + layer-to-layer loss (+ Lagrangian) + "
        "backward + AdamW step, batch 4 x 1 s, through `DistillPruneModel`",
        "",
        "| student | plain distillation | stage 1 (gated + Lagrangian) | ratio of medians |",
        "|---|---:|---:|---:|",
        *rows,
        markers(MARK)[1],
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settings = {"tiny": (tiny_config(num_layers=4, ffn=128, conv_width=32, embed_dim=64, head_dim=16), [[0, 0], [2, 2], [4, 4]], 30), "HuBERT Base": (hubert_base_config(), [[0, 0], [4, 4], [8, 8], [12, 12]], 6)}
    rows, repeats = [], {}
    for name, (config, layer_map, n) in settings.items():
        n = max(2, n // 3) if args.quick else n
        teacher = SpeechEncoder(config).eval()
        times = time_steps({"plain": make_step(teacher, False, layer_map), "stage1": make_step(teacher, True, layer_map)},
                           warmup=2, repeats=n)
        plain, gated = statistics.median(times["plain"]), statistics.median(times["stage1"])
        rows.append(f"| {name} | {plain:.1f} ({min(times['plain']):.1f}) | {gated:.1f} ({min(times['stage1']):.1f}) "
                    f"| {gated / plain:.2f} |")
        repeats[name] = n
        print(rows[-1], flush=True)
    write_section(args.output, MARK, section(rows, repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
