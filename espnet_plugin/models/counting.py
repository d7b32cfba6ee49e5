"""Parameter and MAC counts as differentiable functions of per-unit openness.

One formula serves three uses: with gate probabilities it is the expected cost that the
Lagrangian drives to a budget; with the deterministic binary masks it is the exact cost of
the model that pruning will export; with all-ones it is the exact cost of a plain model.
MACs count multiply-accumulates of convolutions, linear layers and the two attention
matrix products for a given duration of 16 kHz audio; norms and activations are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from espnet_plugin.gates import open_probabilities
from espnet_plugin.utils.audio import SAMPLE_RATE



#: Counts are summed in float64: float32 has a 24-bit mantissa, so a count above 16.7 M (any
#: Large-size model) would not be exact in float32.
COUNT_DTYPE = torch.float64


@dataclass
class Structure:
    """Openness of every prunable unit, in [0, 1] (1 = kept), as float64."""

    conv_channels: List[torch.Tensor]
    heads: List[torch.Tensor]
    attention_blocks: List[torch.Tensor]
    ffn_units: List[torch.Tensor]
    ffn_blocks: List[torch.Tensor]

    @classmethod
    def of_model(cls, model, deterministic: bool) -> "Structure":
        gates = model.gates()
        by_gate = {}
        if gates:
            # one operation (and one conversion to float64) for all gates, then views
            if deterministic:
                values = torch.cat([gate.deterministic_mask() for gate in gates])
            else:
                values = open_probabilities(gates)
            values = values.to(COUNT_DTYPE).split([gate.n for gate in gates])
            by_gate = {id(gate): value for gate, value in zip(gates, values)}

        def openness(gate, n: int, present: bool = True) -> torch.Tensor:
            if not present:
                return torch.zeros(n, dtype=COUNT_DTYPE)
            if gate is None:
                return torch.ones(n, dtype=COUNT_DTYPE)
            return by_gate[id(gate)]

        conv = [openness(layer.gate, layer.conv.out_channels) for layer in model.feature_extractor.conv_layers]
        heads, attention, units, ffn = [], [], [], []
        for layer in model.layers:
            att, ff = layer.attention, layer.ffn
            heads.append(openness(att and att.gate, att.num_heads if att else 0, att is not None))
            attention.append(openness(layer.attention_block_gate, 1, att is not None)[0])
            units.append(openness(ff and ff.gate, ff.num_units if ff else 0, ff is not None))
            ffn.append(openness(layer.ffn_block_gate, 1, ff is not None)[0])
        return cls(conv, heads, attention, units, ffn)


def _any_open(openness: torch.Tensor) -> torch.Tensor:
    """P(at least one unit open); exactly 0 or 1 for binary openness."""
    return 1.0 - torch.prod(1.0 - openness)


def frames_per_layer(conv_layers, samples: int) -> List[int]:
    frames = []
    for _, kernel, stride in conv_layers:
        samples = (samples - kernel) // stride + 1
        frames.append(samples)
    return frames


def count_params(cfg, s: Structure) -> torch.Tensor:
    d = cfg.embed_dim
    total = torch.zeros((), dtype=COUNT_DTYPE)
    in_ch = torch.ones((), dtype=COUNT_DTYPE)
    for i, (_, kernel, _) in enumerate(cfg.conv_layers):
        out_ch = s.conv_channels[i].sum()
        total = total + in_ch * out_ch * kernel
        if cfg.conv_bias:
            total = total + out_ch
        if cfg.extractor_mode == "layer_norm" or i == 0:
            total = total + 2 * out_ch
        in_ch = out_ch
    total = total + 2 * in_ch + (in_ch + 1) * d  # feature projection
    total = total + d * (d // cfg.pos_conv_groups) * cfg.pos_conv_kernel + d + cfg.pos_conv_kernel
    total = total + 2 * d  # encoder LayerNorm
    if cfg.is_wavlm:
        total = total + cfg.num_buckets * cfg.rel_pos_heads
    dh = cfg.head_dim
    pre_ln = 1.0 if cfg.layer_norm_first else 0.0
    for heads, block, units, ffn in zip(s.heads, s.attention_blocks, s.ffn_units, s.ffn_blocks):
        h, any_head = heads.sum(), _any_open(heads)
        attention = d + h * dh * (3 * (d + 1) + d) + pre_ln * 2 * d * any_head
        if cfg.is_wavlm:
            attention = attention + any_head * (cfg.rel_pos_chunk * 8 + 8) + h
        u, any_unit = units.sum(), _any_open(units)
        feed_forward = d + u * (2 * d + 1) + pre_ln * 2 * d * any_unit
        total = total + block * attention + ffn * feed_forward + (1.0 - pre_ln) * 4 * d
    return total


def count_macs(cfg, s: Structure, seconds: float = 1.0) -> torch.Tensor:
    frames = frames_per_layer(cfg.conv_layers, int(round(seconds * SAMPLE_RATE)))
    t = frames[-1]
    d, dh = cfg.embed_dim, cfg.head_dim
    total = torch.zeros((), dtype=COUNT_DTYPE)
    in_ch = torch.ones((), dtype=COUNT_DTYPE)
    for i, (_, kernel, _) in enumerate(cfg.conv_layers):
        out_ch = s.conv_channels[i].sum()
        total = total + frames[i] * in_ch * out_ch * kernel
        in_ch = out_ch
    total = total + t * in_ch * d
    total = total + t * d * (d // cfg.pos_conv_groups) * cfg.pos_conv_kernel
    for heads, block, units, ffn in zip(s.heads, s.attention_blocks, s.ffn_units, s.ffn_blocks):
        h = heads.sum()
        attention = t * h * dh * (4 * d + 2 * t)
        if cfg.is_wavlm:
            attention = attention + t * h * cfg.rel_pos_chunk * 8
        total = total + block * attention + ffn * 2 * t * d * units.sum()
    return total
