#!/usr/bin/env python3
"""Noisy / clean speech pairs for speech enhancement, synthesised on a CPU, deterministically.

Clean speech comes from the mini_synth synthesiser (egs2/mini_synth/local/synth_corpus.py:
its espeak-ng speakers and word inventory); speakers are disjoint between train, valid and
test, and the babble speakers are disjoint from all of them and between train and test.

Noise kinds (``NOISE_KINDS``), each with disjoint training and test material:

* ``white``, ``pink``, ``brown``: coloured noise from sox (``synth ... whitenoise`` etc. in
  repeatable mode), one long recording per colour: train/valid mixtures take their segments
  from the first 70 %, test mixtures from the last 30 %;
* ``babble``: 4-6 overlapping utterances of babble speakers (train and test babble speakers
  differ);
* ``modulated``: pink noise under a slow sinusoidal gain (0.5-4 Hz), from the same split;
* ``impulsive``: decaying noise bursts (doors, clicks, dishes) at random times over a quiet
  brown floor.

A mixture is ``clean + g * noise`` with ``g`` setting the SNR over the whole utterance; train
and valid SNRs are uniform in [-5, 15] dB, the test set holds every test utterance at each
SNR of ``--test_snrs`` (-5 0 5 10 15). With ``--reverb_prob p`` a fraction p of the clean
utterances is first convolved with a synthetic room response (exponentially decaying noise,
RT60 0.2-0.6 s); the reference is then the reverberant speech (denoising, not dereverberation).
If a mixture would clip, mixture and reference are scaled down together.

Output, under --out:

    wav/{clean,noisy}/<split>/<utt>.wav     16 kHz mono PCM
    noise/<kind>_{train,test}.wav           the sox recordings
    data/{train,valid,test}/{wav.scp,spk1.scp,utt2snr,utt2noise,utt2spk,text,speech_mix_shape}
    data/{train,valid}_noisy_only/{wav.scp,speech_mix_shape}   for step 1: no reference at all

``wav.scp`` is the noisy mixture (ESPnet's ``speech_mix``), ``spk1.scp`` the clean reference.
"""
from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile
from tqdm import tqdm

from espnet_plugin.utils.audio import SAMPLE_RATE, mix_at_snr, synthesize
from espnet_plugin.utils.kaldi_data import write_scp

MINI_SYNTH = Path(__file__).resolve().parents[2] / "mini_synth" / "local" / "synth_corpus.py"
NOISE_KINDS = ("white", "pink", "brown", "babble", "modulated", "impulsive")
SOX_COLOURS = {"white": "whitenoise", "pink": "pinknoise", "brown": "brownnoise"}
TEST_SNRS = (-5, 0, 5, 10, 15)
TRAIN_SNR_RANGE = (-5.0, 15.0)
TRAIN_NOISE_FRACTION = 0.7


def load_synth_corpus():
    """egs2/mini_synth/local/synth_corpus.py as a module (its speakers and words)."""
    spec = importlib.util.spec_from_file_location("mini_synth_synth_corpus", MINI_SYNTH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def short_sentences(count: int, words: Sequence[str], rng: random.Random) -> List[str]:
    """2-5 words: 1-2.5 s of speech, so that no cropping is needed in training."""
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) for _ in range(count)]


# ----------------------------------------------------------------------------- noise
def sox_noise(colour: str, seconds: float, path: Path) -> np.ndarray:
    """``seconds`` of sox's ``colour`` noise (repeatable mode: the same file every run)."""
    if shutil.which("sox") is None:
        raise SystemExit("sox is not installed (apt-get install sox; `make demo-enh` installs it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sox", "-R", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path),
                    "synth", str(seconds), SOX_COLOURS[colour]], check=True, capture_output=True)
    data, _ = soundfile.read(str(path), dtype="float32")
    return data


