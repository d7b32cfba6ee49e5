"""Similarity-preserving distillation (Tung & Mori; the fine-grained time variant of
Nathoo et al.); formulas in docs/distillation.md."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor

from espnet_plugin.losses.abs_loss import DEFAULT_LAYER_MAP, LayerMapLoss

AXES = ("batch", "time")


def normalized_gram(x: Tensor) -> Tensor:
    """``x x^T`` over the last two dims with every row L2-normalised (zero rows stay zero)."""
    return F.normalize(x @ x.transpose(-1, -2), dim=-1)


class SimilarityPreservingLoss(LayerMapLoss):
    """Match the pattern of similarities a layer produces, not the activations themselves.

    Gram matrices compare items within one network, so student and teacher widths cancel and
    no projection is needed.

    - ``axis="batch"``: each utterance is summarised by the mean of its valid frames (b, C);
      the b x b Gram's rows are L2-normalised and the loss is ``||G_t - G_s||_F^2 / b^2``.
      Mean pooling, rather than flattening (frames, channels), makes the summary independent
      of the padding and of frame alignment between different utterances. A batch of one
      utterance carries no signal (both Grams are [[1]]).
    - ``axis="time"``: per utterance, the T x T Gram over its valid frames, rows L2-normalised,
      ``||G_t - G_s||_F^2 / T^2``, averaged over utterances. Only the first ``max_frames``
      positions are used (None: all; with end padding, the first valid frames), bounding the
      O(T^2) memory; the crop is deterministic and the same for student and teacher.
      ``max_frames`` is ignored on the batch axis.

    The pairs of ``layer_map`` are averaged (the paper sums; the weight absorbs the factor).
    """

    repr_options = ("axis", "max_frames")

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        layer_map: Sequence[Sequence[int]] = DEFAULT_LAYER_MAP,
        axis: str = "batch",
        max_frames: Optional[int] = 512,
    ) -> None:
        super().__init__(student_dim, teacher_dim, layer_map)
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be positive or None, got {max_frames}")
        self.axis = axis
        self.max_frames = max_frames

    def pair_loss(self, index: int, student: Tensor, teacher: Tensor, mask: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        term = self._batch_term(student, teacher, mask) if self.axis == "batch" else self._time_term(student, teacher, mask)
        return term, {"sp": term}

    @staticmethod
    def _batch_term(s: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        count = mask.sum(1, keepdim=True).clamp(min=1)
        diff = normalized_gram(t.sum(1) / count) - normalized_gram(s.sum(1) / count)
        return diff.pow(2).sum() / mask.shape[0] ** 2

    def _time_term(self, s: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        if self.max_frames is not None:
            s, t, mask = s[:, : self.max_frames], t[:, : self.max_frames], mask[:, : self.max_frames]
        # Padded frames are zero rows and columns in both Grams, so they add nothing to the sum.
        per_utt = (normalized_gram(t) - normalized_gram(s)).pow(2).sum((1, 2))
        return (per_utt / mask.sum(1).clamp(min=1).float() ** 2).mean()
