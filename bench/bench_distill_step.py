"""Training-step time of DPHuBERT stage 1 against plain distillation of the same student.

    python bench/bench_distill_step.py --output docs/benchmarks.md [--quick]

One step = frozen teacher forward + student forward + distillation loss (+ the sparsity
Lagrangian for stage 1) + backward + AdamW step, through ``DistillPruneModel`` exactly as
ESPnet's trainer calls it. Batch 4 x 1 s of 16 kHz audio, in fp32 and under bf16 autocast
(ESPnet's ``--use_amp``; the DPHuBERT recipe trains in mixed precision), with the teacher's
forward alone for its share of the step. Writes its own section of the
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
from espnet_plugin.utils.machine import cpu_name, has_bf16_units  # noqa: E402

MARK = "bench_distill_step"


def autocast(bf16: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def make_step(teacher: SpeechEncoder, gated: bool, layer_map: List[List[int]], bf16: bool) -> Callable[[], None]:
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
        with autocast(bf16):
            loss, _, _ = model(speech=speech, speech_lengths=lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def make_teacher_forward(teacher: SpeechEncoder, bf16: bool) -> Callable[[], None]:
    speech, lengths = torch.randn(4, 16000) * 0.1, torch.full((4,), 16000)

    def forward() -> None:
        with torch.no_grad(), autocast(bf16):
            teacher(speech, lengths)

    return forward


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
    bf16_note = ("the CPU has bf16 instructions" if has_bf16_units() else
                 "this CPU has no bf16 instructions (AVX512-BF16 / AMX): torch emulates bf16, so those rows say "
                 "nothing about a machine that has them")
    return "\n".join([
        markers(MARK)[0],
        "## DistillPruneTask: stage-1 step vs plain distillation (`bench/bench_distill_step.py`)",
        "",
        f"- CPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"repeats: {repeats}; median (min) in ms",
        "- step: teacher forward (no grad) + student forward + layer-to-layer loss (+ Lagrangian) + "
        "backward + AdamW step, batch 4 x 1 s, through `DistillPruneModel`; bf16: the forward under "
        f"`torch.autocast('cpu', torch.bfloat16)` (ESPnet's `--use_amp`); {bf16_note}",
        "- teacher: its forward alone (no grad, same precision), and its share of the stage-1 step",
        "",
        "| student | precision | plain distillation | stage 1 (gated + Lagrangian) | ratio of medians "
        "| teacher forward | teacher's share of stage 1 |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        markers(MARK)[1],
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"fp32", "bf16"}:
        parser.error(f"--precisions takes fp32 and / or bf16, got {args.precisions!r}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settings = {"tiny": (tiny_config(num_layers=4, ffn=128, conv_width=32, embed_dim=64, head_dim=16), [[0, 0], [2, 2], [4, 4]], 30), "HuBERT Base": (hubert_base_config(), [[0, 0], [4, 4], [8, 8], [12, 12]], 6)}
    rows, repeats = [], {}
    for name, (config, layer_map, n) in settings.items():
        n = max(2, n // 3) if args.quick else n
        teacher = SpeechEncoder(config).eval()
        for precision in precisions:
            bf16 = precision == "bf16"
            times = time_steps({"plain": make_step(teacher, False, layer_map, bf16),
                                "stage1": make_step(teacher, True, layer_map, bf16),
                                "teacher": make_teacher_forward(teacher, bf16)}, warmup=2, repeats=n)
            plain, gated = statistics.median(times["plain"]), statistics.median(times["stage1"])
            alone = statistics.median(times["teacher"])
            rows.append(f"| {name} | {precision} | {plain:.1f} ({min(times['plain']):.1f}) "
                        f"| {gated:.1f} ({min(times['stage1']):.1f}) | {gated / plain:.2f} "
                        f"| {alone:.1f} ({min(times['teacher']):.1f}) | {alone / gated:.0%} |")
            print(rows[-1], flush=True)
        repeats[name] = n
    write_section(args.output, MARK, section(rows, repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
