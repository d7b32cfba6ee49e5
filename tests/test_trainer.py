"""PluginTrainer's swaps in ESPnet's trainer module: atomic saves, and --use_amp on CPUs."""
import argparse

import espnet2.train.trainer as espnet_trainer
import torch

from espnet_plugin.tasks.trainer import atomic_save, espnet_trainer_patched


def options(use_amp: bool, ngpu: int = 0) -> argparse.Namespace:
    return argparse.Namespace(use_amp=use_amp, ngpu=ngpu)


def test_use_amp_on_a_cpu_trains_under_bf16_autocast():
    before = espnet_trainer.autocast, espnet_trainer.GradScaler
    layer = torch.nn.Linear(8, 4)
    with espnet_trainer_patched(options(use_amp=True)):
        scaler = espnet_trainer.GradScaler()
        # the very call ESPnet's train_one_epoch makes
        with espnet_trainer.autocast(scaler is not None, **espnet_trainer.autocast_args):
            assert torch.is_autocast_enabled("cpu")
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
            y = layer(torch.randn(2, 8))
        assert y.dtype == torch.bfloat16
        loss = y.float().square().mean()
        assert not scaler.is_enabled() and scaler.scale(loss) is loss  # no loss scaling in bf16
        loss.backward()
        assert layer.weight.grad.dtype == torch.float32
        with espnet_trainer.autocast(False):  # ESPnet's validation without --use_amp
            assert not torch.is_autocast_enabled("cpu")
        assert espnet_trainer.torch.save is atomic_save
    assert (espnet_trainer.autocast, espnet_trainer.GradScaler) == before
    assert espnet_trainer.torch is torch


def test_without_use_amp_or_on_a_gpu_only_the_save_changes():
    before = espnet_trainer.autocast, espnet_trainer.GradScaler
    for opts in (options(use_amp=False), options(use_amp=True, ngpu=1)):
        with espnet_trainer_patched(opts):
            assert (espnet_trainer.autocast, espnet_trainer.GradScaler) == before
            assert espnet_trainer.torch.save is atomic_save
        assert espnet_trainer.torch is torch
