"""Intermediate activations of ESPnet enh models, read with forward hooks and reshaped to the
(batch, frames, channels) layout the distillation losses take.

A feature is named by its module path in ``model.named_modules()`` (``separator.tcn.network.2.0.3``);
the module's output is read (its first tensor when it returns a tuple, unpacked when it is a
``PackedSequence``). ``PATH:input`` reads the module's first positional input instead: in a
residual stack the running sum after block k is the input of block k + 1.

Layouts, and how each becomes (B, T, C):

=========  ==============================  ==========================================
layout     activation                      reshaped
=========  ==============================  ==========================================
``btc``    (batch, time, channels)         as is (RNN / transformer outputs)
``bct``    (batch, channels, time)         transposed (Conv1d outputs: TCN, Conv-TasNet)
``bctf``   (batch, channels, time, freq)   channels and frequency merged: (B, T, C * F) (Conv2d outputs: DC-CRN, DCCRN)
=========  ==============================  ==========================================

Without an explicit layout the time axis is the one whose size equals the number of encoder
frames (3-D: axis 1 -> ``btc``, axis 2 -> ``bct``; 4-D: axis 2 -> ``bctf``); when that is
ambiguous or no axis matches, the error asks for the layout. A complex activation becomes its
real and imaginary parts side by side on the channel axis. A feature with a different frame
rate than the encoder (an explicit layout is then needed) gets frame lengths scaled to its rate.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

LAYOUTS = ("btc", "bct", "bctf")
INPUT_SUFFIX = ":input"


class FeatureError(ValueError):
    """A feature path, layout or activation that cannot be used for distillation."""


@dataclass(frozen=True)
class FeatureSource:
    """Where one feature is read: the module path and whether its output or its input."""

    module: str
    read_input: bool = False

    @classmethod
    def parse(cls, spec: str) -> "FeatureSource":
        if not isinstance(spec, str) or not spec.strip():
            raise FeatureError(f"a feature path must be a non-empty module path, got {spec!r}")
        spec = spec.strip()
        if spec.endswith(INPUT_SUFFIX):
            return cls(spec[: -len(INPUT_SUFFIX)], True)
        return cls(spec)

    def __str__(self) -> str:
        return self.module + (INPUT_SUFFIX if self.read_input else "")


def module_paths(model: nn.Module) -> List[str]:
    return [name for name, _ in model.named_modules() if name]


def find_module(model: nn.Module, path: str, role: str) -> nn.Module:
    """``model``'s submodule at ``path``; FeatureError naming it and listing the paths that exist."""
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    paths = module_paths(model)
    close = difflib.get_close_matches(path, paths, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise FeatureError(
        f"the {role} has no module {path!r}.{hint} Its module paths are:\n  " + "\n  ".join(paths)
    )


def first_tensor(value: Any) -> Optional[Tensor]:
    """The activation a hook sees, as a padded tensor: tensors as they are, a PackedSequence
    unpacked batch-first, the first tensor of a tuple / list (``(output, lengths)`` pairs)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, PackedSequence):
        return pad_packed_sequence(value, batch_first=True)[0]
    if hasattr(value, "real") and hasattr(value, "imag") and not isinstance(value, (list, tuple)):
        return torch.complex(value.real, value.imag)  # torch_complex's ComplexTensor
    if isinstance(value, (list, tuple)):
        for item in value:
            tensor = first_tensor(item)
            if tensor is not None:
                return tensor
    return None


class FeatureRecorder:
    """Forward hooks on ``model`` that keep the first activation of each source per forward pass
    (as the module gave it, in ``values``).

    ``clear()`` before a forward, ``get(source)`` after it. Nothing is recorded while
    ``enabled`` is False. ``remove()`` takes the hooks off the model.
    """

    def __init__(self, model: nn.Module, sources: Sequence[FeatureSource], role: str) -> None:
        self.role = role
        self.enabled = True
        self.values: Dict[FeatureSource, Tensor] = {}
        self.handles = []
        for source in dict.fromkeys(sources):
            module = find_module(model, source.module, role)
            if source.read_input:
                self.handles.append(module.register_forward_pre_hook(self._pre_hook(source)))
            else:
                self.handles.append(module.register_forward_hook(self._hook(source)))

    def _store(self, source: FeatureSource, value: Any) -> None:
        if self.enabled and source not in self.values:
            self.values[source] = value

    def _hook(self, source: FeatureSource):
        def hook(module, args, output):
            self._store(source, output)
        return hook

    def _pre_hook(self, source: FeatureSource):
        def hook(module, args):
            self._store(source, args)
        return hook

    def clear(self) -> None:
        self.values = {}

    def get(self, source: FeatureSource) -> Tensor:
        """The activation as a padded tensor (:func:`first_tensor`); ``values[source]`` is the raw one."""
        if source not in self.values:
            raise FeatureError(f"{self.role} module {source} was not called in the forward pass")
        tensor = first_tensor(self.values[source])
        if tensor is None:
            raise FeatureError(f"{self.role} module {source} gave no tensor (got {type(self.values[source]).__name__})")
        return tensor

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def detect_layout(shape: Sequence[int], num_frames: int, where: str) -> str:
    """The layout of an activation of ``shape`` whose time axis has ``num_frames`` frames."""
    if len(shape) == 3:
        on1, on2 = shape[1] == num_frames, shape[2] == num_frames
        if on1 and on2:
            raise FeatureError(
                f"{where}: shape {tuple(shape)} has {num_frames} (the encoder frames) on both axes 1 and 2; "
                f"give its layout (btc or bct)"
            )
        if on1 or on2:
            return "btc" if on1 else "bct"
    elif len(shape) == 4:
        if shape[2] == num_frames:
            return "bctf"
    else:
        raise FeatureError(f"{where}: a {len(shape)}-D activation {tuple(shape)}; features must be 3-D or 4-D ({LAYOUTS})")
    raise FeatureError(
        f"{where}: no time axis of {num_frames} frames (the encoder frames) in shape {tuple(shape)} at the "
        f"place of {'btc / bct' if len(shape) == 3 else 'bctf'}; give its layout if it has another frame rate"
    )


def to_btc(x: Tensor, layout: str, where: str = "feature") -> Tensor:
    """(batch, time, channels) float from an activation in ``layout`` (table in the module doc)."""
    if layout not in LAYOUTS:
        raise FeatureError(f"{where}: unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
    expected = 4 if layout == "bctf" else 3
    if x.dim() != expected:
        raise FeatureError(f"{where}: layout {layout} needs a {expected}-D activation, got {tuple(x.shape)}")
    if torch.is_complex(x):
        x = torch.cat([x.real, x.imag], dim=1 if layout != "btc" else -1)
    if layout == "bct":
        x = x.transpose(1, 2)
    elif layout == "bctf":
        batch, channels, frames, freq = x.shape
        x = x.permute(0, 2, 1, 3).reshape(batch, frames, channels * freq)
    return x.float()


def frame_mask(lengths: Tensor, num_frames: int) -> Tensor:
    """(B, T) bool, True on the first ``lengths[b]`` frames of utterance b."""
    return torch.arange(num_frames, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def scaled_lengths(lengths: Tensor, from_frames: int, to_frames: int) -> Tensor:
    """Frame lengths at another frame rate: ``ceil(lengths * to / from)``, at most ``to_frames``."""
    if from_frames == to_frames:
        return lengths
    scaled = [min(to_frames, math.ceil(int(n) * to_frames / from_frames)) for n in lengths]
    return torch.tensor(scaled, device=lengths.device, dtype=lengths.dtype)


def feature_and_mask(
    x: Tensor, layout: Optional[str], frame_lengths: Tensor, num_frames: int, where: str
) -> Tuple[Tensor, Tensor, str]:
    """``(features (B, T, C), mask (B, T), layout)`` for one recorded activation.

    ``frame_lengths`` / ``num_frames``: the encoder's valid frames per utterance and its padded
    frame count; the layout is detected from them when not given.
    """
    layout = layout or detect_layout(x.shape, num_frames, where)
    features = to_btc(x, layout, where)
    lengths = scaled_lengths(frame_lengths, num_frames, features.shape[1])
    return features, frame_mask(lengths, features.shape[1]), layout
