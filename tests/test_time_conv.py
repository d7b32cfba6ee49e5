"""The positional convolution's channels-last fast path equals torch's Conv1d, values and gradients."""
import pytest
import torch

from espnet_plugin.models.components import ConvPositionalEmbedding
from espnet_plugin.models.time_conv import grouped_time_conv, strided_time_conv

SHAPES = [  # batch, frames, channels, kernel, groups
    (4, 49, 96, 128, 16),  # fewer frames than the kernel (1 s of audio at Base size, scaled down)
    (2, 300, 64, 31, 8),  # more frames than the kernel, odd kernel
    (3, 7, 12, 16, 4),
    (1, 5, 8, 4, 1),  # one group
]


@pytest.mark.parametrize("batch,frames,channels,kernel,groups", SHAPES)
def test_values_and_gradients_equal_conv1d(batch, frames, channels, kernel, groups):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=groups).double()
    x = torch.randn(batch, frames, channels, dtype=torch.double, requires_grad=True)
    expected = conv(x.transpose(1, 2)).transpose(1, 2)
    out_grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, [x, conv.weight, conv.bias], out_grad)

    y = grouped_time_conv(x, conv.weight, conv.bias, kernel // 2, groups)
    grads = torch.autograd.grad(y, [x, conv.weight, conv.bias], out_grad)

    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-11)


def test_gradcheck_with_frozen_input_and_no_bias():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8, dtype=torch.double)
    weight = torch.randn(8, 4, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: grouped_time_conv(x, w, None, 2, 2), (weight,))


def test_no_grad_path_equals_training_path():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(32, 32, 16, padding=8, groups=4)
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        frozen = grouped_time_conv(x, conv.weight, conv.bias, 8, 4)
    trained = grouped_time_conv(x, conv.weight, conv.bias, 8, 4)
    assert trained.requires_grad
    torch.testing.assert_close(frozen, trained.detach(), rtol=0, atol=1e-6)


def test_positional_embedding_matches_weight_normed_conv1d():
    """The module (weight norm, trim of the even kernel's extra frame, GELU) against Conv1d."""
    torch.manual_seed(0)
    module = ConvPositionalEmbedding(48, 16, 4).double()
    x = torch.randn(3, 25, 48, dtype=torch.double, requires_grad=True)
    expected = torch.nn.functional.gelu(module.conv(x.transpose(1, 2))[..., :-1]).transpose(1, 2)
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)
    g = module.conv.parametrizations.weight.original0
    expected_grad = torch.autograd.grad(expected.sum(), g)[0]
    torch.testing.assert_close(torch.autograd.grad(module(x).sum(), g)[0], expected_grad, rtol=1e-10, atol=1e-10)


def test_frozen_kernel_is_reused_until_the_weights_change():
    """Under no_grad (a frozen teacher) the weight-normed kernel is kept between forwards; a
    changed weight (an optimizer step, load_state_dict) is seen at the next forward."""
    torch.manual_seed(0)
    module = ConvPositionalEmbedding(32, 8, 4)
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        first = module.kernel()
        assert module.kernel() is first
        torch.testing.assert_close(first, module.conv.weight, rtol=0, atol=0)
        before = module(x)
        module.conv.parametrizations.weight.original1.mul_(2.0).add_(0.1)
        assert module.kernel() is not first
        expected = torch.nn.functional.gelu(module.conv(x.transpose(1, 2))[..., :-1]).transpose(1, 2)
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(module(x), before)
        module.load_state_dict(ConvPositionalEmbedding(32, 8, 4).state_dict())
        torch.testing.assert_close(module.kernel(), module.conv.weight, rtol=0, atol=0)


