"""Attention through the math kernel in CPU bf16 training: the same function, the other kernel."""
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from espnet_plugin.models.attention_kernel import (
    MATH_KERNEL_MAX_FRAMES, scaled_dot_product_attention, uses_math_kernel,
)


def inputs(frames: int, dtype: torch.dtype, grad: bool = True):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, frames, 16).to(dtype).requires_grad_(grad) for _ in range(3))
    mask = torch.ones(2, 1, 1, frames, dtype=torch.bool)
    mask[1, ..., frames // 2:] = False  # the second utterance is half padding
    return q, k, v, mask


def kernels_run(fn) -> set:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages() if "flash" in event.key or "_math" in event.key}


def test_math_kernel_only_for_bf16_training_on_short_inputs():
    q = inputs(49, torch.bfloat16)[0]
    assert uses_math_kernel(q)
    assert not uses_math_kernel(inputs(49, torch.float32)[0])  # fp32 keeps torch's choice
    assert not uses_math_kernel(inputs(49, torch.bfloat16, grad=False)[0])  # a frozen teacher
    assert not uses_math_kernel(inputs(MATH_KERNEL_MAX_FRAMES + 1, torch.bfloat16)[0])
    with torch.no_grad():
        assert not uses_math_kernel(q)


@pytest.mark.parametrize("bias", [False, True])
def test_bf16_values_and_gradients_match_fp64(bias):
    """Math kernel (bf16) against the fp64 result: the same function up to bf16 rounding, with
    a padding mask and with WavLM's float bias."""
    q, k, v, mask = inputs(49, torch.bfloat16)
    if bias:
        mask = torch.randn(2, 3, 49, 49).masked_fill(~mask, float("-inf")).to(torch.bfloat16)
    out_grad = torch.randn(2, 3, 49, 16)
    y = scaled_dot_product_attention(q, k, v, mask, 0.0)
    grads = torch.autograd.grad(y, (q, k, v), out_grad.to(torch.bfloat16))
    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_mask = mask if mask.dtype == torch.bool else mask.double()
    expected = F.scaled_dot_product_attention(*ref, attn_mask=ref_mask)
    expected_grads = torch.autograd.grad(expected, ref, out_grad.double())
    torch.testing.assert_close(y.double(), expected, rtol=0.02, atol=0.02)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want, rtol=0.05, atol=0.05)


def test_which_kernel_runs():
    q, k, v, mask = inputs(49, torch.bfloat16)
    used = kernels_run(lambda: scaled_dot_product_attention(q, k, v, mask, 0.0).sum().backward())
    assert not any("flash" in name for name in used), used
    q, k, v, mask = inputs(MATH_KERNEL_MAX_FRAMES + 1, torch.bfloat16)
    used = kernels_run(lambda: scaled_dot_product_attention(q, k, v, mask, 0.0).sum().backward())
    assert any("flash" in name for name in used), used


def test_fp32_is_torch_default_exactly():
    q, k, v, mask = inputs(49, torch.float32)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask, 0.0), expected, rtol=0, atol=0)
