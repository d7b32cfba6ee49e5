"""Distillation losses: values against independent NumPy loops, padding, gradients, minima,
identity initialisation, the registry and a short optimisation."""
import math

import numpy as np
import pytest
import torch

from espnet_plugin.losses import (
    LOSSES,
    ChannelWiseLoss,
    CombinedDistillLoss,
    GenerativeDenoiseLoss,
    LayerToLayerLoss,
    PredictionHeadsLoss,
    SimilarityPreservingLoss,
    build_distill_loss,
)

MAP = [[0, 1], [2, 2]]
# (name, conf) of every loss, on a 3-layer toy stack; widths may differ everywhere.
CONFIGS = [
    ("layer_to_layer", {"layer_map": MAP}),
    ("layer_to_layer", {"layer_map": MAP, "shared_projection": True}),
    ("prediction_heads", {"teacher_layers": [1, 2]}),
    ("similarity_preserving", {"layer_map": MAP, "axis": "batch"}),
    ("similarity_preserving", {"layer_map": MAP, "axis": "time", "max_frames": 5}),
    ("generative_denoise", {"layer_map": MAP}),
    ("channel_wise", {"layer_map": MAP}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The tensors here are tiny: more intra-op threads only add overhead, and on a busy
    machine their spin-waiting made this module 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lengths_mask(lengths, frames):
    return torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]


def hidden(batch, frames, dim, layers=3, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, frames, dim, generator=gen).requires_grad_(requires_grad) for _ in range(layers)]


def randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return module


def valid(x, mask, b):
    """Utterance b's valid frames as float64 NumPy (frames, channels)."""
    return x[b][mask[b]].detach().double().numpy()


def np_params(linear):
    return linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()


def np_cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def np_channel_kl(s, t, tau):
    """sum over channels of KL(softmax_t(t/tau) || softmax_t(s/tau)) for one utterance (T, C)."""
    total = 0.0
    for c in range(s.shape[1]):
        p = np.exp(t[:, c] / tau) / np.exp(t[:, c] / tau).sum()
        q = np.exp(s[:, c] / tau) / np.exp(s[:, c] / tau).sum()
        total += sum(p[i] * math.log(p[i] / q[i]) for i in range(len(p)))
    return total


def np_conv3(x, conv):
    """Conv1d k3, padding 1, on one unpadded utterance (T, C_in) -> (T, C_out), by loops."""
    w, b = conv.weight.detach().double().numpy(), conv.bias.detach().double().numpy()
    frames = x.shape[0]
    padded = np.concatenate([np.zeros((1, x.shape[1])), x, np.zeros((1, x.shape[1]))])
    return np.stack([b + sum(w[:, :, k] @ padded[t + k] for k in range(3)) for t in range(frames)])


def np_normalized_gram(q):
    g = q @ q.T
    return g / np.linalg.norm(g, axis=1, keepdims=True)


# ---------------------------------------------------------------- values by hand

def test_layer_to_layer_value():
    mask = lengths_mask([5, 3], 5)
    student, teacher = hidden(2, 5, 4, seed=1), hidden(2, 5, 6, seed=2)
    loss_fn = randomize(LayerToLayerLoss(4, 6, layer_map=MAP, l1_weight=0.7, cos_weight=1.3))
    loss, stats = loss_fn(student, teacher, mask)
    terms = []
    for k, (si, ti) in enumerate(MAP):
        w, bias = np_params(loss_fn.projections[k])
        pred = np.concatenate([valid(student[si], mask, b) @ w.T + bias for b in range(2)])
        target = np.concatenate([valid(teacher[ti], mask, b) for b in range(2)])
        l1, cos = np.abs(pred - target).mean(), np_cos(pred, target).mean()
        assert stats[f"l1_s{si}_t{ti}"].item() == pytest.approx(l1, rel=1e-5)
        assert stats[f"cos_s{si}_t{ti}"].item() == pytest.approx(cos, rel=1e-5, abs=1e-6)
        terms.append(0.7 * l1 - 1.3 * cos)
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)
    assert stats["loss"].item() == pytest.approx(loss.item())


