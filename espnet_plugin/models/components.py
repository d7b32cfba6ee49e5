"""Building blocks of a pruning-aware wav2vec 2.0 / HuBERT / WavLM encoder.

Every block takes its size from the config, so a pruned model is the same classes with
smaller sizes. Gates are optional modules: when a block has none it runs the plain path.
Where a gate closes a unit the unit's output is exactly zero, and normalisations whose
statistics span gated channels weight those statistics by the gate, so that removing a
closed unit (``espnet_plugin.pruning``) leaves every output unchanged.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from espnet_plugin.gates import HardConcreteGate
from espnet_plugin.models.attention_kernel import scaled_dot_product_attention
from espnet_plugin.models.packed_linear import linear
from espnet_plugin.models.time_conv import channels_last_kernel, grouped_time_conv, strided_time_conv


def gated_layer_norm(
    x: torch.Tensor, norm: nn.LayerNorm, gate: Optional[torch.Tensor], units: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """LayerNorm over the last axis whose statistics count each channel by its gate value.

    With a binary gate this is LayerNorm over the open channels only, which is exactly what
    the pruned model computes with its smaller LayerNorm; closed channels come out as zero.
    With ``units``, ``x`` holds only those channels of the gate's group.
    """
    if gate is None:
        return norm(x)
    weight, bias = norm.weight, norm.bias
    if units is not None:
        gate, weight, bias = gate[units], weight[units], bias[units]
    if not torch.is_grad_enabled() and bool(((gate == 0) | (gate == 1)).all()):
        # binary mask at inference: the very arithmetic of the pruned model's LayerNorm
        keep = torch.nonzero(gate).flatten()
        y = x.new_zeros(x.shape)
        y[..., keep] = F.layer_norm(x[..., keep], (len(keep),), weight[keep], bias[keep], norm.eps)
        return y
    share = gate / gate.sum().clamp_min(1e-6)  # each channel's weight in the statistics
    centred = x - (x * share).sum(-1, keepdim=True)
    var = (centred * centred * share).sum(-1, keepdim=True)
    return centred * torch.rsqrt(var + norm.eps) * (weight * gate) + bias * gate


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of a q / k / v projection (columns of the output projection) that ``heads`` own."""
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


def open_units(gate: Optional[HardConcreteGate]) -> Optional[torch.Tensor]:
    """The units of ``gate``'s group a training forward computes (None: all of them)."""
    return None if gate is None else gate.open_units()


class ConvLayer(nn.Module):
    """Conv1d -> (GroupNorm | channel LayerNorm | nothing) -> GELU, with an optional channel gate.

    The gate multiplies the layer's output channels; :class:`FeatureExtractor` applies it
    through the next layer's input-channel weights, a much smaller tensor than the activations
    (the output of the first layers spans thousands of frames).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        bias: bool,
        norm: Optional[str],
        gated: bool,
        init_drop_rate: float,
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.norm: Optional[nn.Module] = None
        if norm == "group_norm":
            self.norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer_norm":
            self.norm = nn.LayerNorm(out_channels)
        self.gate = HardConcreteGate(out_channels, init_drop_rate, min_keep=1) if gated else None

    def output_length(self, length: torch.Tensor) -> torch.Tensor:
        return torch.div(length - self.kernel, self.stride, rounding_mode="floor") + 1

    def forward(
        self, x: torch.Tensor, input_gate: Optional[torch.Tensor] = None, input_units: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """x: (batch, channels, time), not yet multiplied by ``input_gate`` (the previous
        layer's channel gate); with ``input_units``, only those of its channels (the others
        were sampled closed). Returns this layer's output before its own gate, the gate's
        values and the output channels computed (None: all)."""
        z = self.gate() if self.gate is not None else None
        units = open_units(self.gate)
        weight, bias = self.conv.weight, self.conv.bias
        if units is not None:
            weight, bias = weight.index_select(0, units), (None if bias is None else bias.index_select(0, units))
        if input_gate is not None:
            if input_units is not None:
                weight, input_gate = weight.index_select(1, input_units), input_gate.index_select(0, input_units)
            weight = weight * input_gate[:, None]
        x = strided_time_conv(x, weight, bias, self.stride)
        if isinstance(self.norm, nn.LayerNorm):
            x = gated_layer_norm(x.transpose(1, 2), self.norm, z, units).transpose(1, 2)
        elif self.norm is not None and units is not None:  # the GroupNorm normalises each channel alone
            x = F.group_norm(x, len(units), self.norm.weight[units], self.norm.bias[units], self.norm.eps)
        elif self.norm is not None:
            x = self.norm(x)
        return F.gelu(x), z, units


class FeatureExtractor(nn.Module):
    """The waveform CNN: (batch, samples) -> (batch, frames, channels)."""

    def __init__(self, conv_layers: List[List[int]], mode: str, bias: bool, gated: bool, init_drop_rate: float):
        super().__init__()
        layers, in_channels = [], 1
        for i, (channels, kernel, stride) in enumerate(conv_layers):
            if mode == "layer_norm":
                norm = "layer_norm"
            else:
                norm = "group_norm" if i == 0 else None
            layers.append(ConvLayer(in_channels, channels, kernel, stride, bias, norm, gated, init_drop_rate))
            in_channels = channels
        self.conv_layers = nn.ModuleList(layers)

    @property
    def receptive_field(self) -> int:
        field = 1
        for layer in reversed(self.conv_layers):
            field = (field - 1) * layer.stride + layer.kernel
        return field

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for layer in self.conv_layers:
            lengths = layer.output_length(lengths)
        return lengths

    def forward(self, wavs: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(batch, frames, channels) features times the last layer's channel gate, the gate's
        values (for the projection's LayerNorm) and the channels computed (None: all)."""
        x, gate, units = wavs[:, None, :], None, None
        for layer in self.conv_layers:
            x, gate, units = layer(x, gate, units)
        x = x.transpose(1, 2)
        if gate is None:
            return x, None, None
        return x * (gate if units is None else gate[units]), gate, units


