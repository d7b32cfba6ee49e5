"""Checkpoint importers: detect the format of a checkpoint and build a ``SpeechEncoder``.

``import_model(source)`` accepts a path (file or directory) or an in-memory model and
returns ``(model, provenance)``; anything unrecognised raises ``CheckpointFormatError``
naming the source and listing the accepted formats.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from torch import nn

from espnet_plugin.models import SpeechEncoder
from espnet_plugin.importers.common import (
    CheckpointFormatError,
    formats_help,
    load_checkpoint_file,
)

Source = Union[str, Path, nn.Module]


def _from_module(module: nn.Module, name: str) -> Tuple[SpeechEncoder, str]:
    from espnet_plugin.importers import huggingface, torchaudio_models

    if isinstance(module, SpeechEncoder):
        return module, "espnet-compress"
    if huggingface.is_hf_model(module):
        return huggingface.from_hf_model(module, name), "huggingface"
    if torchaudio_models.is_torchaudio_model(module):
        return torchaudio_models.from_torchaudio_model(module, name), "torchaudio"
    raise CheckpointFormatError(f"{name}: a {type(module).__name__} is not an importable model; {formats_help()}")


def _from_checkpoint(obj: Any, path: Path, num_heads: Optional[int]) -> Tuple[SpeechEncoder, str]:
    from espnet_plugin.importers import espnet_hubert, fairseq, torchaudio_models, wavlm_official

    if isinstance(obj, nn.Module):
        return _from_module(obj, str(path))
    if isinstance(obj, dict):
        if wavlm_official.is_wavlm_official(obj):
            return wavlm_official.from_wavlm_official(obj, str(path)), "wavlm-official"
        if fairseq.is_fairseq(obj):
            return fairseq.from_fairseq(obj, str(path)), "fairseq"
        if espnet_hubert.is_espnet_checkpoint(obj):
            return espnet_hubert.from_espnet_checkpoint(obj, path, num_heads), "espnet"
        if torchaudio_models.is_torchaudio_state_dict(obj):
            return torchaudio_models.from_torchaudio_state_dict(obj, str(path), num_heads), "torchaudio"
    raise CheckpointFormatError(f"{path}: unrecognised checkpoint content; {formats_help()}")


def import_model(source: Source, num_heads: Optional[int] = None) -> Tuple[SpeechEncoder, Dict[str, Any]]:
    """Build a plain (gate-free) SpeechEncoder from any supported source.

    ``num_heads`` is needed only for bare state dicts whose width is not a multiple of 64.
    A compact directory may be given by its ``config.yaml`` or ``model.safetensors``; its
    recorded provenance is kept.
    """
    from espnet_plugin.compact import CONFIG_NAME, WEIGHTS_NAME, is_model_dir, load_model
    from espnet_plugin.importers import espnet_hubert, huggingface

    if isinstance(source, nn.Module):
        model, kind = _from_module(source, type(source).__name__)
        return model, {"source": type(source).__name__, "source_format": kind}
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointFormatError(f"{path}: no such file or directory")
    if path.is_file() and path.name in (CONFIG_NAME, WEIGHTS_NAME) and is_model_dir(path.parent):
        path = path.parent  # DIR/config.yaml or DIR/model.safetensors stands for DIR
    provenance: Dict[str, Any] = {}
    if path.is_dir():
        if is_model_dir(path):
            model, kind = load_model(path), "espnet-compress"
            provenance.update(model.provenance)
        elif huggingface.is_hf_dir(path):
            model, kind = huggingface.from_hf_dir(path), "huggingface"
        elif espnet_hubert.is_espnet_exp_dir(path):
            model, kind = espnet_hubert.from_espnet_exp_dir(path, num_heads), "espnet"
        else:
            raise CheckpointFormatError(f"{path}: a directory with no recognised model; {formats_help()}")
    else:
        model, kind = _from_checkpoint(load_checkpoint_file(path), path, num_heads)
    provenance.update(source=str(path.resolve()), source_format=kind)
    return model, provenance


__all__ = ["CheckpointFormatError", "import_model"]