def test_prediction_heads_value():
    mask = lengths_mask([4, 6], 6)
    student, teacher = hidden(2, 6, 4, seed=1), hidden(2, 6, 5, seed=2)
    loss_fn = PredictionHeadsLoss(4, 5, teacher_layers=[0, 2], student_layer=1, cos_weight=0.5)
    loss, stats = loss_fn(student, teacher, mask)
    terms = []
    for head, ti in zip(loss_fn.heads, [0, 2]):
        w, bias = np_params(head)
        pred = np.concatenate([valid(student[1], mask, b) @ w.T + bias for b in range(2)])
        target = np.concatenate([valid(teacher[ti], mask, b) for b in range(2)])
        l1 = np.abs(pred - target).mean()
        cos_term = np.mean([math.log(1.0 + math.exp(-c)) for c in np_cos(pred, target)])  # -log sigmoid
        assert stats[f"l1_t{ti}"].item() == pytest.approx(l1, rel=1e-5)
        terms.append(l1 + 0.5 * cos_term)
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)
    assert isinstance(loss_fn.heads, torch.nn.ModuleList) and len(loss_fn.heads) == 2


def test_similarity_preserving_batch_value():
    mask = lengths_mask([5, 2, 4], 5)
    student, teacher = hidden(3, 5, 4, seed=1), hidden(3, 5, 7, seed=2)
    loss, _ = SimilarityPreservingLoss(4, 7, layer_map=MAP, axis="batch")(student, teacher, mask)
    terms = []
    for si, ti in MAP:
        q_s = np.stack([valid(student[si], mask, b).mean(0) for b in range(3)])
        q_t = np.stack([valid(teacher[ti], mask, b).mean(0) for b in range(3)])
        terms.append(((np_normalized_gram(q_t) - np_normalized_gram(q_s)) ** 2).sum() / 3**2)
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)


@pytest.mark.parametrize("max_frames", [None, 3])
def test_similarity_preserving_time_value(max_frames):
    mask = lengths_mask([6, 2, 4], 6)
    student, teacher = hidden(3, 6, 4, seed=1), hidden(3, 6, 7, seed=2)
    loss_fn = SimilarityPreservingLoss(4, 7, layer_map=MAP, axis="time", max_frames=max_frames)
    loss, _ = loss_fn(student, teacher, mask)
    terms = []
    for si, ti in MAP:
        per_utt = []
        for b in range(3):
            s, t = valid(student[si], mask, b)[:max_frames], valid(teacher[ti], mask, b)[:max_frames]
            per_utt.append(((np_normalized_gram(t) - np_normalized_gram(s)) ** 2).sum() / len(s) ** 2)
        terms.append(np.mean(per_utt))
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)


@pytest.mark.parametrize("student_dim", [5, 3])
def test_channel_wise_value(student_dim):
    mask = lengths_mask([6, 3], 6)
    student, teacher = hidden(2, 6, student_dim, seed=1), hidden(2, 6, 5, seed=2)
    loss_fn = randomize(ChannelWiseLoss(student_dim, 5, layer_map=MAP, temperature=2.0))
    loss, stats = loss_fn(student, teacher, mask)
    terms = []
    for align, (si, ti) in zip(loss_fn.align, MAP):
        w, bias = np_params(align) if student_dim != 5 else (np.eye(5), np.zeros(5))
        kl = sum(np_channel_kl(valid(student[si], mask, b) @ w.T + bias, valid(teacher[ti], mask, b), 2.0)
                 for b in range(2))
        terms.append(kl / (2 * 5) * 2.0**2)
        assert stats[f"kl_s{si}_t{ti}"].item() == pytest.approx(terms[-1], rel=1e-5)
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_generative_denoise_value(training):
    """Eval: no noise. Training: one N(0, noise_scale^2) value per frame, shared by all channels."""
    mask = lengths_mask([6, 4], 6)
    student, teacher = hidden(2, 6, 3, seed=1), hidden(2, 6, 4, seed=2)
    loss_fn = randomize(GenerativeDenoiseLoss(3, 4, layer_map=[[1, 2]], noise_scale=0.7, temperature=3.0, alpha=0.5))
    loss_fn.train(training)
    torch.manual_seed(5)
    loss, _ = loss_fn(student, teacher, mask)
    torch.manual_seed(5)
    noise = (torch.randn(2, 1, 6) * 0.7).double().numpy() if training else np.zeros((2, 1, 6))
    w, bias = np_params(loss_fn.align[0])
    gen = loss_fn.generators[0]
    kl = 0.0
    for b in range(2):
        n = int(mask[b].sum())
        x = valid(student[1], mask, b) @ w.T + bias + noise[b, 0, :n, None]
        rebuilt = np_conv3(np.maximum(np_conv3(x, gen.conv1), 0.0), gen.conv2)
        kl += np_channel_kl(rebuilt, valid(teacher[2], mask, b), 3.0)
    assert loss.item() == pytest.approx(0.5 * 3.0**2 * kl / (2 * 4), rel=1e-5)


