#!/usr/bin/env python3
"""Kaldi-style data directories for egs2/mini_synth_enh's stages 2-5 from DNS Challenge data.

Input: the output of the DNS Challenge's ``noisyspeech_synthesizer`` (Interspeech 2020 /
ICASSP 2021), i.e. a directory with

    noisy/<clean and noise names>_snr12_..._fileid_42.wav   the mixture (ICASSP 2021 adds _tl-25 etc.)
    clean/clean_fileid_42.wav                                its clean speech

A noisy file and its clean partner share ``fileid_N`` (the end of every name); the mixing SNR
is the ``snrN`` in the noisy name (the last one, should a source name contain "snr" too). The
synthetic test sets (e.g. ``test_set/synthetic/no_reverb``) have the same layout. All audio must
be 16 kHz mono, as the challenge distributes it; only the headers are read, except to re-mix.

Output, under --out (absolute paths, lines sorted by utterance id, ids ``dns_fileid_N``):

    train/, valid/                    wav.scp (noisy), spk1.scp (clean), speech_mix_shape
    train_noisy_only/, valid_noisy_only/  wav.scp, speech_mix_shape: step 1 of two-step
                                      distillation needs no clean speech; --noisy_only_dir adds
                                      unlabelled recordings (real ones, too) to train_noisy_only
    test/                             wav.scp, spk1.scp, utt2snr (input SNR in dB)

The valid set is a seeded random ``--valid_fraction`` of the training file ids. The test set is
either a DNS test set as it is (--test_dir; ``utt2snr`` from the names) or clean test speech
re-mixed with test noise at every SNR of --test_snrs (--test_clean_dir, --test_noise_dir; ids
``dns_fileid_N_snr+5``, audio written under ``<out>/../wav/test/``): each mixture takes a seeded
random segment of a random noise file (looped if the file is shorter), scaled so that the SNR
over the utterance is exact; if the mixture would clip, mixture and reference are scaled down
together, which keeps the SNR.
"""
from __future__ import annotations

import argparse
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile
from tqdm import tqdm

from espnet_plugin.utils.audio import SAMPLE_RATE, AudioError, mix_at_snr
from espnet_plugin.utils.kaldi_data import write_scp

FILEID = re.compile(r"fileid_(\d+)\.wav$")
SNR = re.compile(r"snr(-?\d+(?:\.\d+)?)")
TEST_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0)
PEAK = 0.99  # the largest sample a re-mixed file may hold


class DnsDataError(ValueError):
    """DNS data this script cannot use: a missing directory, an unparseable name, an unpaired file."""


@dataclass
class Utterance:
    noisy: Path
    frames: int
    clean: Optional[Path] = None
    snr: Optional[float] = None


# ----------------------------------------------------------------------------- reading
def wav_files(directory: Path, what: str) -> List[Path]:
    """The .wav files directly in ``directory``, sorted; an error if there are none."""
    if not directory.is_dir():
        raise DnsDataError(f"{directory}: no such directory ({what})")
    files = sorted(p.resolve() for p in directory.glob("*.wav"))
    if not files:
        raise DnsDataError(f"{directory}: no .wav files ({what})")
    return files


def fileid_of(path: Path) -> int:
    match = FILEID.search(path.name)
    if match is None:
        raise DnsDataError(f"{path}: cannot parse the file id: DNS names end in 'fileid_N.wav' "
                           "(e.g. clean_fileid_42.wav, ..._snr12_fileid_42.wav)")
    return int(match.group(1))


def snr_of(path: Path) -> float:
    found = SNR.findall(path.name)
    if not found:
        raise DnsDataError(f"{path}: cannot parse the input SNR: DNS noisy names hold 'snrN' "
                           "(e.g. ..._snr12_fileid_42.wav)")
    return float(found[-1])


def audio_frames(path: Path) -> int:
    """The sample count from the header, checking what ESPnet's enh models need: 16 kHz mono."""
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioError(f"{path}: unreadable or corrupt audio ({exc})") from exc
    if info.samplerate != SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz (resample it first)")
    if info.channels != 1:
        raise AudioError(f"{path}: {info.channels} channels, expected mono (mix it down first)")
    if info.frames == 0:
        raise AudioError(f"{path}: the audio file is empty (0 samples)")
    return info.frames


