"""DistillPruneTask under ESPnet's trainer: SIGKILL then ``--resume``, and 2-process CPU DDP.

Both reuse the tiny data dir and teacher of ``test_distill_prune_task`` and run ESPnet in
subprocesses with one OpenMP thread each: on a loaded 2-core machine the default thread
pool makes a 10-iteration epoch of the tiny model take ~40 s instead of ~0.5 s.
"""
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_distill_prune_task import CONF_DIR, train_command, workdir  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
CONFIG = CONF_DIR / "tiny_stage1.yaml"
MAX_EPOCH = 6


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def load_checkpoint(exp: Path) -> dict:
    return torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)


def finished_epoch(exp: Path) -> int:
    """The last epoch whose checkpoint ESPnet has written: ``latest.pth -> {N}epoch.pth``."""
    try:
        return int(os.readlink(exp / "latest.pth").split("epoch")[0])
    except (OSError, ValueError):
        return 0


def expected_target_ramp(exp: Path, max_epoch: int, world_size: int = 1) -> dict:
    """Epoch averages of the warm-up target exactly as ESPnet's reporter forms them.

    The target at training step ``s`` is ``t * min(1, s / warmup)``; the reporter weights each
    iteration by its batch size, so the batches of every epoch are rebuilt from the run's own
    ``config.yaml`` with ESPnet's sampler and iterator factory (deterministic in the epoch).
    Under DDP the sampler's minimum batch size is the world size, each rank shuffles its
    shard of every batch in the same order, and the weight is the whole batch's size.
    """
    from espnet2.iterators.sequence_iter_factory import SequenceIterFactory
    from espnet2.samplers.build_batch_sampler import build_batch_sampler

    args = yaml.safe_load((exp / "config.yaml").read_text())
    sampler = build_batch_sampler(
        type=args["batch_type"], batch_size=args["batch_size"], batch_bins=args["batch_bins"],
        shape_files=args["train_shape_file"], sort_in_batch=args["sort_in_batch"],
        sort_batch=args["sort_batch"], drop_last=args["drop_last_iter"],
        min_batch_size=world_size if world_size > 1 else args["min_batch_size"], fold_lengths=args["fold_length"],
    )
    factory = SequenceIterFactory(
        dataset=None, batches=list(sampler), seed=args["seed"],
        num_iters_per_epoch=args["num_iters_per_epoch"], shuffle=True,
        shuffle_within_batch=args["shuffle_within_batch"],
    )
    target = args["model_conf"]["target_sparsity"]
    warmup = args["model_conf"]["sparsity_warmup_steps"]
    ramp, step = {}, 0
    for epoch in range(1, max_epoch + 1):
        sizes = [len(batch) for batch in factory.build_iter(epoch).batch_sampler]
        targets = [target * min(1.0, (step + i) / warmup) for i in range(len(sizes))]
        ramp[epoch] = sum(t * w for t, w in zip(targets, sizes)) / sum(sizes)
        step += len(sizes)
    return ramp


