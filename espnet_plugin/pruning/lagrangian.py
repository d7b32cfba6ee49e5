"""The sparsity Lagrangian of DPHuBERT / CoFi (docs/pruning.md, "Sparsity Lagrangian").

    penalty = lambda1 * (s_hat - t) + lambda2 * (s_hat - t) ** 2

s_hat is the expected sparsity (of parameters or of MACs) and t the target, ramped linearly
from 0 over ``warmup_steps``. The multipliers start at 0 and are trained by gradient
*ascent*: ``optimizer_group(lr)`` is their own parameter group with ``maximize=True``
(torch's optimizers reject the negative learning rate the reference used) and no decay.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn


class SparsityLagrangian(nn.Module):
    def __init__(self, target_sparsity: float, warmup_steps: int = 0) -> None:
        super().__init__()
        if not 0.0 <= target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
        self.target_sparsity = target_sparsity
        self.warmup_steps = warmup_steps
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))

    def target_at(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.target_sparsity
        return self.target_sparsity * min(1.0, step / self.warmup_steps)

    def forward(self, expected_sparsity: torch.Tensor, step: int) -> torch.Tensor:
        gap = expected_sparsity - self.target_at(step)
        return self.lambda1 * gap + self.lambda2 * gap * gap

    def multipliers(self) -> List[nn.Parameter]:
        return [self.lambda1, self.lambda2]

    def optimizer_group(self, lr: float) -> Dict[str, Any]:
        return {"params": self.multipliers(), "lr": lr, "weight_decay": 0.0, "maximize": True}
