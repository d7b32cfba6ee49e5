"""A stand-in for ``torchaudio.sox_effects``, which torchaudio 2.9 removed.

s3prl's datasets (KS, ASV, QbE, MOS, SID on VoxCeleb2) still call
``apply_effects_file(path, effects)`` / ``apply_effects_tensor(wav, rate, effects)`` with
sox effect chains. ``s3prl_upstream.compat`` installs this module as
``torchaudio.sox_effects`` when the real one is missing.

The effects those datasets use for loading are computed in torch, with sox's semantics:

==========================  ==================================================================
``channels N``              1: mix down (mean over channels); N == current: no-op; 1 -> N: copy
``rate R``                  ``torchaudio.functional.resample`` (no-op at the same rate)
``gain dB``                 scale by 10^(dB/20), clipped to [-1, 1] as sox's integer pipeline does
``gain -n [dB]``, ``norm``  peak-normalise to dB (default 0 dBFS)
``pad A B``                 A seconds (or ``Ns`` samples) of zeros before, B after
``trim S [L]``              keep L seconds (or ``Ns`` samples) from S; to the end without L
``reverse``                 reverse in time
==========================  ==================================================================

Any other chain (``silence``, ``vad``, time specs such as ``hh:mm:ss``) runs through the
``sox`` binary (Debian package ``sox``), as torchaudio did through libsox; without the
binary it raises a RuntimeError that names the effect. Files are read with soundfile
(float32 in [-1, 1], as torchaudio's ``normalize=True``); formats soundfile cannot read go
through the ``sox`` binary too.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["apply_effects_file", "apply_effects_tensor", "effect_names", "init_sox_effects", "shutdown_sox_effects"]

Effects = Sequence[Sequence[str]]

#: Effects computed in torch (when their arguments are in a form parsed here).
TORCH_EFFECTS = ("channels", "rate", "gain", "norm", "pad", "trim", "reverse")


def init_sox_effects() -> None:
    """No-op (kept for API compatibility)."""


def shutdown_sox_effects() -> None:
    """No-op (kept for API compatibility)."""


def effect_names() -> List[str]:
    """Effects computed in torch; anything else needs the ``sox`` binary."""
    return list(TORCH_EFFECTS)


# ------------------------------------------------------------------ torch path
def _seconds_to_samples(spec: str, rate: int) -> Optional[int]:
    """``0.5`` (seconds) or ``800s`` (samples); None for forms left to sox."""
    try:
        if spec.endswith("s"):
            return int(spec[:-1])
        return int(round(float(spec) * rate))
    except ValueError:
        return None


def _peak_normalise(wav: torch.Tensor, db: float) -> torch.Tensor:
    peak = wav.abs().max()
    if peak == 0:
        return wav
    return wav * (10 ** (db / 20) / peak)


def _torch_effect(wav: torch.Tensor, rate: int, effect: Sequence[str]) -> Optional[Tuple[torch.Tensor, int]]:
    """Apply one effect in torch; None when its form is not handled here."""
    name, args = effect[0], list(effect[1:])
    try:
        if name == "channels" and len(args) == 1:
            n = int(args[0])
            if n == wav.shape[0]:
                return wav, rate
            if n == 1:
                return wav.mean(dim=0, keepdim=True), rate
            if wav.shape[0] == 1:
                return wav.repeat(n, 1), rate
            return None
        if name == "rate" and len(args) == 1:
            spec = args[0]
            new_rate = int(round(float(spec[:-1]) * 1000)) if spec[-1:] in ("k", "K") else int(float(spec))
            if new_rate == rate:
                return wav, rate
            import torchaudio.functional as AF

            return AF.resample(wav, rate, new_rate), new_rate
        if name == "gain" and args and args[0] == "-n" and len(args) <= 2:
            return _peak_normalise(wav, float(args[1]) if len(args) == 2 else 0.0), rate
        if name == "gain" and len(args) == 1:
            return (wav * 10 ** (float(args[0]) / 20)).clamp(-1.0, 1.0), rate
        if name == "norm" and len(args) <= 1:
            return _peak_normalise(wav, float(args[0]) if args else 0.0), rate
        if name == "reverse" and not args:
            return wav.flip(-1), rate
        if name == "pad" and len(args) in (1, 2):
            before, after = (_seconds_to_samples(a, rate) for a in (args + ["0"])[:2])
            if before is None or after is None:
                return None
            return torch.nn.functional.pad(wav, (before, after)), rate
        if name == "trim" and len(args) in (1, 2):
            start = _seconds_to_samples(args[0], rate)
            length = _seconds_to_samples(args[1], rate) if len(args) == 2 else wav.shape[-1]
            if start is None or length is None:
                return None
            return wav[:, start : start + length], rate
    except ValueError:
        return None
    return None


def _torch_chain(wav: torch.Tensor, rate: int, effects: Effects) -> Optional[Tuple[torch.Tensor, int]]:
    for effect in effects:
        result = _torch_effect(wav, rate, [str(a) for a in effect])
        if result is None:
            return None
        wav, rate = result
    return wav, rate


# ------------------------------------------------------------------ sox binary
def _sox_binary(effects: Effects) -> str:
    binary = shutil.which("sox")
    if binary is None:
        names = sorted({e[0] for e in effects if e[0] not in TORCH_EFFECTS}) or [" ".join(map(str, e)) for e in effects]
        raise RuntimeError(
            f"torchaudio.sox_effects (s3prl_upstream stand-in): effect(s) {names} need the sox binary "
            "(apt-get install sox); effects computed without it: " + ", ".join(TORCH_EFFECTS)
        )
    return binary


def _run_sox(input_path: str, effects: Effects) -> Tuple[torch.Tensor, int]:
    import soundfile

    binary = _sox_binary(effects)
    with tempfile.TemporaryDirectory(prefix="sox_effects_") as tmp:
        out = os.path.join(tmp, "out.wav")
        command = [binary, "-V1", input_path, "-e", "floating-point", "-b", "32", out]
        command += [str(a) for effect in effects for a in effect]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"sox failed on {input_path} with effects {list(effects)}: {result.stderr.strip()}")
        data, rate = soundfile.read(out, dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), int(rate)


def _sox_on_tensor(wav: torch.Tensor, rate: int, effects: Effects) -> Tuple[torch.Tensor, int]:
    import soundfile

    _sox_binary(effects)
    with tempfile.TemporaryDirectory(prefix="sox_effects_") as tmp:
        path = os.path.join(tmp, "in.wav")
        soundfile.write(path, wav.detach().cpu().float().numpy().T, rate, subtype="FLOAT")
        return _run_sox(path, effects)


# ------------------------------------------------------------------ public API
def apply_effects_tensor(
    tensor: torch.Tensor, sample_rate: int, effects: Effects, channels_first: bool = True
) -> Tuple[torch.Tensor, int]:
    """Apply a sox effect chain to ``tensor`` (channels, time) [or (time, channels)]."""
    if tensor.dim() != 2:
        raise ValueError(f"apply_effects_tensor: expected a 2-D tensor, got shape {tuple(tensor.shape)}")
    wav = tensor if channels_first else tensor.t()
    result = _torch_chain(wav.float(), int(sample_rate), effects) if effects else (wav.float(), int(sample_rate))
    if result is None:
        result = _sox_on_tensor(wav, int(sample_rate), effects)
    out, rate = result
    return (out if channels_first else out.t()), rate


def apply_effects_file(
    path: Union[str, os.PathLike],
    effects: Effects,
    normalize: bool = True,
    channels_first: bool = True,
    format: Optional[str] = None,
) -> Tuple[torch.Tensor, int]:
    """Load ``path`` and apply a sox effect chain; float32 in [-1, 1], (channels, time)."""
    import soundfile

    if not normalize:
        raise ValueError("apply_effects_file (s3prl_upstream stand-in): only normalize=True (float output) is supported")
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"apply_effects_file: {path}: no such audio file")
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True, format=format)
    except (RuntimeError, soundfile.LibsndfileError):
        out, rate = _run_sox(path, effects)  # a format soundfile cannot read
        return (out if channels_first else out.t()), rate
    out, rate = apply_effects_tensor(torch.from_numpy(data.T.copy()), int(rate), effects)
    return (out if channels_first else out.t()), rate
