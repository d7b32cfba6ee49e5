"""Model assembly and factory functions for HuBERT / WavLM / wav2vec 2.0 encoders."""
from __future__ import annotations

import copy
import functools
from typing import Dict, List, Mapping, Optional, Tuple, Type

import torch
from torch import nn

from espnet_plugin.gates import ForwardValues, HardConcreteGate, sample_gates
from espnet_plugin.models.components import (
    ConvPositionalEmbedding,
    EncoderLayer,
    FeatureExtractor,
    FeatureProjection,
    frame_key_mask,
    relative_position_buckets,
)
from espnet_plugin.models.config import EncoderConfig, GateConfig
from espnet_plugin.models.packed_linear import pack_frozen_linears
from espnet_plugin.models.counting import GateLayout, QuadraticCost, Structure, count_macs, count_params
from espnet_plugin.utils.audio import SAMPLE_RATE



class SpeechEncoder(nn.Module):
    """A HuBERT / WavLM / wav2vec 2.0 encoder with optional hard-concrete gates.

    ``forward`` returns N + 1 hidden states for N layers, all (batch, frames, embed_dim):
    index 0 is the feature-projection output (before the positional convolution; padded
    frames zeroed), index i the output of transformer layer i. For pre-LN (Large) models the
    last one has the encoder's final LayerNorm applied, the others are the raw residual
    stream. Indices 1..N equal s3prl's upstream hidden states for these models; index 0 is
    the DPHuBERT distillation target (s3prl reports the input of layer 1 there instead).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        g = config.gates
        d = config.embed_dim
        self.feature_extractor = FeatureExtractor(
            config.conv_layers, config.extractor_mode, config.conv_bias, g.conv_channels, g.init_drop_rate
        )
        self.feature_projection = FeatureProjection(
            config.conv_layers[-1][0], d, config.feature_projection_dropout, config.layer_norm_eps
        )
        self.pos_conv = ConvPositionalEmbedding(d, config.pos_conv_kernel, config.pos_conv_groups)
        self.encoder_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.rel_attn_embed = nn.Embedding(config.num_buckets, config.rel_pos_heads) if config.is_wavlm else None
        self.layers = nn.ModuleList(
            EncoderLayer(config, layer, g.attention_blocks, g.ffn_blocks) for layer in config.layers
        )
        self._gate_layout: Optional[GateLayout] = None
        self._costs: Dict[Tuple[str, float], QuadraticCost] = {}
        self._sampled = ForwardValues()  # current: the logits the last training forward sampled from
        self._gate_cache: Tuple[Optional[SpeechEncoder], List[HardConcreteGate]] = (None, [])

    # ---------------------------------------------------------------- lengths
    @property
    def receptive_field(self) -> int:
        return self.feature_extractor.receptive_field

    @property
    def downsample_rate(self) -> int:
        rate = 1
        for _, _, stride in self.config.conv_layers:
            rate *= stride
        return rate

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor.output_lengths(wav_lengths)

    # ---------------------------------------------------------------- forward
    def position_bias(self, frames: int, device) -> Optional[torch.Tensor]:
        if self.rel_attn_embed is None:
            return None
        buckets = relative_position_buckets(frames, self.config.num_buckets, self.config.max_distance, device)
        return self.rel_attn_embed(buckets).permute(2, 0, 1)

    def forward(
        self, wavs: torch.Tensor, wav_lengths: Optional[torch.Tensor] = None
    ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        if self.training:
            self._sampled.current = sample_gates(self.gates())
        if self.config.normalize_waveform:
            wavs = normalize_waveforms(wavs, wav_lengths)
        features, channel_gate, channels = self.feature_extractor(wavs)
        x = self.feature_projection(features, channel_gate, channels)
        lengths = None if wav_lengths is None else self.frame_lengths(wav_lengths).clamp(0, x.shape[1])
        key_mask = frame_key_mask(lengths, x.shape[1])
        if key_mask is not None:
            x = x.masked_fill(~key_mask[..., None], 0.0)
        hidden_states = [x]
        x = x + self.pos_conv(x)
        if not self.config.layer_norm_first:
            x = self.encoder_norm(x)
        x = self.dropout(x)
        position_bias = self.position_bias(x.shape[1], x.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, key_mask, position_bias)
            if self.config.layer_norm_first and i == len(self.layers) - 1:
                x = self.encoder_norm(x)
            hidden_states.append(x)
        if not self.layers and self.config.layer_norm_first:
            hidden_states[-1] = self.encoder_norm(x)
        return hidden_states, lengths

    def extract_hidden_states(
        self, wavs: torch.Tensor, wav_lengths: Optional[torch.Tensor] = None
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Checked entry point: 16 kHz float waveforms (batch, samples) and their lengths."""
        if not torch.is_tensor(wavs) or wavs.dim() != 2 or not wavs.is_floating_point():
            raise ValueError(f"wavs: expected a float tensor (batch, samples), got {_describe(wavs)}")
        if wav_lengths is None:
            wav_lengths = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
        if wav_lengths.shape != (wavs.shape[0],):
            raise ValueError(f"wav_lengths: expected shape ({wavs.shape[0]},), got {tuple(wav_lengths.shape)}")
        if int(wav_lengths.max()) > wavs.shape[1]:
            raise ValueError("wav_lengths: a length exceeds the padded number of samples")
        finite = torch.isfinite(wavs).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise ValueError(f"wavs: utterance(s) {bad} of the batch contain NaN or infinite samples")
        shortest = int(wav_lengths.min())
        if shortest < self.receptive_field:
            raise ValueError(
                f"wavs: an utterance has {shortest} samples ({shortest / SAMPLE_RATE * 1000:.1f} ms), shorter "
                f"than the model's receptive field of {self.receptive_field} samples "
                f"({self.receptive_field / SAMPLE_RATE * 1000:.1f} ms at 16 kHz)"
            )
        hidden_states, lengths = self(wavs, wav_lengths.long())
        return hidden_states, lengths

    # ------------------------------------------------------------- costs
    def structure(self, deterministic: bool = False) -> Structure:
        """Per-unit openness: gate probabilities (or the binary mask), ones where ungated."""
        return Structure.of_model(self, deterministic)

    def _replicate_for_data_parallel(self) -> "SpeechEncoder":
        replica = super()._replicate_for_data_parallel()
        replica._sampled = ForwardValues()  # each replica's forward samples its own gates
        return replica

    def sampled_structure(self) -> Structure:
        """The expected structure from the logits the last training forward sampled its gates
        from: the same concatenation, so the budget term and the samples share one backward.
        For the loss of that forward only (after an optimizer step the logits are stale)."""
        log_alpha = self._sampled.current
        if log_alpha is None:
            raise RuntimeError("sampled_structure() needs a training forward of a gated model first")
        return Structure.of_logits(self, log_alpha)

    def skip_closed_units(self, fraction: float) -> None:
        """Let training forwards leave out the units sampled exactly 0, in every gate group
        where at least ``fraction`` of the units were (0 switches it off). Exact: such units
        contribute 0 to the output and to every gradient; it saves their compute once the
        gates start to close, at the cost of gathering the open units' weights."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"skip_closed_units: a share of a gate group in [0, 1), got {fraction}")
        for gate in self.gates():
            gate.skip_closed = fraction

    def gate_layout(self) -> GateLayout:
        """Built once: a model's units never change (pruning and shrinking build new models)."""
        if self._gate_layout is None:
            self._gate_layout = GateLayout(self)
        return self._gate_layout

    def cost(self, metric: str = "params", seconds: float = 1.0) -> QuadraticCost:
        """Params (``metric="params"``) or MACs for ``seconds`` of audio as a function of a
        :class:`Structure` of this model; built once per metric and duration."""
        key = (metric, float(seconds))
        if key not in self._costs:
            if metric == "params":
                count = functools.partial(count_params, self.config)
            elif metric == "macs":
                count = functools.partial(count_macs, self.config, seconds=seconds)
            else:
                raise ValueError(f"unknown cost metric {metric!r}: use 'params' or 'macs'")
            self._costs[key] = QuadraticCost(count, self.structure(deterministic=True))
        return self._costs[key]

    def expected_params(self, deterministic: bool = False) -> torch.Tensor:
        return self.cost("params")(self.structure(deterministic))

    def expected_macs(self, deterministic: bool = False, seconds: float = 1.0) -> torch.Tensor:
        return self.cost("macs", seconds)(self.structure(deterministic))

    def freeze(self) -> "SpeechEncoder":
        """Evaluation mode, no gradients, and (on CPUs) linear weights packed once for oneDNN:
        a distillation teacher's forwards then run faster (``models/packed_linear.py``), at
        twice the weights' memory."""
        self.eval().requires_grad_(False)
        pack_frozen_linears(self)
        return self

    def num_params(self) -> int:
        """Real parameter count, gates excluded."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.endswith("log_alpha"))

    def gates(self) -> List[HardConcreteGate]:
        """Every gate module, in a fixed order. Cached (every forward needs them, and a model's
        modules never change); a deep copy carries a cache of its own gates, a DataParallel
        replica (a shallow copy) finds it is not the owner and looks again."""
        owner, gates = self._gate_cache
        if owner is not self:
            gates = [module for module in self.modules() if isinstance(module, HardConcreteGate)]
            self._gate_cache = (self, gates)  # a tuple: not registered as a submodule
        return gates

    def gate_parameters(self) -> List[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name.endswith("log_alpha")]

    def main_parameters(self) -> List[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.endswith("log_alpha")]


def normalize_waveforms(wavs: torch.Tensor, lengths: Optional[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance over each utterance's valid samples; padding stays 0."""
    if lengths is None:
        return torch.nn.functional.layer_norm(wavs, wavs.shape[-1:], eps=eps)
    mask = (torch.arange(wavs.shape[1], device=wavs.device)[None] < lengths[:, None]).to(wavs.dtype)
    count = mask.sum(1, keepdim=True).clamp_min(1)
    mean = (wavs * mask).sum(1, keepdim=True) / count
    var = (((wavs - mean) * mask) ** 2).sum(1, keepdim=True) / count
    return (wavs - mean) * torch.rsqrt(var + eps) * mask


