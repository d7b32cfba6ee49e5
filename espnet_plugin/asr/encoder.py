"""A compact model directory as an ESPnet ASR encoder (``encoder: espnet_compress``).

The encoder reads raw 16 kHz waveforms, so ESPnet's own front-end is switched off with
``input_size: 1`` (and ``normalize: null``, ``specaug: null``: both expect features).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder

from espnet_plugin.compact import load_model


class CompressedEncoder(AbsEncoder):
    """A compressed (or imported) speech encoder loaded from a compact model directory.

    Args:
        input_size: given by ESPnet; must be 1 (raw waveforms, ``input_size: 1`` in the config).
        model_dir: the compact model directory (``config.yaml`` + ``model.safetensors``).
        layer: ``None``: a learned weighted sum of all N + 1 hidden states (softmax over
            one weight per layer, initialised uniform); an int: that hidden state alone
            (0 = feature projection, i = output of layer i, negative counts from the end).
        freeze: ``True``: the upstream gets no gradient and stays in eval mode (the layer
            weights still learn); ``False``: fine-tune it with the rest of the model.

    ``forward(xs_pad, ilens)`` takes waveforms ``(B, T)`` or ``(B, T, 1)`` and returns
    ``(features (B, frames, width), frame_lengths, None)``.
    """

    def __init__(
        self,
        input_size: int = 1,
        model_dir: Optional[str] = None,
        layer: Optional[int] = None,
        freeze: bool = True,
    ) -> None:
        super().__init__()
        if model_dir is None:
            raise ValueError("encoder espnet_compress: encoder_conf.model_dir (a compact model directory) is required")
        if input_size != 1:
            raise ValueError(
                f"encoder espnet_compress reads raw 16 kHz waveforms, but got input_size={input_size} "
                "(the output size of an ESPnet front-end): set `input_size: 1` (this disables the "
                "front-end) and `normalize: null` in the ASR config"
            )
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise ValueError(f"encoder_conf.layer: expected null or an integer, got {layer!r}")
        if not isinstance(freeze, bool):
            raise ValueError(f"encoder_conf.freeze: expected true or false, got {freeze!r}")
        self.model_dir = str(model_dir)
        self.upstream = load_model(self.model_dir)
        self.num_hidden_states = len(self.upstream.config.layers) + 1
        if layer is not None:
            if not -self.num_hidden_states <= layer < self.num_hidden_states:
                raise ValueError(
                    f"encoder_conf.layer: {layer} is out of range; {self.model_dir} has "
                    f"{self.num_hidden_states} hidden states (0..{self.num_hidden_states - 1})"
                )
            layer %= self.num_hidden_states
            self.layer_weights = None
        else:
            self.layer_weights = torch.nn.Parameter(torch.zeros(self.num_hidden_states))
        self.layer = layer
        self.freeze = freeze
        if freeze:
            self.upstream.requires_grad_(False)
        self.train()

    def output_size(self) -> int:
        return self.upstream.config.embed_dim

    def train(self, mode: bool = True) -> "CompressedEncoder":
        super().train(mode)
        if self.freeze:
            self.upstream.eval()
        return self

    def reload_pretrained_parameters(self) -> None:
        """Called by ESPnet's ``--init``: the upstream goes back to the compact model's weights."""
        self.upstream.load_state_dict(load_model(self.model_dir).state_dict())

    def hidden_states(self, xs_pad: torch.Tensor, ilens: torch.Tensor):
        if xs_pad.dim() == 3 and xs_pad.size(-1) == 1:
            xs_pad = xs_pad.squeeze(-1)
        if xs_pad.dim() != 2:
            raise ValueError(
                f"encoder espnet_compress expects raw waveforms (batch, samples) or (batch, samples, 1), got "
                f"shape {tuple(xs_pad.shape)}: set `input_size: 1` and `normalize: null` in the ASR config"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return self.upstream.extract_hidden_states(xs_pad, ilens.to(xs_pad.device))

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, None]:
        hidden_states, lengths = self.hidden_states(xs_pad, ilens)
        if self.layer is not None:
            features = hidden_states[self.layer]
        else:
            weights = torch.softmax(self.layer_weights, dim=0)
            features = (weights.view(-1, 1, 1, 1) * torch.stack(hidden_states, dim=0)).sum(dim=0)
        return features, lengths, None
