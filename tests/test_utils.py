"""Ground-floor helpers: atomic writes, the run lock, scp reading."""
import os

import pytest

from espnet_plugin.utils.atomic import atomic_write
from espnet_plugin.utils.kaldi_data import read_scp, read_scp_lines
from espnet_plugin.utils.run_lock import RunLockError, exclusive_output_dir, is_main_process


def test_a_failed_write_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.pth"
    target.write_text("good")

    def crash(path):
        with open(path, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_text() == "good" and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]


def test_an_io_failure_names_the_target(tmp_path):
    from espnet_plugin.utils.atomic import WriteError

    def full_disk(path):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(WriteError, match=r"model.safetensors: cannot be written \(Error while serializing: I/O error"):
        atomic_write(tmp_path / "model.safetensors", full_disk)
    with pytest.raises(ValueError, match="not an I/O problem"):
        atomic_write(tmp_path / "x", lambda path: (_ for _ in ()).throw(ValueError("not an I/O problem")))


def test_temporaries_of_a_killed_writer_go_at_the_next_write(tmp_path):
    target = tmp_path / "model.safetensors"
    (tmp_path / ".model.safetensors.abc123.tmp").write_text("left by a SIGKILL")
    (tmp_path / ".other.abc123.tmp").write_text("another target's")
    atomic_write(target, lambda path: open(path, "w").write("new"))
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc123.tmp", "model.safetensors"]


def test_the_lock_is_exclusive_and_released(tmp_path):
    with exclusive_output_dir(tmp_path / "exp") as exp:
        assert f"pid {os.getpid()}" in (exp / ".run.lock").read_text()
        # flock is per open file: a second open in this process conflicts like another process
        with pytest.raises(RunLockError, match=f"{exp}: another run is using this experiment directory"):
            with exclusive_output_dir(exp):
                pass
    with exclusive_output_dir(tmp_path / "exp"):
        pass


def test_only_rank_zero_locks(monkeypatch):
    import argparse

    monkeypatch.delenv("RANK", raising=False)
    assert is_main_process(argparse.Namespace(distributed=False, dist_rank=None))
    assert not is_main_process(argparse.Namespace(distributed=True, dist_rank=1))
    monkeypatch.setenv("RANK", "0")
    assert is_main_process(argparse.Namespace(distributed=True, dist_rank=None))


def test_scp_lines_are_numbered_and_a_missing_value_is_named(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("a /x/a.wav\n\nb /x/b c.wav\n")
    assert list(read_scp_lines(scp)) == [(1, "a", "/x/a.wav"), (3, "b", "/x/b c.wav")]
    assert list(read_scp(scp)) == [("a", "/x/a.wav"), ("b", "/x/b c.wav")]
    scp.write_text("a /x/a.wav\nlonely\n")
    with pytest.raises(ValueError, match=r"wav.scp:2: expected 'key value', got 'lonely'"):
        list(read_scp(scp))
