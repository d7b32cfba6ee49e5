"""Hard-concrete gate statistics, the sparsity Lagrangian (and the joint params + MAC budget), and
audio input errors."""
import numpy as np
import pytest
import soundfile
import torch

from espnet_plugin.distill.model import DistillPruneModel
from espnet_plugin.gates import HardConcreteGate
from espnet_plugin.models import GateConfig, SpeechEncoder, with_gates
from espnet_plugin.pruning import SparsityLagrangian
from espnet_plugin.utils.audio import AudioError, read_audio, synthesize
from tests.conftest import randomize_, tiny_config


def test_prob_open_matches_sampled_frequency():
    torch.manual_seed(0)
    gate = HardConcreteGate(5)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]))
    samples = torch.stack([gate.sample() for _ in range(20000)])
    assert samples.min() >= 0 and samples.max() <= 1
    assert (samples == 0).any() and (samples == 1).any()  # hard zeros and ones occur
    assert torch.allclose((samples > 0).float().mean(0), gate.prob_open(), atol=0.015)


def test_initial_gates_are_open():
    gate = HardConcreteGate(1000, init_drop_rate=0.01)
    assert gate.expected_open().item() > 0.99 * 1000 * 0.99
    assert gate.eval()().sum().item() == gate.deterministic_mask().sum().item() >= 980


def test_deterministic_mask_keeps_the_largest_log_alphas():
    gate = HardConcreteGate(6).eval()
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([5.0, -5.0, 0.2, -3.0, 5.0, -5.0]))
    keep = int(round(gate.expected_open().item()))
    mask = gate()
    assert mask.sum().item() == keep == 3
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]



def test_min_keep_keeps_the_most_open_units_of_a_closed_gate():
    """A gate whose expected open count rounds to 0 still keeps ``min_keep`` units (conv
    layers keep a channel so the CNN never breaks), the ones with the largest log_alpha."""
    closed = torch.tensor([-9.0, -6.0, -8.0, -7.0])
    plain, floored = HardConcreteGate(4).eval(), HardConcreteGate(4, min_keep=2).eval()
    with torch.no_grad():
        plain.log_alpha.copy_(closed)
        floored.log_alpha.copy_(closed)
    assert round(plain.expected_open().item()) == 0
    assert plain.deterministic_mask().tolist() == [0.0, 0.0, 0.0, 0.0]
    assert floored.deterministic_mask().tolist() == [0.0, 1.0, 0.0, 1.0]


def drive_gates(gates: HardConcreteGate, budget: SparsityLagrangian, optimizer, steps: int = 600) -> list:
    """Train ``gates`` on the budget term alone; the expected sparsity at every step."""
    trajectory = []
    for step in range(steps):
        sparsity = 1.0 - gates.expected_open() / gates.n
        loss = budget(sparsity, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trajectory.append(sparsity.item())
    return trajectory


def test_lagrangian_drives_expected_sparsity_to_target():
    torch.manual_seed(0)
    gates = HardConcreteGate(200)
    lagrangian = SparsityLagrangian(target_sparsity=0.6, warmup_steps=100)
    assert lagrangian.target_at(50) == pytest.approx(0.3)
    optimizer = torch.optim.AdamW([{"params": gates.parameters(), "lr": 0.05}, lagrangian.optimizer_group(0.05)])
    drive_gates(gates, lagrangian, optimizer)
    assert abs((1.0 - gates.expected_open().item() / 200) - 0.6) < 0.02
    assert lagrangian.lambda1.item() != 0.0  # the multipliers moved (gradient ascent)


def test_quadratic_penalty_settles_without_overshoot():
    """quadratic_weight: multipliers frozen at (0, weight), nothing to train, and the gates
    approach the ramped target from below and stay within 0.02 of it."""
    torch.manual_seed(0)
    gates = HardConcreteGate(200)
    penalty = SparsityLagrangian(target_sparsity=0.6, warmup_steps=100, quadratic_weight=50.0)
    assert penalty.multipliers() == [] and not penalty.lambda2.requires_grad
    assert float(penalty(torch.tensor(0.5), 1000)) == pytest.approx(50.0 * 0.1 ** 2)
    trajectory = drive_gates(gates, penalty, torch.optim.AdamW(gates.parameters(), lr=0.05))
    assert max(trajectory) < 0.62 and abs(trajectory[-1] - 0.6) < 0.02
    assert (penalty.lambda1.item(), penalty.lambda2.item()) == (0.0, 50.0)
    with pytest.raises(ValueError, match="quadratic_weight must be positive"):
        SparsityLagrangian(0.5, quadratic_weight=0.0)


def test_lagrangian_rejects_impossible_target():
    with pytest.raises(ValueError, match="target_sparsity"):
        SparsityLagrangian(1.5)


def test_read_audio_errors_name_the_file(tmp_path):
    good = tmp_path / "good.wav"
    soundfile.write(good, np.zeros(1600, dtype="float32"), 16000)
    assert read_audio(good).shape == (1600,)
    wrong_rate = tmp_path / "rate.wav"
    soundfile.write(wrong_rate, np.zeros(800, dtype="float32"), 8000)
    with pytest.raises(AudioError, match="rate.wav: sample rate 8000 Hz, expected 16000"):
        read_audio(wrong_rate)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype="float32"), 16000)
    with pytest.raises(AudioError, match="empty.wav: the audio file is empty"):
        read_audio(empty)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(AudioError, match="corrupt.wav: unreadable or corrupt"):
        read_audio(corrupt)


