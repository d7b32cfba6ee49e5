"""EnhDistillTask: two-step knowledge distillation of ESPnet speech-enhancement models.

The student is any ESPnet enh model, configured exactly as for ``espnet2.bin.enh_train``
(``encoder`` / ``separator`` / ``decoder`` / ``criterions`` / ``model_conf``: ESPnet's own
``ClassChoices``); the teacher is any ``enh_train`` experiment (``--teacher_config``,
``--teacher_model_file``), frozen. The distillation options:

* ``--stage kd | supervised | one_step``: step 1 (distillation only; data: the noisy
  ``wav.scp`` as ``speech_mix``, no reference), step 2 (ESPnet's criterions, initialised with
  ``--init_param STEP1/valid.loss.best.pth:student:student``, ``--kd_weight`` keeps a
  distillation term), or the one-step mix ``alpha * L_kd + (1 - alpha) * L_sup``;
* ``--feature_pairs``: ``[{teacher: PATH, student: PATH, loss: NAME, conf: {...}, weight: W}]``,
  module paths read with forward hooks (``PATH:input`` for a module's input);
* ``--output_kd {weight: W, criterion: si_snr}``: the student's output against the teacher's.

Because the student's options are ``EnhancementTask``'s own, the student of a checkpoint is a
plain ESPnet enh model: ``python -m espnet_plugin.enh.export`` writes it for
``espnet2.bin.enh_inference``. See docs/enhancement.md.
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable, Collection, Dict, List, Optional, Tuple

import numpy as np
import torch

from espnet_plugin.utils.quiet_import import import_espnet_quietly

import_espnet_quietly()
from espnet2.tasks.enh import EnhancementTask  # noqa: E402
from espnet2.utils.nested_dict_action import NestedDictAction  # noqa: E402
from espnet2.utils.types import str2bool, str_or_none  # noqa: E402

from espnet_plugin.enh.model import STAGES, EnhDistillModel  # noqa: E402
from espnet_plugin.tasks.abs_task import DEFAULT_MAX_NONFINITE_STEPS, PluginTask  # noqa: E402
from espnet_plugin.utils.audio import check_scp_audio  # noqa: E402

#: the options of this task that are not EnhancementTask's (left out of an exported student config)
DISTILL_OPTIONS = (
    "teacher_config", "teacher_model_file", "stage", "feature_pairs", "alpha", "kd_weight", "output_kd",
    "check_audio", "max_nonfinite_steps",
)


class EnhDistillTask(PluginTask):
    num_optimizers: int = 1
    # --encoder, --separator, --decoder, --mask_module, --preprocessor, --diffusion_model: ESPnet's own tables
    class_choices_list = list(EnhancementTask.class_choices_list)

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser) -> None:
        EnhancementTask.add_task_arguments(parser)  # the student: --init, --model_conf, --criterions, ...
        group = parser.add_argument_group(description="Distillation related")
        group.add_argument("--teacher_config", type=str_or_none, default=None,
                           help="config.yaml of the teacher's espnet2.bin.enh_train experiment")
        group.add_argument("--teacher_model_file", type=str_or_none, default=None,
                           help="the teacher's model file (e.g. valid.loss.best.pth)")
        group.add_argument("--stage", type=str, default="kd", choices=STAGES,
                           help="kd: distillation only (step 1, no reference read); supervised: the student's "
                           "criterions (step 2; --init_param STEP1.pth:student:student); one_step: "
                           "alpha * L_kd + (1 - alpha) * L_sup")
        group.add_argument("--feature_pairs", action=NestedDictAction, default=[],
                           help="[{teacher: PATH, student: PATH, loss: NAME, conf: {...}, weight: W, "
                           "teacher_layout / student_layout: btc|bct|bctf}]")
        group.add_argument("--alpha", type=float, default=0.5, help="one_step: weight of L_kd")
        group.add_argument("--kd_weight", type=float, default=0.0, help="supervised: weight of a kept L_kd")
        group.add_argument("--output_kd", action=NestedDictAction, default=dict(),
                           help="output distillation in L_kd: {weight: 1.0, criterion: si_snr|snr|l1}")
        group.add_argument("--check_audio", type=str2bool, default=True,
                           help="check every sound scp entry's header first: readable, non-empty, 16 kHz "
                           "(the rate of this package's models; ESPnet's --sample_rate defaults to 8000 and "
                           "is not used for this check)")

    @classmethod
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable[
        [Collection[Tuple[str, Dict[str, np.ndarray]]]], Tuple[List[str], Dict[str, torch.Tensor]]
    ]:
        return EnhancementTask.build_collate_fn(args, train)

    @classmethod
    def build_preprocess_fn(
        cls, args: argparse.Namespace, train: bool
    ) -> Optional[Callable[[str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]]:
        if getattr(args, "check_audio", False):
            specs = args.train_data_path_and_name_and_type if train else args.valid_data_path_and_name_and_type
            for path, _, kind in specs or []:
                if kind == "sound":
                    check_scp_audio(path)
        return EnhancementTask.build_preprocess_fn(args, train)

    @classmethod
    def required_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return ("speech_mix",)

    @classmethod
    def optional_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        names = EnhancementTask.optional_data_names(train, inference)
        return ("speech_ref1",) + tuple(name for name in names if name != "speech_mix")

    @classmethod
    def build_model(cls, args: argparse.Namespace) -> EnhDistillModel:
        stage = getattr(args, "stage", "kd")
        if stage != "kd":
            names = [name for _, name, _ in getattr(args, "train_data_path_and_name_and_type", None) or []]
            if names and "speech_ref1" not in names:
                raise ValueError(f"--stage {stage} trains on the clean reference: add a spk1.scp as speech_ref1 "
                                 f"to --train_data_path_and_name_and_type (got {names})")
        student = EnhancementTask.build_model(args)
        teacher = None
        config, model_file = getattr(args, "teacher_config", None), getattr(args, "teacher_model_file", None)
        if (config is None) != (model_file is None):
            raise ValueError("give both --teacher_config and --teacher_model_file, or neither")
        if config is not None:
            teacher, _ = EnhancementTask.build_model_from_file(config, model_file, device="cpu")
            logging.info("teacher %s: %.3f M params", model_file, sum(p.numel() for p in teacher.parameters()) / 1e6)
        logging.info("student: %d params", sum(p.numel() for p in student.parameters()))
        model = EnhDistillModel(
            student,
            teacher,
            stage=stage,
            feature_pairs=getattr(args, "feature_pairs", None),
            alpha=getattr(args, "alpha", 0.5),
            kd_weight=getattr(args, "kd_weight", 0.0),
            output_kd=getattr(args, "output_kd", None),
        )
        model.nonfinite_guard.max_steps = getattr(args, "max_nonfinite_steps", DEFAULT_MAX_NONFINITE_STEPS)
        return model
