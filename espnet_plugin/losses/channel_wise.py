"""Channel-wise distillation (Shu et al., ICCV 2021) over time for speech features."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor, nn

from espnet_plugin.losses.abs_loss import DEFAULT_LAYER_MAP, LayerMapLoss, identity_linear


def channel_distribution_kl(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """``tau^2 / (B C) * sum_{b,c} KL(softmax_t(teacher/tau) || softmax_t(student/tau))``.

    student/teacher (B, C, T), mask (B, T). Each channel of each utterance is a distribution
    over its valid frames only: padded frames are filled with the lowest float before the
    softmax (exactly zero probability, no inf - inf) and their terms dropped.
    """
    valid = mask.unsqueeze(1)
    fill = torch.finfo(student.dtype).min
    log_s = torch.log_softmax((student / temperature).masked_fill(~valid, fill), dim=-1)
    log_t = torch.log_softmax((teacher / temperature).masked_fill(~valid, fill), dim=-1)
    kl = torch.where(valid, log_t.exp() * (log_t - log_s), 0.0)
    batch, channels = student.shape[:2]
    return kl.sum() / (batch * channels) * temperature**2


def alignment(student_dim: int, teacher_dim: int) -> nn.Module:
    """A 1x1 map (over channels) to the teacher width, identity-initialised; none if equal."""
    return nn.Identity() if student_dim == teacher_dim else identity_linear(student_dim, teacher_dim)


class ChannelWiseLoss(LayerMapLoss):
    """Each channel's activation over time, as a distribution, should match the teacher's.

    Softmax over the valid frames at ``temperature``, KL(teacher || student), summed over
    frames, averaged over utterances and channels, times ``temperature^2`` (keeps gradient
    scale independent of the temperature). Normalising per channel makes the loss insensitive
    to each channel's scale and offset, unlike L1. A 1x1 alignment (identity-initialised) maps
    the student to the teacher width when they differ. The pairs are averaged.
    """

    repr_options = ("temperature",)

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        layer_map: Sequence[Sequence[int]] = DEFAULT_LAYER_MAP,
        temperature: float = 4.0,
    ) -> None:
        super().__init__(student_dim, teacher_dim, layer_map)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.align = nn.ModuleList(alignment(student_dim, teacher_dim) for _ in self.layer_map)

    def pair_loss(self, index: int, student: Tensor, teacher: Tensor, mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        aligned = self.align[index](student).transpose(1, 2)
        term = channel_distribution_kl(aligned, teacher.transpose(1, 2), mask, self.temperature)
        return term, {"kl": term}
