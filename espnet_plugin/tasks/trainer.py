"""ESPnet's Trainer with atomic checkpoint writes, gradient clipping and ``--use_amp`` on CPUs.

- ESPnet writes ``checkpoint.pth`` and ``Nepoch.pth`` with a plain ``torch.save``: a run killed
  during the write leaves a truncated file that ``--resume`` cannot read. This trainer routes
  those ``torch.save`` calls through a write to a temporary file in the same directory followed
  by ``os.replace`` (:func:`espnet_plugin.utils.atomic.atomic_write`).
- ESPnet clips gradients with ``torch.nn.utils.clip_grad_norm_``, which multiplies every
  gradient by the clip coefficient even when that is 1 (so that GPUs need not synchronise to
  check). On a CPU the check is free; :func:`clip_grad_norm_` skips the multiplication then, a
  pass over every gradient (~17 ms of a HuBERT Base step on 2 cores), with the same result.
- ESPnet's ``--use_amp`` enters ``torch.cuda.amp.autocast``, which does nothing to CPU ops, so
  on a CPU it silently trains in fp32. With ``--ngpu 0`` this trainer enters CPU autocast in
  bf16 instead (no loss scaling: bf16 has fp32's exponent range). On a CPU with bf16 units
  (AVX512-BF16, AMX) a HuBERT Base stage-1 step takes about 0.65x its fp32 time
  (docs/benchmarks.md); without them torch emulates bf16 and it is slower than fp32.

ESPnet's training loop itself runs unchanged: only the names it looks up in its module
(``torch.save``, ``torch.nn.utils.clip_grad_norm_``, ``autocast``, ``GradScaler``) are swapped
for the length of a run.
"""
from __future__ import annotations

import contextlib
import logging
import os
import types
from typing import Any, Iterator, Optional

import espnet2.train.trainer as espnet_trainer
import torch
from espnet2.train.trainer import Trainer

from espnet_plugin.utils.atomic import atomic_write
from espnet_plugin.utils.machine import has_bf16_units


def atomic_save(obj, f, *args, **kwargs) -> None:
    if not isinstance(f, (str, os.PathLike)):
        torch.save(obj, f, *args, **kwargs)
        return
    atomic_write(f, lambda tmp: torch.save(obj, tmp, *args, **kwargs))


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: Optional[bool] = None) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``, without multiplying CPU gradients by a coefficient of 1."""
    parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    on_cpu = all(g.device.type == "cpu" for g in grads)
    if not on_cpu or float(torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)) != 1.0:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total, foreach)
    return total


class _ModuleView(types.ModuleType):
    """A module as ESPnet's trainer module sees it: ``module`` with some attributes replaced."""

    def __init__(self, module: types.ModuleType, **replaced: Any) -> None:
        super().__init__(module.__name__)
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def torch_for_espnet_trainer() -> _ModuleView:
    """``torch`` with the atomic ``save`` and the CPU-aware ``nn.utils.clip_grad_norm_``."""
    utils = _ModuleView(torch.nn.utils, clip_grad_norm_=clip_grad_norm_)
    return _ModuleView(torch, save=atomic_save, nn=_ModuleView(torch.nn, utils=utils))


def cpu_autocast(enabled: bool = True, **_cuda_args) -> torch.autocast:
    """What ESPnet's ``autocast(use_amp, **autocast_args)`` becomes on a CPU: bf16 autocast."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def disabled_grad_scaler(*_args, **_kwargs) -> torch.amp.GradScaler:
    """bf16 needs no loss scaling; a disabled scaler passes ESPnet's calls straight through."""
    return torch.amp.GradScaler("cpu", enabled=False)


@contextlib.contextmanager
def espnet_trainer_patched(options: Any) -> Iterator[None]:
    """Swap the names ESPnet's trainer module looks up (see the module docstring) and restore
    them afterwards; ``options``: ESPnet's trainer options (``use_amp``, ``ngpu``)."""
    patches = {"torch": torch_for_espnet_trainer()}
    if getattr(options, "use_amp", False) and getattr(options, "ngpu", 0) == 0:
        patches.update(autocast=cpu_autocast, GradScaler=disabled_grad_scaler)
        logging.info("--use_amp on a CPU: forward passes under torch.autocast('cpu', torch.bfloat16)")
        if not has_bf16_units():
            logging.warning("--use_amp: this CPU has no bf16 units (AVX512-BF16 / AMX); torch emulates bf16, "
                            "which is slower than fp32 here")
    originals = {name: getattr(espnet_trainer, name) for name in patches}
    for name, value in patches.items():
        setattr(espnet_trainer, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(espnet_trainer, name, value)


class PluginTrainer(Trainer):
    @classmethod
    def run(cls, *args, trainer_options, **kwargs) -> None:
        with espnet_trainer_patched(trainer_options):
            super().run(*args, trainer_options=trainer_options, **kwargs)
