#!/usr/bin/env python3
"""Synthesise a small multi-speaker English corpus with espeak-ng, deterministically.

Speakers are espeak-ng voices x variants with their own speaking rate and pitch;
sentences are drawn from a word inventory (plus the keyword-spotting commands spoken in
isolation); each utterance gets additive noise at a random SNR. Output, under --out:

    wav/<spk>/<utt>.wav                       16 kHz mono PCM
    data/{train,dev,test}/{wav.scp,text,utt2spk,spk2utt,speech_shape}
    data/keywords/{wav.scp,text,utt2spk,...}  isolated command and other words (for the KS layout)

Speakers are split disjointly between train / dev / test. The same --seed gives the
same corpus, byte for byte.
"""
from __future__ import annotations

import argparse
import io
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from tqdm import tqdm

SAMPLE_RATE = 16000
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
# isolated non-command words: Speech Commands' "_unknown_" class
UNKNOWN_WORDS = ["bed", "bird", "cat", "dog", "happy", "house", "tree", "seven", "marvin", "wow"]
WORDS = (
    "the a one two three four five six seven eight nine ten red green blue black white small big old new "
    "house car tree river city light water music door window kitchen garden morning evening night day "
    "open close turn bring take make find read write speak listen walk run play sing stay leave call "
    "quickly slowly today tomorrow always never here there please thank you very good bad happy cold warm "
    "dog cat bird fish horse table chair book phone computer paper letter story song voice model speech"
).split() + KEYWORDS


@dataclass(frozen=True)
class Speaker:
    name: str
    voice: str
    speed: int
    pitch: int


def make_speakers(count: int, rng: random.Random) -> List[Speaker]:
    combos = [(v, var) for v in VOICES for var in VARIANTS]
    rng.shuffle(combos)
    if count > len(combos):
        raise ValueError(f"at most {len(combos)} distinct speakers, asked for {count}")
    return [
        Speaker(f"spk{i:03d}", f"{voice}+{variant}", rng.randint(130, 200), rng.randint(25, 75))
        for i, (voice, variant) in enumerate(combos[:count])
    ]


def speak(text: str, speaker: Speaker) -> np.ndarray:
    raw = subprocess.run(
        ["espeak-ng", "-v", speaker.voice, "-s", str(speaker.speed), "-p", str(speaker.pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    data, rate = soundfile.read(io.BytesIO(raw), dtype="float32")
    return AF.resample(torch.from_numpy(data), rate, SAMPLE_RATE).numpy()


def add_noise(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(len(wav)).astype(np.float32)
    signal_power = float(np.mean(wav**2)) + 1e-10
    noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / float(np.mean(noise**2)))
    mixed = wav + noise
    return (mixed / max(1.0, float(np.abs(mixed).max()) / 0.99)).astype(np.float32)


def sentences(count: int, rng: random.Random) -> List[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(count)]


def write_data_dir(directory: Path, utts: List[Tuple[str, Speaker, str, Path, int]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    utts = sorted(utts)
    spk2utt: Dict[str, List[str]] = {}
    for utt, spk, _, _, _ in utts:
        spk2utt.setdefault(spk.name, []).append(utt)
    files = {
        "wav.scp": [f"{u} {p.resolve()}" for u, _, _, p, _ in utts],
        "text": [f"{u} {t}" for u, _, t, _, _ in utts],
        "utt2spk": [f"{u} {s.name}" for u, s, _, _, _ in utts],
        "speech_shape": [f"{u} {n}" for u, _, _, _, n in utts],
        "spk2utt": [f"{s} {' '.join(us)}" for s, us in sorted(spk2utt.items())],
    }
    for name, lines in files.items():
        (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def synthesise(out: Path, num_speakers: int, utts_per_speaker: int, keyword_reps: int, seed: int) -> None:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    rng = random.Random(seed)
    speakers = make_speakers(num_speakers, rng)
    n_dev = n_test = max(1, num_speakers // 8)
    split_of = {s.name: "dev" if i < n_dev else "test" if i < n_dev + n_test else "train" for i, s in enumerate(speakers)}
    jobs = []
    for spk in speakers:
        for j, text in enumerate(sentences(utts_per_speaker, rng)):
            jobs.append((f"{spk.name}-s{j:03d}", spk, text, split_of[spk.name]))
        for word in KEYWORDS + UNKNOWN_WORDS:
            for r in range(keyword_reps):
                jobs.append((f"{spk.name}-k{word}{r}", spk, word, "keywords"))
    groups: Dict[str, list] = {}
    for index, (utt, spk, text, split) in enumerate(tqdm(jobs, desc="espeak-ng", unit="utt")):
        noise_rng = np.random.default_rng([seed, index])
        wav = add_noise(speak(text, spk), noise_rng.uniform(5.0, 30.0), noise_rng)
        path = out / "wav" / spk.name / f"{utt}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
        groups.setdefault(split, []).append((utt, spk, text, path, len(wav)))
    for split, utts in groups.items():
        write_data_dir(out / "data" / split, utts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num_speakers", type=int, default=32)
    parser.add_argument("--utts_per_speaker", type=int, default=40)
    parser.add_argument("--keyword_reps", type=int, default=3, help="repetitions of each command word per speaker")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    synthesise(args.out, args.num_speakers, args.utts_per_speaker, args.keyword_reps, args.seed)


if __name__ == "__main__":
    main()
