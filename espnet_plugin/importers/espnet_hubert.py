"""Import HuBERT encoders trained by ESPnet (``espnet2.bin.hubert_train``).

ESPnet's pip-installable HuBERT encoder (``encoder: torchaudio_hubert``) wraps torchaudio's
``hubert_pretrain_model``; its weights sit under ``encoder.hubert_pretrain_model.``. The
architecture comes from the experiment's ``config.yaml`` (``encoder_conf``), found beside
the checkpoint or up to two directories above it; without one it is inferred from shapes.
Accepts model files (``valid.acc.best.pth``, ``N epoch.pth``) and the trainer's
``checkpoint.pth`` (``{"model": ..., "optimizers": ...}``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from espnet_plugin.models import SpeechEncoder
from espnet_plugin.importers.common import CheckpointFormatError, load_checkpoint_file, strip_prefix
from espnet_plugin.importers.torchaudio_models import from_torchaudio_state_dict

PREFIX = "encoder.hubert_pretrain_model."
FAIRSEQ_PREFIX = "encoder.encoders."
MODEL_FILE_PREFERENCE = ("valid.acc.best.pth", "valid.loss.best.pth", "valid.acc.ave.pth", "latest.pth", "checkpoint.pth")


def _model_state(obj: Dict[str, Any]) -> Dict[str, Any]:
    return obj["model"] if isinstance(obj.get("model"), dict) and "optimizers" in obj else obj


def is_espnet_checkpoint(obj: Dict[str, Any]) -> bool:
    return any(isinstance(k, str) and k.startswith((PREFIX, FAIRSEQ_PREFIX)) for k in _model_state(obj))


def find_config(checkpoint: Path) -> Optional[Path]:
    for directory in [checkpoint.parent, *list(checkpoint.parents)[1:3]]:
        candidate = directory / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def _architecture(config_path: Optional[Path]) -> Tuple[Dict[str, Any], Optional[int]]:
    """(EncoderConfig overrides, number of heads) from the experiment's ``encoder_conf``."""
    overrides: Dict[str, Any] = {"model_type": "hubert"}
    if config_path is None:
        return overrides, None
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    if config.get("encoder") not in (None, "torchaudio_hubert"):
        raise CheckpointFormatError(
            f"{config_path}: encoder {config.get('encoder')!r} is not supported; "
            "only ESPnet's 'torchaudio_hubert' encoder can be imported without fairseq"
        )
    conf = config.get("encoder_conf") or {}
    if "encoder_layer_norm_first" in conf:
        overrides["layer_norm_first"] = bool(conf["encoder_layer_norm_first"])
    if "extractor_conv_layer_config" in conf:
        overrides["conv_layers"] = [list(c) for c in conf["extractor_conv_layer_config"]]
    return overrides, conf.get("encoder_num_heads", 12)


def from_espnet_checkpoint(obj: Dict[str, Any], path: Path, num_heads: Optional[int] = None) -> SpeechEncoder:
    state = _model_state(obj)
    if any(k.startswith(FAIRSEQ_PREFIX) for k in state):
        raise CheckpointFormatError(
            f"{path}: an ESPnet 'hubert_pretrain' (fairseq) encoder; import the fairseq checkpoint it was "
            "initialised from, or retrain with 'encoder: torchaudio_hubert'"
        )
    overrides, heads = _architecture(find_config(path))
    return from_torchaudio_state_dict(strip_prefix(state, PREFIX), str(path), num_heads or heads, **overrides)


def is_espnet_exp_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and any(path.glob("*.pth"))


def from_espnet_exp_dir(path: Path, num_heads: Optional[int] = None) -> SpeechEncoder:
    for name in MODEL_FILE_PREFERENCE:
        if (path / name).is_file():
            checkpoint = path / name
            break
    else:
        checkpoint = max(path.glob("*.pth"), key=lambda p: p.stat().st_mtime)
    obj = load_checkpoint_file(checkpoint)
    if not isinstance(obj, dict) or not is_espnet_checkpoint(obj):
        raise CheckpointFormatError(f"{checkpoint}: not an ESPnet HuBERT checkpoint")
    return from_espnet_checkpoint(obj, checkpoint, num_heads)
