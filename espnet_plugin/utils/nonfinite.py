"""Count training steps whose loss is NaN or infinite, and stop after too many.

ESPnet's trainer already skips the update of a step whose gradient norm is not finite, but
it goes on for ever (a run fed corrupt audio trains on nothing) and says nothing of the
batch. :class:`NonFiniteGuard` is called by a model's ``forward`` on its loss: it counts the
step, warns with the batch's utterance ids, and raises :class:`NonFiniteLossError` once more
than ``max_steps`` steps of this process were non-finite. Checkpoints are written only at
epoch ends (atomically), so the last good one stays intact and ``--resume`` continues there.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch


class NonFiniteLossError(RuntimeError):
    """Too many training steps with a NaN or infinite loss."""


class NonFiniteGuard:
    def __init__(self, max_steps: int = 20) -> None:
        if max_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {max_steps}")
        self.max_steps = max_steps
        self.count = 0

    def check(self, loss: torch.Tensor, utt_ids: Optional[Sequence[str]] = None) -> None:
        """Count a non-finite ``loss``; raise once the count exceeds ``max_steps``."""
        if bool(torch.isfinite(loss.detach()).all()):
            return
        self.count += 1
        batch = f" (batch: {', '.join(map(str, utt_ids))})" if utt_ids is not None else ""
        logging.warning(
            "loss is %s%s: ESPnet skips this update; %d non-finite step(s) so far, the run stops after %d",
            loss.detach().flatten()[0].item(), batch, self.count, self.max_steps,
        )
        if self.count > self.max_steps:
            raise NonFiniteLossError(
                f"{self.count} training steps had a NaN or infinite loss (max_nonfinite_steps: {self.max_steps}), "
                f"the last{batch}; check the data (NaN samples, silence-only files) and the learning rate. "
                f"The last checkpoint is intact: fix the cause and rerun with --resume true"
            )
