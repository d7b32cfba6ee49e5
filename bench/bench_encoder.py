"""CPU benchmark of the pruning-aware encoder; writes a Markdown section.

It answers three questions the product cares about: how much the hard-concrete gates slow
a distillation training step (goal: gated / ungated <= 1.15), how much faster a ~70 %-pruned
HuBERT Base runs at inference, and what params / MACs each model costs.

    python bench/bench_encoder.py --output docs/benchmarks.md [--quick] [--repeats N] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from espnet_plugin.utils.machine import cpu_name  # noqa: E402
from espnet_plugin.models import EncoderConfig, GateConfig, SpeechEncoder, with_gates  # noqa: E402
from espnet_plugin.utils.audio import SAMPLE_RATE  # noqa: E402
from espnet_plugin.models import hubert_base_config, tiny_config  # noqa: E402
from bench.common import markers, write_section  # noqa: E402
from espnet_plugin.pruning import prune_model  # noqa: E402

MARK = "bench_encoder"
START, END = markers(MARK)
RATIO_GOAL = 1.15
# Uniform keep fraction of conv channels, heads and FFN units: removes ~72 % of HuBERT Base params.
PRUNE_KEEP = 0.24
SPARSITY_RANGE = (0.70, 0.75)
TRAIN_BATCH, TRAIN_SECONDS = 4, 1.0
INFER_SECONDS = 4.0
SHARED_LIMIT = 0.10  # share of the CPU taken by other processes above which timings are flagged
BIG_LOG_ALPHA = 20.0  # far enough from 0 that the deterministic mask keeps exactly the positive gates


@dataclass
class Timing:
    """Per-call wall times in ms."""

    values: List[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def minimum(self) -> float:
        return min(self.values)


def time_interleaved(fns: Dict[str, Callable[[], None]], warmup: int, repeats: int, desc: str) -> Dict[str, Timing]:
    """Median-ready timings, candidates interleaved so that load drift on a shared machine hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    with tqdm(total=repeats * len(names), desc=desc, leave=False) as bar:
        for r in range(repeats):
            for name in names if r % 2 == 0 else reversed(names):
                start = time.perf_counter()
                fns[name]()
                times[name].append((time.perf_counter() - start) * 1000.0)
                bar.update()
    return {name: Timing(values) for name, values in times.items()}


