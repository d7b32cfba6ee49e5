"""What an ESPnet enh model costs on a device: parameters, algorithmic latency, real-time factor.

* ``algorithmic_latency``: measured, not read from the config. The input is changed from
  sample ``k`` on and the earliest output sample that changes is found; ``k`` minus that
  index is how far ahead the model must look. For an STFT mask estimator with a causal
  separator this is the analysis window (overlap-add must wait for the frame that ends
  ``n_fft - 1`` samples later); a separator that looks ahead adds its look-ahead. The largest
  value over several ``k`` in the middle of a random input is reported.
* ``real_time_factor``: seconds to enhance ``seconds`` of audio (batch 1,
  ``forward_enhance`` under ``torch.inference_mode``) divided by ``seconds``; median of
  ``runs`` after one warm-up, with ``threads`` intra-op threads (1: a single core, what an
  earbud or hearing-aid DSP offers). The whole utterance at once, not frame by frame.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _enhanced(model: nn.Module, speech: torch.Tensor) -> torch.Tensor:
    lengths = torch.tensor([speech.shape[1]])
    return model.forward_enhance(speech, lengths, {})[0][0][0]


def algorithmic_latency(model: nn.Module, fs: int = 16000, seconds: float = 0.5, span: int = 512, step: int = 8,
                        tolerance: float = 1e-12) -> Dict[str, float]:
    """``{"samples": n, "ms": n / fs * 1000}``: how far ahead of an output sample the input matters.

    Probes ``k`` every ``step`` samples over ``span`` samples from the middle of the input (the
    answer depends on where ``k`` falls in the frame grid), in float64 so that the tiny
    contributions at the window's edges still show (``tolerance`` relative to the output's peak).
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    num = int(seconds * fs)
    speech = 0.1 * torch.randn(1, num, generator=gen, dtype=torch.float64)
    model_64 = model.double()
    worst = 0
    try:
        with torch.inference_mode():
            reference = _enhanced(model_64, speech)
            for k in range(num // 2 - span // 2, num // 2 + span // 2, step):
                changed = speech.clone()
                changed[0, k:] += 0.1 * torch.randn(num - k, generator=gen, dtype=torch.float64)
                diff = (_enhanced(model_64, changed) - reference).abs()
                moved = torch.nonzero(diff > tolerance * reference.abs().max())
                if len(moved):
                    worst = max(worst, k - int(moved[0, 0]))
    finally:
        model.float()
        model.train(was_training)
    return {"samples": float(worst), "ms": worst / fs * 1000.0}


def real_time_factor(model: nn.Module, fs: int = 16000, seconds: float = 4.0, runs: int = 5,
                     threads: int = 1) -> float:
    was_training, old_threads = model.training, torch.get_num_threads()
    model.eval()
    speech = 0.1 * torch.randn(1, int(seconds * fs), generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            _enhanced(model, speech)  # warm-up
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                _enhanced(model, speech)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return statistics.median(times) / seconds


def model_costs(model: nn.Module, fs: int = 16000, rtf_seconds: float = 4.0, rtf_runs: int = 5) -> Dict[str, float]:
    """``{params, latency_ms, rtf}`` of one model (RTF on one thread)."""
    return {
        "params": count_params(model),
        "latency_ms": algorithmic_latency(model, fs)["ms"],
        "rtf": real_time_factor(model, fs, rtf_seconds, rtf_runs),
    }
