"""Pruning-aware HuBERT / WavLM / wav2vec 2.0 encoders.

``SpeechEncoder(config)`` builds a model; ``hubert_base_config()`` and friends return the
configs of the published layouts (keyword overrides change any field).
"""
from espnet_plugin.models.config import (
    ConfigError,
    EncoderConfig,
    GateConfig,
    LayerConfig,
    hubert_base_config,
    hubert_large_config,
    tiny_config,
    wav2vec2_base_config,
    wav2vec2_large_config,
    wavlm_base_config,
    wavlm_large_config,
)
from espnet_plugin.models.model import SpeechEncoder, with_gates

__all__ = [
    "ConfigError",
    "EncoderConfig",
    "GateConfig",
    "LayerConfig",
    "SpeechEncoder",
    "hubert_base_config",
    "hubert_large_config",
    "tiny_config",
    "wav2vec2_base_config",
    "wav2vec2_large_config",
    "wavlm_base_config",
    "wavlm_large_config",
    "with_gates",
]
