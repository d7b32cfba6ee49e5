"""s3prl upstream expert for espnet-compress models (compact directories or any importable checkpoint).

Follows s3prl's upstream interface (``s3prl.upstream.interfaces.UpstreamBase``):
``forward(wavs)`` takes a list of 1-D 16 kHz waveforms and returns a dict whose
``"hidden_states"`` is the list of N + 1 tensors (batch, frames, width) of an N-layer model
(see docs/model_format.md for what index 0 is); ``get_downsample_rates(key)`` is 320 for
the standard CNN.

Padded batches: the waveforms are zero-padded to the longest, the model gets the true
lengths (attention never sees padded frames), and every frame past an utterance's own
``floor((L - 400) / 320) + 1`` frames is set to 0, so an utterance's features do not depend
on what it is batched with (beyond the group-norm CNN of Base models, which normalises over
the padded waveform exactly as fairseq / s3prl's HuBERT expert do). s3prl's consumers then
apply their own length convention (``S3PRLUpstream``: ``floor((L - 1) / 320) + 1`` frames,
padding by repeating the last frame; the legacy Featurizer: ``round(L / 320)``), as they do
for s3prl's own HuBERT.

Utterances shorter than the model's receptive field (400 samples = 25 ms) are zero-padded
to it and give one frame, as ``S3PRLUpstream`` pads too-short batches to 0.05 s; an empty
waveform raises ValueError. (``SpeechEncoder.extract_hidden_states`` itself rejects them.)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import Tensor

from s3prl.upstream.interfaces import UpstreamBase

#: keys accepted in the optional ``model_config`` (-g) YAML / dict.
MODEL_CONFIG_KEYS = {"num_heads": "attention heads, for bare state dicts whose width is not a multiple of 64"}


def read_model_config(model_config: Union[None, str, os.PathLike, Dict[str, Any]]) -> Dict[str, Any]:
    """The -g / ``model_config`` options: None, a dict, or a YAML file with MODEL_CONFIG_KEYS."""
    import yaml

    if model_config is None or model_config == "":
        return {}
    where = "model_config"
    if isinstance(model_config, (str, os.PathLike)):
        path = Path(model_config)
        if not path.is_file():
            raise FileNotFoundError(f"model_config (-g): {path}: no such file")
        where = str(path)
        model_config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(model_config, dict):
        raise ValueError(f"{where}: expected a mapping with keys {sorted(MODEL_CONFIG_KEYS)}")
    unknown = sorted(set(model_config) - set(MODEL_CONFIG_KEYS))
    if unknown:
        accepted = "; ".join(f"{k}: {v}" for k, v in MODEL_CONFIG_KEYS.items())
        raise ValueError(f"{where}: unknown keys {unknown}; accepted: {accepted}")
    return dict(model_config)


def load_encoder(ckpt: Union[str, os.PathLike], num_heads: Optional[int] = None):
    """A SpeechEncoder and its provenance from a compact directory or any importable checkpoint."""
    from espnet_plugin.importers import import_model

    if ckpt is None or str(ckpt) == "":
        raise ValueError(
            "espnet_compress upstream: no checkpoint given; pass a compact model directory or a checkpoint "
            "file (run_downstream: -k PATH; S3PRLUpstream: path_or_url=PATH)"
        )
    if str(ckpt).startswith(("http://", "https://")):
        raise ValueError(f"espnet_compress upstream: {ckpt}: a local path is expected (download the model first)")
    return import_model(ckpt, num_heads=num_heads)


class UpstreamExpert(UpstreamBase):
    """s3prl upstream wrapping an espnet-compress ``SpeechEncoder``."""

    def __init__(
        self,
        ckpt: Union[str, os.PathLike],
        model_config: Union[None, str, os.PathLike, Dict[str, Any]] = None,
        **kwargs,
    ) -> None:
        options = read_model_config(model_config)
        for key in list(kwargs):  # extra_conf of S3PRLUpstream may carry the same options
            if key in MODEL_CONFIG_KEYS:
                options[key] = kwargs.pop(key)
        super().__init__(**kwargs)
        self.name = "[espnet_compress]"
        model, provenance = load_encoder(ckpt, **options)
        if model.config.gates.any:
            raise ValueError(f"{ckpt}: a gated model; prune it to a dense model before using it as an upstream")
        self.model = model
        self.provenance = provenance

    def get_downsample_rates(self, key: str) -> int:
        return self.model.downsample_rate

    def frame_lengths(self, wav_lengths: Tensor) -> Tensor:
        """Valid frames per utterance for waveform lengths (after padding to the receptive field)."""
        return self.model.frame_lengths(wav_lengths.clamp(min=self.model.receptive_field))

    def forward(self, wavs: List[Tensor]) -> Dict[str, Any]:
        if len(wavs) == 0:
            raise ValueError("espnet_compress upstream: an empty batch")
        for i, wav in enumerate(wavs):
            if not torch.is_tensor(wav) or wav.dim() != 1:
                shape = tuple(wav.shape) if torch.is_tensor(wav) else type(wav).__name__
                raise ValueError(f"espnet_compress upstream: wavs[{i}]: expected a 1-D waveform tensor, got {shape}")
            if wav.numel() == 0:
                raise ValueError(f"espnet_compress upstream: wavs[{i}] is empty (0 samples)")
        parameter = next(self.model.parameters())
        device, dtype = parameter.device, parameter.dtype
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long, device=device)
        lengths = lengths.clamp(min=self.model.receptive_field)
        batch = torch.nn.utils.rnn.pad_sequence([w.to(device=device, dtype=dtype) for w in wavs], batch_first=True)
        if batch.shape[1] < int(lengths.max()):
            batch = torch.nn.functional.pad(batch, (0, int(lengths.max()) - batch.shape[1]))
        hidden_states, frame_lengths = self.model.extract_hidden_states(batch, lengths)
        frames = hidden_states[0].shape[1]
        valid = torch.arange(frames, device=device)[None, :] < frame_lengths[:, None]
        hidden_states = [h.masked_fill(~valid[..., None], 0.0) for h in hidden_states]
        result: Dict[str, Any] = {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}
        for i, h in enumerate(hidden_states):
            result[f"hidden_state_{i}"] = h
        return result
