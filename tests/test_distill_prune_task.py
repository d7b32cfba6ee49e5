"""DistillPruneTask through ESPnet's own trainer: stage 1, export, stage 2, configs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

import espnet_plugin
from espnet_plugin.compact import save_model
from espnet_plugin.models import SpeechEncoder
from espnet_plugin.utils.audio import synthesize
from espnet_plugin.utils.kaldi_data import write_scp, write_shape_file
from tests.conftest import randomize_, tiny_config

CONF_DIR = Path(__file__).parent / "conf"  # the tiny CPU configs
PAPER_CONF_DIR = Path(__file__).parents[1] / "egs2" / "librispeech" / "conf"
SENTENCES = [
    "the cat sat on the mat", "a quick brown fox", "speech models are large", "prune the heads",
    "keep what matters", "distil the teacher", "small devices need small models", "hello world again",
]
VOICES = ["en-us", "en-us+f3", "en-gb", "en-us+m3"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Eight espeak-ng utterances (Kaldi-style data dir) and a tiny random HuBERT teacher."""
    root = tmp_path_factory.mktemp("distill")
    entries = {}
    for i, text in enumerate(SENTENCES):
        wav = synthesize(text, VOICES[i % len(VOICES)], speed=150 + 10 * i)
        path = root / "wav" / f"utt{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, wav.numpy(), 16000)
        entries[f"utt{i:02d}"] = str(path)
    write_scp(root / "data" / "wav.scp", entries)
    write_shape_file(root / "data" / "wav.scp", root / "data" / "speech_shape")
    torch.manual_seed(0)
    teacher = randomize_(SpeechEncoder(tiny_config(num_layers=2, heads=4, ffn=64)), std=0.1)
    save_model(teacher, root / "teacher", {"source": "random tiny HuBERT"})
    return root


def train_command(workdir: Path, output_dir: Path, config: Path, *extra: str):
    data = workdir / "data"
    return [
        sys.executable, "-m", "espnet_plugin.bin.distill_prune_train",
        "--config", str(config),
        "--teacher_path", str(workdir / "teacher"),
        "--output_dir", str(output_dir),
        "--ngpu", "0",
        "--seed", "0",
        "--train_data_path_and_name_and_type", f"{data / 'wav.scp'},speech,sound",
        "--train_shape_file", str(data / "speech_shape"),
        "--valid_data_path_and_name_and_type", f"{data / 'wav.scp'},speech,sound",
        "--valid_shape_file", str(data / "speech_shape"),
        *extra,
    ]


def run(command, **kwargs):
    # one thread per process: tiny models gain nothing from more, and idle threads spin on a loaded machine
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, **kwargs)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def reporter_stats(exp: Path):
    return torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)["reporter"]["stats"]


@pytest.fixture(scope="module")
def stage1(workdir):
    exp = workdir / "exp" / "stage1"
    run(train_command(workdir, exp, CONF_DIR / "tiny_stage1.yaml"))
    return exp


def test_stage1_reaches_target_sparsity_and_loss_falls(stage1):
    stats = reporter_stats(stage1)
    epochs = sorted(stats)
    first, last = stats[epochs[0]]["train"], stats[epochs[-1]]["train"]
    assert last["distill"] < first["distill"]
    assert abs(last["expected_sparsity"] - 0.5) < 0.02
    assert last["target_sparsity"] == pytest.approx(0.5)


def test_export_prunes_to_the_requested_size(stage1, workdir, tmp_path):
    out = tmp_path / "pruned"
    run([sys.executable, "-m", "espnet_plugin.bin.export_model", "--config", str(stage1 / "config.yaml"),
         "--checkpoint", str(stage1 / "latest.pth"), "--output_dir", str(out)])
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    teacher = espnet_plugin.load_model(workdir / "teacher")
    student = espnet_plugin.load_model(out)
    assert summary["params"] == student.num_params()
    assert abs(student.num_params() / teacher.num_params() - 0.5) < 0.005
    # the export moved the deterministic masks onto the budget (docs/pruning.md, "Export on budget")
    fit = summary["budget_fit"]
    assert fit["metric"] == "params" and fit["exported"] == student.num_params()
    assert abs(fit["exported"] - fit["target"]) <= 0.005 * fit["target"]
    for name in ("architecture.png", "training.png", "distill_loss.pth"):
        assert (out / name).stat().st_size > 0
    # checkpoints hold the student only: never the teacher
    state = torch.load(stage1 / "latest.pth", map_location="cpu")
    assert not any(k.startswith(("teacher", "_teacher")) for k in state)


