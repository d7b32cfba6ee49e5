"""ESPnet's Trainer with atomic checkpoint writes.

ESPnet writes ``checkpoint.pth`` and ``Nepoch.pth`` with a plain ``torch.save``: a run
killed during the write leaves a truncated file that ``--resume`` cannot read. This trainer
runs ESPnet's own loop unchanged but routes its ``torch.save`` calls through a write to a
temporary file in the same directory followed by ``os.replace``
(:func:`espnet_plugin.utils.atomic.atomic_write`).
"""
from __future__ import annotations

import os
import types

import espnet2.train.trainer as espnet_trainer
import torch
from espnet2.train.trainer import Trainer

from espnet_plugin.utils.atomic import atomic_write


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


class AtomicCheckpointTrainer(Trainer):
    @classmethod
    def run(cls, *args, **kwargs) -> None:
        original = espnet_trainer.torch
        espnet_trainer.torch = _TorchWithAtomicSave()
        try:
            super().run(*args, **kwargs)
        finally:
            espnet_trainer.torch = original