# ---------------------------------------------------------------- padding

def build(name, conf, student_dim=4, teacher_dim=6, seed=0):
    torch.manual_seed(seed)
    loss_fn = randomize(LOSSES[name](student_dim, teacher_dim, **conf), seed)
    return loss_fn.eval()  # no noise, so values compare exactly


@pytest.mark.parametrize("name,conf", CONFIGS, ids=IDS)
def test_padded_frames_are_ignored(name, conf):
    mask = lengths_mask([7, 4, 2], 7)
    student, teacher = hidden(3, 7, 4, seed=1), hidden(3, 7, 6, seed=2)
    loss_fn = build(name, conf)
    ref, _ = loss_fn(student, teacher, mask)
    garbage_s = [torch.where(mask[..., None], x, torch.full_like(x, float("nan"))).requires_grad_() for x in student]
    garbage_t = [torch.where(mask[..., None], x, 1e6 * torch.randn_like(x)) for x in teacher]
    garbage_t[0][0, -1, 0] = float("inf")  # utterance 0 is unpadded: put inf into a padded frame of another
    garbage_t[0][2, -1, 0] = float("inf")
    loss, _ = loss_fn(garbage_s, garbage_t, mask)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    for x in garbage_s:
        assert x.grad is None or (torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all())


def single(x, b, n):
    return x[b : b + 1, :n]


@pytest.mark.parametrize("name,conf", CONFIGS, ids=IDS)
def test_padded_batch_equals_unpadded_utterances(name, conf):
    """Frame-pooled losses equal the loss of all valid frames as one utterance; per-utterance
    losses equal the mean over utterances; the batch Gram sees only each utterance's mean."""
    lengths = [7, 4, 2]
    mask = lengths_mask(lengths, 7)
    student, teacher = hidden(3, 7, 4, seed=1), hidden(3, 7, 6, seed=2)
    loss_fn = build(name, conf)
    loss, _ = loss_fn(student, teacher, mask)
    if name in ("layer_to_layer", "prediction_heads"):
        joined_s = [torch.cat([x[b, :n] for b, n in enumerate(lengths)])[None] for x in student]
        joined_t = [torch.cat([x[b, :n] for b, n in enumerate(lengths)])[None] for x in teacher]
        expected, _ = loss_fn(joined_s, joined_t, torch.ones(1, sum(lengths), dtype=torch.bool))
    elif conf.get("axis") == "batch":
        mean_s = [torch.stack([x[b, :n].mean(0) for b, n in enumerate(lengths)])[:, None] for x in student]
        mean_t = [torch.stack([x[b, :n].mean(0) for b, n in enumerate(lengths)])[:, None] for x in teacher]
        expected, _ = loss_fn(mean_s, mean_t, torch.ones(3, 1, dtype=torch.bool))
    else:
        expected = torch.stack([
            loss_fn([single(x, b, n) for x in student], [single(x, b, n) for x in teacher],
                    torch.ones(1, n, dtype=torch.bool))[0]
            for b, n in enumerate(lengths)
        ]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("name,conf", CONFIGS, ids=IDS)
def test_gradients_reach_student_and_loss_parameters_not_teacher(name, conf):
    mask = lengths_mask([6, 4, 5], 6)
    student, teacher = hidden(3, 6, 4, seed=1, requires_grad=True), hidden(3, 6, 6, seed=2, requires_grad=True)
    loss_fn = build(name, conf).train()
    loss, stats = loss_fn(student, teacher, mask)
    loss.backward()
    assert torch.isfinite(loss) and all(not v.requires_grad for v in stats.values())
    assert all(x.grad is None for x in teacher)
    used = [conf.get("student_layer", -1)] if name == "prediction_heads" else [s for s, _ in conf["layer_map"]]
    for i in used:
        assert torch.isfinite(student[i].grad).all() and student[i].grad.abs().sum() > 0
    for p_name, p in loss_fn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), p_name
        assert p.grad.abs().sum() > 0, p_name


