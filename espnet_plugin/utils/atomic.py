"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

The content goes to a temporary file in the target's directory, then ``os.replace`` renames
it over the target. ``mkstemp`` creates the file with mode 0600; it gets the mode a plain
``open`` would give (0666 minus the umask), so outputs are readable like any other.
"""
from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

PathLike = Union[str, os.PathLike]


class WriteError(OSError):
    """An output file that could not be written (full disk, no permission, ...), named."""


def default_file_mode() -> int:
    """0666 minus the process umask (the mode ``open(path, "w")`` would create)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result over ``path``; on any error the target is
    untouched and the temporary file removed. Temporary files that a killed writer left for
    the same target are removed once the new file is in place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(tmp)
        except Exception as exc:  # noqa: BLE001 - libraries report I/O failures in their own types
            if isinstance(exc, OSError) or "I/O error" in str(exc):
                raise WriteError(f"{path}: cannot be written ({exc})") from exc
            raise
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    return path