def test_export_refuses_a_config_edited_to_disagree_with_the_checkpoint(stage1, tmp_path):
    """ESPnet's loader would put the gated checkpoint into an ungated model without a word and
    export the unpruned student; the export checks every weight instead."""
    edited = tmp_path / "edited"
    edited.mkdir()
    config = yaml.safe_load((stage1 / "config.yaml").read_text())
    config["gates_conf"] = {}
    config["model_conf"]["target_sparsity"] = None
    (edited / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "espnet_plugin.bin.export_model", "--config", str(edited / "config.yaml"),
                             "--checkpoint", str(stage1 / "latest.pth"), "--output_dir", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{stage1 / 'latest.pth'} (the model that {edited / 'config.yaml'} describes" in result.stderr
    assert "log_alpha" in result.stderr and not (tmp_path / "out" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def stage1_export(stage1, workdir):
    out = workdir / "exp" / "stage1_pruned"
    run([sys.executable, "-m", "espnet_plugin.bin.export_model", "--config", str(stage1 / "config.yaml"),
         "--checkpoint", str(stage1 / "latest.pth"), "--output_dir", str(out)])
    return out


def test_stage2_distils_the_pruned_student_and_exports(stage1_export, workdir):
    exp = workdir / "exp" / "stage2"
    run(train_command(workdir, exp, CONF_DIR / "tiny_stage2.yaml", "--student_path", str(stage1_export),
                      "--init_param", str(stage1_export / "distill_loss.pth")))
    stats = reporter_stats(exp)
    epochs = sorted(stats)
    assert stats[epochs[-1]]["train"]["distill"] < stats[epochs[0]]["train"]["distill"]
    assert "expected_sparsity" not in stats[epochs[-1]]["train"]  # regulariser off
    # the stage-1 projections were carried over, not re-initialised to identity
    heads = torch.load(stage1_export / "distill_loss.pth")
    stage2_end = torch.load(exp / "latest.pth", map_location="cpu")
    key = next(k for k in heads if k.endswith("weight"))
    assert not torch.equal(heads[key], torch.eye(heads[key].shape[0]))
    assert (stage2_end[key] - heads[key]).abs().max() < 0.05
    final = workdir / "exp" / "final"
    run([sys.executable, "-m", "espnet_plugin.bin.export_model", "--config", str(exp / "config.yaml"),
         "--checkpoint", str(exp / "valid.loss.best.pth"), "--output_dir", str(final)])
    assert yaml.safe_load((final / "summary.yaml").read_text())["target"] == {"metric": "params", "sparsity": 0.5}
    pruned, student = espnet_plugin.load_model(stage1_export), espnet_plugin.load_model(final)
    assert student.config == pruned.config and student.num_params() == pruned.num_params()
    wav = torch.randn(1, 8000)
    with torch.no_grad():
        assert not torch.allclose(student(wav)[0][-1], pruned(wav)[0][-1])  # stage 2 trained it


def test_mac_budget_prunes_macs_harder_than_params(workdir, stage1_export, tmp_path):
    """MAC-aware pruning: at a similar parameter count, a MAC budget leaves far fewer MACs."""
    exp = workdir / "exp" / "macs"
    run(train_command(workdir, exp, CONF_DIR / "tiny_stage1_macs.yaml"))
    stats = reporter_stats(exp)
    # the quadratic penalty settles on the 0.5 MAC target within the 200 steps; its multipliers stay frozen
    last = stats[max(stats)]["train"]
    assert abs(last["expected_sparsity"] - 0.5) < 0.02 and (last["lambda1"], last["lambda2"]) == (0.0, 100.0)
    out = tmp_path / "macs_pruned"
    run([sys.executable, "-m", "espnet_plugin.bin.export_model", "--config", str(exp / "config.yaml"),
         "--checkpoint", str(exp / "latest.pth"), "--output_dir", str(out)])
    by_macs = yaml.safe_load((out / "summary.yaml").read_text())
    by_params = yaml.safe_load((stage1_export / "summary.yaml").read_text())
    assert by_macs["target"] == {"metric": "macs", "sparsity": 0.5}
    # MACs are counted for the training data's mean utterance length, recorded in the config and summary
    samples = [int(line.split()[1]) for line in (workdir / "data" / "speech_shape").read_text().splitlines()]
    mean_seconds = round(sum(samples) / len(samples) / 16000, 3)
    assert yaml.safe_load((exp / "config.yaml").read_text())["model_conf"]["cost_seconds"] == mean_seconds
    assert by_macs["cost_seconds"] == mean_seconds != 1.0
    student = espnet_plugin.load_model(out)
    assert by_macs["macs_per_second"] == round(student.expected_macs(seconds=mean_seconds).item() / mean_seconds)
    # the param budget leaves most MACs (the CNN's share is larger than its share of params); the MAC budget removes far more
    # MACs at a similar parameter count
    assert by_params["macs_sparsity"] < by_params["params_sparsity"] - 0.1
    assert by_macs["macs_sparsity"] > by_params["macs_sparsity"] + 0.1
    assert abs(by_macs["params_sparsity"] - by_params["params_sparsity"]) < 0.1


def test_distilhubert_baseline_trains_a_smaller_student(workdir):
    exp = workdir / "exp" / "distilhubert"
    run(train_command(workdir, exp, CONF_DIR / "tiny_distilhubert.yaml", "--max_epoch", "3"))
    stats = reporter_stats(exp)
    assert stats[3]["train"]["distill"] < stats[1]["train"]["distill"]
    from espnet_plugin.tasks.distill_prune import DistillPruneTask

    model, _ = DistillPruneTask.build_model_from_file(exp / "config.yaml", exp / "3epoch.pth", device="cpu")
    assert model.student.config.num_layers == 1
    assert len(model.distill_loss.losses["prediction_heads"].heads) == 2


def test_use_amp_trains_stage1_in_bf16_on_a_cpu(workdir, tmp_path):
    """ESPnet's --use_amp means CUDA autocast, which leaves CPU ops in fp32; our trainer runs
    the CPU forward passes under bf16 autocast (tests/test_trainer.py checks the switch)."""
    exp = tmp_path / "amp"
    result = run(train_command(workdir, exp, CONF_DIR / "tiny_stage1.yaml", "--use_amp", "true",
                               "--max_epoch", "2"))
    assert "forward passes under torch.autocast('cpu', torch.bfloat16)" in result.stderr
    stats = reporter_stats(exp)
    assert all(np.isfinite(stats[e][part]["distill"]) for e in (1, 2) for part in ("train", "valid"))
    assert stats[2]["train"]["distill"] < stats[1]["train"]["distill"]
    state = torch.load(exp / "latest.pth", map_location="cpu")
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert tensors and all(v.dtype == torch.float32 for v in tensors)  # fp32 master weights


def test_print_config_reloads_through_config(tmp_path):
    printed = run([sys.executable, "-m", "espnet_plugin.bin.distill_prune_train", "--print_config",
                   "--gate_lr", "0.05"]).stdout
    config = yaml.safe_load(printed)
    assert config["gate_lr"] == 0.05 and config["model"] == "distill_prune"
    (tmp_path / "printed.yaml").write_text(printed)
    from espnet_plugin.tasks.distill_prune import DistillPruneTask

    args = DistillPruneTask.get_parser().parse_args(["--config", str(tmp_path / "printed.yaml")])
    assert args.gate_lr == 0.05 and args.lambda_lr == config["lambda_lr"]


@pytest.fixture(scope="module")
def full_size_teachers(tmp_path_factory):
    """Random-weight teachers of the paper configs' sizes (no pretrained weights here)."""
    from espnet_plugin.models import hubert_base_config, hubert_large_config, wavlm_base_config

    root = tmp_path_factory.mktemp("teachers")
    for name, factory in [("hubert_base", hubert_base_config), ("wavlm_base_plus", wavlm_base_config),
                          ("hubert_large", hubert_large_config)]:
        save_model(SpeechEncoder(factory()), root / name)
    return root


def test_every_shipped_config_passes_dry_run(workdir, full_size_teachers, tmp_path):
    from espnet_plugin.tasks.distill_prune import DistillPruneTask

    configs = sorted(CONF_DIR.glob("*.yaml")) + sorted(PAPER_CONF_DIR.glob("*.yaml"))
    assert len(configs) >= 12
    for config in configs:
        teacher = workdir / "teacher"
        for name in ("hubert_base", "wavlm_base_plus", "hubert_large", "distilhubert_base"):
            if config.name.startswith(name):
                teacher = full_size_teachers / name.replace("distilhubert_base", "hubert_base")
        command = train_command(workdir, tmp_path / config.stem, config, "--dry_run", "true")[3:]
        command[command.index("--teacher_path") + 1] = str(teacher)
        DistillPruneTask.main(cmd=command)
        assert (tmp_path / config.stem / "config.yaml").is_file(), config


def test_second_run_on_a_busy_experiment_directory_refuses_and_writes_nothing(workdir, tmp_path):
    exp = tmp_path / "busy"
    exp.mkdir()
    (exp / "config.yaml").write_text("written by the first run\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom espnet_plugin.utils.run_lock import exclusive_output_dir\n"
         f"with exclusive_output_dir({str(exp)!r}):\n    print('held', flush=True)\n    time.sleep(900)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        command = train_command(workdir, exp, CONF_DIR / "tiny_stage1.yaml")
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode != 0
        assert f"{exp}: another run is using this experiment directory (pid {holder.pid}" in result.stderr
        assert (exp / "config.yaml").read_text() == "written by the first run\n"
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the killed holder's lock: the directory is usable again
    from espnet_plugin.utils.run_lock import exclusive_output_dir

    with exclusive_output_dir(exp):
        pass


def test_nonfinite_guard_counts_names_the_batch_and_stops():
    from espnet_plugin.utils.nonfinite import NonFiniteGuard, NonFiniteLossError

    guard = NonFiniteGuard(max_steps=2)
    guard.check(torch.tensor(1.5), ["a"])
    assert guard.count == 0
    guard.check(torch.tensor(float("nan")), ["a", "b"])
    guard.check(torch.tensor(float("inf")), ["c"])
    assert guard.count == 2
    with pytest.raises(NonFiniteLossError, match=r"3 training steps had a NaN or infinite loss .*max_nonfinite_steps: 2.*batch: d"):
        guard.check(torch.tensor(float("nan")), ["d"])


def test_nan_audio_stops_training_with_the_utterance_named(workdir, tmp_path):
    data = tmp_path / "data"
    wav = np.zeros(16000, dtype=np.float32)
    wav[4000] = np.nan
    data.mkdir()
    soundfile.write(data / "bad.wav", wav, 16000, subtype="FLOAT")
    write_scp(data / "wav.scp", {"bad_utt": str(data / "bad.wav")})
    write_shape_file(data / "wav.scp", data / "speech_shape")
    command = train_command(workdir, tmp_path / "exp", CONF_DIR / "tiny_stage1.yaml", "--max_nonfinite_steps", "0")
    for option in ("--train_data_path_and_name_and_type", "--valid_data_path_and_name_and_type"):
        command[command.index(option) + 1] = f"{data / 'wav.scp'},speech,sound"
    for option in ("--train_shape_file", "--valid_shape_file"):
        command[command.index(option) + 1] = str(data / "speech_shape")
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0
    assert "NonFiniteLossError: 1 training steps had a NaN or infinite loss" in result.stderr
    assert "batch: bad_utt" in result.stderr


def test_cropped_batch_gives_the_unpadded_teacher_targets():
    """Group-norm CNN: padding changes an utterance's features; the cropped batch has none."""
    from espnet_plugin.distill.model import crop_batch_to_shortest

    torch.manual_seed(0)
    teacher = randomize_(SpeechEncoder(tiny_config(num_layers=2)), std=0.1).eval()
    lengths = torch.tensor([16000, 9000, 12000])
    speech = torch.randn(3, 16000) * 0.1 * (torch.arange(16000)[None] < lengths[:, None])
    with torch.no_grad():
        padded, _ = teacher(speech, lengths)
        alone, _ = teacher(speech[1:2, :9000], lengths[1:2])
    assert (padded[1][0, : alone[1].shape[1]] - alone[1][0]).abs().max() > 1e-2  # padding does change it
    cropped, cropped_lengths = crop_batch_to_shortest(speech, lengths)
    assert cropped.shape == (3, 9000) and cropped_lengths.tolist() == [9000] * 3
    with torch.no_grad():
        batch, _ = teacher(cropped, cropped_lengths)
        for i in range(3):
            single, _ = teacher(cropped[i:i + 1], cropped_lengths[i:i + 1])
            for layer in range(len(batch)):
                assert torch.allclose(batch[layer][i], single[layer][0], atol=1e-5), (i, layer)
    assert torch.equal(crop_batch_to_shortest(speech, lengths, random_offset=False)[0], speech[:, :9000])
    for i in range(3):  # each crop is a contiguous piece of its own utterance
        offset = (speech[i].unfold(0, 9000, 1) == cropped[i]).all(1).nonzero()
        assert len(offset) >= 1 and int(offset[0]) + 9000 <= int(lengths[i])


def test_linear_warmup_decay_schedule_scales_every_group():
    from espnet_plugin.schedulers import LinearWarmupDecayLR

    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr": 2e-4}, {"params": [params[1]], "lr": 0.02},
                                   {"params": [params[2]], "lr": 0.02, "maximize": True}])
    scheduler = LinearWarmupDecayLR(optimizer, warmup_steps=15, total_steps=50)
    used = []  # the learning rates of updates 1, 2, ... (ESPnet steps the scheduler after each update)
    for _ in range(60):
        used.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert used[0] == pytest.approx([2e-4 / 15, 0.02 / 15, 0.02 / 15])
    assert used[6] == pytest.approx([2e-4 * 7 / 15, 0.02 * 7 / 15, 0.02 * 7 / 15])
    assert used[14] == pytest.approx([2e-4, 0.02, 0.02])  # the peak at update 15
    assert used[31] == pytest.approx([2e-4 * 18 / 35, 0.02 * 18 / 35, 0.02 * 18 / 35])  # update 32
    assert used[49] == [0.0, 0.0, 0.0] and used[59] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        LinearWarmupDecayLR(optimizer, warmup_steps=50, total_steps=50)


def test_an_optimizer_that_ignores_maximize_is_rejected(monkeypatch):
    """An optimizer without ``maximize`` (some of ESPnet's choices, e.g. torch_optimizer's)
    would train the Lagrange multipliers by descent: the task refuses it by name."""
    import argparse

    from espnet_plugin.distill.model import DistillPruneModel
    from espnet_plugin.models import ConfigError, GateConfig, with_gates
    from espnet_plugin.tasks import distill_prune

    class NoMaximizeSGD(torch.optim.Optimizer):  # accepts groups, knows nothing of maximize
        def __init__(self, params, lr):
            super().__init__(params, {"lr": lr})

    monkeypatch.setitem(distill_prune.optim_classes, "nomaximizesgd", NoMaximizeSGD)
    teacher = SpeechEncoder(tiny_config(num_layers=1))
    model = DistillPruneModel(with_gates(teacher, GateConfig.all_on()), teacher, target_sparsity=0.5)
    args = argparse.Namespace(optim="nomaximizesgd", optim_conf={"lr": 0.1}, gate_lr=0.02, lambda_lr=0.02)
    with pytest.raises(ConfigError, match="optim nomaximizesgd: NoMaximizeSGD does not support maximize=True.*adamw"):
        distill_prune.DistillPruneTask.build_optimizers(args, model)
    args.optim = "adamw"
    (optimizer,) = distill_prune.DistillPruneTask.build_optimizers(args, model)
    assert [group.get("maximize") for group in optimizer.param_groups] == [False, False, True]
