"""Scaled dot-product attention with the faster CPU kernel for bf16 training on short inputs.

torch picks its flash-attention kernel on CPUs whenever it can. In bf16 that kernel's backward
pass is slow on short sequences: at HuBERT Base size (12 heads of 64), batch 4 x 1 s (49
frames), forward + backward takes ~6 ms per layer against ~4 ms for torch's math kernel
(matmul, softmax, matmul); the math kernel stays ahead up to ~3 s of audio, breaks even at
4 s and falls behind beyond (``python bench/bench_attention_kernels.py``, docs/benchmarks.md).
So a bf16 forward on a CPU that records gradients, over at most :data:`MATH_KERNEL_MAX_FRAMES`
frames, runs the math kernel; everything else (fp32, no gradients - a frozen teacher,
inference, export -, longer inputs, other devices) runs torch's choice as before. Both kernels
compute the same function, up to bf16 rounding.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

#: Longest input (frames) for which bf16 training on a CPU uses the math kernel.
MATH_KERNEL_MAX_FRAMES = 175


def uses_math_kernel(q: torch.Tensor) -> bool:
    """Whether :func:`scaled_dot_product_attention` runs torch's math kernel for ``q``
    (batch, heads, frames, head_dim)."""
    return (
        q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad
        and torch.is_grad_enabled() and q.shape[-2] <= MATH_KERNEL_MAX_FRAMES
    )


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor], dropout_p: float,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on (batch, heads, frames, head_dim) tensors, through
    the math kernel where :func:`uses_math_kernel` says so."""
    if not uses_math_kernel(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
