"""DistillPruneTask: DPHuBERT joint distillation + structured pruning through ESPnet's trainer.

Stage 1 distils a gated copy of the teacher while the sparsity Lagrangian drives the
expected parameter (or MAC) count to the target; stage 2 is the same task with gates off
on the pruned student (``--student_path``), the stage-1 distillation heads carried over
with ``--init_param``. Data: a Kaldi-style ``wav.scp`` of unlabeled 16 kHz speech, read as
``speech`` with type ``sound``.
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable, Collection, Dict, List, Optional, Tuple

import numpy as np
import torch

from espnet_plugin.utils.quiet_import import import_espnet_quietly

import_espnet_quietly()
from espnet2.tasks.abs_task import optim_classes  # noqa: E402
from espnet2.train.class_choices import ClassChoices  # noqa: E402
from espnet2.train.collate_fn import CommonCollateFn  # noqa: E402
from espnet2.utils.nested_dict_action import NestedDictAction  # noqa: E402
from espnet2.utils.types import str2bool, str_or_none  # noqa: E402

from espnet_plugin.distill.model import DistillPruneModel  # noqa: E402
from espnet_plugin.distill.student import build_student  # noqa: E402
from espnet_plugin.importers import import_model  # noqa: E402
from espnet_plugin.models import ConfigError, GateConfig  # noqa: E402
from espnet_plugin.tasks.abs_task import DEFAULT_MAX_NONFINITE_STEPS, PluginTask  # noqa: E402
from espnet_plugin.utils.audio import SAMPLE_RATE, check_scp_audio  # noqa: E402
from espnet_plugin.utils.kaldi_data import read_scp  # noqa: E402

model_choices = ClassChoices(
    "model",
    classes=dict(distill_prune=DistillPruneModel),
    type_check=DistillPruneModel,
    default="distill_prune",
)


class DistillPruneTask(PluginTask):
    num_optimizers: int = 1
    class_choices_list = [model_choices]

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(description="Task related")
        required = parser.get_default("required")
        required += ["teacher_path"]
        group.add_argument(
            "--teacher_path", type=str_or_none, default=None,
            help="teacher checkpoint or model directory, in any format espnet_plugin imports",
        )
        group.add_argument(
            "--student_path", type=str_or_none, default=None,
            help="initialise the student from this compact model directory (stage 2)",
        )
        group.add_argument(
            "--student_conf", action=NestedDictAction, default=dict(),
            help="a smaller student (DistilHuBERT-style): num_layers, num_heads, ffn_dim, init_from_teacher",
        )
        group.add_argument(
            "--gates_conf", action=NestedDictAction, default=dict(),
            help="hard-concrete gates on the student: conv_channels, attention_heads, attention_blocks, "
            "ffn_units, ffn_blocks (bool), init_drop_rate, ffn_units_init_drop_rate",
        )
        group.add_argument("--gate_lr", type=float, default=0.02, help="learning rate of the gate logits")
        group.add_argument(
            "--lambda_lr", type=float, default=0.02, help="learning rate of the Lagrange multipliers (ascent)"
        )
        group.add_argument(
            "--check_audio", type=str2bool, default=True,
            help="check every wav.scp entry's header (readable, non-empty, 16 kHz) before training",
        )
        for class_choices in cls.class_choices_list:
            class_choices.add_arguments(group)

    @classmethod
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable[
        [Collection[Tuple[str, Dict[str, np.ndarray]]]], Tuple[List[str], Dict[str, torch.Tensor]]
    ]:
        return CommonCollateFn(float_pad_value=0.0, int_pad_value=-1)

    @classmethod
    def build_preprocess_fn(
        cls, args: argparse.Namespace, train: bool
    ) -> Optional[Callable[[str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]]:
        if args.check_audio:
            specs = args.train_data_path_and_name_and_type if train else args.valid_data_path_and_name_and_type
            for path, _, kind in specs or []:
                if kind == "sound":
                    check_scp_audio(path)
        return None

    @classmethod
    def required_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return ("speech",)

    @classmethod
    def optional_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return ()

    @classmethod
    def main_worker(cls, args: argparse.Namespace) -> None:
        """A training run counts MACs for its data's mean utterance length unless the config
        says otherwise; the value is written into config.yaml. (A model built from an older
        config.yaml without it keeps the 1 s its budget used.)"""
        if args.model_conf.get("cost_seconds") is None and args.train_shape_file:
            # no logging here: a logging call before ESPnet's basicConfig would silence its INFO log
            args.model_conf["cost_seconds"] = mean_duration(args.train_shape_file[0])
        super().main_worker(args)

    @classmethod
    def build_model(cls, args: argparse.Namespace) -> DistillPruneModel:
        try:
            gates = GateConfig(**args.gates_conf)
        except TypeError as exc:
            raise ConfigError(f"gates_conf: {exc}; accepted keys are {list(GateConfig.__dataclass_fields__)}") from exc
        teacher, provenance = import_model(args.teacher_path)
        logging.info("teacher %s (%s): %.2f M params", args.teacher_path, provenance["source_format"], teacher.num_params() / 1e6)
        student = build_student(teacher, gates, args.student_path, args.student_conf)
        model_class = model_choices.get_class(args.model)
        try:
            model = model_class(student=student, teacher=teacher, **args.model_conf)
        except TypeError as exc:
            raise ConfigError(f"model_conf: {exc}") from exc
        model.nonfinite_guard.max_steps = getattr(args, "max_nonfinite_steps", DEFAULT_MAX_NONFINITE_STEPS)
        logging.info("MACs counted for %.3f s utterances", model.cost_seconds)
        return model

    @classmethod
    def build_optimizers(cls, args: argparse.Namespace, model: torch.nn.Module) -> List[torch.optim.Optimizer]:
        """One optimizer, three groups: weights (optim_conf lr), gate logits, multipliers (ascent)."""
        optim_class = optim_classes.get(args.optim)
        if optim_class is None:
            raise ValueError(f"must be one of {list(optim_classes)}: {args.optim}")
        conf = dict(args.optim_conf)
        lr = conf.pop("lr", 1e-3)
        groups = model.parameter_groups(lr, args.gate_lr, args.lambda_lr)
        optimizer = optim_class(groups, lr=lr, **conf)
        if model.shrink_threshold is not None:
            if args.ngpu > 1 or getattr(args, "distributed", False):
                raise ConfigError(
                    "model_conf.shrink_threshold: the student cannot shrink under DDP / DataParallel (the wrappers "
                    "hold its parameters); train on one device or leave shrink_threshold unset"
                )
            if max(args.keep_nbest_models if isinstance(args.keep_nbest_models, list) else [args.keep_nbest_models]) > 1:
                raise ConfigError(
                    "model_conf.shrink_threshold: checkpoints of a shrinking student differ in shape and cannot be "
                    "averaged: set keep_nbest_models: 1"
                )
            model.attach_optimizer(optimizer)
        if any(group.get("maximize") for group in groups) and "maximize" not in optimizer.defaults:
            # such an optimizer ignores the flag: it would train the multipliers by descent
            ascending = sorted(name for name, cls_ in optim_classes.items() if cls_.__module__.startswith("torch.optim"))
            raise ConfigError(
                f"optim {args.optim}: {optim_class.__name__} does not support maximize=True, which the Lagrange "
                f"multipliers need (gradient ascent); choose one of torch's optimizers: {', '.join(ascending)}"
            )
        return [optimizer]


def mean_duration(shape_file: str) -> float:
    """Mean utterance duration in seconds of an ESPnet shape file (``utt_id num_samples``)."""
    samples = [int(value.split(",")[0]) for _, value in read_scp(shape_file)]
    if not samples:
        raise ValueError(f"{shape_file}: no utterances")
    return round(sum(samples) / len(samples) / SAMPLE_RATE, 3)
