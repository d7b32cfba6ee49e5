"""Architecture description of a (possibly pruned) HuBERT / WavLM / wav2vec 2.0 encoder.

The config is heterogeneous per layer so that a pruned model is described exactly:
conv channels per conv layer, heads per transformer layer, FFN units per layer, and
whether each attention / FFN block exists at all.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

MODEL_TYPES = ("hubert", "wav2vec2", "wavlm")
EXTRACTOR_MODES = ("group_norm", "layer_norm")

# (out_channels, kernel, stride) of the standard 7-layer waveform CNN.
DEFAULT_CONV_LAYERS: List[List[int]] = [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2


class ConfigError(ValueError):
    """A config that cannot describe a model (unknown keys, inconsistent sizes)."""


def _from_dict(cls, data: Dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; accepted keys are {sorted(known)}")
    return cls(**data)


@dataclass
class GateConfig:
    """Which structures carry hard-concrete gates (docs/pruning.md)."""

    conv_channels: bool = False
    attention_heads: bool = False
    attention_blocks: bool = False
    ffn_units: bool = False
    ffn_blocks: bool = False
    # initial drop rates m: log_alpha ~ N(log((1 - m) / m), 0.01)
    init_drop_rate: float = 0.01
    ffn_units_init_drop_rate: float = 0.5

    @property
    def any(self) -> bool:
        return any(
            (self.conv_channels, self.attention_heads, self.attention_blocks, self.ffn_units, self.ffn_blocks)
        )

    @classmethod
    def all_on(cls) -> "GateConfig":
        return cls(True, True, True, True, True)


@dataclass
class LayerConfig:
    """One transformer layer.

    ``num_heads == 0`` with ``attention`` true keeps only the attention output bias (a
    constant added to the residual); ``attention`` false removes the block. Same for FFN.
    ``head_ids`` (WavLM only) are the original head indices of the kept heads: they select
    the relative-position bias column and the input chunk of the gated position bias.
    """

    num_heads: int
    ffn_dim: int
    attention: bool = True
    ffn: bool = True
    head_ids: Optional[List[int]] = None


@dataclass
class EncoderConfig:
    model_type: str = "hubert"
    conv_layers: List[List[int]] = field(default_factory=lambda: [list(c) for c in DEFAULT_CONV_LAYERS])
    extractor_mode: str = "group_norm"
    conv_bias: bool = False
    embed_dim: int = 768
    head_dim: int = 64
    layers: List[LayerConfig] = field(default_factory=lambda: [LayerConfig(12, 3072) for _ in range(12)])
    layer_norm_first: bool = False
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    layer_norm_eps: float = 1e-5
    # zero-mean unit-variance per utterance before the CNN (fairseq task ``normalize``;
    # HuBERT Large, wav2vec 2.0 LV-60k and WavLM Large were trained with it)
    normalize_waveform: bool = False
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    feature_projection_dropout: float = 0.0
    # WavLM relative position bias: embedding of shape (num_buckets, rel_pos_heads);
    # the gated bias reads the layer input in chunks of embed_dim // rel_pos_heads.
    num_buckets: int = 320
    max_distance: int = 800
    rel_pos_heads: int = 0
    gates: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        self.layers = [
            layer if isinstance(layer, LayerConfig) else _from_dict(LayerConfig, layer, f"layers[{i}]")
            for i, layer in enumerate(self.layers)
        ]
        if not isinstance(self.gates, GateConfig):
            self.gates = _from_dict(GateConfig, self.gates, "gates")
        self.conv_layers = [list(map(int, c)) for c in self.conv_layers]
        self.validate()

    # ------------------------------------------------------------------ helpers
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_wavlm(self) -> bool:
        return self.model_type == "wavlm"

    @property
    def rel_pos_chunk(self) -> int:
        return self.embed_dim // self.rel_pos_heads

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.extractor_mode not in EXTRACTOR_MODES:
            raise ConfigError(f"extractor_mode must be one of {EXTRACTOR_MODES}, got {self.extractor_mode!r}")
        if not self.conv_layers or any(len(c) != 3 or min(c[1:]) < 1 or c[0] < 1 for c in self.conv_layers):
            raise ConfigError("conv_layers must be a non-empty list of [channels >= 1, kernel >= 1, stride >= 1]")
        if self.embed_dim % self.pos_conv_groups:
            raise ConfigError("embed_dim must be divisible by pos_conv_groups")
        if self.is_wavlm:
            if self.rel_pos_heads < 1 or self.embed_dim % self.rel_pos_heads:
                raise ConfigError("WavLM needs rel_pos_heads >= 1 dividing embed_dim")
            for i, layer in enumerate(self.layers):
                if layer.head_ids is None:
                    layer.head_ids = list(range(layer.num_heads))
                if len(layer.head_ids) != layer.num_heads or any(
                    not 0 <= h < self.rel_pos_heads for h in layer.head_ids
                ):
                    raise ConfigError(f"layers[{i}].head_ids must list {layer.num_heads} ids below rel_pos_heads")
        for i, layer in enumerate(self.layers):
            if layer.num_heads < 0 or layer.ffn_dim < 0:
                raise ConfigError(f"layers[{i}]: num_heads and ffn_dim must be >= 0")

    # ------------------------------------------------------------- conversion
    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        if not self.is_wavlm:
            for layer in data["layers"]:
                layer.pop("head_ids")
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "config") -> "EncoderConfig":
        try:
            return _from_dict(cls, dict(data), where)
        except TypeError as exc:  # pragma: no cover - dataclass signature errors
            raise ConfigError(f"{where}: {exc}") from exc


# ------------------------------------------------- configs of the published layouts
def _config(
    model_type: str,
    large: bool,
    num_layers: Optional[int] = None,
    **overrides,
) -> EncoderConfig:
    d, heads, ffn, n = (1024, 16, 4096, 24) if large else (768, 12, 3072, 12)
    n = num_layers or n
    base = dict(
        model_type=model_type,
        extractor_mode="layer_norm" if large else "group_norm",
        embed_dim=d,
        layer_norm_first=large,
        layers=[LayerConfig(heads, ffn) for _ in range(n)],
        rel_pos_heads=heads if model_type == "wavlm" else 0,
    )
    base.update(overrides)
    return EncoderConfig(**base)


def hubert_base_config(**overrides) -> EncoderConfig:
    """HuBERT Base's layout (build the model with ``SpeechEncoder(hubert_base_config())``)."""
    return _config("hubert", large=False, **overrides)


