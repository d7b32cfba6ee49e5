"""A short stage-1 run with and without shrinking the student during training.

    python bench/bench_shrink.py --output docs/benchmarks.md [--steps 200] [--quick]

HuBERT Base teacher (random weights) and its gated copy as the student (conv channels, heads
and FFN units gated), L1 + cosine on layers 0 / 4 / 8 / 12, AdamW, batch 4 x 1 s, the sparsity
target ramped over the first steps; one run keeps the student full size, the other removes the
units whose P(open) fell below ``--threshold`` every ``--interval`` steps
(``model_conf.shrink_threshold`` / ``shrink_interval``, docs/pruning.md). Both runs use the same
seed and batches, so their loss curves and final architectures can be compared. Writes its own
section of the benchmarks file (between ``<!-- bench_shrink:start/end -->``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import run_lines, markers, write_section  # noqa: E402
from espnet_plugin.distill.export import budget_keep  # noqa: E402
from espnet_plugin.distill.model import DistillPruneModel  # noqa: E402
from espnet_plugin.distill.student import build_student  # noqa: E402
from espnet_plugin.models import GateConfig, SpeechEncoder, hubert_base_config  # noqa: E402
from espnet_plugin.pruning import prune_model  # noqa: E402

MARK = "bench_shrink"
LAYER_MAP = [[0, 0], [4, 4], [8, 8], [12, 12]]


def batches(count: int, seed: int = 0) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 16000, generator=gen) * 0.1 for _ in range(count)]


def run(teacher: SpeechEncoder, args: argparse.Namespace, threshold: Optional[float], skip: float = 0.0,
        fused: bool = False) -> Dict[str, object]:
    torch.manual_seed(0)
    gates = GateConfig(conv_channels=True, attention_heads=True, ffn_units=True)
    model = DistillPruneModel(
        build_student(teacher, gates), teacher,
        [{"name": "layer_to_layer", "conf": {"layer_map": LAYER_MAP}}],
        target_sparsity=args.target, sparsity_metric=args.metric, sparsity_warmup_steps=args.warmup_steps,
        shrink_threshold=threshold, shrink_interval=args.interval, macs_target_sparsity=args.macs_target,
        quadratic_penalty=args.quadratic_penalty, macs_quadratic_penalty=args.macs_quadratic_penalty,
        skip_closed_units=skip,
    ).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(args.lr, args.gate_lr, args.lambda_lr), lr=args.lr,
                                  weight_decay=0.0, fused=fused or None)
    model.attach_optimizer(optimizer)
    data = batches(8)
    lengths = torch.full((4,), 16000)
    times, losses, sparsity, params = [], [], [], []
    for step in range(args.steps):
        start = time.perf_counter()
        loss, stats, _ = model(speech=data[step % len(data)], speech_lengths=lengths)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(float(stats["distill"]))
        sparsity.append(float(stats["expected_sparsity"]))
        params.append(model.student.num_params())
        if step % 20 == 0 or step == args.steps - 1:
            print(f"  step {step}: {times[-1]:.2f} s, distill {losses[-1]:.4f}, expected sparsity {sparsity[-1]:.4f}, "
                  f"student {params[-1] / 1e6:.2f} M params", flush=True)
    model.eval()
    fitted = prune_model(model.student, budget_keep(model, 0.005)[0])
    return {
        "times": times, "losses": losses, "sparsity": sparsity, "params": params,
        "macs_sparsity": float(model.expected_macs_sparsity()) if args.macs_target is not None else None,
        "final_params": int(model.student.expected_params(deterministic=True)),
        "params_share": float(model.student.expected_params(deterministic=True)) / teacher.num_params(),
        "macs_share": float(model.student.expected_macs(deterministic=True) / teacher.expected_macs()),
        "fitted_params_share": fitted.num_params() / teacher.num_params(),
        "fitted_macs_share": float(fitted.expected_macs() / teacher.expected_macs()),
    }


def teacher_forward_seconds(teacher: SpeechEncoder, repeats: int = 5) -> float:
    speech, lengths = batches(1)[0], torch.full((4,), 16000)
    samples = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            teacher(speech, lengths)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples[1:])


def budget_name(args) -> str:
    name = args.metric if args.macs_target is None else "joint"
    return name if args.quadratic_penalty is None else f"{name}_quadratic"


def section_mark(args) -> str:
    name = budget_name(args) + ("_skip" if args.skip_closed else "") + ("_fused" if args.fused_adamw else "")
    return MARK if name == "params" else f"{MARK}_{name}"


def section(args, results, teacher_s: float, mark: str) -> str:
    w = args.warmup_steps
    rows = []
    for name, r in results.items():
        t = r["times"]
        tail = args.steps // 4
        macs = "" if r["macs_sparsity"] is None else f" / {r['macs_sparsity']:.4f}"
        rows.append(
            f"| {name} | {sum(t):.0f} | {statistics.median(t[:w]):.2f} | {statistics.median(t[-tail:]):.2f} | "
            f"{r['params'][-1] / 1e6:.2f} | {r['final_params'] / 1e6:.3f} | {r['sparsity'][-1]:.4f}{macs} | "
            f"{statistics.mean(r['losses'][-tail:]):.4f} | {100 * r['params_share']:.1f} | {100 * r['macs_share']:.1f} "
            f"| {100 * r['fitted_params_share']:.1f} | {100 * r['fitted_macs_share']:.1f} |"
        )
    closing = []
    if "full size" in results and "shrinking" in results:
        full, shrunk = results["full size"], results["shrinking"]
        ratio = sum(shrunk["times"]) / sum(full["times"])
        loss_gap = max(abs(a - b) for a, b in zip(full["losses"], shrunk["losses"]))
        closing = ["", f"Whole run with shrinking: **{ratio:.2f}x** the full-size run's time. Largest difference of the "
                   f"per-step distillation loss between the runs: {loss_gap:.4f}."]
    budget = (f"{args.metric} sparsity target {args.target}" if args.macs_target is None else
              f"joint budget: params sparsity target {args.target} and MAC sparsity target {args.macs_target}")
    options = f" --metric {args.metric}" + ("" if args.macs_target is None else f" --macs_target {args.macs_target}")
    options += "" if args.only is None else f" --only '{args.only}'"
    options += f" --skip_closed {args.skip_closed}" if args.skip_closed else ""
    options += " --fused_adamw" if args.fused_adamw else ""
    if args.quadratic_penalty is not None:
        options += f" --quadratic_penalty {args.quadratic_penalty}"
        budget += f", quadratic penalty (weight {args.quadratic_penalty}) instead of trained multipliers"
    if args.macs_quadratic_penalty is not None:
        options += f" --macs_quadratic_penalty {args.macs_quadratic_penalty}"
        budget += f" (MAC term: weight {args.macs_quadratic_penalty})"
    return "\n".join([
        markers(mark)[0],
        f"## Shrinking the student during stage 1, {budget_name(args).replace('_', ', ')} budget"
        + (", skipping units sampled closed" if args.skip_closed else "")
        + (", fused AdamW" if args.fused_adamw else "") + " (`bench/bench_shrink.py`)",
        "",
        *run_lines(),
        f"- command: `python bench/bench_shrink.py --steps {args.steps}{options}`",
        f"- run: HuBERT Base teacher and gated student (conv channels, heads, FFN units), random weights, L1 + cosine "
        f"on layers 0/4/8/12, AdamW (lr {args.lr}, gates {args.gate_lr}, multipliers {args.lambda_lr}), gradient "
        f"clipping 10, batch 4 x 1 s (8 fixed batches in turn), {budget} ramped over {w} steps, "
        f"{args.steps} steps, the model's forward + backward + step timed (no data loading); shrinking: "
        f"P(open) < {args.threshold} every {args.interval} steps"
        + (f", and each step leaves out the units sampled closed in groups where at least {args.skip_closed:.0%} "
           "were" if args.skip_closed else "")
        + ("; the shrinking run's AdamW is torch's fused kernel (the full-size run's is torch's default)"
           if args.fused_adamw else ""),
        f"- the teacher's forward alone: {teacher_s:.2f} s per batch (the part of a step shrinking cannot touch)",
        "",
        "| student | total s | median step s, ramp | median step s, last quarter | params at the end (M) "
        "| exported params (M) | expected sparsity (params / MACs) | distill loss, last quarter "
        "| deterministic masks: params, % of teacher | MACs, % | export on budget: params, % of teacher | MACs, % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "*Export on budget*: `fit_to_budget` with 0.5 % tolerance on the (primary) budget's metric, as "
        "`export_model` does (docs/pruning.md).",
        *closing,
        markers(mark)[1],
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup_steps", type=int, default=40, help="steps of the sparsity ramp")
    parser.add_argument("--target", type=float, default=0.75, help="sparsity target")
    parser.add_argument("--metric", choices=("params", "macs"), default="params", help="what the budget counts")
    parser.add_argument("--macs_target", type=float, default=None,
                        help="with --metric params: a MAC sparsity target beside it (joint budget)")
    parser.add_argument("--quadratic_penalty", type=float, default=None,
                        help="the quadratic penalty method with this weight instead of the trained multipliers")
    parser.add_argument("--macs_quadratic_penalty", type=float, default=None,
                        help="the joint budget's MAC term's weight (default: --quadratic_penalty)")
    parser.add_argument("--only", choices=("full size", "shrinking"), default=None, help="run one of the two students")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--gate_lr", type=float, default=0.2,
                        help="gate logits' lr: high enough for gates to close within a short run")
    parser.add_argument("--lambda_lr", type=float, default=0.05)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--skip_closed", type=float, default=0.0,
                        help="the shrinking run also leaves out units sampled closed in groups where at least this "
                             "share was (model_conf.skip_closed_units)")
    parser.add_argument("--fused_adamw", action="store_true",
                        help="the shrinking run's AdamW uses torch's fused kernel (optim_conf: {fused: true}); the "
                             "full-size run keeps torch's default, as the official code does")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a tiny teacher: checks the script, times nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = hubert_base_config()
    if args.quick:
        from espnet_plugin.models import tiny_config

        config = tiny_config(num_layers=12)
    teacher = SpeechEncoder(config).eval()
    teacher_s = teacher_forward_seconds(teacher)
    results = {}
    for name, threshold in (("full size", None), ("shrinking", args.threshold)):
        if args.only not in (None, name):
            continue
        print(name, flush=True)
        ours = threshold is not None
        results[name] = run(teacher, args, threshold, args.skip_closed if ours else 0.0, args.fused_adamw and ours)
    mark = section_mark(args)
    text = section(args, results, teacher_s, mark)
    print(text)
    if not args.quick:
        write_section(args.output, mark, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
