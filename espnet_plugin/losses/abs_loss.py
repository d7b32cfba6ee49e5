"""Base class of the distillation losses and the layer-map plumbing they share."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

LayerMap = List[Tuple[int, int]]

#: DPHuBERT's choice: the feature projection output and every fourth transformer layer.
DEFAULT_LAYER_MAP: Tuple[Tuple[int, int], ...] = ((0, 0), (4, 4), (8, 8), (12, 12))


class DistillLoss(nn.Module, ABC):
    """A training-only criterion between student and teacher hidden states.

    Constructors take ``student_dim`` and ``teacher_dim`` first, then their own keyword options,
    so that :func:`espnet_plugin.losses.build_distill_loss` can build any of them from a config.
    Trainable parts (projections, heads, generators) live in the loss, not in the student, so
    they are left behind when the student is exported.
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim

    @abstractmethod
    def forward(self, student: List[Tensor], teacher: List[Tensor], mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """student/teacher: hidden-state lists (index = layer, 0 = feature projection output),
        each (batch, frames, channels); mask (batch, frames) bool, True = valid frame.

        Returns the scalar loss and detached named stats for logging.
        """

    def _pair(self, student: Sequence[Tensor], teacher: Sequence[Tensor], mask: Tensor, s_idx: int,
              t_idx: int) -> Tuple[Tensor, Tensor]:
        """One student/teacher pair in float32 with padded frames zeroed; the teacher detached."""
        s = select_layer(student, s_idx, "student", self)
        t = select_layer(teacher, t_idx, "teacher", self).detach()
        check_frames(s, t, mask, self)
        return zero_padding(s, mask), zero_padding(t, mask)


class LayerMapLoss(DistillLoss):
    """A loss computed pair by pair over ``layer_map`` (student index, teacher index) and averaged.

    Subclasses implement :meth:`pair_loss` for one pair and list the constructor options
    shown by ``repr`` in ``repr_options``. Stats: every pair's named values suffixed with the
    pair (``l1_s4_t4``), and ``loss``.
    """

    repr_options: Tuple[str, ...] = ()

    def __init__(self, student_dim: int, teacher_dim: int, layer_map: Sequence[Sequence[int]]) -> None:
        super().__init__(student_dim, teacher_dim)
        self.layer_map = parse_layer_map(layer_map)

    @abstractmethod
    def pair_loss(self, index: int, student: Tensor, teacher: Tensor, mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """The term of pair ``index`` of ``layer_map``: student/teacher (B, T, C) float32, padded
        frames zeroed, teacher detached; mask (B, T). Returns the term and its named stats."""

    def forward(self, student: List[Tensor], teacher: List[Tensor], mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        total, stats = 0.0, {}
        for index, (s_idx, t_idx) in enumerate(self.layer_map):
            s, t = self._pair(student, teacher, mask, s_idx, t_idx)
            term, term_stats = self.pair_loss(index, s, t, mask)
            total = total + term
            stats.update({f"{name}_{pair_name(s_idx, t_idx)}": value.detach() for name, value in term_stats.items()})
        loss = total / len(self.layer_map)
        stats["loss"] = loss.detach()
        return loss, stats

    def extra_repr(self) -> str:
        return ", ".join([f"layer_map={self.layer_map}"] + [f"{name}={getattr(self, name)!r}" for name in self.repr_options])


def parse_layer_map(layer_map: Sequence[Sequence[int]]) -> LayerMap:
    """``[[student_idx, teacher_idx], ...]`` (YAML lists) as a validated list of int pairs."""
    pairs = [tuple(pair) if isinstance(pair, (list, tuple)) else (pair,) for pair in layer_map]
    if not pairs or any(len(p) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in p)
                        for p in pairs):
        raise ValueError(f"layer_map must be a non-empty list of [student_idx, teacher_idx] int pairs, got {layer_map}")
    return pairs


def pair_name(s_idx: int, t_idx: int) -> str:
    return f"s{s_idx}_t{t_idx}"


def identity_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A linear map that starts as the identity (on the overlapping dims if widths differ),
    so distillation starts from the plain distance between the two representations."""
    proj = nn.Linear(in_dim, out_dim)
    with torch.no_grad():
        nn.init.eye_(proj.weight)
        proj.bias.zero_()
    return proj


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """(B, T, C) in float32 with padded frames set to 0: whatever they held (even inf or NaN)
    can then reach neither a loss value nor a gradient."""
    return torch.where(mask.unsqueeze(-1), x.float(), 0.0)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of per-frame values (B, T) over the valid frames of the whole batch."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


def check_frames(student: Tensor, teacher: Tensor, mask: Tensor, loss: nn.Module) -> None:
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(
            f"{type(loss).__name__}: mask must be (batch, frames) bool, got {mask.dtype} {tuple(mask.shape)}"
        )
    if student.shape[:2] != mask.shape or teacher.shape[:2] != mask.shape:
        raise ValueError(
            f"{type(loss).__name__}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
            f"must match the mask {tuple(mask.shape)} in (batch, frames)"
        )


def select_layer(hidden: Sequence[Tensor], index: int, role: str, loss: nn.Module) -> Tensor:
    """``hidden[index]`` (negative indices count from the last layer) with a clear range error."""
    if not -len(hidden) <= index < len(hidden):
        raise ValueError(f"{type(loss).__name__}: {role} layer {index} is out of range ({len(hidden)} hidden states)")
    return hidden[index]