def hubert_large_config(**overrides) -> EncoderConfig:
    return _config("hubert", large=True, **overrides)


def wav2vec2_base_config(**overrides) -> EncoderConfig:
    return _config("wav2vec2", large=False, **overrides)


def wav2vec2_large_config(**overrides) -> EncoderConfig:
    """wav2vec 2.0 Large (LV-60k layout: layer-norm extractor with conv bias, pre-LN)."""
    overrides.setdefault("conv_bias", True)
    return _config("wav2vec2", large=True, **overrides)


def wavlm_base_config(**overrides) -> EncoderConfig:
    return _config("wavlm", large=False, **overrides)


def wavlm_large_config(**overrides) -> EncoderConfig:
    return _config("wavlm", large=True, **overrides)


def tiny_conv_layers(width: int = 16) -> List[List[int]]:
    """The standard 7-layer CNN layout (stride 320, 400-sample receptive field) at ``width``."""
    return [[width, 10, 5]] + [[width, 3, 2] for _ in range(4)] + [[width, 2, 2] for _ in range(2)]


def tiny_config(
    model_type: str = "hubert",
    large: bool = False,
    num_layers: int = 3,
    heads: int = 4,
    ffn: int = 48,
    conv_width: int = 16,
    **overrides,
) -> EncoderConfig:
    """A CPU-sized layout with the standard CNN strides (tests, benchmarks, examples): 32-wide,
    8-dim heads, small positional conv; ``large`` gives the Large layout's LN choices."""
    base = dict(
        model_type=model_type,
        conv_layers=tiny_conv_layers(conv_width),
        extractor_mode="layer_norm" if large else "group_norm",
        conv_bias=large,
        embed_dim=32,
        head_dim=8,
        layers=[LayerConfig(heads, ffn) for _ in range(num_layers)],
        layer_norm_first=large,
        pos_conv_kernel=16,
        pos_conv_groups=4,
        rel_pos_heads=heads if model_type == "wavlm" else 0,
        num_buckets=32,
        max_distance=64,
    )
    base.update(overrides)
    return EncoderConfig(**base)