def test_synthesize_speaks_at_16k():
    wav = synthesize("hello world", voice="en-us+f3")
    assert wav.dtype == torch.float32 and 0.3 * 16000 < len(wav) < 3 * 16000
    assert wav.abs().max() > 0.01


def test_joint_budget_adds_a_mac_term_with_its_own_multipliers(wavs):
    """model_conf.macs_target_sparsity: a MAC budget beside the params budget; both terms are
    in the loss, their four multipliers ascend in one group, and both pull sparsity up."""
    torch.manual_seed(1)
    teacher = randomize_(SpeechEncoder(tiny_config(num_layers=3, heads=4, ffn=48)), std=0.2)
    losses = [{"name": "layer_to_layer", "conf": {"layer_map": [[0, 0], [3, 3]]}}]
    model = DistillPruneModel(with_gates(teacher, GateConfig.all_on()), teacher, losses, target_sparsity=0.5,
                              sparsity_warmup_steps=50, macs_target_sparsity=0.5)
    assert len(model.multipliers()) == 4 and model.group_members()[-1] == model.multipliers()
    assert {"macs_lagrangian.lambda1", "macs_lagrangian.lambda2"} <= set(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3, 0.1, 0.05), lr=1e-3, weight_decay=0.0)
    model.train()
    for _ in range(120):
        loss, stats, _ = model(wavs, torch.tensor([4000, 3100]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert stats["macs_target_sparsity"] == pytest.approx(0.5) and stats["target_sparsity"] == pytest.approx(0.5)
    assert stats["macs_lambda1"] < 0 and stats["lambda1"] < 0  # both budgets ask for more sparsity
    assert stats["expected_sparsity"] > 0.3 and stats["macs_expected_sparsity"] > 0.3
    # its MAC sparsity is the cost model's, against the teacher's MACs at cost_seconds
    assert float(model.expected_macs_sparsity()) == pytest.approx(float(stats["macs_expected_sparsity"]), abs=0.05)
    for bad in ({"sparsity_metric": "macs", "target_sparsity": 0.5}, {"target_sparsity": None}):
        with pytest.raises(ValueError, match="macs_target_sparsity is a second budget beside a params budget"):
            DistillPruneModel(with_gates(teacher, GateConfig.all_on()), teacher, losses, macs_target_sparsity=0.5, **bad)


def test_gate_values_stay_with_their_model(wavs):
    """After a training forward the gates hold that forward's values (graph tensors): a deep
    copy starts without them, and a DataParallel replica samples into its own holders."""
    import copy

    gated = with_gates(randomize_(SpeechEncoder(tiny_config("hubert", False))), GateConfig.all_on()).train()
    gated(wavs)
    assert all(gate.current is not None for gate in gated.gates())
    twin = copy.deepcopy(gated)
    assert all(gate.current is None for gate in twin.gates())
    assert twin._sampled.current is None
    for gate in gated.gates():
        assert gate._replicate_for_data_parallel().draw is not gate.draw
    assert gated._replicate_for_data_parallel()._sampled is not gated._sampled