def by_fileid(files: Sequence[Path]) -> Dict[int, Path]:
    table: Dict[int, Path] = {}
    for path in files:
        fileid = fileid_of(path)
        if fileid in table:
            raise DnsDataError(f"{path}: fileid_{fileid} also names {table[fileid]}")
        table[fileid] = path
    return table


def read_pairs(directory: Path, with_snr: bool) -> Dict[int, Utterance]:
    """``directory``'s noisy/ and clean/ files paired by file id, their headers checked."""
    noisy_dir, clean_dir = directory / "noisy", directory / "clean"
    noisy = by_fileid(wav_files(noisy_dir, "DNS noisy speech"))
    clean = by_fileid(wav_files(clean_dir, "DNS clean speech"))
    for role, mine, partner_dir, theirs in (("noisy", noisy, clean_dir, clean), ("clean", clean, noisy_dir, noisy)):
        lonely = sorted(set(mine) - set(theirs))
        if lonely:
            raise DnsDataError(f"{len(lonely)} {role} file(s) have no partner with the same fileid_N in {partner_dir}; "
                               f"the first: {mine[lonely[0]]}")
    pairs = {}
    for fileid in tqdm(sorted(noisy), desc=f"{directory.name} headers", unit="pair"):
        frames = audio_frames(noisy[fileid])
        clean_frames = audio_frames(clean[fileid])
        if clean_frames != frames:
            raise AudioError(f"{noisy[fileid]}: {frames} samples, but its clean partner {clean[fileid]} has {clean_frames}")
        pairs[fileid] = Utterance(noisy[fileid], frames, clean[fileid], snr_of(noisy[fileid]) if with_snr else None)
    return pairs


