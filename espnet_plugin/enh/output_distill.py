"""Output distillation: the student's enhanced waveform against the teacher's, padding masked."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor, nn

CRITERIA = ("si_snr", "snr", "l1")
EPS = 1e-8


def sample_mask(lengths: Tensor, num_samples: int) -> Tensor:
    return torch.arange(num_samples, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class OutputDistillLoss(nn.Module):
    """A criterion between two (B, L) waveforms on each utterance's valid samples only.

    ``si_snr``: minus the scale-invariant SNR (dB) of the student with the teacher's output as
    the reference (both zero-meaned over the valid samples); ``snr``: minus the plain SNR;
    ``l1``: mean absolute difference. Averaged over utterances (si_snr / snr) or valid samples (l1).
    Samples past an utterance's length never reach the value or the gradient.
    """

    def __init__(self, criterion: str = "si_snr") -> None:
        super().__init__()
        if criterion not in CRITERIA:
            raise ValueError(f"output_kd criterion must be one of {CRITERIA}, got {criterion!r}")
        self.criterion = criterion

    def extra_repr(self) -> str:
        return f"criterion={self.criterion!r}"

    def forward(self, student: Tensor, teacher: Tensor, lengths: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        if student.dim() != 2 or student.shape != teacher.shape:
            raise ValueError(
                f"output distillation needs (batch, samples) waveforms of one shape, got student "
                f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
            )
        mask = sample_mask(lengths, student.shape[1])
        s = torch.where(mask, student.float(), 0.0)
        t = torch.where(mask, teacher.detach().float(), 0.0)
        count = mask.sum(1).clamp(min=1)
        if self.criterion == "l1":
            value = (s - t).abs().sum() / count.sum()
            return value, {"l1": value.detach()}
        if self.criterion == "si_snr":
            s = torch.where(mask, s - s.sum(1, keepdim=True) / count.unsqueeze(1), 0.0)
            t = torch.where(mask, t - t.sum(1, keepdim=True) / count.unsqueeze(1), 0.0)
            t = (s * t).sum(1, keepdim=True) / (t.pow(2).sum(1, keepdim=True) + EPS) * t
        snr = 10 * torch.log10(t.pow(2).sum(1) / ((s - t).pow(2).sum(1) + EPS) + EPS)
        value = -snr.mean()
        return value, {self.criterion: snr.mean().detach()}
