"""What every task of the plugin adds to ESPnet's ``AbsTask``.

* checkpoints written atomically, and ``--use_amp`` in bf16 on CPUs (:class:`PluginTrainer`);
* one run per experiment directory (:func:`espnet_plugin.utils.run_lock.exclusive_output_dir`):
  a second run on the same ``--output_dir`` stops before it writes anything;
* ``--max_nonfinite_steps``: how many training steps with a NaN or infinite loss a run
  tolerates (each one skipped by ESPnet and named in a warning) before it stops with a clear
  error; the model reads it (see :class:`espnet_plugin.utils.nonfinite.NonFiniteGuard`);
* the scheduler ``linearwarmupdecaylr`` (:mod:`espnet_plugin.schedulers`) among ESPnet's
  ``--scheduler`` choices.
"""
from __future__ import annotations

import argparse

import torch

from espnet_plugin.utils.quiet_import import import_espnet_quietly

import_espnet_quietly()
from espnet2.tasks.abs_task import AbsTask, scheduler_classes  # noqa: E402

from espnet_plugin.schedulers import LinearWarmupDecayLR  # noqa: E402
from espnet_plugin.tasks.trainer import PluginTrainer  # noqa: E402
from espnet_plugin.utils.run_lock import exclusive_output_dir, is_main_process  # noqa: E402

DEFAULT_MAX_NONFINITE_STEPS = 20

# ESPnet's scheduler table is a module-level dict (keys lower-case): adding to it makes the
# name a valid --scheduler value for every task.
scheduler_classes.setdefault("linearwarmupdecaylr", LinearWarmupDecayLR)


class PluginTask(AbsTask):
    trainer = PluginTrainer

    @classmethod
    def get_parser(cls) -> argparse.ArgumentParser:
        parser = super().get_parser()
        parser.add_argument(
            "--max_nonfinite_steps", type=int, default=DEFAULT_MAX_NONFINITE_STEPS,
            help="stop the run after this many training steps with a NaN or infinite loss (each is skipped)",
        )
        return parser

    @classmethod
    def main_worker(cls, args: argparse.Namespace) -> None:
        if args.output_dir is None or not is_main_process(args):
            super().main_worker(args)
        else:
            with exclusive_output_dir(args.output_dir):
                super().main_worker(args)
        release_process_group()


def release_process_group() -> None:
    """End a finished DDP run's process group on every worker together. Left to the
    interpreter's exit, gloo's threads can abort a worker ("terminate called without an active
    exception") after the run has finished, and torchrun then reports the run as failed. The
    barrier waits for the main worker, which averages the best checkpoints alone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
