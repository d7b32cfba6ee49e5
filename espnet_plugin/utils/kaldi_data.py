"""Python equivalents of the few Kaldi-style data utilities the recipes need.

A data directory holds ``wav.scp`` (``utt_id /abs/path.wav``) and, for ESPnet's batching,
a shape file (``utt_id num_samples``). Lines are sorted by utterance id, as Kaldi expects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Tuple, Union

PathLike = Union[str, Path]


def read_scp(path: PathLike) -> Iterator[Tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected 'key value', got {line.strip()!r}")
            yield parts[0], parts[1]


def write_scp(path: PathLike, entries: Dict[str, str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key} {entries[key]}\n" for key in sorted(entries)), encoding="utf-8")
    return path


def write_shape_file(wav_scp: PathLike, output: PathLike) -> Path:
    """``utt_id num_samples`` for every entry of ``wav_scp`` (read from the headers)."""
    import soundfile

    return write_scp(output, {utt: str(soundfile.info(path).frames) for utt, path in read_scp(wav_scp)})
