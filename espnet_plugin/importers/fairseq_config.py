"""Config and weight-name helpers shared by the fairseq and the official WavLM importers.

Both formats describe the encoder with fairseq's architecture keys and name weights the
fairseq way; this module reads those keys (with fairseq's defaults), builds the
:class:`EncoderConfig`, renames the weights to the HF-style names of ``common.py`` and
tells the two checkpoint layouts apart (a WavLM cfg is flat, a fairseq cfg nests ``model``).
"""
from __future__ import annotations

import argparse
import ast
import enum
from typing import Any, Dict, List, Mapping, Optional

import torch

from espnet_plugin.importers.common import CheckpointFormatError, rename_keys, uniform_layers
from espnet_plugin.models import EncoderConfig

DEFAULT_CONV_FEATURE_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
REQUIRED_KEYS = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads")
# fairseq's dataclass defaults for the architecture keys that may be absent
ARCH_DEFAULTS: Dict[str, Any] = {
    "extractor_mode": "default",
    "conv_feature_layers": DEFAULT_CONV_FEATURE_LAYERS,
    "conv_bias": False,
    "layer_norm_first": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "activation_fn": "gelu",
    "layer_type": "transformer",
    "pos_conv_depth": 1,
}
EXTRACTOR_MODES = {"default": "group_norm", "layer_norm": "layer_norm"}
IGNORED_KEYS = [
    r"^mask_emb$",
    r"^label_embs_concat$",
    r"^final_proj\.",
    r"^target_glu\.",
    r"^quantizer\.",
    r"^input_quantizer\.",
    r"^project_q\.",
    r"^project_inp\.",
]

# fairseq module names -> HF-style names (common.py); WavLM's official code shares them.
_FAIRSEQ_TO_HF = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.", r"feature_extractor.conv_layers.\1.layer_norm."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.", r"feature_extractor.conv_layers.\1.layer_norm."),
    (r"^layer_norm\.", "feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "feature_projection.projection."),
    (r"^encoder\.pos_conv\.0\.", "encoder.pos_conv_embed.conv."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.layers.\1.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.", r"encoder.layers.\1.attention.rel_attn_embed."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_linear\.", r"encoder.layers.\1.attention.gru_rel_pos_linear."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_a$", r"encoder.layers.\1.attention.gru_rel_pos_const"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.", r"encoder.layers.\1.attention."),
    (r"^encoder\.layers\.(\d+)\.fc1\.", r"encoder.layers.\1.feed_forward.intermediate_dense."),
    (r"^encoder\.layers\.(\d+)\.fc2\.", r"encoder.layers.\1.feed_forward.output_dense."),
]


# ------------------------------------------------------------------ plain values
def as_dict(obj: Any) -> Optional[Dict[str, Any]]:
    """A cfg node (dict, omegaconf DictConfig, argparse.Namespace) as a dict; None otherwise."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    return None


def plain(value: Any) -> Any:
    """fairseq may store ChoiceEnum members where a string is meant."""
    return value.value if isinstance(value, enum.Enum) else value


def state_dict_of(obj: Any) -> Optional[Mapping[str, Any]]:
    if isinstance(obj, Mapping) and any(torch.is_tensor(v) for v in obj.values()):
        return obj
    return None


# ------------------------------------------------------------ conv layer spec
_MAX_CONV_LAYERS = 256


def _literal(node: ast.AST) -> Any:
    """Evaluate the tiny language of ``conv_feature_layers``: int/list/tuple literals, + and *."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return _bounded(left + right)
        if isinstance(node.op, ast.Mult):
            times, seq = (left, right) if isinstance(left, int) else (right, left)
            if isinstance(times, int) and isinstance(seq, list) and 0 <= times <= _MAX_CONV_LAYERS:
                return _bounded(seq * times)
    raise ValueError(f"unsupported expression {ast.dump(node)[:80]}")


def _bounded(seq: List[Any]) -> List[Any]:
    """No list longer than any real CNN: a malicious spec cannot exhaust memory."""
    if len(seq) > _MAX_CONV_LAYERS:
        raise ValueError(f"more than {_MAX_CONV_LAYERS} entries")
    return seq


def parse_conv_layers(spec: Any, source: str) -> List[List[int]]:
    """``"[(512,10,5)] + [(512,3,2)] * 4"`` -> [[512, 10, 5], ...], without eval()."""
    try:
        value = _literal(ast.parse(spec, mode="eval").body) if isinstance(spec, str) else spec
        layers = [[int(x) for x in layer] for layer in value]
    except (SyntaxError, ValueError, TypeError, RecursionError) as exc:
        raise CheckpointFormatError(f"{source}: cannot parse conv_feature_layers {spec!r} ({exc})") from exc
    if not layers or len(layers) > _MAX_CONV_LAYERS or any(len(layer) != 3 for layer in layers):
        raise CheckpointFormatError(f"{source}: conv_feature_layers {spec!r} is not a list of (dim, kernel, stride)")
    return layers


