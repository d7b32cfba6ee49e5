"""The convolutions of ``espnet_plugin.models.time_conv`` against torch's Conv1d on a CPU.

    python bench/bench_conv_kernels.py --output docs/benchmarks.md [--quick]

- The positional convolution module (HuBERT / wav2vec 2.0 Base: weight norm, 768 channels, 16
  groups, kernel 128, GELU) on batches of 4 utterances of 1 s (49 frames, the speed
  benchmarks' batches) and 12 s (600 frames, about a LibriSpeech utterance): the forward under
  ``no_grad`` (a frozen teacher) and forward + backward with gradients for the input and the
  weights (a student).
- The waveform CNN (7 strided layers, GroupNorm after the first, GELU) on 4 x 1 s of audio,
  forward + backward, at full width (512 channels) and at 30 % (154, a pruned student), with
  oneDNN's backward and with torch's im2col + GEMM backward (used on Intel CPUs).

Medians of interleaved repeats. Writes its own section of the benchmarks file (between
``<!-- bench_conv_kernels:start/end -->``).
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import kernel_bench_args, run_lines, interleaved_ms, markers, write_section  # noqa: E402
from espnet_plugin.models.components import ConvPositionalEmbedding, FeatureExtractor  # noqa: E402
from espnet_plugin.models import components  # noqa: E402
from espnet_plugin.models.time_conv import IM2COL_BACKWARD  # noqa: E402

MARK = "bench_conv_kernels"
HUBERT_CNN = [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2  # (kernel, stride) per layer


def conv1d_path(module: ConvPositionalEmbedding, x: torch.Tensor) -> torch.Tensor:
    """The module's forward through torch's Conv1d (the weight norm computed at every call)."""
    y = module.conv(x.transpose(1, 2))
    return F.gelu(y[..., :-module.trim] if module.trim else y).transpose(1, 2)


def ours_path(module: ConvPositionalEmbedding, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def measure(module: ConvPositionalEmbedding, frames: int, repeats: int) -> Dict[str, float]:
    """Median ms of each path, forward only and forward + backward, repeats interleaved."""
    x = torch.randn(4, frames, module.conv.in_channels)
    x_grad = x.clone().requires_grad_()
    paths = {"Conv1d": conv1d_path, "ours": ours_path}

    def forward(path) -> None:
        with torch.no_grad():
            path(module, x)

    def train(path) -> None:
        path(module, x_grad).sum().backward()

    fns = {}
    for name, path in paths.items():
        fns[f"{name} fwd"] = functools.partial(forward, path)
        fns[f"{name} fwd+bwd"] = functools.partial(train, path)
    return interleaved_ms(fns, repeats)


def measure_cnn(channels: int, layers, repeats: int) -> Dict[str, float]:
    """Median ms of the waveform CNN's forward + backward, oneDNN's backward against im2col + GEMM."""
    cnn = FeatureExtractor([[channels, k, s] for k, s in layers], "group_norm", False, False, 0.0)
    wavs = torch.randn(4, 16000)
    default = components.strided_time_conv

    def run(im2col: bool) -> None:
        components.strided_time_conv = functools.partial(default, im2col_backward=im2col)
        cnn(wavs)[0].sum().backward()

    try:
        return interleaved_ms({"oneDNN": lambda: run(False), "im2col": lambda: run(True)}, repeats)
    finally:
        components.strided_time_conv = default


def section(args: argparse.Namespace, results: Dict[int, Dict[str, float]], module: ConvPositionalEmbedding,
            cnn: Dict[int, Dict[str, float]]) -> str:
    conv = module.conv
    rows = []
    for frames, r in results.items():
        rows.append(
            f"| {frames} | {r['Conv1d fwd']:.1f} | {r['ours fwd']:.1f} | {r['Conv1d fwd'] / r['ours fwd']:.2f}x "
            f"| {r['Conv1d fwd+bwd']:.1f} | {r['ours fwd+bwd']:.1f} | {r['Conv1d fwd+bwd'] / r['ours fwd+bwd']:.2f}x |"
        )
    return "\n".join([
        markers(MARK)[0],
        "## Convolution kernels on a CPU: torch's Conv1d against ours (`bench/bench_conv_kernels.py`)",
        "",
        *run_lines(),
        f"- command: `python bench/bench_conv_kernels.py{' --quick' if args.quick else ''}`",
        f"- module: `ConvPositionalEmbedding`, {conv.in_channels} channels, {conv.groups} groups, kernel "
        f"{conv.kernel_size[0]}, weight norm, GELU; batch 4; median of {args.repeats} interleaved repeats; fwd: "
        "under no_grad (a frozen teacher); fwd+bwd: gradients for the input and the weights (a student)",
        "",
        "",
        "### The positional convolution (channels-last, gradients as convolutions)",
        "",
        "| frames | Conv1d fwd ms | ours fwd ms | speed-up | Conv1d fwd+bwd ms | ours fwd+bwd ms | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "### The waveform CNN, forward + backward of 4 x 1 s (oneDNN forward; backward oneDNN's or im2col + GEMM)",
        "",
        f"This machine's CPU is {'' if IM2COL_BACKWARD else 'not '}Intel's: `strided_time_conv` uses "
        f"{'im2col + GEMM' if IM2COL_BACKWARD else 'oneDNN'} for the backward here.",
        "",
        "| channels | oneDNN backward ms | im2col + GEMM backward ms | speed-up of im2col + GEMM |",
        "|---:|---:|---:|---:|",
        *[f"| {c} | {r['oneDNN']:.1f} | {r['im2col']:.1f} | {r['oneDNN'] / r['im2col']:.2f}x |" for c, r in cnn.items()],
        markers(MARK)[1],
    ])


def main() -> int:
    args = kernel_bench_args(__doc__, "a small convolution: checks the script, times nothing")
    channels, groups, kernel = (32, 4, 16) if args.quick else (768, 16, 128)
    module = ConvPositionalEmbedding(channels, kernel, groups)
    frame_counts = (49, 600)
    results = {frames: measure(module, frames, args.repeats) for frames in frame_counts}
    with torch.no_grad():  # the two paths agree before any time is reported
        x = torch.randn(2, frame_counts[0], channels)
        gap = (conv1d_path(module, x) - ours_path(module, x)).abs().max().item()
    if gap > 1e-4:
        raise RuntimeError(f"the channels-last path differs from Conv1d by {gap}")
    widths = (32, 10) if args.quick else (512, 154)
    layers = HUBERT_CNN[:3] if args.quick else HUBERT_CNN
    cnn = {channels: measure_cnn(channels, layers, args.repeats) for channels in widths}
    text = section(args, results, module, cnn)
    print(text)
    if not args.quick:
        write_section(args.output, MARK, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
