"""Import official WavLM checkpoints (microsoft/unilm): ``{"cfg": {...}, "model": state_dict}``.

The cfg is flat (the keys of ``WavLMConfig``: ``encoder_layers``, ``encoder_embed_dim``,
``relative_position_embedding``, ``num_buckets``, ``max_distance``, ``gru_rel_pos``, ...);
that, and not a nested ``cfg["model"]``, tells it from a fairseq checkpoint. Keys absent
from the cfg take ``WavLMConfig``'s defaults, as the official loader does; the four sizes
are required. The weight names are fairseq's plus, in the attention modules,
``relative_attention_bias`` (layer 0 only: the bias is computed once and shared),
``grep_linear`` and ``grep_a`` (the gated relative-position bias).

Variants without the gate or without relative positions are mapped onto the same
computation: ``gru_rel_pos: false`` gets a constant gate of exactly 1 (zero gate weights
and ``gru_rel_pos_const = -2``: 0.5 * (0.5 * -2 - 1) + 2 = 1); ``relative_position_embedding:
false`` is a plain post/pre-LN transformer and is imported as such (``model_type``
"hubert"). A missing key-projection bias (``rescale_init``) is zero; it would not change the
attention weights anyway.

Hidden states: as for fairseq (see ``fairseq.py``): our hidden state i is the output of the
official encoder's layer i, the last one after ``encoder.layer_norm`` for pre-LN (Large)
models, and hidden state 0 the projected features before the positional convolution. Frame
padding follows the HuBERT rule there (a frame is padded only when all its samples are).
The cfg's ``normalize`` (input waveform normalisation, WavLM Large) becomes
``EncoderConfig.normalize_waveform``.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping

import torch

from espnet_plugin.importers.common import CheckpointFormatError, build_from_hf_style
from espnet_plugin.importers.fairseq_config import (
    ARCH_DEFAULTS,
    IGNORED_KEYS,
    add_identity_projection,
    as_dict,
    encoder_config,
    fairseq_to_hf_style,
    is_flat_cfg_checkpoint,
    read_arch,
    state_dict_of,
)
from espnet_plugin.models import SpeechEncoder

# WavLMConfig's defaults for the keys that shape the encoder
WAVLM_DEFAULTS: Dict[str, Any] = {
    **ARCH_DEFAULTS,
    "relative_position_embedding": False,
    "num_buckets": 320,
    "max_distance": 1280,
    "gru_rel_pos": False,
}
GATE_WEIGHT = r"^encoder\.layers\.\d+\.attention\.gru_rel_pos_"


def is_wavlm_official(ckpt: Any) -> bool:
    """A flat cfg with WavLM (or fairseq architecture) keys beside a ``model`` state dict."""
    return is_flat_cfg_checkpoint(ckpt)


def _neutral_gates(state: Dict[str, torch.Tensor], num_layers: int, heads: int, head_dim: int) -> None:
    """Gate parameters whose gate is exactly 1: the ungated relative-position bias."""
    for i in range(num_layers):
        prefix = f"encoder.layers.{i}.attention."
        state[f"{prefix}gru_rel_pos_linear.weight"] = torch.zeros(8, head_dim)
        state[f"{prefix}gru_rel_pos_linear.bias"] = torch.zeros(8)
        state[f"{prefix}gru_rel_pos_const"] = torch.full((1, heads, 1, 1), -2.0)


def _fill_k_bias(state: Dict[str, torch.Tensor], num_layers: int) -> None:
    """``rescale_init`` models have no key bias; ours always has one (zero changes nothing)."""
    for i in range(num_layers):
        weight = state.get(f"encoder.layers.{i}.attention.k_proj.weight")
        bias_key = f"encoder.layers.{i}.attention.k_proj.bias"
        if weight is not None and bias_key not in state:
            state[bias_key] = weight.new_zeros(weight.shape[0])


def from_wavlm_official(ckpt: Mapping[str, Any], source: str) -> SpeechEncoder:
    if not is_wavlm_official(ckpt):
        raise CheckpointFormatError(f"{source}: not an official WavLM checkpoint ({{'cfg': flat dict, 'model': ...}})")
    cfg, state = as_dict(ckpt["cfg"]), state_dict_of(ckpt["model"])
    arch = read_arch(cfg, source, WAVLM_DEFAULTS)
    relative = bool(arch["relative_position_embedding"])
    heads = int(arch["encoder_attention_heads"])
    extra = dict(rel_pos_heads=heads, num_buckets=int(arch["num_buckets"]), max_distance=int(arch["max_distance"]))
    config = encoder_config(
        arch,
        "wavlm" if relative else "hubert",
        source,
        normalize_waveform=bool(cfg.get("normalize", False)),
        **(extra if relative else {}),
    )
    hf_state = fairseq_to_hf_style(state)
    add_identity_projection(hf_state, config)
    _fill_k_bias(hf_state, config.num_layers)
    if relative and not arch["gru_rel_pos"]:
        _neutral_gates(hf_state, config.num_layers, heads, config.head_dim)
    elif not relative:  # the gate only scales the relative bias: unused
        hf_state = {k: v for k, v in hf_state.items() if not re.match(GATE_WEIGHT, k)}
    return build_from_hf_style(config, hf_state, source, ignore=IGNORED_KEYS)


__all__ = ["from_wavlm_official", "is_wavlm_official"]
