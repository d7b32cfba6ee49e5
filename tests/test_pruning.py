"""Pruning is exact: the dense model equals the gated model at its deterministic masks,
and the cost model's counts at those masks equal the dense model's real counts."""
import pytest
import torch

from espnet_plugin.models import GateConfig, SpeechEncoder, with_gates
from espnet_plugin.pruning import prune_model
from tests.conftest import randomize_, tiny_config

LAYOUTS = [("hubert", False), ("wav2vec2", True), ("wavlm", False), ("wavlm", True)]


def gated_model(model_type, large, seed=0):
    torch.manual_seed(seed)
    model = randomize_(SpeechEncoder(tiny_config(model_type, large)), seed)
    gated = with_gates(model, GateConfig.all_on())
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in gated.gate_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 2.0)
    return gated


def close_(gate):
    with torch.no_grad():
        gate.log_alpha.fill_(-10.0)


def open_(gate):
    with torch.no_grad():
        gate.log_alpha.fill_(10.0)


def assert_equivalent(gated, wavs, lengths=None):
    gated.eval()
    pruned = prune_model(gated)
    with torch.no_grad():
        ref, ref_len = gated(wavs, lengths)
        out, out_len = pruned(wavs, lengths)
    assert len(ref) == len(out) == len(gated.layers) + 1
    for i, (a, b) in enumerate(zip(ref, out)):
        assert a.shape == b.shape
        # float32 sums in another order: 1e-5 absolute, or relative for states of magnitude > 1
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), f"hidden state {i} differs by {(a - b).abs().max()}"
    if lengths is not None:
        assert torch.equal(ref_len, out_len)
    assert gated.expected_params(deterministic=True).item() == pruned.num_params()
    assert pruned.expected_params().item() == pruned.num_params()
    assert gated.expected_macs(deterministic=True).item() == pruned.expected_macs().item()
    assert not any(name.endswith("log_alpha") for name, _ in pruned.named_parameters())
    return pruned


@pytest.mark.parametrize("model_type,large", LAYOUTS)
def test_random_masks_prune_exactly(model_type, large, wavs):
    gated = gated_model(model_type, large)
    pruned = assert_equivalent(gated, wavs, torch.tensor([4000, 3100]))
    assert pruned.num_params() < SpeechEncoder(tiny_config(model_type, large)).num_params()


@pytest.mark.parametrize("model_type,large", LAYOUTS)
def test_conv_channels_pruned_in_every_layer(model_type, large, wavs):
    gated = gated_model(model_type, large, seed=3)
    for layer in gated.feature_extractor.conv_layers:
        with torch.no_grad():
            layer.gate.log_alpha.copy_(torch.linspace(-6, 6, layer.gate.n))
    pruned = assert_equivalent(gated, wavs)
    kept = [spec[0] for spec in pruned.config.conv_layers]
    assert all(0 < k < 16 for k in kept), kept


@pytest.mark.parametrize("model_type,large", LAYOUTS)
def test_layer_without_heads_or_units_keeps_output_bias(model_type, large, wavs):
    gated = gated_model(model_type, large, seed=5)
    for layer in gated.layers:
        open_(layer.attention_block_gate)
        open_(layer.ffn_block_gate)
    close_(gated.layers[0].attention.gate)  # all heads of the first layer (WavLM: owner of the bias)
    close_(gated.layers[1].ffn.gate)
    close_(gated.layers[2].attention_block_gate)
    close_(gated.layers[2].ffn_block_gate)
    pruned = assert_equivalent(gated, wavs, torch.tensor([4000, 2500]))
    first, second, third = pruned.config.layers
    assert first.num_heads == 0 and first.attention
    assert second.ffn_dim == 0 and second.ffn
    assert not third.attention and not third.ffn
    assert pruned.layers[0].attention.out_bias is not None


def test_wavlm_first_layer_heads_pruned_keeps_position_bias(wavs):
    gated = gated_model("wavlm", False, seed=7)
    for layer in gated.layers:
        open_(layer.attention_block_gate)
    with torch.no_grad():
        gated.layers[0].attention.gate.log_alpha.copy_(torch.tensor([-9.0, -9.0, -9.0, 9.0]))
        gated.layers[1].attention.gate.log_alpha.copy_(torch.tensor([9.0, -9.0, 9.0, -9.0]))
    pruned = assert_equivalent(gated, wavs)
    assert pruned.config.layers[0].head_ids == [3]
    assert pruned.config.layers[1].head_ids == [0, 2]
    assert pruned.rel_attn_embed.weight.shape == (32, 4)


@pytest.mark.parametrize("model_type,large", LAYOUTS)
def test_all_gates_open_is_the_ungated_model(model_type, large, wavs):
    model = randomize_(SpeechEncoder(tiny_config(model_type, large))).eval()
    gated = with_gates(model, GateConfig.all_on()).eval()
    for gate in gated.gate_parameters():
        with torch.no_grad():
            gate.fill_(10.0)
    with torch.no_grad():
        for a, b in zip(model(wavs)[0], gated(wavs)[0]):
            assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
    assert gated.expected_params(deterministic=True).item() == model.num_params()


