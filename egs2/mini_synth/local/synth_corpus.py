#!/usr/bin/env python3
"""Synthesise a small multi-speaker English corpus with many synthetic voices, deterministically.

Voices come from two synthesisers and three *voice families*:

- ``espeak-ng``: espeak-ng's English accents x voice variants (formant synthesis), each speaker
  with its own speaking rate (words per minute) and pitch;
- ``flite-arctic``: flite's CMU ARCTIC voices ``awb``, ``rms``, ``slt`` (statistical parametric
  synthesis), each speaker with its own duration stretch and mean F0;
- ``flite-kal``: flite's diphone voices ``kal`` / ``kal16`` (concatenated recordings of one
  speaker), likewise varied.

One family (``--unseen_family``, default ``flite-kal``) is held out of every training split:
its speakers form the ``test_unseen`` split only (sentences, keywords and commands), so a model
can be tested on voices of a kind it never heard. Every utterance is then perturbed on its own
draw (a per-utterance random generator: the corpus does not depend on the order of synthesis):
speed perturbation (resampling by 0.9-1.1, tempo and pitch together), reverberation (half of
the utterances: a synthetic exponentially decaying room response, RT60 0.15-0.6 s) and additive
noise of one of five kinds (white, pink, brown, mains hum, band-limited) at 5-30 dB SNR.
Output, under --out:

    wav/<spk>/<utt>.wav                       16 kHz mono PCM
    data/{train,dev,test,test_unseen}/{wav.scp,text,utt2spk,spk2utt,speech_shape}
    data/keywords/{wav.scp,text,utt2spk,...}  isolated command and other words (for the KS layout)
    data/commands/{wav.scp,text,utt2spk,...,intent}  spoken smart-home commands with their
                                              (action, object, location) slots (for the IC layout)
    data/speakers.tsv                          speaker, family, engine, voice, rate, pitch, split

Speakers are split disjointly between train / dev / test (each seen family spread over the
three); the unseen family's speakers are all in test_unseen. The same --seed gives the same
corpus, byte for byte.
"""
from __future__ import annotations

import argparse
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile
from tqdm import tqdm

from espnet_plugin.utils.audio import SAMPLE_RATE, mix_at_snr, synthesize, synthesize_flite

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
    """One synthetic speaker. espeak-ng: ``speed`` in words per minute, ``pitch`` 0-99; flite:
    ``speed`` the duration stretch in % (100: the voice's own tempo), ``pitch`` the mean F0 in Hz."""

    name: str
    voice: str
    speed: int
    pitch: int
    engine: str = "espeak-ng"
    family: str = "espeak-ng"


# extra espeak-ng variants of the diverse corpus (make_speakers keeps to VARIANTS)
EXTRA_VARIANTS = ["klatt", "klatt2", "klatt3", "Andy", "Annie", "Denis", "Gene", "Lee", "Michael", "Steph", "edward", "grandpa"]
# flite voices per family, with the mean-F0 range (Hz) their speakers draw from
FLITE_FAMILIES = {
    "flite-arctic": [("awb", (85, 135)), ("rms", (85, 135)), ("slt", (150, 220))],
    "flite-kal": [("kal16", (85, 135)), ("kal", (85, 135))],
}
FAMILIES = ["espeak-ng", *FLITE_FAMILIES]


def make_speakers(
    count: int,
    rng: random.Random,
    variants: Sequence[str] = VARIANTS,
    speeds: Tuple[int, int] = (130, 200),
    pitches: Tuple[int, int] = (25, 75),
    prefix: str = "spk",
    first: int = 0,
) -> List[Speaker]:
    """``count`` espeak-ng speakers: distinct accent x variant pairs, each with its own rate and pitch."""
    combos = [(v, var) for v in VOICES for var in variants]
    rng.shuffle(combos)
    if count > len(combos):
        raise ValueError(f"at most {len(combos)} distinct speakers, asked for {count}")
    return [
        Speaker(f"{prefix}{first + i:03d}", f"{voice}+{variant}", rng.randint(*speeds), rng.randint(*pitches))
        for i, (voice, variant) in enumerate(combos[:count])
    ]