@contextlib.contextmanager
def background(command, env, log: Path):
    """A subprocess in its own process group, stdout+stderr to ``log``; SIGKILLed on exit."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_resume_after_sigkill_continues_the_schedule(workdir, tmp_path):
    exp, reference_exp = tmp_path / "exp", tmp_path / "reference"
    command = train_command(workdir, exp, CONFIG, "--max_epoch", str(MAX_EPOCH))
    env = subprocess_env()
    # an uninterrupted run of the same command alongside, to compare with at the end
    with background(train_command(workdir, reference_exp, CONFIG, "--max_epoch", str(MAX_EPOCH)), env,
                    tmp_path / "reference.log") as reference:
        with background(command, env, tmp_path / "killed.log") as proc:
            deadline = time.monotonic() + 300
            while proc.poll() is None and finished_epoch(exp) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            running = proc.poll() is None
            if running:
                os.killpg(proc.pid, signal.SIGKILL)  # mid-training, after epoch 2's checkpoint
        assert running, "the run ended before it could be killed:\n" + (tmp_path / "killed.log").read_text()[-4000:]
        assert proc.returncode == -signal.SIGKILL

        killed = check_killed_then_resume(command, env, exp)
        assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-4000:]
    check_resumed_run(exp, killed, load_checkpoint(reference_exp))


def check_killed_then_resume(command, env, exp: Path) -> dict:
    # the checkpoint survives SIGKILL (atomic writes) and holds the last finished epoch
    killed = load_checkpoint(exp)
    done = max(killed["reporter"]["stats"])
    assert 2 <= done < MAX_EPOCH, done
    assert sorted(killed["reporter"]["stats"]) == list(range(1, done + 1))
    assert int(killed["model"]["num_steps"]) == 10 * done

    resumed = subprocess.run(command + ["--resume", "true"], cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "The training was resumed using" in resumed.stderr
    assert f"{done + 1}/{MAX_EPOCH}epoch started" in resumed.stderr
    assert f"1/{MAX_EPOCH}epoch started" not in resumed.stderr  # continued, not restarted
    return killed


def check_resumed_run(exp: Path, killed: dict, uninterrupted: dict) -> None:
    done = max(killed["reporter"]["stats"])
    final = load_checkpoint(exp)
    stats = final["reporter"]["stats"]
    assert sorted(stats) == list(range(1, MAX_EPOCH + 1))
    for epoch in range(1, done + 1):  # the epochs before the kill are kept as they were
        assert stats[epoch]["train"] == killed["reporter"]["stats"][epoch]["train"]
    # the warm-up schedule carries on where it stopped: one step per training iteration
    assert int(final["model"]["num_steps"]) == 10 * MAX_EPOCH
    ramp = expected_target_ramp(exp, MAX_EPOCH)
    reported = {epoch: stats[epoch]["train"]["target_sparsity"] for epoch in stats}
    assert reported == pytest.approx(ramp, rel=1e-5)
    assert all(a < b for a, b in zip(list(reported.values()), list(reported.values())[1:]))

    # the resumed run ends where the uninterrupted one does
    assert final["model"].keys() == uninterrupted["model"].keys()
    for name, value in uninterrupted["model"].items():
        torch.testing.assert_close(final["model"][name], value, msg=name)
    for epoch in range(1, MAX_EPOCH + 1):
        train, ref = stats[epoch]["train"], uninterrupted["reporter"]["stats"][epoch]["train"]
        for key in ("distill", "target_sparsity", "expected_sparsity", "loss"):
            assert train[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), (epoch, key)


SAVE_RECORDER = """\
import os
_log = os.environ.get("TORCH_SAVE_LOG")
if _log:
    import torch
    _save = torch.save

    def _recording_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            with open(_log, "a") as fh:
                fh.write(f"{os.environ.get('RANK', '-')}\\t{os.path.basename(os.fspath(f))}\\n")
        return _save(obj, f, *args, **kwargs)

    torch.save = _recording_save
"""


def saved_names(log: Path):
    """(rank, file name) of every torch.save, atomic temporaries mapped to their target."""
    records = []
    for line in log.read_text().splitlines():
        rank, name = line.split("\t")
        records.append((rank, re.sub(r"^\.(.+)\.[^.]+\.tmp$", r"\1", name)))
    return records


def test_two_process_cpu_ddp_with_gloo(workdir, tmp_path):
    """ESPnet's own spawning needs ``ngpu > 1``; on CPU an external launcher (torchrun) works."""
    exp = tmp_path / "exp_ddp"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SAVE_RECORDER)
    save_log = tmp_path / "saves.tsv"
    env = subprocess_env(TORCH_SAVE_LOG=str(save_log))
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        *train_command(workdir, exp, CONFIG, "--max_epoch", "2", "--dist_backend", "gloo",
                       "--multiprocessing_distributed", "false")[1:],
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    # rank 0 logs with the world size in its prefix; rank 1 logs errors only
    assert re.search(r"^\[[^\]]*:0/2\] .* INFO: 1/2epoch started", result.stderr, re.M)
    assert "The training was finished at 2 epochs" in result.stderr
    assert not re.search(r"^\[[^\]]*:1/2\] .* INFO:", result.stderr, re.M)

    # every checkpoint is written by rank 0 only, once per epoch
    saves = saved_names(save_log)
    assert {rank for rank, _ in saves} == {"0"}, saves
    counts = Counter(name for _, name in saves)
    assert counts["checkpoint.pth"] == 2 and counts["1epoch.pth"] == 1 and counts["2epoch.pth"] == 1, counts

    checkpoint = load_checkpoint(exp)
    assert sorted(checkpoint["reporter"]["stats"]) == [1, 2]
    assert int(checkpoint["model"]["num_steps"]) == 20  # each rank runs 10 iterations per epoch
    reported = {epoch: stats["train"]["target_sparsity"] for epoch, stats in checkpoint["reporter"]["stats"].items()}
    assert reported == pytest.approx(expected_target_ramp(exp, 2, world_size=2), rel=1e-5)

    # the trained model loads into the task's model, built as DistillPruneTask.build_model does
    from espnet_plugin.distill.model import DistillPruneModel
    from espnet_plugin.distill.student import build_student
    from espnet_plugin.models import GateConfig
    from espnet_plugin.importers import import_model

    args = yaml.safe_load((exp / "config.yaml").read_text())
    teacher, _ = import_model(args["teacher_path"])
    student = build_student(teacher, GateConfig(**args["gates_conf"]), args["student_path"], args["student_conf"])
    model = DistillPruneModel(student=student, teacher=teacher, **args["model_conf"])
    model.load_state_dict(torch.load(exp / "latest.pth", map_location="cpu"), strict=True)
    assert torch.equal(model.num_steps, torch.tensor(20))
