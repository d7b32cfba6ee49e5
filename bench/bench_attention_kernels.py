"""torch's attention kernels in bf16 training on a CPU: flash against math, by input length.

    python bench/bench_attention_kernels.py --output docs/benchmarks.md [--quick]

One HuBERT / wav2vec 2.0 Base attention (12 heads of 64) with a key padding mask, under
gradients: forward and backward of ``F.scaled_dot_product_attention`` through each kernel, at
lengths from 1 s (49 frames) to 10 s of audio. ``espnet_plugin/models/attention_kernel.py``
runs the math kernel up to ``MATH_KERNEL_MAX_FRAMES`` frames from these numbers. Medians of
interleaved repeats. Writes its own section of the benchmarks file (between
``<!-- bench_attention_kernels:start/end -->``).
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import kernel_bench_args, interleaved_ms, markers, run_lines, write_section  # noqa: E402
from espnet_plugin.models.attention_kernel import MATH_KERNEL_MAX_FRAMES  # noqa: E402

MARK = "bench_attention_kernels"
KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def forward_backward(backend: SDPBackend, q, k, v, mask, grad) -> None:
    with sdpa_kernel(backend):
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)


def measure(frames: int, batch: int, heads: int, head_dim: int, repeats: int) -> Dict[str, float]:
    """Median ms of forward + backward in bf16 through each kernel."""
    q, k, v = (torch.randn(batch, heads, frames, head_dim, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    mask = torch.ones(batch, 1, 1, frames, dtype=torch.bool)
    mask[-1, ..., frames // 2:] = False  # one utterance half padding
    grad = torch.randn(batch, heads, frames, head_dim, dtype=torch.bfloat16)
    return interleaved_ms(
        {name: functools.partial(forward_backward, backend, q, k, v, mask, grad) for name, backend in KERNELS.items()},
        repeats,
    )


def section(args: argparse.Namespace, results: Dict[int, Dict[str, float]], shape: str) -> str:
    rows = [
        f"| {frames} | {frames / 49:.0f} | {r['flash']:.2f} | {r['math']:.2f} | {r['flash'] / r['math']:.2f}x | "
        f"{'math' if frames <= MATH_KERNEL_MAX_FRAMES else 'flash'} |"
        for frames, r in results.items()
    ]
    return "\n".join([
        markers(MARK)[0],
        "## Attention kernels in bf16 training on a CPU (`bench/bench_attention_kernels.py`)",
        "",
        *run_lines("bf16"),
        f"- command: `python bench/bench_attention_kernels.py{' --quick' if args.quick else ''}`",
        f"- one attention ({shape}), key padding mask, forward + backward of `F.scaled_dot_product_attention`; "
        f"median of {args.repeats} interleaved repeats",
        "",
        "| frames | ~ seconds of audio | flash ms | math ms | math's speed-up | ours uses |",
        "|---:|---:|---:|---:|---:|---|",
        *rows,
        markers(MARK)[1],
    ])


def main() -> int:
    args = kernel_bench_args(__doc__, "small shapes: checks the script, times nothing")
    heads, head_dim = (2, 8) if args.quick else (12, 64)
    batches = {49: 4, 99: 4, 149: 4, 199: 4, 249: 4, 299: 4, 499: 2} if not args.quick else {49: 2, 9: 2}
    results = {frames: measure(frames, batch, heads, head_dim, args.repeats) for frames, batch in batches.items()}
    shape = f"{heads} heads of {head_dim}, batch 4 (2 at 499 frames)" if not args.quick else f"{heads} heads"
    text = section(args, results, shape)
    print(text)
    if not args.quick:
        write_section(args.output, MARK, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
