"""DistilHuBERT's multi-task prediction heads."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from espnet_plugin.losses.abs_loss import DistillLoss, check_frames, masked_mean, select_layer, zero_padding


class PredictionHeadsLoss(DistillLoss):
    """One linear head per teacher layer, all reading the same student layer.

    Per head: ``L1 + cos_weight * mean(-log sigmoid(cosine))``, L1 averaged over valid frames and
    channels, the cosine term over valid frames; the heads are averaged. The heads exist only
    in training: they are part of this loss, not of the student, and are dropped at export.
    They use PyTorch's default init (as DistilHuBERT), since each head learns a different map.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        teacher_layers: Sequence[int] = (4, 8, 12),
        student_layer: int = -1,
        cos_weight: float = 1.0,
    ) -> None:
        super().__init__(student_dim, teacher_dim)
        self.teacher_layers = [int(i) for i in teacher_layers]
        if not self.teacher_layers:
            raise ValueError("teacher_layers must name at least one teacher layer")
        self.student_layer = student_layer
        self.cos_weight = cos_weight
        self.heads = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in self.teacher_layers)

    def extra_repr(self) -> str:
        return f"student_layer={self.student_layer}, teacher_layers={self.teacher_layers}, cos_weight={self.cos_weight}"

    def forward(self, student: List[Tensor], teacher: List[Tensor], mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        s = select_layer(student, self.student_layer, "student", self)
        total, stats = 0.0, {}
        for head, t_idx in zip(self.heads, self.teacher_layers):
            t = select_layer(teacher, t_idx, "teacher", self).detach()
            check_frames(s, t, mask, self)
            pred = head(zero_padding(s, mask))
            t = zero_padding(t, mask)
            l1 = masked_mean((pred - t).abs().mean(-1), mask)
            cos = F.cosine_similarity(pred, t, dim=-1)
            total = total + l1 + self.cos_weight * masked_mean(-F.logsigmoid(cos), mask)
            stats[f"l1_t{t_idx}"] = l1.detach()
            stats[f"cos_t{t_idx}"] = masked_mean(cos, mask).detach()
        loss = total / len(self.heads)
        stats["loss"] = loss.detach()
        return loss, stats