def distill_layers(num_layers: int) -> List[int]:
    """Hidden-state indices matched by the L1 loss: thirds of the depth, as DPHuBERT does (4, 8, 12)."""
    return sorted({max(1, num_layers * k // 3) for k in (1, 2, 3)})


def distill_step(
    teacher: SpeechEncoder, student: SpeechEncoder, wavs: torch.Tensor, lengths: torch.Tensor, target: float
) -> None:
    """Teacher forward, student forward, L1 on matched layers, expected-params term if gated
    (from the forward's logits, as ``DistillPruneModel`` computes it), backward."""
    with torch.no_grad():
        teacher_states, _ = teacher(wavs, lengths)
    student_states, _ = student(wavs, lengths)
    layers = distill_layers(student.config.num_layers)
    loss = sum((student_states[i] - teacher_states[i]).abs().mean() for i in layers)
    if student.gate_parameters():
        loss = loss + (student.cost("params")(student.sampled_structure()) / target - 1.0) ** 2
    loss.backward()
    student.zero_grad(set_to_none=True)


def bench_training(config: EncoderConfig, warmup: int, repeats: int, desc: str) -> Dict[str, Timing]:
    """One distillation step for the plain student and for the same student with all five gate kinds."""
    torch.manual_seed(0)
    teacher = SpeechEncoder(config).eval()
    students = {
        "ungated": copy.deepcopy(teacher).train(),
        "gated": with_gates(teacher, GateConfig.all_on()).train(),
    }
    samples = int(TRAIN_SECONDS * SAMPLE_RATE)
    wavs = torch.randn(TRAIN_BATCH, samples)
    lengths = torch.full((TRAIN_BATCH,), samples)
    target = 0.3 * teacher.num_params()
    fns = {name: (lambda s=s: distill_step(teacher, s, wavs, lengths, target)) for name, s in students.items()}
    return time_interleaved(fns, warmup, repeats, desc)


def set_random_keep(model: SpeechEncoder, keep: float, seed: int = 0) -> None:
    """Open a random ``keep`` fraction of each multi-unit gate group; block gates stay open."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("log_alpha"):
                continue
            n = p.numel()
            if n == 1:
                p.fill_(BIG_LOG_ALPHA)
                continue
            opened = torch.randperm(n, generator=gen)[: max(1, round(keep * n))]
            p.fill_(-BIG_LOG_ALPHA)
            p[opened] = BIG_LOG_ALPHA


def pruned_hubert_base_config() -> Dict[str, SpeechEncoder]:
    """HuBERT Base and the model ``prune_model`` makes from it with ~72 % of params removed."""
    torch.manual_seed(0)
    dense = SpeechEncoder(hubert_base_config()).eval()
    gated = with_gates(dense, GateConfig.all_on())
    set_random_keep(gated, PRUNE_KEEP)
    pruned = prune_model(gated).eval()
    sparsity = 1.0 - pruned.num_params() / dense.num_params()
    if not SPARSITY_RANGE[0] <= sparsity <= SPARSITY_RANGE[1]:
        raise RuntimeError(f"PRUNE_KEEP={PRUNE_KEEP} gave param sparsity {sparsity:.3f}, outside {SPARSITY_RANGE}")
    return {"dense": dense, "pruned": pruned}


def bench_inference(models: Dict[str, SpeechEncoder], warmup: int, repeats: int) -> Dict[str, Timing]:
    """Batch 1 x 4 s, eval mode, no autograd."""
    wavs = torch.randn(1, int(INFER_SECONDS * SAMPLE_RATE))
    lengths = torch.tensor([wavs.shape[1]])

    def forward(model: SpeechEncoder) -> None:
        with torch.no_grad():
            model(wavs, lengths)

    fns = {name: (lambda m=m: forward(m)) for name, m in models.items()}
    return time_interleaved(fns, warmup, repeats, "inference")


def costs(model: SpeechEncoder) -> Dict[str, float]:
    """Real params and MACs per second of 16 kHz audio of a gate-free model."""
    return {"params": float(model.num_params()), "macs": float(model.expected_macs(seconds=1.0))}


def busy_cpu_seconds() -> Optional[float]:
    """Machine-wide non-idle CPU seconds since boot (Linux /proc/stat), None elsewhere."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return None
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


@dataclass
class CpuShare:
    """Snapshot for measuring how much of the machine other processes took while we ran."""

    wall: float
    busy: Optional[float]
    own: float

    @classmethod
    def now(cls) -> "CpuShare":
        return cls(time.perf_counter(), busy_cpu_seconds(), time.process_time())

    def others_since(self, start: "CpuShare") -> Optional[float]:
        if self.busy is None or start.busy is None:
            return None
        capacity = (self.wall - start.wall) * (os.cpu_count() or 1)
        return max(0.0, (self.busy - start.busy) - (self.own - start.own)) / capacity


def machine_lines(threads: int, others: Optional[float]) -> List[str]:
    """Where the numbers came from, and whether other processes competed for the CPU."""
    lines = [
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch.set_num_threads({threads})",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
    ]
    if others is not None:
        lines.append(f"- CPU taken by other processes during the run: {others:.0%} of the machine")
        if others > SHARED_LIMIT:
            lines.append("- **warning: the machine was shared; timings are unreliable, rerun on an idle machine**")
    return lines


def paired_ratio(gated: Timing, plain: Timing) -> float:
    """Median of gated / ungated over back-to-back pairs: robust to load that changes during the run."""
    return statistics.median(g / u for g, u in zip(gated.values, plain.values))


def training_table(results: Dict[str, Dict[str, Timing]]) -> List[str]:
    """The goal is judged on the paired ratio; on a quiet machine it equals the ratio of medians."""
    rows = [
        "| student | ungated ms/step (min) | gated ms/step (min) | ratio of medians | paired ratio "
        f"| paired ratio <= {RATIO_GOAL} |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for label, timing in results.items():
        plain, gated = timing["ungated"], timing["gated"]
        ratio = paired_ratio(gated, plain)
        rows.append(
            f"| {label} | {plain.median:.1f} ({plain.minimum:.1f}) | {gated.median:.1f} ({gated.minimum:.1f}) "
            f"| {gated.median / plain.median:.3f} | {ratio:.3f} | {'met' if ratio <= RATIO_GOAL else 'NOT met'} |"
        )
    return rows


def inference_table(timings: Dict[str, Timing], models: Dict[str, SpeechEncoder]) -> List[str]:
    rows = ["| model | params (M) | median ms (min) | real-time factor |", "|---|---:|---:|---:|"]
    for name, timing in timings.items():
        rtf = timing.median / 1000.0 / INFER_SECONDS
        params = models[name].num_params() / 1e6
        rows.append(f"| HuBERT Base {name} | {params:.2f} | {timing.median:.1f} ({timing.minimum:.1f}) | {rtf:.3f} |")
    dense, pruned = timings["dense"].median, timings["pruned"].median
    return rows + ["", f"Speed-up of the pruned model: {dense / pruned:.2f}x."]


def cost_table(rows_in: Sequence[Tuple[str, Dict[str, float], Optional[Dict[str, float]]]]) -> List[str]:
    """One row per (label, costs, reference); sparsity only where a model was pruned from the reference."""
    rows = [
        "| model | params (M) | GMACs per s of audio | param sparsity | MAC sparsity |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, c, reference in rows_in:
        sparsity = ("-", "-")
        if reference is not None:
            sparsity = (f"{1 - c['params'] / reference['params']:.1%}", f"{1 - c['macs'] / reference['macs']:.1%}")
        rows.append(f"| {label} | {c['params'] / 1e6:.3f} | {c['macs'] / 1e9:.3f} | {sparsity[0]} | {sparsity[1]} |")
    return rows


def render(
    machine: List[str],
    command: str,
    protocol: str,
    training: Dict[str, Dict[str, Timing]],
    inference: List[str],
    cost: List[str],
) -> str:
    return "\n".join(
        [
            START,
            "## Encoder: gate overhead, pruned inference, costs (`bench/bench_encoder.py`)",
            "",
            *machine,
            f"- command: `{command}`",
            f"- protocol: {protocol}",
            "",
            f"### Distillation training step, batch {TRAIN_BATCH} x {TRAIN_SECONDS:g} s",
            "",
            "Frozen teacher (same architecture, eval, no_grad) + student forward + L1 on layers at thirds of "
            "the depth + backward. The gated student has all five gate kinds in train mode (sampling) and "
            "adds the expected-params term; the ungated student is plain distillation. Gradients are "
            "zeroed, no optimizer step. Paired ratio: median over repeats of gated / ungated measured back "
            "to back (order alternating).",
            "",
            *training_table(training),
            "",
            f"### Inference latency, batch 1 x {INFER_SECONDS:g} s, eval, no_grad",
            "",
            f"The pruned model opens a random {PRUNE_KEEP:.0%} of the conv channels, heads and FFN units of "
            "each group of a gated HuBERT Base (blocks stay) and is exported with `prune_model`.",
            "",
            *inference,
            "",
            "### Params and MACs per second of 16 kHz audio",
            "",
            "`num_params()` and `expected_macs()` of the gate-free models; sparsity relative to HuBERT Base.",
            "",
            *cost,
            END,
        ]
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="few repeats: the whole run in under 3 minutes")
    parser.add_argument("--repeats", type=int, help="timed calls per model (default 20, 3 with --quick)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 20)
    warmup = 1 if args.quick else 2
    torch.set_num_threads(args.threads)
    start = CpuShare.now()
    # tiny steps take milliseconds, so they get more calls for a stable median
    training = {
        "HuBERT Base": bench_training(hubert_base_config(), warmup, repeats, "train HuBERT Base"),
        "tiny": bench_training(tiny_config(), warmup * 5, repeats * 10, "train tiny"),
    }
    models = pruned_hubert_base_config()
    inference = inference_table(bench_inference(models, warmup, repeats), models)
    base_costs = costs(models["dense"])
    cost = cost_table(
        [
            ("HuBERT Base (teacher)", base_costs, None),
            ("HuBERT Base pruned", costs(models["pruned"]), base_costs),
            ("tiny config", costs(SpeechEncoder(tiny_config())), None),
        ]
    )
    command = "python bench/bench_encoder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    protocol = (
        f"{warmup} warm-up + {repeats} timed calls per model for HuBERT Base ({warmup * 5} + {repeats * 10} "
        "for tiny), models interleaved, median (min) reported"
    )
    others = CpuShare.now().others_since(start)
    section = render(machine_lines(args.threads, others), command.strip(), protocol, training, inference, cost)
    write_section(args.output, MARK, section)
    print(section)


if __name__ == "__main__":
    main()
