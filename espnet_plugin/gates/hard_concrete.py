"""Hard-concrete (L0) gates of Louizos et al., as used by DPHuBERT (docs/pruning.md)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BETA = 2.0 / 3.0
LIMIT_LEFT = -0.1
LIMIT_RIGHT = 1.1


class ForwardValues:
    """Tensors a module keeps between calls of one training step: ``pending`` (left for the
    next forward, e.g. by :func:`sample_gates`) and ``current`` (what the last forward used).

    A plain object, because setting a module's attributes goes through
    ``nn.Module.__setattr__``, which costs more than the rest of a gate's work on a small
    model; and copies and pickles start empty (the tensors belong to one forward's graph,
    which cannot be deep-copied)."""

    __slots__ = ("pending", "current")

    def __init__(self) -> None:
        self.pending: Optional[torch.Tensor] = None
        self.current: Optional[torch.Tensor] = None

    def __reduce__(self):
        return ForwardValues, ()


class HardConcreteGate(nn.Module):
    """``n`` stochastic gates in [0, 1], exactly 0 or 1 with non-zero probability.

    Training mode samples one stretched, clamped concrete value per gate. Eval mode returns
    the deterministic binary mask: the ``round(expected open count)`` gates with the largest
    ``log_alpha`` are 1, the rest 0, so that a pruned model equals the gated one exactly.
    """

    def __init__(self, n: int, init_drop_rate: float = 0.01, min_keep: int = 0) -> None:
        super().__init__()
        if n < 1:
            raise ValueError("a gate group needs at least one gate")
        self.n, self.min_keep = n, min_keep
        self.draw = ForwardValues()
        self.log_alpha = nn.Parameter(torch.empty(n))
        self.reset_parameters(init_drop_rate)

    def reset_parameters(self, init_drop_rate: float) -> None:
        if self.log_alpha.is_meta:  # a model built to be overwritten (shrinking): torch's meta
            return  # sampling runs through slow Python reference ops, ~5 ms a gate
        mean = math.log((1.0 - init_drop_rate) / init_drop_rate)
        nn.init.normal_(self.log_alpha, mean=mean, std=0.01)

    def prob_open(self) -> torch.Tensor:
        """P(z > 0) for every gate: differentiable in ``log_alpha``."""
        return prob_open(self.log_alpha)

    def expected_open(self) -> torch.Tensor:
        return self.prob_open().sum()

    def deterministic_mask(self) -> torch.Tensor:
        keep = max(self.min_keep, int(round(self.expected_open().item())))
        mask = torch.zeros_like(self.log_alpha)
        if keep > 0:
            mask[torch.topk(self.log_alpha, keep).indices] = 1.0
        return mask.detach()

    def sample(self) -> torch.Tensor:
        return sample_hard_concrete(self.log_alpha)

    #: Share of the group that must be sampled exactly 0 before a training forward leaves
    #: those units out (0: never); set through ``SpeechEncoder.skip_closed_units``.
    skip_closed: float = 0.0

    def open_units(self) -> Optional[torch.Tensor]:
        """Indices of the units the current training values leave open, when at least
        ``skip_closed`` of the group was sampled exactly 0; None (compute them all) otherwise.

        A unit sampled 0 contributes exactly 0 to the output and to every gradient (its
        weights' gradients are 0, and the clamp passes none to its log_alpha), so leaving it
        out of this step's computation changes nothing but the order of float sums.
        """
        values = self.draw.current
        if self.skip_closed <= 0.0 or not self.training or values is None:
            return None
        units = torch.nonzero(values).flatten()
        if len(units) == 0 or len(units) > (1.0 - self.skip_closed) * self.n:
            return None
        return units

    def _replicate_for_data_parallel(self) -> "HardConcreteGate":
        replica = super()._replicate_for_data_parallel()
        replica.draw = ForwardValues()  # a replica samples on its own device
        return replica

    @property
    def current(self) -> Optional[torch.Tensor]:
        """The values the last forward returned, for blocks that share them."""
        return self.draw.current

    def forward(self) -> torch.Tensor:
        """Gate values for this forward pass. In training they are the values
        :func:`sample_gates` left (or a fresh sample); in eval the deterministic mask."""
        draw = self.draw
        if self.training:
            pending, draw.pending = draw.pending, None
            draw.current = pending if pending is not None else self.sample()
        else:
            draw.current = self.deterministic_mask()
        return draw.current

    def extra_repr(self) -> str:
        return f"n={self.n}"


def prob_open(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z > 0) of hard-concrete gates with these logits."""
    return torch.sigmoid(log_alpha - BETA * math.log(-LIMIT_LEFT / LIMIT_RIGHT))


def sample_hard_concrete(log_alpha: torch.Tensor) -> torch.Tensor:
    """One stretched, clamped concrete sample per logit (hardtanh is the clamp to [0, 1] with
    a single backward operation)."""
    noise = torch.logit(torch.rand_like(log_alpha).clamp_(1e-6, 1.0 - 1e-6))
    s = torch.sigmoid((log_alpha + noise) * (1.0 / BETA))
    return F.hardtanh(torch.add(LIMIT_LEFT, s, alpha=LIMIT_RIGHT - LIMIT_LEFT), 0.0, 1.0)


def sample_gates(gates: Sequence[HardConcreteGate]) -> Optional[torch.Tensor]:
    """Sample every gate of a model with one set of operations instead of one set per gate
    (a small model's step is dominated by the number of operations, not their size); each
    gate's next training forward returns its part. Returns the concatenated logits sampled
    from (None without gates), so that the expected cost can share them."""
    if not gates:
        return None
    log_alpha = torch.cat([gate.log_alpha for gate in gates])
    values = sample_hard_concrete(log_alpha)
    for gate, value in zip(gates, values.split([gate.n for gate in gates])):
        gate.draw.pending = value
    return log_alpha