def test_expected_params_is_differentiable_and_between_bounds():
    gated = gated_model("hubert", False)
    expected = gated.expected_params()
    expected.backward()
    grads = [p.grad for p in gated.gate_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    full = SpeechEncoder(tiny_config("hubert", False)).num_params()
    assert 0 < expected.item() < full


def test_counts_are_exact_at_large_scale():
    """A ~24 M-param student of HuBERT Large: the cost model's count at a binary structure
    equals the real parameter count of the model with that architecture, to the unit (a
    float32 sum is off here: its 24-bit mantissa cannot hold every integer above 16.7 M)."""
    import copy

    from espnet_plugin.models import hubert_large_config
    from espnet_plugin.models.counting import Structure, count_macs, count_params

    full = hubert_large_config()
    gen = torch.Generator().manual_seed(0)

    def kept(n, fraction):
        mask = torch.zeros(n, dtype=torch.float64)
        mask[torch.randperm(n, generator=gen)[: max(1, int(n * fraction))]] = 1.0
        return mask

    conv = [kept(c, 0.7) for c, _, _ in full.conv_layers]
    heads = [kept(layer.num_heads, 0.07 + 0.07 * (i % 2)) for i, layer in enumerate(full.layers)]
    units = [kept(layer.ffn_dim, 0.0347 + 0.001 * i) for i, layer in enumerate(full.layers)]
    blocks = [1.0 for _ in full.layers]
    structure = Structure.of_units(conv, heads, blocks, units, blocks)
    small = copy.deepcopy(full)
    small.conv_layers = [[int(m.sum()), k, s] for m, (_, k, s) in zip(conv, full.conv_layers)]
    for layer, layer_heads, layer_units in zip(small.layers, heads, units):
        layer.num_heads, layer.ffn_dim = int(layer_heads.sum()), int(layer_units.sum())
    model = SpeechEncoder(small)
    real = model.num_params()
    assert 20e6 < real < 30e6
    counted = count_params(full, structure)
    assert counted.dtype == torch.float64 and counted.item() == real
    assert count_macs(full, structure).item() == model.expected_macs().item()
    assert model.expected_params().item() == real


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_fit_to_budget_exports_within_tolerance_of_the_target(metric, wavs):
    """The deterministic masks miss a budget by each group's rounding; the fitted export lands
    within 0.5 % of it, and the summary's count is the exported model's real count."""
    from espnet_plugin.models.counting import count_macs, count_params
    from espnet_plugin.pruning.prune import fit_to_budget

    gated = gated_model("wavlm", True).eval()
    cfg = gated.config

    def cost(structure):
        return count_params(cfg, structure) if metric == "params" else count_macs(cfg, structure, 2.0)

    deterministic = float(cost(gated.structure(deterministic=True)))
    for target in (0.8 * deterministic, 1.15 * deterministic):
        keep, fit = fit_to_budget(gated, cost, target, tolerance=0.005)
        pruned = prune_model(gated, keep)
        real = pruned.num_params() if metric == "params" else pruned.expected_macs(seconds=2.0).item()
        assert fit.deterministic == deterministic and fit.fitted == real
        assert abs(real - target) <= 0.005 * target
        assert fit.units_changed > 0
        with torch.no_grad():
            assert len(pruned(wavs)[0]) == len(gated.layers) + 1
    # on target already: nothing moves, the export is the deterministic one
    keep, fit = fit_to_budget(gated, cost, deterministic, tolerance=0.005)
    assert fit.units_changed == 0 and prune_model(gated, keep).config == prune_model(gated).config


def test_fit_to_budget_opens_the_closed_units_nearest_the_threshold():
    """Under the target, the units opened are the closed ones with the largest log_alpha,
    across groups; over it, the open ones with the smallest, never below a gate's min_keep."""
    from espnet_plugin.models.counting import count_params
    from espnet_plugin.pruning.prune import fit_to_budget, kept_units

    gated = gated_model("hubert", False).eval()
    before = [gate.deterministic_mask() for gate in gated.gates()]
    deterministic = float(gated.expected_params(deterministic=True))
    for factor in (1.1, 0.9):
        keep, fit = fit_to_budget(gated, lambda s: count_params(gated.config, s), factor * deterministic)
        moved, stayed = [], []
        for gate, mask in zip(gated.gates(), before):
            now = torch.zeros(gate.n)
            now[keep(gate, gate.n)] = 1.0
            assert now.sum() >= min(gate.min_keep, mask.sum())
            changed = now != mask
            moved += gate.log_alpha[changed].tolist()
            stayed += gate.log_alpha[~changed & ((mask > 0.5) if factor < 1 else (mask < 0.5))].tolist()
        assert len(moved) == fit.units_changed > 0
        # the band is reached with the first units in log_alpha order, skipping only those too large
        if factor > 1:
            assert max(moved) >= max(stayed, default=-1e9)
        else:
            assert min(moved) <= min(stayed, default=1e9)
    assert kept_units(gated, keep).total() > 0


@pytest.mark.parametrize("model_type,large", LAYOUTS)
def test_quadratic_cost_equals_the_formula_and_its_gradient(model_type, large):
    """Training evaluates params / MACs from coefficients read off count_params / count_macs
    once; at gate probabilities (the pre-LN / WavLM any-open terms included) the value and the
    gradient in every log_alpha are the formula's."""
    from espnet_plugin.models.counting import count_macs, count_params

    gated = gated_model(model_type, large)
    for metric, formula in (("params", lambda s: count_params(gated.config, s)),
                            ("macs", lambda s: count_macs(gated.config, s, 2.0))):
        fast = gated.cost(metric, 2.0)(gated.structure())
        fast_grads = torch.autograd.grad(fast, gated.gate_parameters())
        slow = formula(gated.structure())
        slow_grads = torch.autograd.grad(slow, gated.gate_parameters())
        assert fast.item() == pytest.approx(slow.item(), rel=1e-12)
        for a, b in zip(fast_grads, slow_grads):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-6)
    with pytest.raises(ValueError, match="unknown cost metric"):
        gated.cost("flops")


