"""Masked generative distillation (Yang et al., ECCV 2022, "Masked Generative Distillation")
for (B, T, C) speech features; the masking counterpart of generative denoise distillation."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor, nn

from espnet_plugin.losses.abs_loss import DEFAULT_LAYER_MAP, LayerMapLoss, masked_mean
from espnet_plugin.losses.channel_wise import alignment
from espnet_plugin.losses.generative_denoise import DenoiseGenerator


class MaskedGenerativeLoss(LayerMapLoss):
    """The student's features, with random frames masked out, must let a small generator
    rebuild all of the teacher's frames.

    Per pair: student (B, T, C) -> 1x1 alignment (identity-initialised, only when widths
    differ) -> in training mode, each frame is zeroed with probability ``mask_ratio`` (one
    draw per frame, shared across channels; in eval mode nothing is masked) ->
    :class:`~espnet_plugin.losses.generative_denoise.DenoiseGenerator` (conv k3 -> ReLU ->
    conv k3, padded frames zeroed before each conv) -> squared error against the teacher,
    averaged over valid frames and channels, times ``alpha``. The pairs are averaged.

    MGD sums the squared error over positions and uses a small ``alpha`` (2e-5 for detection);
    the mean here keeps the scale independent of the utterance length and width, so ``alpha``
    near 1 is the starting point. Compared with generative denoise distillation (Gaussian noise
    of ``noise_scale`` added to every frame, channel-wise KL), this corrupts by deletion and
    regresses the values themselves.
    """

    repr_options = ("mask_ratio", "alpha")

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        layer_map: Sequence[Sequence[int]] = DEFAULT_LAYER_MAP,
        mask_ratio: float = 0.5,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(student_dim, teacher_dim, layer_map)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio, self.alpha = mask_ratio, alpha
        self.align = nn.ModuleList(alignment(student_dim, teacher_dim) for _ in self.layer_map)
        self.generators = nn.ModuleList(DenoiseGenerator(teacher_dim) for _ in self.layer_map)

    def pair_loss(self, index: int, student: Tensor, teacher: Tensor, mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        aligned = self.align[index](student).transpose(1, 2)  # (B, C, T)
        valid = mask.unsqueeze(1)
        kept = valid
        if self.training and self.mask_ratio > 0:
            kept = valid & (torch.rand(valid.shape, device=valid.device) >= self.mask_ratio)
        rebuilt = self.generators[index](torch.where(kept, aligned, 0.0), valid)
        error = (rebuilt - teacher.transpose(1, 2)).pow(2).mean(1)  # (B, T)
        mse = masked_mean(error, mask)
        term = self.alpha * mse
        return term, {"mse": mse}
