"""s3prl upstream experts for espnet-compress models: :class:`UpstreamExpert` (compact
directories or any importable checkpoint, in fp32 or under bf16 autocast) and
:class:`OnnxUpstreamExpert` (an exported ONNX file in onnxruntime, fp32 or int8).

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
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from s3prl.upstream.interfaces import UpstreamBase

#: keys accepted in the optional ``model_config`` (-g) YAML / dict.
MODEL_CONFIG_KEYS = {
    "num_heads": "attention heads, for bare state dicts whose width is not a multiple of 64",
    "precision": "fp32 (default) or bf16: the model runs under torch.autocast(bfloat16); hidden states come back "
    "in the model's dtype",
}
#: the same for ``espnet_compress_onnx``.
ONNX_CONFIG_KEYS = {"threads": "onnxruntime intra- and inter-op threads (default: onnxruntime's choice)"}
PRECISIONS = ("fp32", "bf16")


def read_model_config(
    model_config: Union[None, str, os.PathLike, Dict[str, Any]], keys: Dict[str, str] = MODEL_CONFIG_KEYS,
) -> Dict[str, Any]:
    """The -g / ``model_config`` options: None, a dict, or a YAML file with ``keys``."""
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
        raise ValueError(f"{where}: expected a mapping with keys {sorted(keys)}")
    unknown = sorted(set(model_config) - set(keys))
    if unknown:
        accepted = "; ".join(f"{k}: {v}" for k, v in keys.items())
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
        self.precision = options.pop("precision", "fp32")
        if self.precision not in PRECISIONS:
            raise ValueError(f"espnet_compress upstream: precision {self.precision!r}; expected one of {PRECISIONS}")
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
        parameter = next(self.model.parameters())
        batch, lengths = pad_batch(wavs, self.model.receptive_field, parameter.device, parameter.dtype)
        if self.precision == "bf16":
            with torch.autocast(parameter.device.type, dtype=torch.bfloat16):
                hidden_states, frame_lengths = self.model.extract_hidden_states(batch, lengths)
            hidden_states = [h.to(parameter.dtype) for h in hidden_states]
        else:
            hidden_states, frame_lengths = self.model.extract_hidden_states(batch, lengths)
        return upstream_outputs(hidden_states, frame_lengths)


def pad_batch(wavs: List[Tensor], receptive_field: int, device, dtype) -> Tuple[Tensor, Tensor]:
    """The waveforms zero-padded to the longest (and to ``receptive_field``), and their
    lengths (at least ``receptive_field``); ValueError for an empty batch or waveform."""
    if len(wavs) == 0:
        raise ValueError("espnet_compress upstream: an empty batch")
    for i, wav in enumerate(wavs):
        if not torch.is_tensor(wav) or wav.dim() != 1:
            shape = tuple(wav.shape) if torch.is_tensor(wav) else type(wav).__name__
            raise ValueError(f"espnet_compress upstream: wavs[{i}]: expected a 1-D waveform tensor, got {shape}")
        if wav.numel() == 0:
            raise ValueError(f"espnet_compress upstream: wavs[{i}] is empty (0 samples)")
    lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long, device=device)
    lengths = lengths.clamp(min=receptive_field)
    batch = torch.nn.utils.rnn.pad_sequence([w.to(device=device, dtype=dtype) for w in wavs], batch_first=True)
    if batch.shape[1] < int(lengths.max()):
        batch = torch.nn.functional.pad(batch, (0, int(lengths.max()) - batch.shape[1]))
    return batch, lengths


def upstream_outputs(hidden_states: List[Tensor], frame_lengths: Tensor) -> Dict[str, Any]:
    """s3prl's output dict, every frame past an utterance's own frames set to 0."""
    frames = hidden_states[0].shape[1]
    valid = torch.arange(frames, device=frame_lengths.device)[None, :] < frame_lengths[:, None]
    hidden_states = [h.masked_fill(~valid[..., None], 0.0) for h in hidden_states]
    result: Dict[str, Any] = {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}
    for i, h in enumerate(hidden_states):
        result[f"hidden_state_{i}"] = h
    return result


class OnnxUpstreamExpert(UpstreamBase):
    """s3prl upstream running an ONNX file of ``espnet_plugin.bin.export_onnx`` (fp32 or
    int8) in onnxruntime: the same inputs and outputs as :class:`UpstreamExpert`, so a
    downstream trained on the torch model can be evaluated on the deployed file."""

    def __init__(
        self,
        ckpt: Union[str, os.PathLike],
        model_config: Union[None, str, os.PathLike, Dict[str, Any]] = None,
        **kwargs,
    ) -> None:
        from espnet_plugin.deploy.onnx_export import (
            METADATA_DOWNSAMPLE_RATE,
            METADATA_LAYERS,
            METADATA_RECEPTIVE_FIELD,
            read_metadata,
            session,
        )

        options = read_model_config(model_config, ONNX_CONFIG_KEYS)
        for key in list(kwargs):
            if key in ONNX_CONFIG_KEYS:
                options[key] = kwargs.pop(key)
        super().__init__(**kwargs)
        self.name = "[espnet_compress_onnx]"
        path = Path(str(ckpt)) if ckpt else None
        if path is None or not path.is_file():
            raise FileNotFoundError(f"espnet_compress_onnx upstream: {ckpt}: no such ONNX file (-k PATH.onnx)")
        try:
            self.session = session(path, options.get("threads"))
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            raise ValueError(f"espnet_compress_onnx upstream: {path}: not a loadable ONNX file ({exc})") from exc
        metadata = read_metadata(self.session)
        missing = [k for k in (METADATA_DOWNSAMPLE_RATE, METADATA_RECEPTIVE_FIELD, METADATA_LAYERS) if k not in metadata]
        if missing:
            raise ValueError(
                f"espnet_compress_onnx upstream: {path}: no {missing} in its metadata; export it with "
                "python -m espnet_plugin.bin.export_onnx"
            )
        self.downsample_rate = int(metadata[METADATA_DOWNSAMPLE_RATE])
        self.receptive_field = int(metadata[METADATA_RECEPTIVE_FIELD])
        self.layers = [int(i) for i in metadata[METADATA_LAYERS].split(",")]
        self.path = path

    def get_downsample_rates(self, key: str) -> int:
        return self.downsample_rate

    def forward(self, wavs: List[Tensor]) -> Dict[str, Any]:
        from espnet_plugin.deploy.onnx_export import FRAME_LENGTHS, hidden_state_name, run_onnx

        device = wavs[0].device if len(wavs) and torch.is_tensor(wavs[0]) else torch.device("cpu")
        batch, lengths = pad_batch(wavs, self.receptive_field, torch.device("cpu"), torch.float32)
        outputs = run_onnx(self.session, batch, lengths)
        # hidden states in the order of their index (a file with chosen layers gives those)
        hidden_states = [torch.from_numpy(outputs[hidden_state_name(i)]).to(device) for i in sorted(self.layers)]
        return upstream_outputs(hidden_states, torch.from_numpy(outputs[FRAME_LENGTHS]).to(device))
