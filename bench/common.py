"""Helpers shared by the benchmark scripts: each writes its own section of docs/benchmarks.md."""
from __future__ import annotations

from pathlib import Path

HEADER = "# Benchmarks\n\nEach section is written by the script named in its heading; rerun it to refresh.\n"


def markers(mark: str) -> tuple:
    return f"<!-- {mark}:start -->", f"<!-- {mark}:end -->"


def write_section(path: Path, mark: str, section: str) -> None:
    """Replace the section between ``mark``'s markers (``section`` includes them) in place, or
    append it; other scripts' sections are kept."""
    start, end = markers(mark)
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
