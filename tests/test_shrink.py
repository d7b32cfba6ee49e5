"""Shrinking the student during stage 1: closed units leave the model, the function, the cost
model, the optimizer state and checkpoints stay right (docs/pruning.md, "Shrinking during
training")."""
import copy
import subprocess
import sys

import pytest
import torch
import yaml

import espnet_plugin
from espnet_plugin.distill.model import DistillPruneModel
from espnet_plugin.models import GateConfig, SpeechEncoder
from espnet_plugin.models.model import with_gates
from espnet_plugin.pruning import prune_model
from espnet_plugin.pruning.prune import count_units, shrink_model
from tests.conftest import randomize_, tiny_config
from tests.test_distill_prune_task import CONF_DIR, run, train_command, workdir  # noqa: F401  (fixture)

LAYOUTS = [("hubert", False), ("hubert", True), ("wavlm", False)]
pytestmark = pytest.mark.usefixtures("single_thread")


def set_gates_(model: SpeechEncoder, seed: int = 0) -> None:
    """Open gates with P(open) > 0.8 and a fixed pattern of closed ones (log_alpha -10,
    P(open) 2e-4): conv channels of every layer, heads and units of layer 0, all heads of
    layer 1, the FFN block of the last layer."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in model.gate_parameters():
            gate.copy_(torch.rand(gate.shape, generator=gen) * 3.0)
        for layer in model.feature_extractor.conv_layers:
            layer.gate.log_alpha[::3] = -10.0
        model.layers[0].attention.gate.log_alpha[1] = -10.0
        model.layers[0].ffn.gate.log_alpha[::2] = -10.0
        model.layers[1].attention.gate.log_alpha[:] = -10.0
        model.layers[-1].ffn_block_gate.log_alpha[:] = -10.0


def gated_student(model_type="hubert", large=False) -> SpeechEncoder:
    torch.manual_seed(0)
    dense = randomize_(SpeechEncoder(tiny_config(model_type, large, num_layers=3, heads=4, ffn=48)), std=0.2)
    student = with_gates(dense, GateConfig.all_on())
    set_gates_(student)
    return student


@pytest.mark.parametrize("model_type,large", LAYOUTS)
def test_shrinking_removes_the_closed_units_and_keeps_the_function(model_type, large, wavs):
    student = gated_student(model_type, large)
    smaller, _ = shrink_model(student, threshold=0.01)
    assert count_units(smaller) < count_units(student)
    assert smaller.num_params() < student.num_params()
    assert smaller.config.layers[1].num_heads == 0 and smaller.config.layers[1].attention  # output bias stays
    assert not smaller.config.layers[-1].ffn
    assert smaller.config.conv_layers[0][0] == student.config.conv_layers[0][0] - len(range(0, 16, 3))
    assert len(smaller.gate_parameters()) > 0  # still gated: training goes on
    lengths = torch.tensor([4000, 3100])
    student.eval(), smaller.eval()
    with torch.no_grad():
        for a, b in zip(student(wavs, lengths)[0], smaller(wavs, lengths)[0]):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    # the cost model: closed units counted ~0 before, exactly 0 now
    assert smaller.expected_params().item() == pytest.approx(student.expected_params().item(), rel=1e-3)
    assert smaller.expected_params(deterministic=True).item() == student.expected_params(deterministic=True).item()
    # the export of either is the same dense model
    a, b = prune_model(student), prune_model(smaller)
    assert a.config.to_dict() == b.config.to_dict()
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name


def test_shrinking_an_open_model_changes_nothing():
    student = with_gates(SpeechEncoder(tiny_config()), GateConfig.all_on())
    assert shrink_model(student, threshold=0.01) is None


def distill_prune_model(**kwargs) -> DistillPruneModel:
    torch.manual_seed(1)
    teacher = randomize_(SpeechEncoder(tiny_config(num_layers=3, heads=4, ffn=48)), std=0.2)
    student = with_gates(teacher, GateConfig.all_on())
    losses = [{"name": "layer_to_layer", "conf": {"layer_map": [[0, 0], [3, 3]]}}]
    return DistillPruneModel(student, teacher, losses, target_sparsity=0.5, shrink_threshold=0.01, **kwargs)


def adam_for(model: DistillPruneModel, fused: bool = False) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3, 0.1, 0.02), lr=1e-3, weight_decay=0.0,
                                  fused=fused or None)
    model.attach_optimizer(optimizer)
    return optimizer


def train_steps(model, optimizer, wavs, steps):
    model.train()
    for _ in range(steps):
        loss, _, _ = model(wavs, torch.tensor([4000, 3100]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("fused", [False, True], ids=["adamw", "fused_adamw"])
def test_the_optimizer_keeps_the_state_of_the_kept_units(wavs, fused):
    model = distill_prune_model(shrink_interval=1000, skip_closed_units=0.25)
    optimizer = adam_for(model, fused)
    train_steps(model, optimizer, wavs, 2)
    set_gates_(model.student)
    old_ffn = model.student.layers[0].ffn.intermediate.weight
    old_moment = optimizer.state[old_ffn]["exp_avg"].clone()
    old_step = optimizer.state[old_ffn]["step"].clone()
    unchanged = model.student.layers[1].ffn.intermediate.weight  # layer 1 keeps every FFN unit
    unchanged_state = {key: value.clone() for key, value in optimizer.state[unchanged].items()}
    assert model.shrink_student() > 0
    new_ffn = model.student.layers[0].ffn.intermediate.weight
    assert new_ffn.shape[0] == 24  # every other unit of layer 0 closed
    # a weight that loses nothing moves uncopied, with its state
    assert model.student.layers[1].ffn.intermediate.weight is unchanged
    for key, value in unchanged_state.items():
        assert torch.equal(optimizer.state[unchanged][key], value), key
    assert all(gate.skip_closed == 0.25 for gate in model.student.gates())  # the new student skips too
    assert torch.equal(optimizer.state[new_ffn]["exp_avg"], old_moment[1::2])
    assert torch.equal(optimizer.state[new_ffn]["step"], old_step)
    # the groups hold exactly the model's parameters, with state for none that are gone
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}
    assert set(map(id, optimizer.state)) <= {id(p) for p in grouped}
    assert [len(g["params"]) for g in optimizer.param_groups] == [len(m) for m in model.group_members()]
    train_steps(model, optimizer, wavs, 1)  # trains on
    assert torch.isfinite(new_ffn).all() and not torch.equal(optimizer.state[new_ffn]["step"], old_step)


def test_training_shrinks_every_interval_and_a_checkpoint_loads_into_a_fresh_model(wavs):
    model = distill_prune_model(shrink_interval=2)
    optimizer = adam_for(model)
    train_steps(model, optimizer, wavs, 1)
    set_gates_(model.student)
    before = count_units(model.student)
    train_steps(model, optimizer, wavs, 2)  # the second forward is step 2: shrinks first
    assert count_units(model.student) < before
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    assert model_state["student_architecture._extra_state"]["student_config"] == model.student.config.to_dict()

    fresh = distill_prune_model(shrink_interval=2)  # full size, as ESPnet builds it before --resume
    fresh_optimizer = adam_for(fresh)
    fresh.load_state_dict(model_state)
    fresh_optimizer.load_state_dict(optim_state)
    assert fresh.student.config.to_dict() == model.student.config.to_dict()
    for name, value in fresh.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, model_state[name]), name
    ffn = fresh.student.layers[0].ffn.intermediate.weight
    ours = model.student.layers[0].ffn.intermediate.weight
    assert torch.equal(fresh_optimizer.state[ffn]["exp_avg"], optimizer.state[ours]["exp_avg"])
    # both continue identically
    torch.manual_seed(5)
    train_steps(model, optimizer, wavs, 1)
    torch.manual_seed(5)
    train_steps(fresh, fresh_optimizer, wavs, 1)
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name


def test_shrinking_needs_gates_and_a_small_threshold():
    teacher = SpeechEncoder(tiny_config())
    with pytest.raises(ValueError, match="shrink_threshold needs gates"):
        DistillPruneModel(copy.deepcopy(teacher), teacher, shrink_threshold=0.01)
    gated = with_gates(teacher, GateConfig.all_on())
    with pytest.raises(ValueError, match="small probability"):
        DistillPruneModel(gated, teacher, target_sparsity=0.5, shrink_threshold=0.7)


# ------------------------------------------------------------ through ESPnet's trainer
def shrinking_config(tmp_path, **changes):
    config = yaml.safe_load((CONF_DIR / "tiny_stage1.yaml").read_text())
    config["model_conf"].update(shrink_threshold=0.05, shrink_interval=10)
    config["optim_conf"]["fused"] = True  # torch's fused AdamW: its state follows the shrinking student too
    config.update({"gate_lr": 0.3, "keep_nbest_models": 1, "max_epoch": 12, **changes})
    path = tmp_path / "shrink.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_task_shrinks_during_training_resumes_identically_and_exports(workdir, tmp_path):
    config = shrinking_config(tmp_path)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    log = run(train_command(workdir, reference, config)).stderr
    assert "closed units removed from the student" in log
    run(train_command(workdir, resumed, config, "--max_epoch", "6"))
    assert "The training was resumed using" in run(train_command(workdir, resumed, config, "--resume", "true")).stderr

    a = torch.load(reference / "latest.pth", map_location="cpu")
    b = torch.load(resumed / "latest.pth", map_location="cpu")
    final = a["student_architecture._extra_state"]["student_config"]
    initial = espnet_plugin.load_model(workdir / "teacher").config
    assert sum(c[0] for c in final["conv_layers"]) < sum(c[0] for c in initial.conv_layers)
    assert final == b["student_architecture._extra_state"]["student_config"]
    for name, value in a.items():
        if torch.is_tensor(value):
            assert torch.allclose(value, b[name], atol=1e-6), name

    out = tmp_path / "export"
    run([sys.executable, "-m", "espnet_plugin.bin.export_model", "--config", str(reference / "config.yaml"),
         "--checkpoint", str(reference / "latest.pth"), "--output_dir", str(out)])
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert espnet_plugin.load_model(out).num_params() == summary["params"]

    refused = subprocess.run(train_command(workdir, tmp_path / "averaged", shrinking_config(tmp_path, keep_nbest_models=2)),
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "set keep_nbest_models: 1" in refused.stderr