class FeatureProjection(nn.Module):
    """LayerNorm over conv channels (gate-weighted statistics) -> Linear -> dropout."""

    def __init__(self, in_channels: int, embed_dim: int, dropout: float, eps: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_channels, eps=eps)
        self.projection = nn.Linear(in_channels, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, channel_gate: Optional[torch.Tensor], channels: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``channels``: the conv channels ``x`` holds (None: all)."""
        x = gated_layer_norm(x, self.layer_norm, channel_gate, channels)
        if channels is None:
            return self.dropout(linear(x, self.projection))
        weight = self.projection.weight.index_select(1, channels)
        return self.dropout(F.linear(x, weight, self.projection.bias))


class ConvPositionalEmbedding(nn.Module):
    """Grouped convolution over time with weight norm (dim 2), as in wav2vec 2.0."""

    def __init__(self, embed_dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(embed_dim, embed_dim, kernel, padding=kernel // 2, groups=groups)
        self.conv = parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0
        self._frozen_kernel: Tuple[Optional[tuple], Optional[torch.Tensor]] = (None, None)

    def kernel(self) -> torch.Tensor:
        """The weight-normed kernel. Under ``no_grad`` on a CPU (a frozen teacher, evaluation)
        it is computed once, in the layout the channels-last convolution reads and (under
        autocast) in the autocast dtype, and reused until the weights change: the weight norm,
        that copy and the cast cost about as much as the convolution itself at Base size."""
        weights = self.conv.parametrizations.weight
        if torch.is_grad_enabled() or weights.original1.device.type != "cpu":
            return self.conv.weight
        originals = (weights.original0, weights.original1)
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if autocast else weights.original1.dtype
        versions = (tuple((p.data_ptr(), p._version) for p in originals), dtype)
        cached, kernel = self._frozen_kernel
        if cached is None or any(a is not b for a, b in zip(cached[0], originals)) or cached[1] != versions:
            kernel = channels_last_kernel(self.conv.weight).squeeze(2).to(dtype)
            self._frozen_kernel = ((originals, versions), kernel)
        return kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, frames, dim) -> the positional term added to x."""
        conv = self.conv
        y = grouped_time_conv(x, self.kernel(), conv.bias, conv.padding[0], conv.groups)
        if self.trim:
            y = y[:, :-self.trim]
        return F.gelu(y)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device) -> torch.Tensor:
    """Bidirectional log-spaced buckets of WavLM / T5 for key minus query offsets."""
    positions = torch.arange(length, device=device)
    relative = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    max_exact = half // 2
    is_small = distance < max_exact
    large = max_exact + (
        torch.log(distance.float().clamp_min(1) / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = large.clamp_max(half - 1)
    return buckets + torch.where(is_small, distance, large)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (``attention_kernel.py``).

    Heads can be gated; ``num_heads == 0`` keeps only the output bias. For WavLM each head
    adds a relative-position bias scaled by a gate computed from its chunk of the input.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        dropout: float,
        gated: bool,
        init_drop_rate: float,
        head_ids: Optional[List[int]] = None,
        rel_pos_chunk: int = 0,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        inner = num_heads * head_dim
        self.out_bias: Optional[nn.Parameter] = None
        if num_heads == 0:
            self.out_bias = nn.Parameter(torch.zeros(embed_dim))
        else:
            self.q_proj = nn.Linear(embed_dim, inner)
            self.k_proj = nn.Linear(embed_dim, inner)
            self.v_proj = nn.Linear(embed_dim, inner)
            self.out_proj = nn.Linear(inner, embed_dim)
        self.gate = HardConcreteGate(num_heads, init_drop_rate) if gated and num_heads > 0 else None
        self.rel_pos_chunk = rel_pos_chunk
        if head_ids is not None and num_heads > 0:
            self.register_buffer("head_ids", torch.tensor(head_ids, dtype=torch.long), persistent=False)
            self.gru_rel_pos_linear = nn.Linear(rel_pos_chunk, 8)
            self.gru_rel_pos_const = nn.Parameter(torch.ones(1, num_heads, 1, 1))
        else:
            self.head_ids = None

    def gated_position_bias(
        self, x: torch.Tensor, position_bias: torch.Tensor, heads: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """(batch, heads, frames, frames) bias: WavLM's gated relative-position bias (of the
        ``heads`` computed, None: all)."""
        b, t, d = x.shape
        ids, const, n = self.head_ids, self.gru_rel_pos_const, self.num_heads
        if heads is not None:
            ids, const, n = ids[heads], const[:, heads], len(heads)
        chunks = x.view(b, t, d // self.rel_pos_chunk, self.rel_pos_chunk)[:, :, ids]
        proj = self.gru_rel_pos_linear(chunks.transpose(1, 2)).view(b, n, t, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(proj).chunk(2, dim=-1)
        scale = gate_a * (gate_b * const - 1.0) + 2.0
        return scale * position_bias[ids][None]

    def forward(
        self, x: torch.Tensor, key_mask: Optional[torch.Tensor], position_bias: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """x: (batch, frames, dim); key_mask: (batch, frames) True where valid."""
        if self.out_bias is not None:
            return self.out_bias.expand_as(x)
        b, t, _ = x.shape
        z = self.gate() if self.gate is not None else None
        heads = open_units(self.gate)
        projections = (self.q_proj, self.k_proj, self.v_proj)
        num_heads = self.num_heads
        if heads is None:
            q, k, v = (linear(x, proj) for proj in projections)
            project_out = functools.partial(linear, layer=self.out_proj)
        else:  # only the heads sampled open: their rows of q / k / v, their columns of out_proj
            rows = head_rows(heads, self.head_dim)
            q, k, v = (F.linear(x, proj.weight.index_select(0, rows), proj.bias.index_select(0, rows))
                       for proj in projections)
            project_out = functools.partial(F.linear, weight=self.out_proj.weight.index_select(1, rows),
                                            bias=self.out_proj.bias)
            z, num_heads = z.index_select(0, heads), len(heads)
        q, k, v = (y.view(b, t, num_heads, self.head_dim).transpose(1, 2) for y in (q, k, v))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        if self.head_ids is not None and position_bias is not None:
            bias = self.gated_position_bias(x, position_bias, heads).to(q.dtype)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        y = scaled_dot_product_attention(q, k, v, mask, self.dropout if self.training else 0.0)
        if z is not None:
            y = y * z.view(-1, 1, 1)  # (batch, heads, frames, head_dim)
        return project_out(y.transpose(1, 2).reshape(b, t, num_heads * self.head_dim))


class FeedForward(nn.Module):
    """Linear -> GELU -> (unit gate) -> Linear; ``ffn_dim == 0`` keeps only the output bias."""

    def __init__(
        self, embed_dim: int, ffn_dim: int, activation_dropout: float, dropout: float, gated: bool, init_drop_rate: float
    ) -> None:
        super().__init__()
        self.out_bias: Optional[nn.Parameter] = None
        if ffn_dim == 0:
            self.out_bias = nn.Parameter(torch.zeros(embed_dim))
        else:
            self.intermediate = nn.Linear(embed_dim, ffn_dim)
            self.output = nn.Linear(ffn_dim, embed_dim)
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.dropout = nn.Dropout(dropout)
        self.gate = HardConcreteGate(ffn_dim, init_drop_rate) if gated and ffn_dim > 0 else None

    @property
    def num_units(self) -> int:
        """Intermediate units (0 once every unit is pruned and only the output bias is left)."""
        return 0 if self.out_bias is not None else self.intermediate.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_bias is not None:
            return self.out_bias.expand_as(x)
        z = self.gate() if self.gate is not None else None
        units = open_units(self.gate)
        if units is None:
            h = linear(x, self.intermediate, gelu=True)
            project_out = functools.partial(linear, layer=self.output)
        else:  # only the units sampled open
            h = F.gelu(F.linear(x, self.intermediate.weight.index_select(0, units),
                                self.intermediate.bias.index_select(0, units)))
            project_out = functools.partial(F.linear, weight=self.output.weight.index_select(1, units),
                                            bias=self.output.bias)
            z = z.index_select(0, units)
        h = self.activation_dropout(h)
        if z is not None:
            h = h * z
        return self.dropout(project_out(h))


class EncoderLayer(nn.Module):
    """A transformer layer, post-LN (Base) or pre-LN (Large), with optional block gates.

    A missing block is skipped; post-LN layers keep both LayerNorms regardless, pre-LN
    layers keep a block's LayerNorm only while the block reads its input.
    """

    def __init__(self, cfg, layer_cfg, attention_gates, ffn_gates) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        g = cfg.gates
        self.attention = self.ffn = None
        self.attention_block_gate = self.ffn_block_gate = None
        if layer_cfg.attention:
            self.attention = SelfAttention(
                d,
                layer_cfg.num_heads,
                cfg.head_dim,
                cfg.attention_dropout,
                g.attention_heads,
                g.init_drop_rate,
                head_ids=layer_cfg.head_ids if cfg.is_wavlm else None,
                rel_pos_chunk=cfg.rel_pos_chunk if cfg.is_wavlm else 0,
            )
            if attention_gates:
                self.attention_block_gate = HardConcreteGate(1, g.init_drop_rate)
        if layer_cfg.ffn:
            self.ffn = FeedForward(
                d, layer_cfg.ffn_dim, cfg.activation_dropout, cfg.dropout, g.ffn_units, g.ffn_units_init_drop_rate
            )
            if ffn_gates:
                self.ffn_block_gate = HardConcreteGate(1, g.init_drop_rate)
        reads_attention_input = layer_cfg.attention and layer_cfg.num_heads > 0
        reads_ffn_input = layer_cfg.ffn and layer_cfg.ffn_dim > 0
        eps = cfg.layer_norm_eps
        self.attention_norm = (
            nn.LayerNorm(d, eps=eps) if (not cfg.layer_norm_first or reads_attention_input) else None
        )
        self.ffn_norm = nn.LayerNorm(d, eps=eps) if (not cfg.layer_norm_first or reads_ffn_input) else None
        self.dropout = nn.Dropout(cfg.dropout)

    @staticmethod
    def _gated(y: torch.Tensor, gate: Optional[HardConcreteGate]) -> torch.Tensor:
        return y if gate is None else y * gate()

    def forward(
        self, x: torch.Tensor, key_mask: Optional[torch.Tensor], position_bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        if self.layer_norm_first:
            if self.attention is not None:
                h = x if self.attention_norm is None else self.attention_norm(x)
                y = self.dropout(self.attention(h, key_mask, position_bias))
                x = x + self._gated(y, self.attention_block_gate)
            if self.ffn is not None:
                h = x if self.ffn_norm is None else self.ffn_norm(x)
                x = x + self._gated(self.ffn(h), self.ffn_block_gate)
            return x
        if self.attention is not None:
            y = self.dropout(self.attention(x, key_mask, position_bias))
            x = x + self._gated(y, self.attention_block_gate)
        x = self.attention_norm(x)
        if self.ffn is not None:
            x = x + self._gated(self.ffn(x), self.ffn_block_gate)
        return self.ffn_norm(x)


def frame_key_mask(lengths: Optional[torch.Tensor], frames: int) -> Optional[torch.Tensor]:
    if lengths is None:
        return None
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


__all__ = [
    "ConvLayer",
    "ConvPositionalEmbedding",
    "EncoderLayer",
    "FeatureExtractor",
    "FeatureProjection",
    "FeedForward",
    "SelfAttention",
    "frame_key_mask",
    "gated_layer_norm",
    "head_rows",
    "open_units",
    "relative_position_buckets",
]
