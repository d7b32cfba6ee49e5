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

from typing import Any, Dict, Mapping, Optional, Tuple

from espnet_plugin.importers.common import CheckpointFormatError, build_from_hf_style, strip_prefix
from espnet_plugin.importers.fairseq_config import (
    ARCH_DEFAULTS,
    IGNORED_KEYS,
    add_identity_projection,
    as_dict,
    encoder_config,
    fairseq_to_hf_style,
    is_flat_cfg_checkpoint,
    plain,
    read_arch,
    state_dict_of,
)
from espnet_plugin.models import SpeechEncoder

FINETUNED_PREFIX = "w2v_encoder.w2v_model."
MODEL_NAMES = {
    "hubert": "hubert",
    "hubert_ctc": "hubert",
    "hubert_seq2seq": "hubert",
    "wav2vec2": "wav2vec2",
    "wav2vec_ctc": "wav2vec2",
    "wav2vec_seq2seq": "wav2vec2",
}


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
    if not isinstance(ckpt, Mapping) or is_flat_cfg_checkpoint(ckpt):
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


__all__ = ["from_fairseq", "is_fairseq"]