def make_flite_speakers(family: str, count: int, rng: random.Random, first: int = 0) -> List[Speaker]:
    """``count`` flite speakers of one family: its voices in turn, each speaker with its own
    duration stretch (80-125 %) and mean F0."""
    voices = FLITE_FAMILIES[family]
    out = []
    for i in range(count):
        voice, (low, high) = voices[i % len(voices)]
        out.append(Speaker(f"spk{first + i:03d}", voice, rng.randint(80, 125), rng.randint(low, high), "flite", family))
    return out


def corpus_speakers(
    num_speakers: int, num_unseen: int, unseen_family: Optional[str], flite_share: float, rng: random.Random
) -> List[Tuple[Speaker, str]]:
    """(speaker, split) pairs: ``num_speakers`` of the seen families (a ``flite_share`` of them
    flite's, the rest espeak-ng's), each family split 6 : 1 : 1 into train / dev / test, plus
    ``num_unseen`` speakers of ``unseen_family`` in test_unseen."""
    if unseen_family is not None and unseen_family not in FAMILIES:
        raise ValueError(f"unknown voice family {unseen_family!r}; one of {FAMILIES}")
    seen_flite = [f for f in FLITE_FAMILIES if f != unseen_family]
    n_flite = round(num_speakers * flite_share) if seen_flite else 0
    counts = {f: n_flite // len(seen_flite) + (i < n_flite % len(seen_flite)) for i, f in enumerate(seen_flite)}
    if unseen_family != "espeak-ng":
        counts = {"espeak-ng": num_speakers - n_flite, **counts}
    elif n_flite < num_speakers:
        raise ValueError("with espeak-ng held out, every seen speaker is flite's: set --flite_share 1")
    pairs, first = [], 0
    for family, count in list(counts.items()) + ([(unseen_family, num_unseen)] if unseen_family else []):
        if family == "espeak-ng":
            speakers = make_speakers(count, rng, VARIANTS + EXTRA_VARIANTS, (120, 220), (15, 85), first=first)
        else:
            speakers = make_flite_speakers(family, count, rng, first)
        first += count
        if family == unseen_family:
            pairs += [(s, "test_unseen") for s in speakers]
            continue
        n_held = max(1, count // 8) if count >= 3 else 0
        pairs += [(s, "dev" if i < n_held else "test" if i < 2 * n_held else "train") for i, s in enumerate(speakers)]
    return pairs


def speak(spk: Speaker, text: str) -> np.ndarray:
    if spk.engine == "flite":
        return synthesize_flite(text, spk.voice, spk.speed / 100.0, spk.pitch).numpy()
    return synthesize(text, spk.voice, spk.speed, spk.pitch).numpy()


# ----------------------------------------------------------------------------- perturbation
SPEED_FACTORS = (0.9, 0.95, 1.0, 1.05, 1.1)  # rates with a large gcd with 16 kHz: cheap resampling
NOISE_KINDS = ("white", "pink", "brown", "hum", "band")


def speed_perturb(wav: np.ndarray, factor: float) -> np.ndarray:
    """Kaldi-style speed perturbation: play ``factor`` times faster (tempo and pitch together)."""
    if factor == 1.0:
        return wav
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(wav), int(round(SAMPLE_RATE * factor)), SAMPLE_RATE).numpy()


def reverberate(wav: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room response (direct path + exponentially decaying noise with
    the given RT60), keeping the length and the RMS."""
    from scipy.signal import fftconvolve

    n = max(2, int(rt60 * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    rir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.3
    rir[0] = 1.0
    out = fftconvolve(wav, rir)[: len(wav)]
    return (out * np.sqrt((np.mean(wav**2) + 1e-10) / (np.mean(out**2) + 1e-10))).astype(np.float32)


def make_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` samples of one noise kind, shaped in the frequency domain."""
    freqs = np.fft.rfftfreq(length, 1.0 / SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.standard_normal(length))
    safe = np.maximum(freqs, 20.0)
    if kind == "pink":
        spectrum /= np.sqrt(safe)
    elif kind == "brown":
        spectrum /= safe
    elif kind == "band":
        low = rng.uniform(200.0, 2000.0)
        spectrum *= (freqs >= low) & (freqs <= low * rng.uniform(1.5, 4.0))
    noise = np.fft.irfft(spectrum, n=length)
    if kind == "hum":  # mains hum: harmonics of 50 or 60 Hz, and a little white noise
        t = np.arange(length) / SAMPLE_RATE
        base = rng.choice([50.0, 60.0])
        hum = sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 8))
        noise = hum / np.std(hum) + 0.1 * noise / (np.std(noise) + 1e-10)
    return noise.astype(np.float32)


