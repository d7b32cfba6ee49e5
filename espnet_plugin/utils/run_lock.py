"""One run per experiment directory.

Two trainings writing to one ``--output_dir`` would overwrite each other's ``config.yaml``
and checkpoints. A run holds an exclusive ``flock`` on ``OUTPUT_DIR/.run.lock`` from start
to end; a second run on the same directory stops at once with a message naming the holder.
The kernel releases the lock when the holder exits, however it exits (even SIGKILL), so a
killed run can always be resumed.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator, Union

LOCK_NAME = ".run.lock"


class RunLockError(RuntimeError):
    """The experiment directory is in use by another run."""


@contextlib.contextmanager
def exclusive_output_dir(output_dir: Union[str, os.PathLike]) -> Iterator[Path]:
    """Hold the experiment directory's lock for the ``with`` block (the directory is created)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            raise RunLockError(
                f"{output_dir}: another run is using this experiment directory ({holder}); wait for it to "
                f"finish or choose another --output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        try:
            yield output_dir
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_main_process(args) -> bool:
    """Rank 0 of a distributed ESPnet run, or a non-distributed run (before ESPnet's init)."""
    if not getattr(args, "distributed", False) and "RANK" not in os.environ:
        return True
    rank = getattr(args, "dist_rank", None)
    if rank is None:
        rank = os.environ.get("RANK", "0")
    return int(rank) == 0