# ---------------------------------------------------------------- minima and init

def test_minima_when_student_equals_teacher():
    mask = lengths_mask([6, 3], 6)
    states = hidden(2, 6, 5, seed=3)
    same = [[i, i] for i in range(3)]
    loss, stats = LayerToLayerLoss(5, 5, layer_map=same, cos_weight=1.0)(states, states, mask)
    assert loss.item() == pytest.approx(-1.0, abs=1e-6) and stats["l1_s1_t1"].item() == 0.0
    heads = PredictionHeadsLoss(5, 5, teacher_layers=[2])
    with torch.no_grad():
        torch.nn.init.eye_(heads.heads[0].weight)
        heads.heads[0].bias.zero_()
    assert heads(states, states, mask)[0].item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    for axis in ("batch", "time"):
        assert SimilarityPreservingLoss(5, 5, layer_map=same, axis=axis)(states, states, mask)[0].item() < 1e-6
    # Widths cancel: a student that is the teacher times an isometry (5 -> 8) has the same Grams.
    q = torch.linalg.qr(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)))[0].T  # 5 x 8, Q Q^T = I
    wider = [x @ q * 3.0 for x in states]
    for axis in ("batch", "time"):
        assert SimilarityPreservingLoss(8, 5, layer_map=same, axis=axis)(wider, states, mask)[0].item() < 1e-6
    # Channel distributions ignore a per-channel offset.
    shifted = [x + torch.randn(5) for x in states]
    assert ChannelWiseLoss(5, 5, layer_map=same)(shifted, states, mask)[0].item() < 1e-6
    # Generative: a generator that passes non-negative features through rebuilds the teacher.
    positive = [x.abs() for x in states]
    gen_loss = GenerativeDenoiseLoss(5, 5, layer_map=same).eval()
    with torch.no_grad():
        for g in gen_loss.generators:
            for conv in (g.conv1, g.conv2):
                conv.weight.zero_()
                conv.weight[:, :, 1] = torch.eye(5)
                conv.bias.zero_()
    assert gen_loss(positive, positive, mask)[0].item() < 1e-6


@pytest.mark.parametrize("student_dim,teacher_dim", [(4, 6), (6, 4), (5, 5)])
def test_projections_start_as_identity(student_dim, teacher_dim):
    eye = torch.eye(teacher_dim, student_dim)
    loss_fn = LayerToLayerLoss(student_dim, teacher_dim, layer_map=MAP)
    assert len(loss_fn.projections) == 2
    assert len(LayerToLayerLoss(student_dim, teacher_dim, layer_map=MAP, shared_projection=True).projections) == 1
    aligns = list(loss_fn.projections)
    aligns += list(ChannelWiseLoss(student_dim, teacher_dim, layer_map=MAP).align)
    aligns += list(GenerativeDenoiseLoss(student_dim, teacher_dim, layer_map=MAP).align)
    for proj in aligns:
        if isinstance(proj, torch.nn.Identity):
            assert student_dim == teacher_dim
        else:
            assert torch.equal(proj.weight, eye) and torch.equal(proj.bias, torch.zeros(teacher_dim))


# ---------------------------------------------------------------- registry

