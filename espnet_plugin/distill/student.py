"""Build the student: a copy of the teacher (DPHuBERT), a smaller configured architecture
initialised from the teacher (DistilHuBERT-style baseline), or a saved model (stage 2)."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch

from espnet_plugin.compact import load_model
from espnet_plugin.models import ConfigError, GateConfig, LayerConfig, SpeechEncoder, with_gates

STUDENT_CONF_KEYS = ("num_layers", "num_heads", "ffn_dim", "init_from_teacher")


def smaller_config(teacher: SpeechEncoder, conf: Dict[str, Any]):
    """The teacher's config with fewer layers and/or narrower heads / FFNs (uniform)."""
    unknown = sorted(set(conf) - set(STUDENT_CONF_KEYS))
    if unknown:
        raise ConfigError(f"student_conf: unknown keys {unknown}; accepted keys are {list(STUDENT_CONF_KEYS)}")
    config = copy.deepcopy(teacher.config)
    config.gates = GateConfig()
    num_layers = conf.get("num_layers") or config.num_layers
    if num_layers > config.num_layers:
        raise ConfigError(f"student_conf: num_layers {num_layers} exceeds the teacher's {config.num_layers}")
    layers = []
    for layer in config.layers[:num_layers]:
        heads = conf.get("num_heads") or layer.num_heads
        ffn = conf.get("ffn_dim") or layer.ffn_dim
        head_ids = layer.head_ids[:heads] if config.is_wavlm else None
        layers.append(LayerConfig(heads, ffn, head_ids=head_ids))
    config.layers = layers
    config.validate()
    return config


@torch.no_grad()
def init_from(student: SpeechEncoder, teacher: SpeechEncoder) -> None:
    """Copy every teacher weight into the student, slicing leading rows / columns where smaller."""
    source = teacher.state_dict()
    for name, target in student.state_dict().items():
        if name not in source:
            continue
        value = source[name]
        if value.dim() != target.dim():
            continue
        index = tuple(slice(0, n) for n in target.shape)
        if all(s >= t for s, t in zip(value.shape, target.shape)):
            target.copy_(value[index])


def build_student(
    teacher: SpeechEncoder,
    gates: GateConfig,
    student_path: Optional[str] = None,
    student_conf: Optional[Dict[str, Any]] = None,
) -> SpeechEncoder:
    if student_path:
        student = load_model(student_path)
    elif student_conf:
        student = SpeechEncoder(smaller_config(teacher, student_conf))
        if student_conf.get("init_from_teacher", True):
            init_from(student, teacher)
    else:
        student = copy.deepcopy(teacher)
    student.train().requires_grad_(True)  # a copy of a frozen teacher would copy its frozen weights
    return with_gates(student, gates).train() if gates.any else student
