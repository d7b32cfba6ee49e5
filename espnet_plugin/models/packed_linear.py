"""Linear layers of a frozen model with their weights packed once for oneDNN (CPU only).

torch's ``F.linear`` on a CPU (MKL's sgemm) re-packs the weight into its blocked layout on
every call. A frozen model's weights never change, so :meth:`SpeechEncoder.freeze` packs each
one once (oneDNN's inner-product layout) and its no-grad forwards multiply against the packed
copy; the FFN's GELU runs inside the same kernel. At HuBERT Base size, batch 4 x 1 s, this
takes a transformer layer's linear layers from ~18 to ~14 ms and the teacher's forward 1.17x
faster on an AMD EPYC (``python bench/bench_frozen_teacher.py``, docs/benchmarks.md). Results
equal ``F.linear`` up to float rounding (a different summation order). The packed copies
double the weights' memory.

Under CPU autocast in bf16 (``--use_amp`` on a CPU) the same holds for a bf16 copy of the
weight, packed once, instead of the cast autocast would make of the fp32 weight at every call
(autocast caches casts only of weights that take gradients).

Everything else - gradients on, other autocast dtypes, other dtypes or devices, a layer not
frozen - runs ``F.linear`` as before.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

_CACHE = "_packed_weight"


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedWeight:
    """The packed copies (one per compute dtype) of one Linear's weight, packed again when the
    weight changes (a new tensor, or an in-place update such as ``load_state_dict``). Copies of
    the model start without them: packed tensors are opaque to deepcopy and pickling."""

    def __init__(self) -> None:
        self._packed: Dict[torch.dtype, Tuple[Tuple[torch.Tensor, int, int], torch.Tensor]] = {}

    def __deepcopy__(self, memo) -> "PackedWeight":
        return PackedWeight()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def get(self, weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = (weight, weight.data_ptr(), weight._version)
        cached = self._packed.get(dtype)
        if cached is None or cached[0][0] is not weight or cached[0][1:] != key[1:]:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), None)
            self._packed[dtype] = cached = (key, packed)
        return cached[1]


def pack_frozen_linears(module: nn.Module) -> None:
    """Let every ``nn.Linear`` in ``module`` use a packed weight in no-grad CPU forwards (a
    no-op where oneDNN is missing)."""
    if not _onednn_available():
        return
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            setattr(layer, _CACHE, PackedWeight())


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype a packed product runs in here: fp32, bf16 under CPU bf16 autocast, or None
    (``F.linear``)."""
    if x.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    if torch.is_autocast_enabled("cpu"):
        bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
        return torch.bfloat16 if bf16 else None
    return torch.float32 if x.dtype == torch.float32 else None


def linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """``layer(x)``, followed by GELU if asked; through the packed weight where it applies."""
    cache: Optional[PackedWeight] = layer.__dict__.get(_CACHE)
    weight = layer.weight
    dtype = None if cache is None or torch.is_grad_enabled() or weight.requires_grad else _compute_dtype(x, weight)
    if dtype is None:
        y = F.linear(x, weight, layer.bias)
        return F.gelu(y) if gelu else y
    bias = None if layer.bias is None else layer.bias.to(dtype)
    packed = cache.get(weight, dtype)
    if gelu:
        return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, bias, "none", [], "")