def test_registry_builds_weighted_combination():
    specs = [
        {"name": "layer_to_layer", "weight": 1.0, "conf": {"layer_map": MAP}},
        {"name": "similarity_preserving", "weight": 0.5, "conf": {"layer_map": [[2, 2]], "axis": "time"}},
        {"name": "layer_to_layer", "weight": 0.25, "conf": {"layer_map": [[1, 1]], "cos_weight": 0.0}},
        {"name": "channel_wise", "conf": {"layer_map": [[2, 2]]}},
    ]
    combined = build_distill_loss(specs, student_dim=4, teacher_dim=6)
    assert isinstance(combined, CombinedDistillLoss)
    assert list(combined.losses) == ["layer_to_layer", "similarity_preserving", "layer_to_layer_2", "channel_wise"]
    assert combined.weights == {"layer_to_layer": 1.0, "similarity_preserving": 0.5, "layer_to_layer_2": 0.25,
                                "channel_wise": 1.0}
    mask = lengths_mask([6, 3], 6)
    student, teacher = hidden(2, 6, 4, seed=1), hidden(2, 6, 6, seed=2)
    total, stats = combined(student, teacher, mask)
    expected = 0.0
    for key, loss_fn in combined.losses.items():
        value, _ = loss_fn(student, teacher, mask)
        expected += combined.weights[key] * value.item()
        assert stats[f"{key}_loss"].item() == pytest.approx(value.item())
        assert stats[f"{key}_weighted"].item() == pytest.approx(combined.weights[key] * value.item())
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert stats["loss"].item() == pytest.approx(total.item())
    assert "layer_to_layer_l1_s0_t1" in stats and "layer_to_layer_2_l1_s1_t1" in stats


def test_registry_rejects_unknown_names_and_keys():
    with pytest.raises(ValueError, match="'mse'.*layer_to_layer.*channel_wise"):
        build_distill_loss([{"name": "mse"}], 4, 4)
    with pytest.raises(ValueError, match="layer_to_layer.*layers.*layer_map.*shared_projection.*l1_weight"):
        build_distill_loss([{"name": "layer_to_layer", "conf": {"layers": [[0, 0]]}}], 4, 4)
    with pytest.raises(ValueError, match="weights"):
        build_distill_loss([{"name": "channel_wise", "weights": 2.0}], 4, 4)
    with pytest.raises(ValueError, match="accepted names"):
        build_distill_loss([], 4, 4)
    with pytest.raises(ValueError, match="axis"):
        build_distill_loss([{"name": "similarity_preserving", "conf": {"axis": "channel"}}], 4, 4)
    with pytest.raises(ValueError, match="layer_map"):
        LayerToLayerLoss(4, 4, layer_map=[[0, 1, 2]])
    with pytest.raises(ValueError, match="layer_map"):
        LayerToLayerLoss(4, 4, layer_map=[0, 1])


def test_bad_inputs_are_reported():
    loss_fn = LayerToLayerLoss(4, 4, layer_map=[[5, 0]])
    mask = lengths_mask([3], 3)
    with pytest.raises(ValueError, match="student layer 5 is out of range"):
        loss_fn(hidden(1, 3, 4), hidden(1, 3, 4), mask)
    with pytest.raises(ValueError, match="must match the mask"):
        LayerToLayerLoss(4, 4, layer_map=[[0, 0]])(hidden(1, 3, 4), hidden(1, 4, 4), mask)


# ---------------------------------------------------------------- optimisation

@pytest.mark.parametrize("name,conf", CONFIGS, ids=IDS)
def test_short_optimisation_decreases_loss(name, conf):
    torch.manual_seed(0)
    mask = lengths_mask([12, 9, 6, 10], 12)
    inputs = torch.randn(4, 12, 5)
    teacher_weights = torch.randn(3, 5, 6)
    teacher = [torch.tanh(inputs @ w) for w in teacher_weights]
    student_net = torch.nn.ModuleList(torch.nn.Linear(5, 4) for _ in range(3))
    loss_fn = LOSSES[name](4, 6, **conf).train()
    optimizer = torch.optim.Adam([*student_net.parameters(), *loss_fn.parameters()], lr=1e-2)
    history = []
    for _ in range(50):
        loss, _ = loss_fn([layer(inputs) for layer in student_net], teacher, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.1 * abs(np.mean(history[:5]))
