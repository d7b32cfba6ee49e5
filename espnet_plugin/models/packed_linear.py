"""Linear layers of a frozen model with their weights packed once for oneDNN (CPU only).

torch's ``F.linear`` on a CPU (MKL's sgemm) re-packs the weight into its blocked layout on
every call. A frozen model's weights never change, so :meth:`SpeechEncoder.freeze` packs each
one once (oneDNN's inner-product layout) and its no-grad forwards multiply against the packed
copy; the FFN's GELU runs inside the same kernel. At HuBERT Base size, batch 4 x 1 s, this
takes a transformer layer's linear layers from ~18 to ~14 ms and the teacher's forward 1.17x
faster on an AMD EPYC (``python bench/bench_frozen_teacher.py``, docs/benchmarks.md). Results
equal ``F.linear`` up to float rounding (a different summation order). The packed copies
double the weights' memory.

Everything else - gradients on, autocast, other dtypes or devices, a layer not frozen - runs
``F.linear`` as before.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

_CACHE = "_packed_weight"


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedWeight:
    """The packed copy of one Linear's weight, packed again when the weight changes (a new
    tensor, or an in-place update such as ``load_state_dict``). Copies of the model start
    without it: the packed tensor is opaque to deepcopy and pickling."""

    def __init__(self) -> None:
        self._key: Optional[Tuple[torch.Tensor, int, int]] = None
        self._packed: Optional[torch.Tensor] = None

    def __deepcopy__(self, memo) -> "PackedWeight":
        return PackedWeight()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        key = self._key
        if key is None or key[0] is not weight or key[1:] != (weight.data_ptr(), weight._version):
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
            self._key = (weight, weight.data_ptr(), weight._version)
        return self._packed


def pack_frozen_linears(module: nn.Module) -> None:
    """Let every ``nn.Linear`` in ``module`` use a packed weight in no-grad CPU forwards (a
    no-op where oneDNN is missing)."""
    if not _onednn_available():
        return
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            setattr(layer, _CACHE, PackedWeight())


def linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """``layer(x)``, followed by GELU if asked; through the packed weight where it applies."""
    cache: Optional[PackedWeight] = layer.__dict__.get(_CACHE)
    weight = layer.weight
    if (
        cache is None
        or torch.is_grad_enabled()
        or weight.requires_grad
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
    ):
        y = F.linear(x, weight, layer.bias)
        return F.gelu(y) if gelu else y
    if gelu:
        return torch.ops.mkldnn._linear_pointwise(x, cache.get(weight), layer.bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x, cache.get(weight), layer.bias, "none", [], "")
