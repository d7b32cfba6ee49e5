"""Import fairseq HuBERT and wav2vec 2.0 checkpoints.

Accepted layouts (all ``torch.save`` dicts):

* fairseq >= 0.10: ``{"cfg": {"model": {...}, "task": {...}, ...}, "model": state_dict, ...}``;
* older fairseq: ``{"args": argparse.Namespace, "model": state_dict, ...}``;
* s3prl's converted copies: ``{"model_cfg": {...}, "task_cfg": {...}, "model_weight": state_dict}``;
* fine-tuned models (``hubert_ctc`` / ``wav2vec_ctc``): the encoder sits under
  ``w2v_encoder.w2v_model.`` and its architecture in the model cfg's ``w2v_args``; the
  output head (``w2v_encoder.proj``) and any decoder are dropped.

The architecture comes from the model cfg. The four sizes (``encoder_layers``,
``encoder_embed_dim``, ``encoder_ffn_embed_dim``, ``encoder_attention_heads``) are
required; the other keys fall back to fairseq's own dataclass defaults, as fairseq does.
Only what our encoder computes exactly is accepted: the plain transformer layer type,
GELU, a single-conv positional embedding.

Weights that only pre-training uses are dropped: ``mask_emb``, ``label_embs_concat``,
``final_proj``, ``target_glu``, the quantizers and ``project_q`` / ``project_inp``. When
the CNN width equals the model width fairseq has no ``post_extract_proj``; an identity
projection is inserted so the model computes the same function.

Hidden states, checked against s3prl's copy of the fairseq code: fairseq's encoder layer
``i`` returns the residual stream after that layer; that is our hidden state ``i`` (1-based).
For pre-LN models (``layer_norm_first``) fairseq applies ``encoder.layer_norm`` only to the
encoder's final output, and so does our last hidden state. Our hidden state 0 is the input
of ``model.encoder`` (the projected features) with padded frames zeroed, i.e. *before* the
positional convolution; s3prl's upstream expert instead reports the input of layer 0 there
(after the positional convolution and, for post-LN models, ``encoder.layer_norm``).

Frame padding: fairseq wav2vec 2.0 derives frame lengths from the conv formula, as we do;
fairseq HuBERT marks a frame padded only when all of its samples are padding, which can
count one frame more than the conv formula for a padded utterance.

The task cfg's ``normalize`` (zero mean, unit variance per utterance, set for the Large
models) becomes ``EncoderConfig.normalize_waveform``, applied inside the model.
"""
from __future__ import annotations

import argparse
import ast
import enum
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from espnet_plugin.models import EncoderConfig, SpeechEncoder
from espnet_plugin.utils.importers.common import (
    CheckpointFormatError,
    build_from_hf_style,
    rename_keys,
    strip_prefix,
    uniform_layers,
)

FINETUNED_PREFIX = "w2v_encoder.w2v_model."
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
MODEL_NAMES = {
    "hubert": "hubert",
    "hubert_ctc": "hubert",
    "hubert_seq2seq": "hubert",
    "wav2vec2": "wav2vec2",
    "wav2vec_ctc": "wav2vec2",
    "wav2vec_seq2seq": "wav2vec2",
}
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


# ---------------------------------------------------------------- detection
def _top_cfg(ckpt: Mapping[str, Any]) -> Tuple[Optional[Dict[str, Any]], Optional[Mapping[str, Any]]]:
    """(model cfg, state dict) of a checkpoint in any accepted layout; Nones when not one."""
    if "model_weight" in ckpt:  # s3prl's converted copy
        return as_dict(ckpt.get("model_cfg")), state_dict_of(ckpt.get("model_weight"))
    state = state_dict_of(ckpt.get("model"))
    cfg = as_dict(ckpt.get("cfg"))
    if cfg is not None and as_dict(cfg.get("model")) is not None:
        return as_dict(cfg["model"]), state
    return as_dict(ckpt.get("args")), state


def is_fairseq(ckpt: Any) -> bool:
    from espnet_plugin.utils.importers.wavlm_official import is_wavlm_official

    if not isinstance(ckpt, Mapping) or is_wavlm_official(ckpt):
        return False
    cfg, state = _top_cfg(ckpt)
    return cfg is not None and state is not None


def _pretraining_cfg(cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
    """A fine-tuned model's cfg -> the cfg of the encoder it wraps (its ``w2v_args``)."""
    inner = as_dict(cfg.get("w2v_args"))
    if inner is None:
        raise CheckpointFormatError(
            f"{source}: a fine-tuned fairseq checkpoint without 'w2v_args'; its encoder architecture is "
            f"unknown (w2v_path: {cfg.get('w2v_path')!r}); import the pre-trained checkpoint instead"
        )
    nested = as_dict(inner.get("model"))
    return nested if nested is not None else inner


def _model_name(cfg: Mapping[str, Any]) -> Optional[str]:
    name = cfg.get("_name") or cfg.get("arch")
    return None if name is None else str(plain(name))


def model_type_of(cfg: Mapping[str, Any], state: Mapping[str, Any], source: str) -> str:
    name = _model_name(cfg)
    if name is not None:
        if name not in MODEL_NAMES:
            raise CheckpointFormatError(
                f"{source}: fairseq model {name!r} is not supported (supported: {sorted(MODEL_NAMES)})"
            )
        return MODEL_NAMES[name]
    if any(k.startswith(("quantizer.", "project_q.")) for k in state):
        return "wav2vec2"
    return "hubert"


def task_normalize(ckpt: Mapping[str, Any]) -> bool:
    """The task's ``normalize`` flag (``cfg.task``, old ``args``, or a fine-tuned model's ``w2v_args``)."""
    cfg = as_dict(ckpt.get("cfg")) or {}
    task = as_dict(cfg.get("task")) or as_dict(ckpt.get("args")) or {}
    if "normalize" in task:
        return bool(task["normalize"])
    inner = as_dict((as_dict(cfg.get("model")) or {}).get("w2v_args")) or {}
    return bool((as_dict(inner.get("task")) or {}).get("normalize", False))


def from_fairseq(ckpt: Mapping[str, Any], source: str) -> SpeechEncoder:
    cfg, state = _top_cfg(ckpt)
    if cfg is None or state is None:
        raise CheckpointFormatError(f"{source}: not a fairseq checkpoint (no model cfg and state dict)")
    if cfg.get("w2v_args") is not None or any(k.startswith(FINETUNED_PREFIX) for k in state):
        inner = _pretraining_cfg(cfg, source)
        state = strip_prefix(dict(state), FINETUNED_PREFIX)
        model_type = model_type_of(cfg if _model_name(cfg) else inner, state, source)
        cfg = inner
    else:
        model_type = model_type_of(cfg, state, source)
    normalize = task_normalize(ckpt)
    config = encoder_config(read_arch(cfg, source, ARCH_DEFAULTS), model_type, source, normalize_waveform=normalize)
    hf_state = fairseq_to_hf_style(state)
    add_identity_projection(hf_state, config)
    return build_from_hf_style(config, hf_state, source, ignore=IGNORED_KEYS)


__all__ = ["from_fairseq", "is_fairseq", "parse_conv_layers", "fairseq_to_hf_style"]
