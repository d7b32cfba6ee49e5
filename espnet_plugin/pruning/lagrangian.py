"""The sparsity Lagrangian of DPHuBERT / CoFi (docs/pruning.md, "Sparsity Lagrangian").

    penalty = lambda1 * (s_hat - t) + lambda2 * (s_hat - t) ** 2

s_hat is the expected sparsity (of parameters or of MACs) and t the target, ramped linearly
from 0 over ``warmup_steps``. The multipliers start at 0 and are trained by gradient
*ascent*: ``optimizer_group(lr)`` is their own parameter group with ``maximize=True``
(torch's optimizers reject the negative learning rate the reference used) and no decay.

With ``quadratic_weight`` the multipliers are frozen at lambda1 = 0, lambda2 = weight: the
quadratic penalty method. It has no integral term to wind up while the ramped target runs
ahead of the gates, so in short runs it settles where the Lagrangian overshoots (a closed gate
gets almost no gradient and reopens slowly); it stops short of the target by
dL_distill/ds / (2 weight) (docs/pruning.md, "Settling on the budget").
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn


class SparsityLagrangian(nn.Module):
    def __init__(self, target_sparsity: float, warmup_steps: int = 0, quadratic_weight: Optional[float] = None) -> None:
        super().__init__()
        if not 0.0 <= target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
        if quadratic_weight is not None and not quadratic_weight > 0:
            raise ValueError(f"quadratic_weight must be positive, got {quadratic_weight}")
        self.target_sparsity = target_sparsity
        self.warmup_steps = warmup_steps
        self.quadratic_weight = quadratic_weight
        trained = quadratic_weight is None
        self.lambda1 = nn.Parameter(torch.zeros(()), requires_grad=trained)
        self.lambda2 = nn.Parameter(torch.full((), float(quadratic_weight or 0.0)), requires_grad=trained)

    def target_at(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.target_sparsity
        return self.target_sparsity * min(1.0, step / self.warmup_steps)

    def forward(self, expected_sparsity: torch.Tensor, step: int) -> torch.Tensor:
        gap = expected_sparsity - self.target_at(step)
        return self.lambda1 * gap + self.lambda2 * gap * gap

    def multipliers(self) -> List[nn.Parameter]:
        """The trained multipliers (none in the quadratic penalty method)."""
        return [self.lambda1, self.lambda2] if self.quadratic_weight is None else []

    def optimizer_group(self, lr: float) -> Dict[str, Any]:
        return {"params": self.multipliers(), "lr": lr, "weight_decay": 0.0, "maximize": True}
