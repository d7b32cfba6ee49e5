"""Generative denoise distillation (Liu et al., 2024), algorithms.md §3, for (B, T, C) speech features."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from espnet_plugin.losses.abs_loss import DEFAULT_LAYER_MAP, DistillLoss, pair_name, parse_layer_map
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


class GenerativeDenoiseLoss(DistillLoss):
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

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        layer_map: Sequence[Sequence[int]] = DEFAULT_LAYER_MAP,
        noise_scale: float = 1.0,
        temperature: float = 4.0,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(student_dim, teacher_dim)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        self.layer_map = parse_layer_map(layer_map)
        self.noise_scale, self.temperature, self.alpha = noise_scale, temperature, alpha
        self.align = nn.ModuleList(alignment(student_dim, teacher_dim) for _ in self.layer_map)
        self.generators = nn.ModuleList(DenoiseGenerator(teacher_dim) for _ in self.layer_map)

    def extra_repr(self) -> str:
        return (f"layer_map={self.layer_map}, noise_scale={self.noise_scale}, "
                f"temperature={self.temperature}, alpha={self.alpha}")

    def forward(self, student: List[Tensor], teacher: List[Tensor], mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        total, stats = 0.0, {}
        valid = mask.unsqueeze(1)
        for align, generator, (s_idx, t_idx) in zip(self.align, self.generators, self.layer_map):
            s, t = self._pair(student, teacher, mask, s_idx, t_idx)
            s = align(s).transpose(1, 2)
            if self.training and self.noise_scale > 0:
                s = s + self.noise_scale * torch.randn_like(s[:, :1])
            rebuilt = generator(s, valid)
            term = self.alpha * channel_distribution_kl(rebuilt, t.transpose(1, 2), mask, self.temperature)
            total = total + term
            stats[f"kl_{pair_name(s_idx, t_idx)}"] = term.detach()
        loss = total / len(self.layer_map)
        stats["loss"] = loss.detach()
        return loss, stats