def test_frozen_kernel_under_bf16_autocast_is_cast_once():
    """Under CPU autocast the frozen kernel is kept in bf16 (no cast per forward) and equals
    autocast's own cast of the fp32 kernel; outside autocast the fp32 kernel comes back."""
    torch.manual_seed(0)
    module = ConvPositionalEmbedding(32, 8, 4)
    x = torch.randn(2, 10, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        kernel = module.kernel()
        assert kernel.dtype == torch.bfloat16 and module.kernel() is kernel
        torch.testing.assert_close(kernel, module.conv.weight.to(torch.bfloat16), rtol=0, atol=0)
        got = module(x)
        y = grouped_time_conv(x, module.conv.weight, module.conv.bias, 4, 4)  # autocast casts the kernel
        expected = torch.nn.functional.gelu(y[:, :-1])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with torch.no_grad():
        assert module.kernel().dtype == torch.float32


def test_training_forward_uses_the_live_weight():
    module = ConvPositionalEmbedding(16, 4, 2)
    with torch.no_grad():
        module.kernel()
    assert module.kernel().grad_fn is not None  # the weight norm, so the gradient reaches g and v


@pytest.mark.parametrize("in_channels,kernel,stride,bias,input_grad", [
    (1, 10, 5, False, False),  # the waveform's first layer
    (6, 3, 2, False, True),
    (5, 2, 2, True, True),
])
def test_strided_conv_equals_conv1d(in_channels, kernel, stride, bias, input_grad):
    torch.manual_seed(0)
    x = torch.randn(3, in_channels, 101, dtype=torch.double, requires_grad=input_grad)
    weight = torch.randn(7, in_channels, kernel, dtype=torch.double, requires_grad=True)
    b = torch.randn(7, dtype=torch.double, requires_grad=True) if bias else None
    inputs = [t for t in (x, weight, b) if t is not None and t.requires_grad]
    expected = torch.nn.functional.conv1d(x, weight, b, stride=stride)
    out_grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, inputs, out_grad)
    y = strided_time_conv(x, weight, b, stride, im2col_backward=True)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(y, inputs, out_grad), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_strided_conv_float32_gradients_match_onednn():
    """In float32 the forward is oneDNN's and the backward torch's: agreement up to rounding."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(32, 32, 3, stride=2, bias=False)
    x = torch.randn(2, 32, 400, requires_grad=True)
    expected = torch.autograd.grad(conv(x).square().sum(), [x, conv.weight])
    y = strided_time_conv(x, conv.weight, None, 2, im2col_backward=True)
    got = torch.autograd.grad(y.square().sum(), [x, conv.weight])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_strided_conv_backward_kernel_follows_the_switch():
    x = torch.randn(2, 4, 50, requires_grad=True)
    weight = torch.randn(6, 4, 3, requires_grad=True)
    assert "StridedTimeConv" in strided_time_conv(x, weight, None, 2, im2col_backward=True).grad_fn.name()
    assert strided_time_conv(x, weight, None, 2, im2col_backward=False).grad_fn.name() == "ConvolutionBackward0"


def bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def assert_close_in_bf16(got: torch.Tensor, want: torch.Tensor) -> None:
    """Two bf16 computations of one quantity (8 bits of mantissa, different summation orders)."""
    assert got.dtype == want.dtype
    scale = want.abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=0.03 * scale)


def test_grouped_conv_under_bf16_autocast_matches_conv1d():
    """Training under CPU autocast (bf16): the custom backward receives bf16 gradients for
    float32 weights and must run in bf16 like the forward (it used to fail on the dtypes)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(32, 32, 16, padding=8, groups=4)
    x = torch.randn(2, 20, 32, requires_grad=True)
    with bf16_autocast():
        expected = conv(x.transpose(1, 2)).transpose(1, 2)
        y = grouped_time_conv(x, conv.weight, conv.bias, 8, 4)
    assert y.dtype == expected.dtype == torch.bfloat16
    out_grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, [x, conv.weight, conv.bias], out_grad)
    grads = torch.autograd.grad(y, [x, conv.weight, conv.bias], out_grad)
    assert_close_in_bf16(y, expected)
    for got, want, leaf in zip(grads, expected_grads, [x, conv.weight, conv.bias]):
        assert got.dtype == leaf.dtype == torch.float32
        assert_close_in_bf16(got, want)


def test_strided_conv_under_bf16_autocast_runs_onednn():
    x = torch.randn(2, 4, 50, requires_grad=True)
    weight = torch.randn(6, 4, 3, requires_grad=True)
    with bf16_autocast():
        y = strided_time_conv(x, weight, None, 2, im2col_backward=True)
        expected = torch.nn.functional.conv1d(x, weight, None, stride=2)
    assert y.grad_fn.name() == "ConvolutionBackward0" and y.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