# --------------------------------------------------------------- architecture
def read_arch(cfg: Mapping[str, Any], source: str, defaults: Mapping[str, Any]) -> Dict[str, Any]:
    """The architecture keys of a model cfg, defaults filled in; missing sizes are an error."""
    missing = [k for k in REQUIRED_KEYS if cfg.get(k) is None]
    if missing:
        raise CheckpointFormatError(f"{source}: the model cfg lacks the architecture keys {missing}")
    arch = {k: plain(cfg[k]) for k in REQUIRED_KEYS}
    for key, default in defaults.items():
        value = cfg.get(key)
        arch[key] = default if value is None else plain(value)
    return arch


def check_supported(arch: Mapping[str, Any], source: str) -> None:
    """Reject variants our encoder does not compute (it would load but give other outputs)."""
    problems = []
    if arch["layer_type"] != "transformer":
        problems.append(f"layer_type {arch['layer_type']!r}")
    if arch["activation_fn"] != "gelu":
        problems.append(f"activation_fn {arch['activation_fn']!r}")
    if int(arch["pos_conv_depth"]) != 1:
        problems.append(f"pos_conv_depth {arch['pos_conv_depth']}")
    if arch["extractor_mode"] not in EXTRACTOR_MODES:
        problems.append(f"extractor_mode {arch['extractor_mode']!r}")
    heads, dim = int(arch["encoder_attention_heads"]), int(arch["encoder_embed_dim"])
    if heads < 1 or dim % heads:
        problems.append(f"{heads} heads for width {dim}")
    if problems:
        raise CheckpointFormatError(f"{source}: unsupported architecture: {', '.join(problems)}")


def encoder_config(arch: Mapping[str, Any], model_type: str, source: str, **extra: Any) -> EncoderConfig:
    check_supported(arch, source)
    dim, heads = int(arch["encoder_embed_dim"]), int(arch["encoder_attention_heads"])
    return EncoderConfig(
        model_type=model_type,
        conv_layers=parse_conv_layers(arch["conv_feature_layers"], source),
        extractor_mode=EXTRACTOR_MODES[arch["extractor_mode"]],
        conv_bias=bool(arch["conv_bias"]),
        embed_dim=dim,
        head_dim=dim // heads,
        layers=uniform_layers(int(arch["encoder_layers"]), heads, int(arch["encoder_ffn_embed_dim"])),
        layer_norm_first=bool(arch["layer_norm_first"]),
        pos_conv_kernel=int(arch["conv_pos"]),
        pos_conv_groups=int(arch["conv_pos_groups"]),
        **extra,
    )


# ---------------------------------------------------------------- weights
def fairseq_to_hf_style(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """fairseq (and official WavLM) names -> HF-style names; unknown names are kept."""
    return rename_keys(state, _FAIRSEQ_TO_HF)


def add_identity_projection(state: Dict[str, torch.Tensor], config: EncoderConfig) -> None:
    """fairseq omits post_extract_proj when the CNN width equals the model width."""
    if "feature_projection.projection.weight" in state or config.conv_layers[-1][0] != config.embed_dim:
        return
    dtype = next(iter(state.values())).dtype
    state["feature_projection.projection.weight"] = torch.eye(config.embed_dim, dtype=dtype)
    state["feature_projection.projection.bias"] = torch.zeros(config.embed_dim, dtype=dtype)


# ---------------------------------------------------------------- layouts
WAVLM_CFG_KEYS = ("relative_position_embedding", "gru_rel_pos", "num_buckets", "max_distance")
WAVLM_WEIGHT_NAMES = (".self_attn.relative_attention_bias.", ".self_attn.grep_linear.", ".self_attn.grep_a")


def is_flat_cfg_checkpoint(ckpt: Any) -> bool:
    """The official WavLM layout: a flat cfg with WavLM (or fairseq architecture) keys beside a
    ``model`` state dict (fairseq nests its model cfg under ``cfg["model"]``)."""
    if not isinstance(ckpt, Mapping):
        return False
    cfg, state = as_dict(ckpt.get("cfg")), state_dict_of(ckpt.get("model"))
    if cfg is None or state is None or as_dict(cfg.get("model")) is not None:
        return False
    if any(k in cfg for k in WAVLM_CFG_KEYS + REQUIRED_KEYS):
        return True
    return any(name in key for key in state for name in WAVLM_WEIGHT_NAMES)
