"""DPHuBERT's layer-to-layer distillation (algorithms.md §1)."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from espnet_plugin.losses.abs_loss import (
    DEFAULT_LAYER_MAP,
    DistillLoss,
    identity_linear,
    masked_mean,
    pair_name,
    parse_layer_map,
)


class LayerToLayerLoss(DistillLoss):
    """Chosen student layers regress teacher layers through linear projections.

    Per pair: ``l1_weight * L1 - cos_weight * cosine``, L1 averaged over valid frames and
    channels, cosine (over channels) averaged over valid frames; the pairs are averaged. The
    minimum, reached when the projected student equals the teacher, is ``-cos_weight``.
    Projections start as the identity, because a DPHuBERT student starts as a copy of the
    teacher and should start at that minimum; ``shared_projection`` uses one for every pair.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        layer_map: Sequence[Sequence[int]] = DEFAULT_LAYER_MAP,
        shared_projection: bool = False,
        l1_weight: float = 1.0,
        cos_weight: float = 1.0,
    ) -> None:
        super().__init__(student_dim, teacher_dim)
        self.layer_map = parse_layer_map(layer_map)
        self.shared_projection = shared_projection
        self.l1_weight, self.cos_weight = l1_weight, cos_weight
        count = 1 if shared_projection else len(self.layer_map)
        self.projections = nn.ModuleList(identity_linear(student_dim, teacher_dim) for _ in range(count))

    def extra_repr(self) -> str:
        return (f"layer_map={self.layer_map}, shared_projection={self.shared_projection}, "
                f"l1_weight={self.l1_weight}, cos_weight={self.cos_weight}")

    def forward(self, student: List[Tensor], teacher: List[Tensor], mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        total, stats = 0.0, {}
        for k, (s_idx, t_idx) in enumerate(self.layer_map):
            s, t = self._pair(student, teacher, mask, s_idx, t_idx)
            s = self.projections[0 if self.shared_projection else k](s)
            l1 = masked_mean((s - t).abs().mean(-1), mask)
            cos = masked_mean(F.cosine_similarity(s, t, dim=-1), mask)
            total = total + self.l1_weight * l1 - self.cos_weight * cos
            stats[f"l1_{pair_name(s_idx, t_idx)}"] = l1.detach()
            stats[f"cos_{pair_name(s_idx, t_idx)}"] = cos.detach()
        loss = total / len(self.layer_map)
        stats["loss"] = loss.detach()
        return loss, stats
