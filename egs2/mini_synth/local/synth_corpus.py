#!/usr/bin/env python3
"""Synthesise a small multi-speaker English corpus with espeak-ng, deterministically.

Speakers are espeak-ng voices x variants with their own speaking rate and pitch;
sentences are drawn from a word inventory (plus the keyword-spotting commands spoken in
isolation); each utterance gets additive noise at a random SNR. Output, under --out:

    wav/<spk>/<utt>.wav                       16 kHz mono PCM
    data/{train,dev,test}/{wav.scp,text,utt2spk,spk2utt,speech_shape}
    data/keywords/{wav.scp,text,utt2spk,...}  isolated command and other words (for the KS layout)
    data/commands/{wav.scp,text,utt2spk,...,intent}  spoken smart-home commands with their
                                              (action, object, location) slots (for the IC layout)

Speakers are split disjointly between train / dev / test. The same --seed gives the
same corpus, byte for byte.
"""
from __future__ import annotations

import argparse
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import soundfile
from tqdm import tqdm

from espnet_plugin.utils.audio import SAMPLE_RATE, synthesize

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

# Fluent Speech Commands-style intents: (phrasings, action, object, takes a location)
LOCATIONS = ["kitchen", "bedroom", "washroom"]
COMMAND_INTENTS = [
    (["turn on the lights", "switch on the lights", "lights on"], "activate", "lights", True),
    (["turn off the lights", "switch off the lights", "lights off"], "deactivate", "lights", True),
    (["turn up the heat", "make it warmer", "increase the temperature"], "increase", "heat", True),
    (["turn down the heat", "make it cooler", "decrease the temperature"], "decrease", "heat", True),
    (["turn up the volume", "increase the volume", "louder please"], "increase", "volume", False),
    (["turn down the volume", "decrease the volume", "quieter please"], "decrease", "volume", False),
    (["play the music", "turn on the music", "start the music"], "activate", "music", False),
    (["stop the music", "turn off the music", "pause the music"], "deactivate", "music", False),
    (["turn on the lamp", "switch on the lamp"], "activate", "lamp", False),
    (["turn off the lamp", "switch off the lamp"], "deactivate", "lamp", False),
    (["bring me the newspaper", "get me the newspaper"], "bring", "newspaper", False),
    (["bring me some juice", "get me some juice"], "bring", "juice", False),
    (["bring me my shoes", "fetch my shoes"], "bring", "shoes", False),
    (["switch the language to german", "change the language to german"], "change language", "German", False),
    (["switch the language to korean", "change the language to korean"], "change language", "Korean", False),
]


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


def add_noise(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(len(wav)).astype(np.float32)
    signal_power = float(np.mean(wav**2)) + 1e-10
    noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / float(np.mean(noise**2)))
    mixed = wav + noise
    return (mixed / max(1.0, float(np.abs(mixed).max()) / 0.99)).astype(np.float32)


def sentences(count: int, rng: random.Random) -> List[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(count)]


def commands(count: int, rng: random.Random) -> List[Tuple[str, str]]:
    """``count`` (text, "action<TAB>object<TAB>location") pairs going through the intents in a
    shuffled order (so 15 per speaker cover them all); "none" where a slot is unused, as in
    Fluent Speech Commands."""
    order = rng.sample(COMMAND_INTENTS, len(COMMAND_INTENTS))
    out = []
    for n in range(count):
        phrasings, action, obj, located = order[n % len(order)]
        text, location = rng.choice(phrasings), "none"
        if located and rng.random() < 0.75:
            location = rng.choice(LOCATIONS)
            text += f" in the {location}"
        out.append((text, f"{action}\t{obj}\t{location}"))
    return out


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


def synthesise(
    out: Path,
    num_speakers: int,
    utts_per_speaker: int,
    keyword_reps: int,
    commands_per_speaker: int,
    seed: int,
    nj: int = 2,
) -> None:
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
    intents = {}
    for spk in speakers:
        for j, (text, intent) in enumerate(commands(commands_per_speaker, rng)):
            jobs.append((f"{spk.name}-c{j:03d}", spk, text, "commands"))
            intents[f"{spk.name}-c{j:03d}"] = intent

    def render(index: int, job: Tuple[str, Speaker, str, str]) -> Tuple[str, Tuple[str, Speaker, str, Path, int]]:
        utt, spk, text, split = job
        noise_rng = np.random.default_rng([seed, index])  # per utterance: the same whatever the order
        wav = add_noise(synthesize(text, spk.voice, spk.speed, spk.pitch).numpy(), noise_rng.uniform(5.0, 30.0), noise_rng)
        path = out / "wav" / spk.name / f"{utt}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
        return split, (utt, spk, text, path, len(wav))

    groups: Dict[str, list] = {}
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:  # espeak-ng runs as a subprocess
        rendered = pool.map(render, range(len(jobs)), jobs)
        for split, entry in tqdm(rendered, total=len(jobs), desc="espeak-ng", unit="utt"):
            groups.setdefault(split, []).append(entry)
    for split, utts in groups.items():
        write_data_dir(out / "data" / split, utts)
    if intents:
        lines = [f"{utt}\t{intent}" for utt, intent in sorted(intents.items())]
        (out / "data" / "commands" / "intent").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num_speakers", type=int, default=32)
    parser.add_argument("--utts_per_speaker", type=int, default=40)
    parser.add_argument("--keyword_reps", type=int, default=3, help="repetitions of each command word per speaker")
    parser.add_argument("--commands_per_speaker", type=int, default=15, help="spoken commands per speaker (IC)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nj", type=int, default=2, help="utterances synthesised at a time")
    args = parser.parse_args()
    synthesise(
        args.out,
        args.num_speakers,
        args.utts_per_speaker,
        args.keyword_reps,
        args.commands_per_speaker,
        args.seed,
        args.nj,
    )


if __name__ == "__main__":
    main()