def segment(recording: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    start = int(rng.integers(0, len(recording) - length))
    return recording[start:start + length].copy()


class NoiseBank:
    """Noise of every kind for one side (``train`` covers train and valid, ``test`` the test set)."""

    def __init__(self, recordings: Dict[str, np.ndarray], babble_speech: List[np.ndarray]) -> None:
        self.recordings = recordings
        self.babble_speech = babble_speech

    def make(self, kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
        if kind in SOX_COLOURS:
            return segment(self.recordings[kind], length, rng)
        if kind == "modulated":
            t = np.arange(length) / SAMPLE_RATE
            gain = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(0.5, 4.0) * t + rng.uniform(0, 2 * np.pi))
            return segment(self.recordings["pink"], length, rng) * gain.astype(np.float32)
        if kind == "babble":
            out = np.zeros(length, dtype=np.float32)
            for _ in range(int(rng.integers(4, 7))):
                voice = self.babble_speech[int(rng.integers(len(self.babble_speech)))]
                start = int(rng.integers(-len(voice) // 2, length))
                lo, hi = max(0, start), min(length, start + len(voice))
                if hi > lo:
                    out[lo:hi] += voice[lo - start:hi - start] / (np.std(voice) + 1e-8)
            return out
        if kind == "impulsive":
            out = 0.02 * segment(self.recordings["brown"], length, rng)
            for _ in range(int(rng.integers(2, 6))):
                burst_len = int(rng.uniform(0.02, 0.25) * SAMPLE_RATE)
                start = int(rng.integers(0, max(1, length - burst_len)))
                decay = np.exp(-np.arange(burst_len) / (burst_len * rng.uniform(0.1, 0.3)))
                burst = rng.standard_normal(burst_len) * decay * rng.uniform(0.5, 2.0)
                out[start:start + burst_len] += burst[: length - start].astype(np.float32)
            return out
        raise ValueError(f"unknown noise kind {kind!r}; known: {NOISE_KINDS}")


def room_response(rng: np.random.Generator) -> np.ndarray:
    rt60 = rng.uniform(0.2, 0.6)
    length = int(rt60 * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    rir = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    rir[0] = 1.0 / 0.3  # the direct path dominates
    return (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)


# ----------------------------------------------------------------------------- corpus
def synthesise_speech(jobs: List[Tuple[str, object, str]], nj: int, desc: str) -> Dict[str, np.ndarray]:
    def render(job):
        utt, spk, text = job
        return utt, synthesize(text, spk.voice, spk.speed, spk.pitch).numpy().astype(np.float32)

    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:  # espeak-ng runs as a subprocess
        return dict(tqdm(pool.map(render, jobs), total=len(jobs), desc=desc, unit="utt"))


def write_split(out: Path, split: str, entries: List[Dict[str, object]]) -> None:
    directory = out / "data" / split
    directory.mkdir(parents=True, exist_ok=True)
    columns = {
        "wav.scp": "noisy_path", "spk1.scp": "clean_path", "utt2snr": "snr", "utt2noise": "noise",
        "utt2spk": "spk", "text": "text", "speech_mix_shape": "samples",
    }
    for file, key in columns.items():
        write_scp(directory / file, {e["utt"]: str(e[key]) for e in entries})
    if split in ("train", "valid"):
        noisy_only = out / "data" / f"{split}_noisy_only"
        noisy_only.mkdir(parents=True, exist_ok=True)
        for file in ("wav.scp", "speech_mix_shape"):
            shutil.copyfile(directory / file, noisy_only / file)


def prepare(out: Path, num_train: int, num_valid: int, num_test: int, num_speakers: int, seed: int,
            test_snrs: Sequence[float] = TEST_SNRS, reverb_prob: float = 0.0, nj: int = 2) -> None:
    synth = load_synth_corpus()
    rng = random.Random(seed)
    babble_per_side = 4
    speakers = synth.make_speakers(num_speakers + 2 * babble_per_side, rng)
    main, babble = speakers[:num_speakers], speakers[num_speakers:]
    n_valid = n_test = max(1, num_speakers // 8)
    roles = {"valid": main[:n_valid], "test": main[n_valid:n_valid + n_test], "train": main[n_valid + n_test:]}
    counts = {"train": num_train, "valid": num_valid, "test": num_test}
    jobs, split_of = [], {}
    for split, spks in roles.items():
        for i, text in enumerate(short_sentences(counts[split], synth.WORDS, rng)):
            spk = spks[i % len(spks)]
            utt = f"{spk.name}-{split}{i:04d}"
            jobs.append((utt, spk, text))
            split_of[utt] = split
    babble_jobs = {"train": [], "test": []}
    for side, spks in (("train", babble[:babble_per_side]), ("test", babble[babble_per_side:])):
        for i, text in enumerate(short_sentences(6 * len(spks), synth.WORDS, rng)):
            babble_jobs[side].append((f"babble-{side}{i:03d}", spks[i % len(spks)], text))
    speech = synthesise_speech(jobs, nj, "speech")
    babble_speech = synthesise_speech(babble_jobs["train"] + babble_jobs["test"], nj, "babble")

    banks = {}
    for side in ("train", "test"):
        recordings = {}
        for colour in SOX_COLOURS:
            path = out / "noise" / f"{colour}_all.wav"
            full = sox_noise(colour, 120.0, path) if side == "train" else soundfile.read(str(path), dtype="float32")[0]
            cut = int(TRAIN_NOISE_FRACTION * len(full))
            recordings[colour] = full[:cut] if side == "train" else full[cut:]
            soundfile.write(out / "noise" / f"{colour}_{side}.wav", recordings[colour], SAMPLE_RATE, subtype="PCM_16")
        banks[side] = NoiseBank(recordings, [babble_speech[u] for u, _, _ in babble_jobs[side]])
    for colour in SOX_COLOURS:
        (out / "noise" / f"{colour}_all.wav").unlink()

    text_of = {utt: text for utt, _, text in jobs}
    spk_of = {utt: spk.name for utt, spk, _ in jobs}
    entries: Dict[str, List[Dict[str, object]]] = {"train": [], "valid": [], "test": []}
    for index, (utt, _, _) in enumerate(jobs):
        split = split_of[utt]
        utt_rng = np.random.default_rng([seed, index])  # per utterance: the same whatever the order
        clean = speech[utt]
        if reverb_prob > 0 and utt_rng.uniform() < reverb_prob:
            clean = np.convolve(clean, room_response(utt_rng))[: len(clean)].astype(np.float32)
        bank = banks["test" if split == "test" else "train"]
        conditions = ([(snr, NOISE_KINDS[(index + k) % len(NOISE_KINDS)]) for k, snr in enumerate(test_snrs)]
                      if split == "test" else
                      [(utt_rng.uniform(*TRAIN_SNR_RANGE), NOISE_KINDS[int(utt_rng.integers(len(NOISE_KINDS)))])])
        for snr, kind in conditions:
            noisy, reference = mix_at_snr(clean, bank.make(kind, len(clean), utt_rng), snr, peak=0.95)
            name = f"{utt}_snr{snr:+.0f}" if split == "test" else utt
            paths = {}
            for role, wav in (("noisy", noisy), ("clean", reference)):
                path = out / "wav" / role / split / f"{name}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
                paths[role] = path.resolve()
            entries[split].append({
                "utt": name, "noisy_path": paths["noisy"], "clean_path": paths["clean"], "snr": f"{snr:.2f}",
                "noise": kind, "spk": spk_of[utt], "text": text_of[utt], "samples": len(noisy),
            })
    for split, split_entries in entries.items():
        write_split(out, split, split_entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num_train", type=int, default=1600, help="training mixtures (one per clean utterance)")
    parser.add_argument("--num_valid", type=int, default=40)
    parser.add_argument("--num_test", type=int, default=20, help="clean test utterances (each at every test SNR)")
    parser.add_argument("--num_speakers", type=int, default=24, help="speech speakers (1/8 valid, 1/8 test)")
    parser.add_argument("--test_snrs", type=float, nargs="+", default=list(TEST_SNRS))
    parser.add_argument("--reverb_prob", type=float, default=0.0, help="fraction of reverberant utterances")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nj", type=int, default=2, help="utterances synthesised at a time")
    args = parser.parse_args()
    prepare(args.out, args.num_train, args.num_valid, args.num_test, args.num_speakers, args.seed,
            args.test_snrs, args.reverb_prob, args.nj)


if __name__ == "__main__":
    main()
