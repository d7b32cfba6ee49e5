"""Import torchaudio ``Wav2Vec2Model`` (wav2vec 2.0, HuBERT, WavLM) and ``HuBERTPretrainModel``.

A model object carries its whole architecture. A bare state dict does not show the number
of heads (pass ``num_heads`` unless heads are 64-dim), the strides (the standard CNN is
assumed) nor post- vs pre-LN (torchaudio pairs the group-norm extractor with post-LN and
the layer-norm extractor with pre-LN; that pairing is assumed).

Hidden states: torchaudio's ``extract_features`` returns the raw output of every layer;
ours are the same, except that for pre-LN models our last one has the encoder's final
LayerNorm applied (as torchaudio's ``forward`` output does).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from espnet_plugin.models import EncoderConfig, LayerConfig, SpeechEncoder
from espnet_plugin.importers.common import (
    CheckpointFormatError,
    build_from_hf_style,
    conv_layers_from_state,
    count_layers,
    default_num_heads,
    split_in_proj,
    strip_prefix,
)

IGNORED_KEYS = [r"^aux\.", r"^mask_generator\.", r"^logit_generator\.", r"^feature_grad_mult"]
LAYER_KEY = r"^encoder\.transformer\.layers\.(\d+)\."


def is_torchaudio_model(module: nn.Module) -> bool:
    from torchaudio.models import HuBERTPretrainModel, Wav2Vec2Model

    return isinstance(module, (Wav2Vec2Model, HuBERTPretrainModel))


def is_torchaudio_state_dict(obj: Dict[str, Any]) -> bool:
    return any(k.startswith(("encoder.transformer.layers.", "wav2vec2.encoder.transformer.")) for k in obj)


def to_hf_style(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchaudio names -> HF-style names (see common.py)."""
    if any(k.startswith("wav2vec2.") for k in state):
        state = strip_prefix(state, "wav2vec2.")
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("encoder.feature_projection."):
            key = key[len("encoder."):]
        elif key.startswith("encoder.transformer."):
            key = "encoder." + key[len("encoder.transformer."):]
        out[key] = value
    for i in range(count_layers(out, r"^encoder\.layers\.(\d+)\.")):
        prefix, new_prefix = f"encoder.layers.{i}.attention.attention.", f"encoder.layers.{i}.attention."
        if f"{prefix}in_proj_weight" in out:  # WavLM wraps nn.MultiheadAttention
            split_in_proj(out, prefix, new_prefix)
            for name in ("weight", "bias"):
                out[f"{new_prefix}out_proj.{name}"] = out.pop(f"{prefix}out_proj.{name}")
    return out


def _config_from_module(model) -> EncoderConfig:
    if hasattr(model, "wav2vec2"):
        model = model.wav2vec2
    conv = model.feature_extractor.conv_layers
    transformer = model.encoder.transformer
    pos = transformer.pos_conv_embed.conv
    layers, is_wavlm, buckets, distance = [], False, 320, 800
    for layer in transformer.layers:
        att = layer.attention
        heads, head_dim = att.num_heads, att.head_dim
        if hasattr(att, "gru_rel_pos_linear"):
            is_wavlm = True
            buckets, distance = att.num_buckets, att.max_distance
        layers.append(LayerConfig(heads, layer.feed_forward.intermediate_dense.out_features))
    return EncoderConfig(
        model_type="wavlm" if is_wavlm else "wav2vec2",
        conv_layers=[[c.conv.out_channels, c.conv.kernel_size[0], c.conv.stride[0]] for c in conv],
        extractor_mode="layer_norm" if isinstance(conv[0].layer_norm, nn.LayerNorm) else "group_norm",
        conv_bias=conv[0].conv.bias is not None,
        embed_dim=transformer.layer_norm.normalized_shape[0],
        head_dim=head_dim,
        layers=layers,
        layer_norm_first=transformer.layers[0].layer_norm_first,  # the Transformer's own flag is inverted
        pos_conv_kernel=pos.kernel_size[0],
        pos_conv_groups=pos.groups,
        layer_norm_eps=transformer.layer_norm.eps,
        num_buckets=buckets,
        max_distance=distance,
        rel_pos_heads=layers[0].num_heads if is_wavlm else 0,
    )


def config_from_state(
    state: Dict[str, torch.Tensor], source: str, num_heads: Optional[int] = None, **overrides
) -> EncoderConfig:
    """Architecture from HF-style weight shapes (see the module docstring for what is assumed)."""
    conv_layers = conv_layers_from_state(state)
    n_layers = count_layers(state, r"^encoder\.layers\.(\d+)\.")
    if not conv_layers or not n_layers:
        raise CheckpointFormatError(f"{source}: no feature extractor or transformer layers in the weights")
    d = state["encoder.layer_norm.weight"].shape[0]
    is_wavlm = "encoder.layers.0.attention.rel_attn_embed.weight" in state
    heads = default_num_heads(d, num_heads, source)
    if is_wavlm:
        heads = state["encoder.layers.0.attention.rel_attn_embed.weight"].shape[1]
    layer_norm_mode = "feature_extractor.conv_layers.1.layer_norm.weight" in state
    pos_weight = state.get("encoder.pos_conv_embed.conv.parametrizations.weight.original1")
    if pos_weight is None:
        pos_weight = state["encoder.pos_conv_embed.conv.weight_v"]
    settings = dict(
        model_type="wavlm" if is_wavlm else "wav2vec2",
        conv_layers=conv_layers,
        extractor_mode="layer_norm" if layer_norm_mode else "group_norm",
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in state,
        embed_dim=d,
        head_dim=d // heads,
        layers=[
            LayerConfig(heads, state[f"encoder.layers.{i}.feed_forward.intermediate_dense.weight"].shape[0])
            for i in range(n_layers)
        ],
        layer_norm_first=layer_norm_mode,
        pos_conv_kernel=pos_weight.shape[2],
        pos_conv_groups=d // pos_weight.shape[1],
        num_buckets=state["encoder.layers.0.attention.rel_attn_embed.weight"].shape[0] if is_wavlm else 320,
        rel_pos_heads=heads if is_wavlm else 0,
    )
    settings.update(overrides)
    return EncoderConfig(**settings)


def from_torchaudio_model(module: nn.Module, source: str) -> SpeechEncoder:
    config = _config_from_module(module)
    return build_from_hf_style(config, to_hf_style(module.state_dict()), source, ignore=IGNORED_KEYS)


def from_torchaudio_state_dict(
    state: Dict[str, torch.Tensor], source: str, num_heads: Optional[int] = None, **overrides
) -> SpeechEncoder:
    hf_state = to_hf_style(state)
    config = config_from_state(hf_state, source, num_heads, **overrides)
    return build_from_hf_style(config, hf_state, source, ignore=IGNORED_KEYS)
