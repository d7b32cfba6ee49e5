"""A weighted sum of distillation losses, as configured by a spec list."""
from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

from torch import Tensor, nn

from espnet_plugin.losses.abs_loss import DistillLoss


class CombinedDistillLoss(DistillLoss):
    """``sum_k weights[k] * losses[k]``.

    Stats: every term's stats prefixed ``"{key}_"`` (so ``"{key}_loss"`` is the unweighted
    term), ``"{key}_weighted"`` for the weighted term, and ``"loss"`` for the total. Keys use
    ``_`` rather than ``/`` since ESPnet names its stat plots after them.
    """

    def __init__(self, losses: Mapping[str, DistillLoss], weights: Mapping[str, float]) -> None:
        if not losses:
            raise ValueError("CombinedDistillLoss needs at least one loss")
        if set(losses) != set(weights):
            raise ValueError(f"losses {sorted(losses)} and weights {sorted(weights)} must have the same keys")
        first = next(iter(losses.values()))
        super().__init__(first.student_dim, first.teacher_dim)
        self.losses = nn.ModuleDict(losses)
        self.weights: Dict[str, float] = {key: float(weights[key]) for key in losses}

    def forward(self, student: List[Tensor], teacher: List[Tensor], mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        total, stats = 0.0, {}
        for key, loss_fn in self.losses.items():
            value, term_stats = loss_fn(student, teacher, mask)
            weighted = self.weights[key] * value
            total = total + weighted
            stats.update({f"{key}_{name}": stat for name, stat in term_stats.items()})
            stats[f"{key}_weighted"] = weighted.detach()
        stats["loss"] = total.detach()
        return total, stats

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