def perturb(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speed perturbation, reverberation (half of the time) and noise of a random kind and SNR."""
    wav = speed_perturb(wav.astype(np.float32), float(rng.choice(SPEED_FACTORS)))
    if rng.random() < 0.5:
        wav = reverberate(wav, rng.uniform(0.15, 0.6), rng)
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    return mix_at_snr(wav, make_noise(kind, len(wav), rng), rng.uniform(5.0, 30.0))[0]


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
    num_unseen_speakers: int = 4,
    unseen_family: Optional[str] = "flite-kal",
    flite_share: float = 0.3,
) -> None:
    engines = {"espeak-ng"} | ({"flite"} if flite_share > 0 or unseen_family in FLITE_FAMILIES else set())
    for engine in sorted(engines):
        if shutil.which(engine) is None:
            raise SystemExit(f"{engine} is not installed (apt-get install {engine}; `make demo` installs it)")
    rng = random.Random(seed)
    pairs = corpus_speakers(num_speakers, num_unseen_speakers if unseen_family else 0, unseen_family, flite_share, rng)
    jobs = []
    for spk, split in pairs:
        for j, text in enumerate(sentences(utts_per_speaker, rng)):
            jobs.append((f"{spk.name}-s{j:03d}", spk, text, split))
        for word in KEYWORDS + UNKNOWN_WORDS:
            for r in range(keyword_reps):
                jobs.append((f"{spk.name}-k{word}{r}", spk, word, "keywords"))
    intents = {}
    for spk, _ in pairs:
        for j, (text, intent) in enumerate(commands(commands_per_speaker, rng)):
            jobs.append((f"{spk.name}-c{j:03d}", spk, text, "commands"))
            intents[f"{spk.name}-c{j:03d}"] = intent

    def render(index: int, job: Tuple[str, Speaker, str, str]) -> Tuple[str, Tuple[str, Speaker, str, Path, int]]:
        utt, spk, text, split = job
        perturb_rng = np.random.default_rng([seed, index])  # per utterance: the same whatever the order
        wav = perturb(speak(spk, text), perturb_rng)
        path = out / "wav" / spk.name / f"{utt}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
        return split, (utt, spk, text, path, len(wav))

    groups: Dict[str, list] = {}
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:  # the synthesisers run as subprocesses
        rendered = pool.map(render, range(len(jobs)), jobs)
        for split, entry in tqdm(rendered, total=len(jobs), desc="synthesis", unit="utt"):
            groups.setdefault(split, []).append(entry)
    for split, utts in groups.items():
        write_data_dir(out / "data" / split, utts)
    if intents:
        lines = [f"{utt}\t{intent}" for utt, intent in sorted(intents.items())]
        (out / "data" / "commands" / "intent").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = ["speaker\tfamily\tengine\tvoice\trate\tpitch\tsplit"]
    rows += [f"{s.name}\t{s.family}\t{s.engine}\t{s.voice}\t{s.speed}\t{s.pitch}\t{split}" for s, split in pairs]
    (out / "data" / "speakers.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num_speakers", type=int, default=32)
    parser.add_argument("--utts_per_speaker", type=int, default=40)
    parser.add_argument("--keyword_reps", type=int, default=3, help="repetitions of each command word per speaker")
    parser.add_argument("--commands_per_speaker", type=int, default=15, help="spoken commands per speaker (IC)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nj", type=int, default=2, help="utterances synthesised at a time")
    parser.add_argument("--num_unseen_speakers", type=int, default=4, help="speakers of the held-out family")
    parser.add_argument("--unseen_family", default="flite-kal", choices=FAMILIES + ["none"],
                        help="voice family held out of training (test_unseen only); none: no test_unseen")
    parser.add_argument("--flite_share", type=float, default=0.3, help="share of flite speakers among the seen ones")
    args = parser.parse_args()
    synthesise(
        args.out,
        args.num_speakers,
        args.utts_per_speaker,
        args.keyword_reps,
        args.commands_per_speaker,
        args.seed,
        args.nj,
        args.num_unseen_speakers,
        None if args.unseen_family == "none" else args.unseen_family,
        args.flite_share,
    )


if __name__ == "__main__":
    main()