def _describe(x) -> str:
    if torch.is_tensor(x):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def load_weights_strictly(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    where: str,
    error: Type[Exception] = ValueError,
    may_lack: Tuple[str, ...] = (),
) -> None:
    """``load_state_dict`` that raises ``error`` naming ``where`` when a weight is missing,
    unexpected or of another shape (weights whose names end with one of ``may_lack`` may be
    missing)."""
    own = model.state_dict()
    mismatched = [f"{key} {tuple(value.shape)} (expected {tuple(own[key].shape)})"
                  for key, value in state.items()
                  if key in own and torch.is_tensor(value) and tuple(value.shape) != tuple(own[key].shape)]
    if mismatched:
        raise error(f"{where}: weights do not match the architecture; other shapes: {mismatched[:6]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith(may_lack)] if may_lack else missing
    if missing or unexpected:
        raise error(f"{where}: weights do not match the architecture; missing {missing[:6]}, unexpected {unexpected[:6]}")


def with_gates(model: SpeechEncoder, gates: GateConfig) -> SpeechEncoder:
    """A copy of ``model`` with the given gates, weights shared by value (gates start open)."""
    config = copy.deepcopy(model.config)
    config.gates = gates
    gated = SpeechEncoder(config)
    load_weights_strictly(gated, model.state_dict(), "with_gates", RuntimeError, may_lack=("log_alpha",))
    return gated
