"""Convolutions over time with faster CPU kernels than torch's defaults, same results up to
float rounding (``python bench/bench_conv_kernels.py``, docs/benchmarks.md). On other devices
both are torch's ``Conv1d``.

- :func:`grouped_time_conv`: wav2vec 2.0 / HuBERT / WavLM's positional convolution (768
  channels in 16 groups, kernel 128 at Base size) on (batch, frames, channels) tensors. torch's
  ``Conv1d`` runs it at about a third of a CPU's peak and its weight gradient slower still;
  written as a 2-d convolution on channels-last tensors it reads the hidden states where they
  lie and runs about twice as fast. Its backward pass is two more forward convolutions: the
  input gradient is the transposed convolution, the weight gradient a convolution with the
  roles swapped (input channels as the batch, the batch as the channels).
- :func:`strided_time_conv`: the waveform CNN's strided convolutions. oneDNN's forward is
  fast; on Intel CPUs its backward is not, and torch's own im2col + GEMM backward takes ~0.6x
  of its time there. That backward runs its GEMMs in MKL, which is slower than oneDNN on AMD
  CPUs (measured on an AMD EPYC: the CNN's forward + backward 0.95x), so elsewhere the whole
  convolution stays oneDNN's.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from espnet_plugin.utils.machine import is_intel_cpu

CHANNELS_LAST = torch.channels_last
IM2COL_BACKWARD = is_intel_cpu()  # see strided_time_conv


def grouped_time_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int, groups: int
) -> torch.Tensor:
    """``Conv1d`` over the frames of ``x`` (batch, frames, channels) with ``weight`` (out,
    in / groups, kernel), stride 1 and ``padding`` zeros on both sides; returns (batch,
    output frames, out channels), a view of a channels-last result. On other devices than
    the CPU this is torch's Conv1d (the fast path is measured on CPUs only)."""
    if x.device.type != "cpu":
        return F.conv1d(x.transpose(1, 2), weight, bias, padding=padding, groups=groups).transpose(1, 2)
    x4 = x.transpose(1, 2).unsqueeze(2)  # (batch, channels, 1, frames): channels-last, no copy
    weight4 = channels_last_kernel(weight)
    if _records_gradients(x, weight, bias):
        y = _GroupedTimeConv.apply(x4, weight4, bias, padding, groups)
    else:
        y = F.conv2d(x4, weight4, bias, padding=(0, padding), groups=groups)
    return y.squeeze(2).transpose(1, 2)


def _records_gradients(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd records this call: the custom backward is needed only then."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def channels_last_kernel(weight: torch.Tensor) -> torch.Tensor:
    """(out, in / groups, kernel) -> (out, in / groups, 1, kernel) in the layout a channels-last
    convolution reads (one transposing copy, unless ``weight`` is already laid out so)."""
    return weight.unsqueeze(2).contiguous(memory_format=CHANNELS_LAST)


class _GroupedTimeConv(torch.autograd.Function):
    """Forward and both gradients of the channels-last grouped convolution as convolutions."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x4: torch.Tensor, weight4: torch.Tensor, bias: Optional[torch.Tensor], padding: int,
                groups: int) -> torch.Tensor:
        ctx.save_for_backward(x4, weight4)
        ctx.padding, ctx.groups = padding, groups
        return F.conv2d(x4, weight4, bias, padding=(0, padding), groups=groups)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")  # under autocast: the forward's casts again
    def backward(ctx, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x4, weight4 = ctx.saved_tensors
        padding, groups = ctx.padding, ctx.groups
        grad = grad.contiguous(memory_format=CHANNELS_LAST)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose2d(grad, weight4, padding=(0, padding), groups=groups)
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(x4, grad, padding, groups)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None


def _weight_grad(x4: torch.Tensor, grad: torch.Tensor, padding: int, groups: int) -> torch.Tensor:
    """d loss / d weight as one grouped convolution: the padded input's channels become the
    batch and its batch the channels; the output gradient is the kernel. Returns (out, in /
    groups, 1, kernel)."""
    batch, channels, _, frames = x4.shape
    out_channels, out_frames = grad.shape[1], grad.shape[3]
    per_in, per_out = channels // groups, out_channels // groups
    padded = frames + 2 * padding
    xs = F.pad(x4, (padding, padding)).reshape(batch, groups, per_in, 1, padded)
    xs = xs.permute(2, 1, 0, 3, 4).reshape(per_in, groups * batch, 1, padded)
    ks = grad.reshape(batch, groups, per_out, 1, out_frames).permute(1, 2, 0, 3, 4)
    ks = ks.reshape(out_channels, batch, 1, out_frames)
    out = F.conv2d(xs.contiguous(memory_format=CHANNELS_LAST), ks.contiguous(memory_format=CHANNELS_LAST),
                   groups=groups)  # (in / groups, out, 1, kernel), laid out (in / groups, kernel, out)
    kernel = out.shape[3]
    # one 2-d transpose to (out, in / groups, kernel): torch copies a permuted 4-d view 5x slower
    matrix = out.permute(0, 2, 3, 1).reshape(per_in * kernel, out_channels)
    return matrix.t().contiguous().view(out_channels, per_in, 1, kernel)


def strided_time_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
    im2col_backward: bool = IM2COL_BACKWARD,
) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, stride)`` without padding, x: (batch, channels, samples);
    with ``im2col_backward`` (default: on Intel CPUs) its fp32 gradients on a CPU come from
    torch's im2col + GEMM kernel (under autocast: oneDNN's, which has the bf16 kernels)."""
    if not im2col_backward or x.device.type != "cpu" or torch.is_autocast_enabled("cpu") \
            or not _records_gradients(x, weight, bias):
        return F.conv1d(x, weight, bias, stride=stride)
    return _StridedTimeConv.apply(x, weight, bias, stride)


class _StridedTimeConv(torch.autograd.Function):
    """oneDNN's forward, torch's im2col + GEMM backward (``_slow_conv2d_backward``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return F.conv1d(x, weight, bias, stride=stride)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grad_x, grad_weight, grad_bias = torch.ops.aten._slow_conv2d_backward(
            grad.unsqueeze(2).contiguous(), x.unsqueeze(2), weight.unsqueeze(2),
            [1, weight.shape[2]], [1, ctx.stride], [0, 0], mask,
        )
        return (
            None if grad_x is None else grad_x.squeeze(2),
            None if grad_weight is None else grad_weight.squeeze(2),
            grad_bias,
            None,
        )
