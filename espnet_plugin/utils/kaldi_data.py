"""Python equivalents of the few Kaldi-style data utilities the recipes need.

A data directory holds ``wav.scp`` (``utt_id /abs/path.wav``) and, for ESPnet's batching,
a shape file (``utt_id num_samples``). Lines are sorted by utterance id, as Kaldi expects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Tuple, Type, Union

PathLike = Union[str, Path]


def read_scp_lines(path: PathLike, error: Type[Exception] = ValueError) -> Iterator[Tuple[int, str, str]]:
    """``(line_number, key, value)`` of every non-empty line; a line without a value raises
    ``error`` naming ``path:line``."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                raise error(f"{path}:{number}: expected 'key value', got {line.strip()!r}")
            yield number, parts[0], parts[1]


def read_scp(path: PathLike) -> Iterator[Tuple[str, str]]:
    """``(key, value)`` of every non-empty line of a Kaldi-style scp / text file."""
    for _, key, value in read_scp_lines(path):
        yield key, value


def write_scp(path: PathLike, entries: Dict[str, str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key} {entries[key]}\n" for key in sorted(entries)), encoding="utf-8")
    return path


def write_shape_file(wav_scp: PathLike, output: PathLike) -> Path:
    """``utt_id num_samples`` for every entry of ``wav_scp`` (read from the headers)."""
    import soundfile

    return write_scp(output, {utt: str(soundfile.info(path).frames) for utt, path in read_scp(wav_scp)})
