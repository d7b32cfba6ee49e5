"""Linear warm-up, then linear decay to zero: the schedule of the DPHuBERT recipe.

DPHuBERT (Peng et al., 2023) warms every learning rate up linearly over 15k steps and decays
it linearly to 0 at 50k in stage 1 (5k of 25k in stage 2). Every parameter group follows
the schedule, the gate logits and the Lagrange multipliers included, so that the
architecture settles at the end of stage 1. ESPnet's ``warmuplr`` decays as 1/sqrt(step)
and is still at 0.32 of its peak at 50k.

    scheduler: linearwarmupdecaylr
    scheduler_conf: {warmup_steps: 15000, total_steps: 50000}

The factor multiplies each group's own learning rate (weights, gates and multipliers keep
their ratios). It is an ESPnet batch-step scheduler: it steps once per optimizer update.
"""
from __future__ import annotations

from typing import List

import torch
from espnet2.schedulers.abs_scheduler import AbsBatchStepScheduler
from torch.optim.lr_scheduler import _LRScheduler


class LinearWarmupDecayLR(_LRScheduler, AbsBatchStepScheduler):
    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 15000, total_steps: int = 50000,
                 last_epoch: int = -1) -> None:
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of the peak learning rate after ``step`` updates."""
        if step < self.warmup_steps:
            return step / self.warmup_steps
        return max(0.0, (self.total_steps - step) / (self.total_steps - self.warmup_steps))

    def get_lr(self) -> List[float]:
        factor = self.factor(self.last_epoch + 1)
        return [base * factor for base in self.base_lrs]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(warmup_steps={self.warmup_steps}, total_steps={self.total_steps})"
