"""Audio I/O with errors that name the file: reading 16 kHz speech, synthesising it with espeak-ng or flite."""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from espnet_plugin.utils.kaldi_data import read_scp_lines

#: the rate every model of this package works at (HuBERT / WavLM / wav2vec 2.0 are 16 kHz models)
SAMPLE_RATE = 16000


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, empty, or at the wrong sample rate."""


def read_audio(path: Union[str, Path], sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A mono float32 waveform; raises AudioError naming the file and the problem."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioError(f"{path}: unreadable or corrupt audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the audio file is empty (0 samples)")
    if rate != sample_rate:
        raise AudioError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (resample it first)")
    return torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))


def _espeak() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng; `make demo` installs it)")
    return binary


def synthesize(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> torch.Tensor:
    """Speak ``text`` with espeak-ng and return a 16 kHz float waveform."""
    import soundfile
    import torchaudio.functional as AF

    wav_bytes = subprocess.run(
        [_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    data, rate = soundfile.read(io.BytesIO(wav_bytes), dtype="float32")
    return AF.resample(torch.from_numpy(data), rate, SAMPLE_RATE)


def synthesize_flite(text: str, voice: str = "slt", stretch: float = 1.0, f0_mean: Optional[float] = None) -> torch.Tensor:
    """Speak ``text`` with flite (a built-in voice: kal, kal16, awb, rms, slt) and return a 16 kHz
    float waveform; ``stretch`` > 1 speaks slower, ``f0_mean`` sets the mean pitch in Hz."""
    import tempfile

    import soundfile
    import torchaudio.functional as AF

    binary = shutil.which("flite")
    if binary is None:
        raise RuntimeError("flite is not installed (apt-get install flite; `make demo` installs it)")
    options = ["--setf", f"duration_stretch={stretch:g}"]
    if f0_mean is not None:
        options += ["--setf", f"int_f0_target_mean={f0_mean:g}"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([binary, "-voice", voice, *options, "-t", text, "-o", str(path)], check=True, capture_output=True)
        data, rate = soundfile.read(str(path), dtype="float32")
    return AF.resample(torch.from_numpy(data), rate, SAMPLE_RATE)


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float, peak: float = 0.99) -> Tuple[np.ndarray, np.ndarray]:
    """``(noisy, clean)`` as float32: the noise scaled so that the SNR over the utterance is
    ``snr_db``; if the mixture would exceed ``peak``, mixture and reference are scaled down
    together, which keeps the SNR. Used by the recipes that synthesise noisy speech."""
    speech_power = float(np.mean(clean**2)) + 1e-10
    noise_power = float(np.mean(noise**2)) + 1e-10
    noisy = clean + noise * np.sqrt(speech_power / noise_power / 10 ** (snr_db / 10))
    scale = min(1.0, peak / max(1e-8, float(np.abs(noisy).max())))
    return (noisy * scale).astype(np.float32), (clean * scale).astype(np.float32)


def espeak_phonemes(text: str, voice: str = "en-us") -> List[str]:
    """``text``'s phonemes from espeak-ng (ASCII symbols; stress marks and pauses dropped): like
    a G2P lexicon, a function of the text whoever speaks it."""
    output = subprocess.run(
        [_espeak(), "-q", "-x", "--sep= ", "-v", voice, text], capture_output=True, text=True, check=True
    ).stdout
    symbols = (token.replace("'", "").replace(",", "") for token in output.split())
    return [p for p in symbols if p and not p.startswith("_")]


def check_scp_audio(scp: Union[str, Path], sample_rate: int = SAMPLE_RATE) -> int:
    """Check every entry of a Kaldi-style wav.scp from its header; returns the entry count.

    Raises AudioError naming the scp line and the file: missing, unreadable, empty, at
    another sample rate, or not mono. Headers only, so this is cheap even for large corpora.
    """
    import soundfile

    scp = Path(scp)
    if not scp.is_file():
        raise AudioError(f"{scp}: no such wav.scp")
    count = 0
    for number, utt, value in read_scp_lines(scp, AudioError):
        path = Path(value)
        where = f"{scp}:{number} ({utt})"
        if not path.is_file():
            raise AudioError(f"{where}: {path}: no such audio file")
        try:
            info = soundfile.info(str(path))
        except (RuntimeError, soundfile.LibsndfileError) as exc:
            raise AudioError(f"{where}: {path}: unreadable or corrupt audio ({exc})") from exc
        if info.frames == 0:
            raise AudioError(f"{where}: {path}: the audio file is empty (0 samples)")
        if info.samplerate != sample_rate:
            raise AudioError(f"{where}: {path}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz")
        if info.channels != 1:
            raise AudioError(f"{where}: {path}: {info.channels} channels, expected mono (mix it down first)")
        count += 1
    return count