def test_sampled_structure_shares_the_logits_the_forward_sampled_from(wavs):
    """The budget term of a training step uses the concatenation the gates were sampled from:
    the same value as a fresh structure, and one backward reaches every log_alpha."""
    gated = gated_model("hubert", False)
    with pytest.raises(RuntimeError, match="training forward"):
        gated.sampled_structure()
    states, _ = gated.train()(wavs)
    cost = gated.cost("params")(gated.sampled_structure())
    assert cost.item() == gated.expected_params().item()
    (cost * 1e-6 + states[-1].abs().mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gated.gate_parameters())


def test_gated_layer_norm_with_a_binary_gate_is_layer_norm_of_the_open_channels():
    """The training formula (gate-weighted statistics) equals LayerNorm over the open channels,
    closed channels zero: what the pruned model's smaller LayerNorm computes."""
    import torch.nn.functional as F

    from espnet_plugin.models.components import gated_layer_norm

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(12)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 5, 12) * 3 + 1
    gate = torch.tensor([1.0, 0.0] * 6, requires_grad=True)
    y = gated_layer_norm(x, norm, gate)
    keep = gate.detach().nonzero().flatten()
    ref = F.layer_norm(x[..., keep], (len(keep),), norm.weight[keep], norm.bias[keep], norm.eps)
    assert torch.allclose(y[..., keep], ref, atol=1e-5)
    assert torch.equal(y[..., 1::2], torch.zeros(3, 5, 6))


@pytest.mark.parametrize("model_type,large", LAYOUTS)
def test_skipping_units_sampled_closed_changes_nothing(model_type, large, wavs):
    """A training forward that leaves out the units sampled exactly 0 (conv channels, heads,
    FFN units) gives the same hidden states and the same gradient for every parameter, gate
    logits included, as the forward that multiplies them by 0."""
    import copy

    full = gated_model(model_type, large, seed=3).train()
    with torch.no_grad():
        for p in full.gate_parameters():
            p.sub_(1.5)  # about half the units sampled closed
    skipping = copy.deepcopy(full)
    skipping.skip_closed_units(0.2)
    outputs = {}
    for name, model in (("full", full), ("skipping", skipping)):
        torch.manual_seed(7)
        states, _ = model(wavs)
        sum(s.square().mean() for s in states).backward()
        outputs[name] = states
    groups = {
        "conv": [layer.gate for layer in skipping.feature_extractor.conv_layers],
        "heads": [layer.attention.gate for layer in skipping.layers if layer.attention.gate is not None],
        "units": [layer.ffn.gate for layer in skipping.layers if layer.ffn.gate is not None],
    }
    for kind, gates in groups.items():
        assert any(gate.open_units() is not None for gate in gates), f"no {kind} group was cut"
    for a, b in zip(outputs["full"], outputs["skipping"]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    for (name, a), b in zip(full.named_parameters(), skipping.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), f"{name}: {(a.grad - b.grad).abs().max()}"
    with pytest.raises(ValueError, match="skip_closed_units"):
        skipping.skip_closed_units(1.0)


def test_costs_first_asked_for_under_inference_mode_serve_training(wavs):
    """The layout and the cost coefficients are built once per model: built under
    torch.inference_mode (an evaluation first), they still give the right counts and carry
    gradients in training."""
    gated, reference = gated_model("wavlm", True), gated_model("wavlm", True)
    with torch.inference_mode():
        gated.eval()(wavs)
        assert gated.expected_params().item() == reference.expected_params().item()
        assert gated.expected_macs().item() == reference.expected_macs().item()
    gated.train()(wavs)
    cost = gated.cost("params")(gated.sampled_structure())
    cost.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gated.gate_parameters())