def split_valid(fileids: Sequence[int], fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """``(train, valid)`` file ids: a seeded random ``fraction`` (at least one) is held out."""
    shuffled = sorted(fileids)
    random.Random(seed).shuffle(shuffled)
    num_valid = max(1, round(fraction * len(shuffled)))
    if num_valid >= len(shuffled):
        raise DnsDataError(f"{len(shuffled)} training pair(s) leave none for training with --valid_fraction {fraction}")
    return sorted(shuffled[num_valid:]), sorted(shuffled[:num_valid])


# ----------------------------------------------------------------------------- re-mixing
def noise_segment(path: Path, frames: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` samples of the noise file from a random start (looped if the file is shorter)."""
    if frames >= length:
        start = int(rng.integers(0, frames - length + 1))
        segment, _ = soundfile.read(str(path), start=start, stop=start + length, dtype="float64")
    else:
        segment = np.resize(soundfile.read(str(path), dtype="float64")[0], length)
    if not np.any(segment):
        raise AudioError(f"{path}: the noise segment chosen is digital silence; remove the file from the noise set")
    return segment


def remix_test(clean_dir: Path, noise_dir: Path, snrs: Sequence[float], wav_dir: Path, seed: int) -> Dict[str, Utterance]:
    """Every clean test utterance at every SNR of ``snrs``, written as 16-bit wavs under ``wav_dir``."""
    clean = by_fileid(wav_files(clean_dir, "clean test speech"))
    noises = wav_files(noise_dir, "test noise")
    noise_frames = [audio_frames(p) for p in tqdm(noises, desc="noise headers", unit="file")]
    for role in ("noisy", "clean"):
        (wav_dir / role).mkdir(parents=True, exist_ok=True)
    test = {}
    for fileid in tqdm(sorted(clean), desc="re-mix test", unit="utt"):
        audio_frames(clean[fileid])  # 16 kHz mono, or an error naming the file
        speech, _ = soundfile.read(str(clean[fileid]), dtype="float64")
        if not np.any(speech):
            raise AudioError(f"{clean[fileid]}: digital silence, no SNR can be set")
        for index, snr in enumerate(snrs):
            rng = np.random.default_rng([seed, fileid, index])  # the same mixture whatever else is re-mixed
            choice = int(rng.integers(len(noises)))
            noisy, reference = mix_at_snr(speech, noise_segment(noises[choice], noise_frames[choice], len(speech), rng), snr, PEAK)
            utt = f"dns_fileid_{fileid}_snr{snr:+g}"
            paths = {}
            for role, wav in (("noisy", noisy), ("clean", reference)):
                paths[role] = wav_dir / role / f"{utt}.wav"
                soundfile.write(str(paths[role]), wav.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
            test[utt] = Utterance(paths["noisy"], len(speech), paths["clean"], snr)
    return test


# ----------------------------------------------------------------------------- writing
def write_dir(directory: Path, utts: Dict[str, Utterance], files: Sequence[str]) -> None:
    columns = {
        "wav.scp": lambda u: str(u.noisy), "spk1.scp": lambda u: str(u.clean),
        "utt2snr": lambda u: f"{u.snr:g}", "speech_mix_shape": lambda u: str(u.frames),
    }
    for name in files:
        write_scp(directory / name, {utt: columns[name](u) for utt, u in utts.items()})


def prepare(out: Path, train_dir: Path, test_dir: Optional[Path] = None, test_clean_dir: Optional[Path] = None,
            test_noise_dir: Optional[Path] = None, test_snrs: Sequence[float] = TEST_SNRS,
            noisy_only_dir: Optional[Path] = None, valid_fraction: float = 0.02, seed: int = 0) -> None:
    """Write the data directories under ``out``; the test set from ``test_dir`` or re-mixed from
    ``test_clean_dir`` + ``test_noise_dir`` (exactly one of the two)."""
    if (test_dir is None) == (test_clean_dir is None or test_noise_dir is None):
        raise DnsDataError("give the test set either as --test_dir or as --test_clean_dir with --test_noise_dir")
    out = out.resolve()
    pairs = read_pairs(train_dir, with_snr=False)
    train_ids, valid_ids = split_valid(list(pairs), valid_fraction, seed)
    splits = {name: {f"dns_fileid_{i}": pairs[i] for i in ids} for name, ids in (("train", train_ids), ("valid", valid_ids))}
    noisy_only = {name: dict(utts) for name, utts in splits.items()}
    if noisy_only_dir is not None:
        for path in tqdm(wav_files(noisy_only_dir, "unlabelled noisy speech"), desc="noisy-only headers", unit="file"):
            noisy_only["train"]["dns_noisy_only_" + re.sub(r"\s+", "_", path.stem)] = Utterance(path, audio_frames(path))
    if test_dir is not None:
        test = {f"dns_fileid_{i}": u for i, u in read_pairs(test_dir, with_snr=True).items()}
    else:
        test = remix_test(test_clean_dir, test_noise_dir, test_snrs, out.parent / "wav" / "test", seed)
    for name, utts in splits.items():
        write_dir(out / name, utts, ("wav.scp", "spk1.scp", "speech_mix_shape"))
        write_dir(out / f"{name}_noisy_only", noisy_only[name], ("wav.scp", "speech_mix_shape"))
    write_dir(out / "test", test, ("wav.scp", "spk1.scp", "utt2snr"))
    print(f"{out}: train {len(splits['train'])}, valid {len(splits['valid'])}, "
          f"train_noisy_only {len(noisy_only['train'])}, test {len(test)} utterances")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_dir", type=Path, required=True, help="noisyspeech_synthesizer output: noisy/, clean/")
    parser.add_argument("--test_dir", type=Path, help="a DNS test set with noisy/ and clean/ (e.g. synthetic/no_reverb)")
    parser.add_argument("--test_clean_dir", type=Path, help="clean test speech (clean_fileid_N.wav) to re-mix ...")
    parser.add_argument("--test_noise_dir", type=Path, help="... with the noise files in this directory")
    parser.add_argument("--test_snrs", type=float, nargs="+", default=list(TEST_SNRS), help="re-mix at each of these SNRs (dB)")
    parser.add_argument("--noisy_only_dir", type=Path, help="unlabelled noisy recordings added to train_noisy_only")
    parser.add_argument("--valid_fraction", type=float, default=0.02, help="of the training file ids")
    parser.add_argument("--seed", type=int, default=0, help="for the valid split and the re-mixing")
    parser.add_argument("--out", type=Path, required=True, help="the data directory (run.sh: EXP/corpus/data)")
    args = parser.parse_args(argv)
    try:
        prepare(args.out, args.train_dir, args.test_dir, args.test_clean_dir, args.test_noise_dir, args.test_snrs,
                args.noisy_only_dir, args.valid_fraction, args.seed)
    except (AudioError, DnsDataError) as exc:
        sys.exit(f"prepare_dns.py: {exc}")


if __name__ == "__main__":
    main()
