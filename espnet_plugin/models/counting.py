"""Parameter and MAC counts as differentiable functions of per-unit openness.

One formula serves three uses: with gate probabilities it is the expected cost that the
Lagrangian drives to a budget; with the deterministic binary masks it is the exact cost of
the model that pruning will export; with all-ones it is the exact cost of a plain model.
MACs count multiply-accumulates of convolutions, linear layers and the two attention
matrix products for a given duration of 16 kHz audio; norms and activations are ignored.

The counts run at every training step, and a small model's step is dominated by the number
of operations, not their size: so the openness of every unit is reduced to one vector of
per-layer counts with one scatter (:class:`GateLayout`), and a count, quadratic in that
vector, is evaluated from coefficients read off the formulas once (:class:`QuadraticCost`).
Integer-valued terms summed in float64 stay exact.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

from espnet_plugin.gates import HardConcreteGate, prob_open
from espnet_plugin.utils.audio import SAMPLE_RATE

#: Counts are summed in float64: float32 has a 24-bit mantissa, so a count above 16.7 M (any
#: Large-size model) would not be exact in float32.
COUNT_DTYPE = torch.float64


class Structure:
    """Open units of every prunable group, in one float64 vector: expected counts (gate
    probabilities), exact counts (binary masks) or full sizes (no gates).

    The vector holds, per conv layer, its open output channels; per transformer layer, its
    open heads, open FFN units, and the openness of its attention and FFN blocks (0 where a
    layer has no such block); for pre-LN and WavLM layouts also P(at least one head / FFN unit
    of the layer open), which they count (a LayerNorm or position gate lives while any unit
    reads it). The fields are views of the vector.
    """

    def __init__(self, vector: torch.Tensor, num_conv: int, num_layers: int, counts_any_open: bool) -> None:
        self.vector, self.num_conv, self.num_layers = vector, num_conv, num_layers
        self.counts_any_open = counts_any_open

    def with_vector(self, vector: torch.Tensor) -> "Structure":
        return Structure(vector, self.num_conv, self.num_layers, self.counts_any_open)

    def _layers(self, k: int) -> torch.Tensor:
        start = self.num_conv + k * self.num_layers
        return self.vector[start:start + self.num_layers]

    @property
    def conv_channels(self) -> torch.Tensor:
        return self.vector[:self.num_conv]

    @property
    def heads(self) -> torch.Tensor:
        return self._layers(0)

    @property
    def ffn_units(self) -> torch.Tensor:
        return self._layers(1)

    @property
    def attention_blocks(self) -> torch.Tensor:
        return self._layers(2)

    @property
    def ffn_blocks(self) -> torch.Tensor:
        return self._layers(3)

    @property
    def any_head(self) -> Optional[torch.Tensor]:
        return self._layers(4) if self.counts_any_open else None

    @property
    def any_ffn_unit(self) -> Optional[torch.Tensor]:
        return self._layers(5) if self.counts_any_open else None

    @classmethod
    def of_model(cls, model, deterministic: bool) -> "Structure":
        gates = model.gates()
        if not gates:
            return model.gate_layout().structure(torch.zeros(0, dtype=COUNT_DTYPE))
        if deterministic:
            return cls.of_gate_values(model, [gate.deterministic_mask() for gate in gates])
        return cls.of_logits(model, torch.cat([gate.log_alpha for gate in gates]))

    @classmethod
    def of_logits(cls, model, log_alpha: torch.Tensor) -> "Structure":
        """Expected open units for the concatenated ``log_alpha`` of ``model.gates()``: one
        sigmoid and one conversion to float64 for all gates."""
        return model.gate_layout().structure(prob_open(log_alpha).to(COUNT_DTYPE))

    @classmethod
    def of_gate_values(cls, model, values: Sequence[torch.Tensor]) -> "Structure":
        """The structure with ``values[i]`` as the openness of ``model.gates()[i]``."""
        flat = torch.cat(list(values)).to(COUNT_DTYPE) if values else torch.zeros(0, dtype=COUNT_DTYPE)
        return model.gate_layout().structure(flat)

    @classmethod
    def of_units(
        cls,
        conv_channels: Sequence[torch.Tensor],
        heads: Sequence[torch.Tensor],
        attention_blocks: Sequence[float],
        ffn_units: Sequence[torch.Tensor],
        ffn_blocks: Sequence[float],
    ) -> "Structure":
        """From per-unit openness of every group (e.g. hand-made binary masks)."""

        def sums(groups):
            return [torch.as_tensor(g, dtype=COUNT_DTYPE).sum() for g in groups]

        def any_open(groups):
            return [1.0 - torch.prod(1.0 - torch.as_tensor(g, dtype=COUNT_DTYPE)) for g in groups]

        parts = sums(conv_channels) + sums(heads) + sums(ffn_units) + sums(attention_blocks) + sums(ffn_blocks)
        parts += any_open(heads) + any_open(ffn_units)
        return cls(torch.stack(parts), len(conv_channels), len(heads), True)


class _Constants:
    """Constant tensors made once on the CPU, outside inference mode (autograd may have to save
    them, and a model is often first asked for its costs under ``torch.inference_mode``), and
    copied once to each device they are used on."""

    def __init__(self, make: Callable[[], Tuple[torch.Tensor, ...]]) -> None:
        with torch.inference_mode(False):
            self._on = {torch.device("cpu"): tuple(make())}

    def on(self, device: torch.device) -> Tuple[torch.Tensor, ...]:
        if device not in self._on:
            with torch.inference_mode(False):
                self._on[device] = tuple(t.to(device) for t in self._on[torch.device("cpu")])
        return self._on[device]


class GateLayout:
    """Where each gate unit of a model goes in the vector of a :class:`Structure`.

    Groups without a gate contribute their full size, absent blocks zero: both are constants,
    so a structure is one ``index_add`` (and, for pre-LN / WavLM, one product ``scatter_reduce``)
    over the concatenated openness of all gates, in ``model.gates()`` order. It holds index
    tensors only, no modules, so the replicas of a model (DataParallel) can share it.
    """

    def __init__(self, model) -> None:
        gates = model.gates()
        position = {}
        conv_layers, layers = model.feature_extractor.conv_layers, model.layers
        self.num_conv, self.num_layers = n_conv, n = len(conv_layers), len(layers)
        offsets = [0, n_conv, n_conv + n, n_conv + 2 * n, n_conv + 3 * n]  # conv, heads, units, blocks
        base = [0.0] * (n_conv + 4 * n)
        none_open = [1.0] * len(base)  # prod(1 - openness) of the ungated groups: 0 when any unit is there

        def place(kind: int, index: int, gate: Optional[HardConcreteGate], size: int) -> None:
            slot = offsets[kind] + index
            if gate is not None:
                position[id(gate)] = slot
            else:
                base[slot] = float(size)
                none_open[slot] = 0.0 if size > 0 else 1.0

        for i, layer in enumerate(conv_layers):
            place(0, i, layer.gate, layer.conv.out_channels)
        for i, layer in enumerate(layers):
            att, ff = layer.attention, layer.ffn
            if att is not None:
                place(1, i, att.gate, att.num_heads)
                place(3, i, layer.attention_block_gate, 1)
            if ff is not None:
                place(2, i, ff.gate, ff.num_units)
                place(4, i, layer.ffn_block_gate, 1)
        slots = [position[id(gate)] for gate in gates for _ in range(gate.n)]
        self.counts_any_open = bool(model.config.layer_norm_first or model.config.is_wavlm)
        self._constants = _Constants(lambda: (
            torch.tensor(base, dtype=COUNT_DTYPE), torch.tensor(none_open, dtype=COUNT_DTYPE),
            torch.tensor(slots, dtype=torch.long),
        ))

    def structure(self, flat: torch.Tensor) -> Structure:
        """``flat``: float64 openness of every gate unit, in ``model.gates()`` order."""
        base, none_open, slots = self._constants.on(flat.device)
        vector = base.index_add(0, slots, flat)
        if self.counts_any_open:
            any_open = 1.0 - none_open.scatter_reduce(0, slots, 1.0 - flat, "prod")
            vector = torch.cat([vector, any_open[self.num_conv:self.num_conv + 2 * self.num_layers]])
        return Structure(vector, self.num_conv, self.num_layers, self.counts_any_open)


class QuadraticCost:
    """A count as ``c + s . (a + Q s)`` of the structure vector ``s``.

    Params and MACs are quadratic in the open counts (a conv layer's input times its output
    channels, a block's openness times its units), so :func:`count_params` / :func:`count_macs`
    stay the definition and their coefficients are read off once, by differentiation at s = 0
    (integers, exact in float64); a training step then evaluates the count with one
    matrix-vector product instead of a few dozen small operations.
    """

    def __init__(self, count: Callable[[Structure], torch.Tensor], template: Structure) -> None:
        size = template.vector.numel()

        def f(vector: torch.Tensor) -> torch.Tensor:
            return count(template.with_vector(vector))

        def coefficients() -> Tuple[torch.Tensor, ...]:
            zero = torch.zeros(size, dtype=COUNT_DTYPE)  # on the CPU, wherever the model is
            with torch.enable_grad():
                return (f(zero).detach(), torch.autograd.functional.jacobian(f, zero),
                        0.5 * torch.autograd.functional.hessian(f, zero))

        self._constants = _Constants(coefficients)

    def __call__(self, structure: Structure) -> torch.Tensor:
        s = structure.vector
        constant, linear, quadratic = self._constants.on(s.device)
        return constant + (s * (linear + quadratic @ s)).sum()


def frames_per_layer(conv_layers, samples: int) -> List[int]:
    frames = []
    for _, kernel, stride in conv_layers:
        samples = (samples - kernel) // stride + 1
        frames.append(samples)
    return frames


def _conv_terms(cfg, s: Structure, samples: int = SAMPLE_RATE):
    """(input channels, output channels) of every conv layer, and per layer: params per
    (input x output) channel pair, params per output channel (conv bias, norm weight and
    bias), MACs per channel pair."""
    out_ch = s.conv_channels
    in_ch = torch.cat([out_ch.new_ones(1), out_ch[:-1]])
    layer_norm = cfg.extractor_mode == "layer_norm"
    frames = frames_per_layer(cfg.conv_layers, samples)

    def vector(values) -> torch.Tensor:
        return torch.tensor(values, dtype=COUNT_DTYPE, device=out_ch.device)

    kernels = vector([kernel for _, kernel, _ in cfg.conv_layers])
    per_channel = vector([float(cfg.conv_bias) + 2.0 * (layer_norm or i == 0) for i in range(len(cfg.conv_layers))])
    macs = vector([f * kernel for f, (_, kernel, _) in zip(frames, cfg.conv_layers)])
    return in_ch, out_ch, (kernels, per_channel, macs)


def count_params(cfg, s: Structure) -> torch.Tensor:
    d, dh = cfg.embed_dim, cfg.head_dim
    in_ch, out_ch, (kernels, per_channel, _) = _conv_terms(cfg, s)
    total = (out_ch * (in_ch * kernels + per_channel)).sum()
    total = total + out_ch[-1] * (2 + d)  # feature projection: LayerNorm + Linear weight
    constant = d  # its bias
    constant += d * (d // cfg.pos_conv_groups) * cfg.pos_conv_kernel + d + cfg.pos_conv_kernel
    constant += 2 * d  # encoder LayerNorm
    if cfg.is_wavlm:
        constant += cfg.num_buckets * cfg.rel_pos_heads
    if s.num_layers == 0:
        return total + constant
    pre_ln = cfg.layer_norm_first
    h, u = s.heads, s.ffn_units
    attention = d + h * (dh * (3 * (d + 1) + d))
    feed_forward = d + u * (2 * d + 1)
    if pre_ln:
        attention = attention + (2 * d) * s.any_head
        feed_forward = feed_forward + (2 * d) * s.any_ffn_unit
    else:
        constant += 4 * d * s.num_layers  # both LayerNorms of every post-LN layer
    if cfg.is_wavlm:
        attention = attention + s.any_head * (cfg.rel_pos_chunk * 8 + 8) + h
    blocks = (s.attention_blocks * attention + s.ffn_blocks * feed_forward).sum()
    return total + blocks + constant


def count_macs(cfg, s: Structure, seconds: float = 1.0) -> torch.Tensor:
    samples = int(round(seconds * SAMPLE_RATE))
    t = frames_per_layer(cfg.conv_layers, samples)[-1]
    d, dh = cfg.embed_dim, cfg.head_dim
    in_ch, out_ch, (_, _, weights) = _conv_terms(cfg, s, samples)
    total = (in_ch * out_ch * weights).sum() + out_ch[-1] * (t * d)
    constant = t * d * (d // cfg.pos_conv_groups) * cfg.pos_conv_kernel
    if s.num_layers == 0:
        return total + constant
    per_head = t * dh * (4 * d + 2 * t) + (t * cfg.rel_pos_chunk * 8 if cfg.is_wavlm else 0)
    blocks = s.attention_blocks * s.heads * per_head + s.ffn_blocks * s.ffn_units * (2 * t * d)
    return total + blocks.sum() + constant
