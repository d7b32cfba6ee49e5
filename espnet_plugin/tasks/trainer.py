"""ESPnet's Trainer with atomic checkpoint writes and ``--use_amp`` on CPUs.

- ESPnet writes ``checkpoint.pth`` and ``Nepoch.pth`` with a plain ``torch.save``: a run killed
  during the write leaves a truncated file that ``--resume`` cannot read. This trainer routes
  those ``torch.save`` calls through a write to a temporary file in the same directory followed
  by ``os.replace`` (:func:`espnet_plugin.utils.atomic.atomic_write`).
- ESPnet's ``--use_amp`` enters ``torch.cuda.amp.autocast``, which does nothing to CPU ops, so
  on a CPU it silently trains in fp32. With ``--ngpu 0`` this trainer enters CPU autocast in
  bf16 instead (no loss scaling: bf16 has fp32's exponent range). On a CPU with bf16 units
  (AVX512-BF16, AMX) a HuBERT Base stage-1 step takes about 0.65x its fp32 time
  (docs/benchmarks.md); without them torch emulates bf16 and it is slower than fp32.

ESPnet's training loop itself runs unchanged: only the names it looks up in its module
(``torch.save``, ``autocast``, ``GradScaler``) are swapped for the length of a run.
"""
from __future__ import annotations

import contextlib
import logging
import os
import types
from typing import Any, Iterator

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


class _TorchWithAtomicSave(types.ModuleType):
    """``torch`` as ESPnet's trainer module sees it, except for ``save``."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.save = atomic_save

    def __getattr__(self, name: str):
        return getattr(torch, name)


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
    patches = {"torch": _TorchWithAtomicSave()}
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
