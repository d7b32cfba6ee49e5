"""PluginTrainer's swaps in ESPnet's trainer module: atomic saves, CPU gradient clipping, and --use_amp on CPUs."""
import argparse

import espnet2.train.trainer as espnet_trainer
import torch

import pytest

from espnet_plugin.tasks.trainer import atomic_save, clip_grad_norm_, espnet_trainer_patched


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


@pytest.mark.parametrize("scale", [1e-3, 10.0], ids=["under_max_norm", "over_max_norm"])
def test_clipping_equals_torch_and_is_what_espnet_calls(scale):
    """The same norm and the same gradients as torch's clip_grad_norm_; under the max norm the
    gradients are left untouched (no multiplication by 1)."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(16, 8), torch.nn.Linear(8, 4)]
    for layer in layers:
        for p in layer.parameters():
            p.grad = torch.randn_like(p) * scale
    params = [p for layer in layers for p in layer.parameters()]
    reference = [p.grad.clone() for p in params]
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, g in zip(ref_params, reference):
        p.grad = g.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(ref_params, max_norm=1.0)
    versions = [p.grad._version for p in params]
    with espnet_trainer_patched(options(use_amp=False)):
        assert espnet_trainer.torch.nn.utils.clip_grad_norm_ is clip_grad_norm_  # the call ESPnet makes
        assert espnet_trainer.torch.nn.Module is torch.nn.Module and espnet_trainer.torch.nn.utils.rnn is not None
        norm = espnet_trainer.torch.nn.utils.clip_grad_norm_(iter(params), max_norm=1.0, norm_type=2.0)
    torch.testing.assert_close(norm, expected_norm, rtol=0, atol=0)
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    changed = [p.grad._version != v for p, v in zip(params, versions)]
    assert all(changed) if scale > 1 else not any(changed)
    assert espnet_trainer.torch is torch
