"""Import Hugging Face transformers HuBERT / WavLM / wav2vec 2.0 encoders.

Accepts a base model (``HubertModel``, ``WavLMModel``, ``Wav2Vec2Model``), any class that
wraps one (``*ForCTC``, ``Wav2Vec2ForPreTraining``, ...) or a saved directory
(``config.json`` + weights). Task heads, ``masked_spec_embed`` and quantizers are dropped.

Hidden states: HF's ``hidden_states[i]`` for i >= 1 equal ours for post-LN models; for
pre-LN ("stable layer norm") models ours and HF's agree on the last one (final LayerNorm
applied) and ours are the raw residual stream before it, which HF also returns for
layers 1 .. N-1. Our index 0 is HF's ``feature_projection`` output.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from espnet_plugin.models import EncoderConfig, SpeechEncoder
from espnet_plugin.importers.common import CheckpointFormatError, build_from_hf_style, uniform_layers

MODEL_TYPES = {"hubert": "hubert", "wavlm": "wavlm", "wav2vec2": "wav2vec2"}
IGNORED_KEYS = [r"^masked_spec_embed$", r"^adapter\.", r"^encoder\.pos_conv_embed\.batch_norm\."]


def is_hf_model(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return getattr(config, "model_type", None) in MODEL_TYPES and hasattr(module, "base_model_prefix")


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def config_from_hf(hf_config, source: str) -> EncoderConfig:
    if getattr(hf_config, "hidden_act", "gelu") != "gelu" or getattr(hf_config, "feat_extract_activation", "gelu") != "gelu":
        raise CheckpointFormatError(f"{source}: only GELU activations are supported")
    if getattr(hf_config, "feat_proj_layer_norm", True) is False:
        raise CheckpointFormatError(f"{source}: models without the feature-projection LayerNorm are not supported")
    if getattr(hf_config, "conv_pos_batch_norm", False) or getattr(hf_config, "add_adapter", False):
        raise CheckpointFormatError(f"{source}: positional batch norm / adapters are not supported")
    model_type = MODEL_TYPES[hf_config.model_type]
    heads = hf_config.num_attention_heads
    d = hf_config.hidden_size
    return EncoderConfig(
        model_type=model_type,
        conv_layers=[list(x) for x in zip(hf_config.conv_dim, hf_config.conv_kernel, hf_config.conv_stride)],
        extractor_mode="layer_norm" if hf_config.feat_extract_norm == "layer" else "group_norm",
        conv_bias=bool(hf_config.conv_bias),
        embed_dim=d,
        head_dim=d // heads,
        layers=uniform_layers(hf_config.num_hidden_layers, heads, hf_config.intermediate_size),
        layer_norm_first=bool(hf_config.do_stable_layer_norm),
        pos_conv_kernel=hf_config.num_conv_pos_embeddings,
        pos_conv_groups=hf_config.num_conv_pos_embedding_groups,
        layer_norm_eps=hf_config.layer_norm_eps,
        num_buckets=getattr(hf_config, "num_buckets", 320),
        max_distance=getattr(hf_config, "max_bucket_distance", 800),
        rel_pos_heads=heads if model_type == "wavlm" else 0,
    )


def from_hf_model(module: nn.Module, source: str) -> SpeechEncoder:
    base = getattr(module, module.base_model_prefix, module)
    config = config_from_hf(module.config, source)
    return build_from_hf_style(config, base.state_dict(), source, ignore=IGNORED_KEYS)


def from_hf_dir(path: Path) -> SpeechEncoder:
    from transformers import AutoModel

    try:
        module = AutoModel.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointFormatError(f"{path}: not a loadable transformers model directory ({exc})") from exc
    if not is_hf_model(module):
        raise CheckpointFormatError(
            f"{path}: transformers model type {module.config.model_type!r} is not HuBERT, WavLM or wav2vec 2.0"
        )
    model = from_hf_model(module, str(path))
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():  # HF normalises outside the model; ours does it inside
        model.config.normalize_waveform = bool(json.loads(preprocessor.read_text()).get("do_normalize", False))
    return model
