"""Human- and YAML-friendly description of a model's size and per-layer architecture."""
from __future__ import annotations

from typing import Any, Dict


def architecture_summary(model, cost_seconds: float = 1.0) -> Dict[str, Any]:
    """Params, MACs per second of audio, and per-layer sizes of a (dense) SpeechEncoder.

    MACs are counted for utterances of ``cost_seconds`` and divided by it: attention grows
    with the square of the length, so the per-second cost depends on it (recorded as
    ``cost_seconds``).
    """
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "params": model.num_params(),
        "macs_per_second": int(round(model.expected_macs(seconds=cost_seconds).item() / cost_seconds)),
        "cost_seconds": cost_seconds,
        "conv_channels": [spec[0] for spec in cfg.conv_layers],
        "layers": [
            {
                "heads": layer.num_heads if layer.attention else 0,
                "attention": layer.attention,
                "ffn_units": layer.ffn_dim if layer.ffn else 0,
                "ffn": layer.ffn,
            }
            for layer in cfg.layers
        ],
    }
