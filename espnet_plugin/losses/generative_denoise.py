"""Generative denoise distillation (Liu et al., 2024; docs/distillation.md) for (B, T, C) speech features."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor, nn

from espnet_plugin.losses.abs_loss import DEFAULT_LAYER_MAP, LayerMapLoss
from espnet_plugin.losses.channel_wise import alignment, channel_distribution_kl


class DenoiseGenerator(nn.Module):
    """Conv1d k3 -> ReLU -> Conv1d k3 over time at constant width.

    Padded frames are zeroed before each convolution, so they never leak into the valid
    frames next to them: a padded utterance gives exactly its unpadded result.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x (B, C, T), valid (B, 1, T) bool."""
        hidden = torch.relu(self.conv1(torch.where(valid, x, 0.0)))
        return self.conv2(torch.where(valid, hidden, 0.0))


class GenerativeDenoiseLoss(LayerMapLoss):
    """The student's features, corrupted by noise, must let a small generator rebuild the
    teacher's: it pushes the student to encode what the teacher encodes rather than to copy it.

    Per pair: student (B, T, C) -> 1x1 alignment (identity-initialised, only when widths
    differ) -> + Gaussian noise of std ``noise_scale``, one value per frame shared across
    channels, in training mode only -> :class:`DenoiseGenerator` -> channel-wise distribution
    loss against the teacher (softmax over valid frames at ``temperature``, KL(teacher ||
    student), divided by B*C, times temperature^2), times ``alpha``. The pairs are averaged.
    The generators exist only in training. ``alpha`` keeps the paper's parametrisation; it
    multiplies like the spec weight does.
    """

    repr_options = ("noise_scale", "temperature", "alpha")

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        layer_map: Sequence[Sequence[int]] = DEFAULT_LAYER_MAP,
        noise_scale: float = 1.0,
        temperature: float = 4.0,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(student_dim, teacher_dim, layer_map)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        self.noise_scale, self.temperature, self.alpha = noise_scale, temperature, alpha
        self.align = nn.ModuleList(alignment(student_dim, teacher_dim) for _ in self.layer_map)
        self.generators = nn.ModuleList(DenoiseGenerator(teacher_dim) for _ in self.layer_map)

    def pair_loss(self, index: int, student: Tensor, teacher: Tensor, mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        aligned = self.align[index](student).transpose(1, 2)
        if self.training and self.noise_scale > 0:
            aligned = aligned + self.noise_scale * torch.randn_like(aligned[:, :1])
        rebuilt = self.generators[index](aligned, mask.unsqueeze(1))
        term = self.alpha * channel_distribution_kl(rebuilt, teacher.transpose(1, 2), mask, self.temperature)
        return term, {"kl": term}
