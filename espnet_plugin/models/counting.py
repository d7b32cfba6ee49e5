"""Parameter and MAC counts as differentiable functions of per-unit openness.

One formula serves three uses: with gate probabilities it is the expected cost that the
Lagrangian drives to a budget; with the deterministic binary masks it is the exact cost of
the model that pruning will export; with all-ones it is the exact cost of a plain model.
MACs count multiply-accumulates of convolutions, linear layers and the two attention
matrix products for a given duration of 16 kHz audio; norms and activations are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

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
        values: List[torch.Tensor] = []
        if gates:
            # one operation (and one conversion to float64) for all gates, then views
            if deterministic:
                flat = torch.cat([gate.deterministic_mask() for gate in gates])
            else:
                flat = open_probabilities(gates)
            values = list(flat.to(COUNT_DTYPE).split([gate.n for gate in gates]))
        return cls.of_gate_values(model, gates, values)

    @classmethod
    def of_gate_values(cls, model, gates, values: List[torch.Tensor]) -> "Structure":
        """The structure with ``values[i]`` as the openness of ``gates[i]`` (``model.gates()``)."""
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


def _sums(groups: List[torch.Tensor]) -> torch.Tensor:
    """Expected open count of each group, as one vector."""
    return torch.stack([group.sum() for group in groups])


def _any_open_each(groups: List[torch.Tensor]) -> torch.Tensor:
    return torch.stack([_any_open(group) for group in groups])


def frames_per_layer(conv_layers, samples: int) -> List[int]:
    frames = []
    for _, kernel, stride in conv_layers:
        samples = (samples - kernel) // stride + 1
        frames.append(samples)
    return frames


# The counts below are written as a few vector operations over layers, not a loop of scalar
# ones: they run at every training step, and a small model's step is dominated by the number
# of operations. Integer-valued terms summed in float64 stay exact.


def _conv_channels(s: Structure) -> Tuple[torch.Tensor, torch.Tensor]:
    """(input channels, output channels) of every conv layer, as vectors."""
    out_ch = _sums(s.conv_channels)
    in_ch = torch.cat([out_ch.new_ones(1), out_ch[:-1]])
    return in_ch, out_ch


def count_params(cfg, s: Structure) -> torch.Tensor:
    d, dh = cfg.embed_dim, cfg.head_dim
    kernels = torch.tensor([kernel for _, kernel, _ in cfg.conv_layers], dtype=COUNT_DTYPE)
    per_channel = torch.tensor(
        [float(cfg.conv_bias) + 2.0 * (cfg.extractor_mode == "layer_norm" or i == 0)
         for i in range(len(cfg.conv_layers))], dtype=COUNT_DTYPE,
    )  # conv bias, norm weight and bias
    in_ch, out_ch = _conv_channels(s)
    total = (in_ch * out_ch * kernels + out_ch * per_channel).sum()
    total = total + out_ch[-1] * (2 + d)  # feature projection: LayerNorm + Linear weight
    constant = d  # its bias
    constant += d * (d // cfg.pos_conv_groups) * cfg.pos_conv_kernel + d + cfg.pos_conv_kernel
    constant += 2 * d  # encoder LayerNorm
    if cfg.is_wavlm:
        constant += cfg.num_buckets * cfg.rel_pos_heads
    if not s.heads:
        return total + constant
    pre_ln = cfg.layer_norm_first
    h, u = _sums(s.heads), _sums(s.ffn_units)
    attention = d + h * (dh * (3 * (d + 1) + d))
    feed_forward = d + u * (2 * d + 1)
    if pre_ln or cfg.is_wavlm:
        any_head = _any_open_each(s.heads)
        if pre_ln:
            attention = attention + (2 * d) * any_head
        if cfg.is_wavlm:
            attention = attention + any_head * (cfg.rel_pos_chunk * 8 + 8) + h
    if pre_ln:
        feed_forward = feed_forward + (2 * d) * _any_open_each(s.ffn_units)
    else:
        constant += 4 * d * len(s.heads)  # both LayerNorms of every post-LN layer
    blocks = (torch.stack(s.attention_blocks) * attention + torch.stack(s.ffn_blocks) * feed_forward).sum()
    return total + blocks + constant


def count_macs(cfg, s: Structure, seconds: float = 1.0) -> torch.Tensor:
    frames = frames_per_layer(cfg.conv_layers, int(round(seconds * SAMPLE_RATE)))
    t = frames[-1]
    d, dh = cfg.embed_dim, cfg.head_dim
    weights = torch.tensor([f * kernel for f, (_, kernel, _) in zip(frames, cfg.conv_layers)], dtype=COUNT_DTYPE)
    in_ch, out_ch = _conv_channels(s)
    total = (in_ch * out_ch * weights).sum() + out_ch[-1] * (t * d)
    constant = t * d * (d // cfg.pos_conv_groups) * cfg.pos_conv_kernel
    if not s.heads:
        return total + constant
    per_head = t * dh * (4 * d + 2 * t) + (t * cfg.rel_pos_chunk * 8 if cfg.is_wavlm else 0)
    attention = torch.stack(s.attention_blocks) * _sums(s.heads) * per_head
    feed_forward = torch.stack(s.ffn_blocks) * _sums(s.ffn_units) * (2 * t * d)
    return total + (attention + feed_forward).sum() + constant
