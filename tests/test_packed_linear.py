"""A frozen model's linear layers through oneDNN-packed weights equal F.linear, and fall back
wherever the packed path does not apply."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F

from espnet_plugin.models import SpeechEncoder, tiny_config
from espnet_plugin.models.packed_linear import _onednn_available, linear, pack_frozen_linears

pytestmark = pytest.mark.skipif(not _onednn_available(), reason="torch built without oneDNN")


def frozen_layer(in_features: int = 48, out_features: int = 80, bias: bool = True) -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
    pack_frozen_linears(layer)
    return layer


def packed_copy(layer: torch.nn.Linear, dtype: torch.dtype = torch.float32):
    cached = layer._packed_weight._packed.get(dtype)
    return None if cached is None else cached[1]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", [False, True])
def test_packed_path_equals_f_linear(bias, gelu):
    layer = frozen_layer(bias=bias)
    x = torch.randn(3, 17, 48)
    with torch.no_grad():
        y = linear(x, layer, gelu=gelu)
    expected = F.linear(x, layer.weight, layer.bias)
    expected = F.gelu(expected) if gelu else expected
    assert packed_copy(layer) is not None and packed_copy(layer).is_mkldnn  # the packed path ran
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_non_contiguous_input():
    layer = frozen_layer()
    x = torch.randn(17, 3, 48).transpose(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, layer), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["grad enabled", "trainable weight", "float64", "fp16 autocast", "not packed"])
def test_falls_back_to_f_linear(case):
    layer = frozen_layer()
    x = torch.randn(2, 5, 48)
    grad = case == "grad enabled"
    if case == "trainable weight":
        layer.requires_grad_(True)
    elif case == "float64":
        layer.double()
        x = x.double()
    elif case == "not packed":
        del layer._packed_weight
    with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.float16, enabled=case == "fp16 autocast"):
        y = linear(x, layer)
        expected = F.linear(x, layer.weight, layer.bias)
    assert torch.equal(y, expected)  # bit for bit: the same kernel
    assert "_packed_weight" not in layer.__dict__ or packed_copy(layer) is None


@pytest.mark.parametrize("gelu", [False, True])
def test_bf16_autocast_uses_a_packed_bf16_copy(gelu):
    """Under CPU bf16 autocast (--use_amp on a CPU) the product runs in bf16 against a bf16 copy
    packed once, as autocast's F.linear would against a fresh cast of the weight."""
    layer = frozen_layer()
    x = torch.randn(3, 17, 48)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        y = linear(x, layer, gelu=gelu)
        expected = F.linear(x, layer.weight, layer.bias)
        expected = F.gelu(expected) if gelu else expected
        first = packed_copy(layer, torch.bfloat16)
        linear(x.bfloat16(), layer, gelu=gelu)  # a bf16 input: the same copy
    assert first is not None and packed_copy(layer, torch.bfloat16) is first
    assert packed_copy(layer) is None  # no fp32 copy was needed
    assert y.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected.float(), rtol=0, atol=0.02 * expected.abs().max().item())


def test_packed_weight_is_reused_until_the_weight_changes():
    layer = frozen_layer()
    x = torch.randn(4, 48)
    with torch.no_grad():
        linear(x, layer)
        first = packed_copy(layer)
        linear(x, layer)
        assert packed_copy(layer) is first
        layer.weight.mul_(2.0)  # in place: a new version of the same tensor
        torch.testing.assert_close(linear(x, layer), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        assert packed_copy(layer) is not first
        second = packed_copy(layer)
        state = {k: torch.randn_like(v) for k, v in layer.state_dict().items()}
        layer.load_state_dict(state)
        torch.testing.assert_close(linear(x, layer), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        assert packed_copy(layer) is not second


def test_frozen_encoder_matches_the_plain_one_and_copies():
    torch.manual_seed(0)
    plain = SpeechEncoder(tiny_config()).eval()
    frozen = copy.deepcopy(plain).freeze()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    wavs, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
    with torch.no_grad():
        expected, _ = plain(wavs, lengths)
        got, _ = frozen(wavs, lengths)
    assert packed_copy(frozen.layers[0].ffn.intermediate) is not None
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    # a copy (a student built from a frozen teacher) starts without packed weights
    copied = copy.deepcopy(frozen)
    assert packed_copy(copied.layers[0].ffn.intermediate) is None
    with torch.no_grad():
        again, _ = copied(wavs, lengths)
    for g, e in zip(again, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_pickled_layer_starts_without_its_packed_weight():
    layer = frozen_layer()
    x = torch.randn(4, 48)
    with torch.no_grad():
        y = linear(x, layer)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert packed_copy(loaded) is None
    with torch.no_grad():
        torch.testing.assert_close(linear(x, loaded), y, rtol=0, atol=0)
    assert packed_copy(loaded) is not None
