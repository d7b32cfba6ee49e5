#!/usr/bin/env python3
"""Lay the synthetic corpus out the way s3prl's SUPERB datasets expect it.

    --task ks:  Speech Commands v1 folders. ``train/WORD/<speaker>_nohash_<n>.wav`` (1 s clips;
                s3prl takes dev speakers out of it by a hash of the speaker id, so train and dev
                speakers get ids that hash to their split), ``train/_background_noise_/``,
                ``test/{WORD,_unknown_,_silence_}/`` and, for the held-out voices, the same
                folders under ``test_unseen/``.
    --task asr: a LibriSpeech tree (``train-clean-100``, ``dev-clean``, ``test-clean``, and
                ``test-other`` for the held-out voices;
                ``<spk>/<chapter>/<spk>-<chapter>-<n>.flac`` + ``<spk>-<chapter>.trans.txt``)
                the bucket CSVs ``len_for_bucket/<split>.csv`` the ASR downstream reads and its
                character dictionary ``char.dict`` (fairseq format: ``char count`` per line, most
                frequent first, ``|`` for the word boundary) over the corpus' transcripts.
    --task ic:  Fluent Speech Commands: ``data/{train,valid,test}_data.csv`` (path, speakerId,
                transcription, action, object, location) and ``wavs/speakers/<spk>/<utt>.wav``
                from the corpus' spoken commands, split by the corpus' speaker split (the held-out
                voices are left out).
    --task pr:  ``{train,dev,test,test_unseen}.csv`` (id, wav_path, transcription) for s3prl's problem API
                (SuperbPR from stage 1): the sentences' phonemes from a word lexicon made with
                espeak-ng (en-us, stress marks dropped), one space between phonemes - like
                SUPERB's G2P lexicon, a function of the text whoever speaks it. SuperbPR takes
                its phoneme set from train.csv, so a dev / test utterance with a phoneme that
                train lacks is left out (reported; never with the default corpus).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import soundfile
from tqdm import tqdm

from espnet_plugin.utils.audio import SAMPLE_RATE, espeak_phonemes, read_audio
from espnet_plugin.utils.kaldi_data import read_scp

KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
LIBRISPEECH_SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean", "test_unseen": "test-other"}
#: the corpus' splits; test_unseen (the held-out voice family) may be absent
SPLITS = ("train", "dev", "test", "test_unseen")
FLUENT_SPLITS = {"train": "train", "dev": "valid", "test": "test"}


def corpus_splits(data: Path) -> List[str]:
    return [split for split in SPLITS if (data / split / "utt2spk").is_file()]


def speaker_splits(data: Path) -> Dict[str, str]:
    return {spk: split for split in corpus_splits(data) for _, spk in read_scp(data / split / "utt2spk")}


def hash_split(speaker_id: str) -> str:
    """s3prl's Speech Commands dev/test rule (as in the dataset's README): sha1 of the speaker id."""
    percentage = (int(hashlib.sha1(speaker_id.encode()).hexdigest(), 16) % 2**27) * (100.0 / (2**27 - 1))
    return "dev" if percentage < 10 else "discarded" if percentage < 20 else "train"


def hash_ids(wanted: str) -> Iterator[str]:
    i = 0
    while True:
        candidate = f"{i:08x}"
        if hash_split(candidate) == wanted:
            yield candidate
        i += 1


def one_second(wav: np.ndarray) -> np.ndarray:
    out = np.zeros(SAMPLE_RATE, dtype=np.float32)
    wav = wav[:SAMPLE_RATE]
    start = (SAMPLE_RATE - len(wav)) // 2
    out[start : start + len(wav)] = wav
    return out


def write(path: Path, wav: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wav, SAMPLE_RATE, subtype="PCM_16")


def speech_commands(data: Path, out: Path, seed: int) -> None:
    splits = speaker_splits(data)
    ids = {"train": hash_ids("train"), "dev": hash_ids("dev"), "test": hash_ids("train"), "test_unseen": hash_ids("train")}
    speaker_id = {spk: next(ids[split]) for spk, split in sorted(splits.items())}
    texts = dict(read_scp(data / "keywords" / "text"))
    utt2spk = dict(read_scp(data / "keywords" / "utt2spk"))
    counts: Dict[Tuple[str, str], int] = {}  # last clip number per (speaker, target folder)
    keyword_reps = {}  # per speaker: how often each keyword was spoken (the test's clips per class)
    for utt in texts:
        if texts[utt] == KEYWORDS[0]:
            keyword_reps[utt2spk[utt]] = keyword_reps.get(utt2spk[utt], 0) + 1
    for utt, path in read_scp(data / "keywords" / "wav.scp"):
        spk, word = utt2spk[utt], texts[utt]
        if splits[spk] in ("test", "test_unseen"):
            folder = out / splits[spk] / (word if word in KEYWORDS else "_unknown_")
            if folder.name == "_unknown_" and counts.get((spk, folder.name), -1) + 1 >= keyword_reps.get(spk, 1):
                continue  # a balanced test set, as Speech Commands': _unknown_ as large as each keyword
        else:
            folder = out / "train" / word
        n = counts[(spk, folder.name)] = counts.get((spk, folder.name), -1) + 1
        write(folder / f"{speaker_id[spk]}_nohash_{n}.wav", one_second(read_audio(path).numpy()))
    rng = np.random.default_rng(seed)
    for k in range(4):  # background noise for the _silence_ class (cropped to random seconds)
        write(out / "train" / "_background_noise_" / f"noise_{k}.wav", (rng.standard_normal(5 * SAMPLE_RATE) * 0.05).astype(np.float32))
    for split in sorted(set(splits.values()) & {"test", "test_unseen"}):
        for k in range(max(1, sum(1 for s in splits.values() if s == split))):
            silence = (rng.standard_normal(SAMPLE_RATE) * 0.02).astype(np.float32)
            write(out / split / "_silence_" / f"{k:08x}_nohash_0.wav", silence)


def librispeech(data: Path, out: Path) -> None:
    (out / "len_for_bucket").mkdir(parents=True, exist_ok=True)
    char_counts: Dict[str, int] = {}
    for split in corpus_splits(data):
        name = LIBRISPEECH_SPLITS[split]
        texts = dict(read_scp(data / split / "text"))
        utt2spk = dict(read_scp(data / split / "utt2spk"))
        by_speaker: Dict[str, List[Tuple[str, str]]] = {}
        for utt, path in read_scp(data / split / "wav.scp"):
            by_speaker.setdefault(utt2spk[utt], []).append((utt, path))
        rows = []
        for spk, utts in sorted(by_speaker.items()):
            number = str(100 + int(spk.lstrip("spk")))
            chapter = out / name / number / "1"
            chapter.mkdir(parents=True, exist_ok=True)
            transcript = []
            for n, (utt, path) in enumerate(sorted(utts)):
                uid = f"{number}-1-{n:04d}"
                wav = read_audio(path).numpy()
                soundfile.write(str(chapter / f"{uid}.flac"), wav, SAMPLE_RATE)
                transcript.append(f"{uid} {texts[utt].upper()}")
                for char in texts[utt].upper().replace(" ", "|"):
                    char_counts[char] = char_counts.get(char, 0) + 1
                rows.append((f"{name}/{number}/1/{uid}.flac", len(wav)))
            (chapter / f"{number}-1.trans.txt").write_text("\n".join(transcript) + "\n", encoding="utf-8")
        rows.sort(key=lambda row: -row[1])
        (out / "len_for_bucket" / f"{name}.csv").write_text(
            "file_path,length\n" + "".join(f"{p},{n}\n" for p, n in rows), encoding="utf-8"
        )
    ordered = sorted(char_counts.items(), key=lambda item: (-item[1], item[0]))
    (out / "char.dict").write_text("".join(f"{c} {n}\n" for c, n in ordered), encoding="utf-8")


def fluent_commands(data: Path, out: Path) -> None:
    splits = speaker_splits(data)
    texts = dict(read_scp(data / "commands" / "text"))
    utt2spk = dict(read_scp(data / "commands" / "utt2spk"))
    intents = {}
    for line in (data / "commands" / "intent").read_text(encoding="utf-8").splitlines():
        utt, action, obj, location = line.split("\t")
        intents[utt] = (action, obj, location)
    rows: Dict[str, List[List[str]]] = {name: [] for name in FLUENT_SPLITS.values()}
    for utt, path in read_scp(data / "commands" / "wav.scp"):
        spk = utt2spk[utt]
        if splits[spk] not in FLUENT_SPLITS:  # the held-out voices: not part of the IC layout
            continue
        relative = f"wavs/speakers/{spk}/{utt}.wav"
        write(out / relative, read_audio(path).numpy())
        rows[FLUENT_SPLITS[splits[spk]]].append([relative, spk, texts[utt], *intents[utt]])
    for name in ("valid", "test"):  # s3prl's IC labels come from train_data.csv alone
        for slot, column in (("action", 3), ("object", 4), ("location", 5)):
            unseen = {row[column] for row in rows[name]} - {row[column] for row in rows["train"]}
            if unseen:
                raise SystemExit(f"{data / 'commands' / 'intent'}: {slot} values {sorted(unseen)} occur in "
                                 f"{name} but not in train; synthesise more commands per speaker")
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, split_rows in rows.items():
        with open(out / "data" / f"{name}_data.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            writer.writerows([i, *row] for i, row in enumerate(split_rows))


def phoneme_csvs(data: Path, out: Path) -> None:
    texts = {split: list(read_scp(data / split / "text")) for split in corpus_splits(data)}
    words = sorted({w for lines in texts.values() for _, text in lines for w in text.split()})
    lexicon = {w: espeak_phonemes(w) for w in tqdm(words, desc="espeak-ng lexicon", unit="word")}
    out.mkdir(parents=True, exist_ok=True)
    train_phonemes = set()
    for split in texts:
        wavs = dict(read_scp(data / split / "wav.scp"))
        rows, dropped = [], []
        for utt, text in texts[split]:
            phonemes = [p for w in text.split() for p in lexicon[w]]
            if split == "train":
                train_phonemes.update(phonemes)
            elif not set(phonemes) <= train_phonemes:  # SuperbPR's vocabulary comes from train.csv
                dropped.append(utt)
                continue
            rows.append([utt, str(Path(wavs[utt]).resolve()), " ".join(phonemes)])
        if dropped:
            print(f"{data / split / 'text'}: {len(dropped)} utterance(s) with phonemes unseen in train left out "
                  f"of {split}.csv (e.g. {dropped[0]}); a larger corpus avoids this")
        if not rows:
            raise SystemExit(f"{data / split / 'text'}: no utterance for {split}.csv")
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "wav_path", "transcription"])
            writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["ks", "asr", "ic", "pr"], required=True)
    parser.add_argument("--data", type=Path, required=True, help="the corpus' data/ directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.task == "ks":
        speech_commands(args.data, args.out, args.seed)
    elif args.task == "asr":
        librispeech(args.data, args.out)
    elif args.task == "ic":
        fluent_commands(args.data, args.out)
    else:
        phoneme_csvs(args.data, args.out)


if __name__ == "__main__":
    main()
