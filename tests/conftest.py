"""Shared tiny model configs: the standard 7-layer CNN layout (stride 320, 400-sample
receptive field) with small widths, so every test runs in seconds on a CPU."""
import pytest
import torch

from espnet_plugin.models import EncoderConfig, LayerConfig

TINY_CONV = [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]]


def tiny_config(model_type="hubert", large=False, num_layers=3, heads=4, ffn=48, **overrides) -> EncoderConfig:
    base = dict(
        model_type=model_type,
        conv_layers=[list(c) for c in TINY_CONV],
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


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Random values for every weight (norms included) so equivalence tests are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("log_alpha"):
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if name.endswith("norm.weight") else 0.0))
    return model


@pytest.fixture
def wavs():
    gen = torch.Generator().manual_seed(123)
    return torch.randn(2, 4000, generator=gen) * 0.5
