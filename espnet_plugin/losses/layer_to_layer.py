"""DPHuBERT's layer-to-layer distillation (formulas in docs/distillation.md)."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from espnet_plugin.losses.abs_loss import DEFAULT_LAYER_MAP, LayerMapLoss, identity_linear, masked_mean


class LayerToLayerLoss(LayerMapLoss):
    """Chosen student layers regress teacher layers through linear projections.

    Per pair: ``l1_weight * L1 - cos_weight * cosine``, L1 averaged over valid frames and
    channels, cosine (over channels) averaged over valid frames; the pairs are averaged. The
    minimum, reached when the projected student equals the teacher, is ``-cos_weight``.
    Projections start as the identity, because a DPHuBERT student starts as a copy of the
    teacher and should start at that minimum; ``shared_projection`` uses one for every pair.
    """

    repr_options = ("shared_projection", "l1_weight", "cos_weight")

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        layer_map: Sequence[Sequence[int]] = DEFAULT_LAYER_MAP,
        shared_projection: bool = False,
        l1_weight: float = 1.0,
        cos_weight: float = 1.0,
    ) -> None:
        super().__init__(student_dim, teacher_dim, layer_map)
        self.shared_projection = shared_projection
        self.l1_weight, self.cos_weight = l1_weight, cos_weight
        count = 1 if shared_projection else len(self.layer_map)
        self.projections = nn.ModuleList(identity_linear(student_dim, teacher_dim) for _ in range(count))

    def pair_loss(self, index: int, student: Tensor, teacher: Tensor, mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        projected = self.projections[0 if self.shared_projection else index](student)
        l1 = masked_mean((projected - teacher).abs().mean(-1), mask)
        cos = masked_mean(F.cosine_similarity(projected, teacher, dim=-1), mask)
        return self.l1_weight * l1 - self.cos_weight * cos, {"l1": l1, "cos": cos}
