"""Distillation losses between student and teacher hidden-state lists, built from config specs.

    specs = [{"name": "layer_to_layer", "weight": 1.0, "conf": {"layer_map": [[0, 0], [4, 4]]}},
             {"name": "similarity_preserving", "weight": 0.5, "conf": {"axis": "time"}}]
    criterion = build_distill_loss(specs, student_dim=768, teacher_dim=768)
    loss, stats = criterion(student_hiddens, teacher_hiddens, mask)
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping, Type

from espnet_plugin.losses.abs_loss import DistillLoss
from espnet_plugin.losses.channel_wise import ChannelWiseLoss
from espnet_plugin.losses.combined import CombinedDistillLoss
from espnet_plugin.losses.generative_denoise import GenerativeDenoiseLoss
from espnet_plugin.losses.layer_to_layer import LayerToLayerLoss
from espnet_plugin.losses.masked_generative import MaskedGenerativeLoss
from espnet_plugin.losses.prediction_heads import PredictionHeadsLoss
from espnet_plugin.losses.similarity_preserving import SimilarityPreservingLoss

LOSSES: Dict[str, Type[DistillLoss]] = {
    "layer_to_layer": LayerToLayerLoss,
    "prediction_heads": PredictionHeadsLoss,
    "similarity_preserving": SimilarityPreservingLoss,
    "generative_denoise": GenerativeDenoiseLoss,
    "channel_wise": ChannelWiseLoss,
    "masked_generative": MaskedGenerativeLoss,
}

SPEC_KEYS = ("name", "weight", "conf")


def conf_keys(cls: Type[DistillLoss]) -> List[str]:
    """The options a loss accepts in its ``conf``: its constructor's keywords after the widths."""
    params = inspect.signature(cls.__init__).parameters
    return [name for name in params if name not in ("self", "student_dim", "teacher_dim")]


def build_distill_loss(specs: List[Mapping[str, Any]], student_dim: int, teacher_dim: int) -> CombinedDistillLoss:
    """A :class:`CombinedDistillLoss` from ``[{"name": ..., "weight": 1.0, "conf": {...}}, ...]``.

    ``weight`` defaults to 1 and ``conf`` to the loss's defaults. A name used twice gets the
    keys ``name``, ``name_2``, ... Unknown names, spec keys or conf keys raise ValueError
    listing what is accepted.
    """
    if not specs:
        raise ValueError(f"no distillation loss configured; accepted names: {', '.join(LOSSES)}")
    losses: Dict[str, DistillLoss] = {}
    weights: Dict[str, float] = {}
    for spec in specs:
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown or "name" not in spec:
            raise ValueError(
                f"a distillation loss spec needs 'name' and accepts only {', '.join(SPEC_KEYS)}; got {sorted(spec)}"
            )
        name = spec["name"]
        if name not in LOSSES:
            raise ValueError(f"unknown distillation loss {name!r}; accepted names: {', '.join(LOSSES)}")
        conf = dict(spec.get("conf") or {})
        accepted = conf_keys(LOSSES[name])
        unknown = sorted(set(conf) - set(accepted))
        if unknown:
            raise ValueError(f"{name}: unknown conf key(s) {', '.join(unknown)}; accepted keys: {', '.join(accepted)}")
        key, count = name, 1
        while key in losses:
            count += 1
            key = f"{name}_{count}"
        losses[key] = LOSSES[name](student_dim, teacher_dim, **conf)
        weights[key] = float(spec.get("weight", 1.0))
    return CombinedDistillLoss(losses, weights)


__all__ = [
    "LOSSES",
    "build_distill_loss",
    "ChannelWiseLoss",
    "CombinedDistillLoss",
    "DistillLoss",
    "GenerativeDenoiseLoss",
    "LayerToLayerLoss",
    "PredictionHeadsLoss",
    "SimilarityPreservingLoss",
]
