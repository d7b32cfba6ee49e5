#!/usr/bin/env python3
"""Kaldi-style data directories from a local LibriSpeech copy (no download, no Kaldi).

For every subset given (e.g. train-clean-100, dev-clean) under --librispeech_root:

    data/<subset with _>/{wav.scp,text,utt2spk,spk2utt,speech_shape}

``wav.scp`` points at the original .flac files (ESPnet reads them through soundfile);
``speech_shape`` holds sample counts read from the file headers. Several training subsets
can be merged with --merge NAME (e.g. train_960). --bucket_dir also writes the
``<subset>.csv`` length tables (``file_path,length``, longest first) that s3prl's SUPERB
ASR downstream reads as its ``bucket_file``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

import soundfile
from tqdm import tqdm

from espnet_plugin.utils.kaldi_data import write_scp


def read_subset(root: Path, subset: str) -> Dict[str, Dict[str, str]]:
    directory = root / subset
    if not directory.is_dir():
        raise SystemExit(f"{directory}: no such LibriSpeech subset (expected {root}/{subset}/<speaker>/<chapter>/)")
    entries: Dict[str, Dict[str, str]] = {"wav.scp": {}, "text": {}, "utt2spk": {}, "speech_shape": {}}
    transcripts = sorted(directory.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise SystemExit(f"{directory}: no <speaker>-<chapter>.trans.txt files found")
    for trans in tqdm(transcripts, desc=subset, unit="chapter"):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt, text = line.split(maxsplit=1)
            flac = trans.parent / f"{utt}.flac"
            if not flac.is_file():
                raise SystemExit(f"{trans}: {flac.name} is listed but missing")
            entries["wav.scp"][utt] = str(flac.resolve())
            entries["text"][utt] = text
            entries["utt2spk"][utt] = utt.split("-")[0]
            entries["speech_shape"][utt] = str(soundfile.info(str(flac)).frames)
    return entries


def write_dir(out: Path, entries: Dict[str, Dict[str, str]]) -> None:
    for name, table in entries.items():
        write_scp(out / name, table)
    spk2utt: Dict[str, List[str]] = {}
    for utt, spk in sorted(entries["utt2spk"].items()):
        spk2utt.setdefault(spk, []).append(utt)
    write_scp(out / "spk2utt", {spk: " ".join(utts) for spk, utts in spk2utt.items()})


def write_bucket_csv(path: Path, entries: Dict[str, Dict[str, str]], root: Path) -> None:
    rows = sorted(
        ((Path(p).relative_to(root.resolve()).as_posix(), int(entries["speech_shape"][u])) for u, p in entries["wav.scp"].items()),
        key=lambda row: -row[1],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("file_path,length\n" + "".join(f"{p},{n}\n" for p, n in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--librispeech_root", type=Path, required=True)
    parser.add_argument("--subsets", nargs="+", required=True)
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--merge", default=None, help="also write the union of the subsets under this name")
    parser.add_argument("--bucket_dir", type=Path, default=None, help="write s3prl's ASR bucket CSVs here")
    args = parser.parse_args()
    merged: Dict[str, Dict[str, str]] = {}
    for subset in args.subsets:
        entries = read_subset(args.librispeech_root, subset)
        write_dir(args.out / subset.replace("-", "_"), entries)
        if args.bucket_dir:
            write_bucket_csv(args.bucket_dir / f"{subset}.csv", entries, args.librispeech_root)
        for name, table in entries.items():
            merged.setdefault(name, {}).update(table)
    if args.merge:
        write_dir(args.out / args.merge, merged)


if __name__ == "__main__":
    main()
