"""Pruning-aware HuBERT / WavLM / wav2vec 2.0 encoders."""
from espnet_plugin.models.config import ConfigError, EncoderConfig, GateConfig, LayerConfig
from espnet_plugin.models.model import FACTORIES, SpeechEncoder, with_gates

__all__ = ["ConfigError", "EncoderConfig", "FACTORIES", "GateConfig", "LayerConfig", "SpeechEncoder", "with_gates"]
