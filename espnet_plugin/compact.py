"""The compact model format: one directory, readable with torch, safetensors and this package.

    DIR/config.yaml        format tag, architecture (per-layer sizes), provenance
    DIR/model.safetensors  the weights (gate-free dense model)

``provenance`` records the source checkpoint, the sparsity relative to the source and the
date, plus anything the caller adds (e.g. the training config).
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import yaml

from espnet_plugin.utils.atomic import atomic_write

FORMAT_NAME, FORMAT_VERSION = "espnet-compress-model", 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"
TOP_LEVEL_KEYS = {"format", "architecture", "provenance"}

PathLike = Union[str, os.PathLike]


class ModelFormatError(ValueError):
    """A directory or file that is not a readable compact model."""


def save_model(model, output_dir: PathLike, provenance: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model`` (a gate-free SpeechEncoder) to ``output_dir``; files are replaced atomically."""
    from safetensors.torch import save_file

    if model.config.gates.any:
        raise ValueError("save_model writes dense models: prune the gated model first (espnet_plugin.pruning)")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    info["params"] = model.num_params()
    info.update(provenance or {})
    document = {"format": FORMAT, "architecture": model.config.to_dict(), "provenance": info}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    atomic_write(
        out / CONFIG_NAME,
        lambda tmp: Path(tmp).write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8"),
    )
    return out


def read_config(model_dir: PathLike) -> Dict[str, Any]:
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise ModelFormatError(f"{model_dir}: not a compact model directory (no {CONFIG_NAME})")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelFormatError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        name, _, version = str(found).partition("/")
        if name == FORMAT_NAME and version.isdigit() and int(version) > FORMAT_VERSION:
            raise ModelFormatError(
                f"{path}: written by a newer espnet-compress (format version {version}; this version reads "
                f"{FORMAT_VERSION}): upgrade espnet-compress to load it"
            )
        raise ModelFormatError(f"{path}: missing or unknown 'format' {found!r} (expected {FORMAT!r})")
    unknown = sorted(set(document) - TOP_LEVEL_KEYS)
    if unknown:
        raise ModelFormatError(f"{path}: unknown keys {unknown}; accepted keys are {sorted(TOP_LEVEL_KEYS)}")
    return document


def is_model_dir(path: PathLike) -> bool:
    return (Path(path) / CONFIG_NAME).is_file() and (Path(path) / WEIGHTS_NAME).is_file()


def load_model(model_dir: PathLike, device: str = "cpu"):
    """Load a compact model directory; returns a SpeechEncoder in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from espnet_plugin.models import ConfigError, EncoderConfig, SpeechEncoder
    from espnet_plugin.models.model import load_weights_strictly

    document = read_config(model_dir)
    config_path = Path(model_dir) / CONFIG_NAME
    try:
        config = EncoderConfig.from_dict(document["architecture"], where=f"{config_path}: architecture")
    except ConfigError as exc:
        raise ModelFormatError(str(exc) if str(config_path) in str(exc) else f"{config_path}: {exc}") from exc
    weights = Path(model_dir) / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelFormatError(f"{model_dir}: no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"{weights}: unreadable weights ({exc}); the file may be truncated") from exc
    model = SpeechEncoder(config)
    load_weights_strictly(model, state, f"{weights} (architecture of {config_path})", ModelFormatError)
    model.provenance = document.get("provenance") or {}
    return model.to(device).eval()
