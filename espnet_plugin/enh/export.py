"""The student of an ``enh_distill_train`` checkpoint as a plain ESPnet enh model.

    python -m espnet_plugin.enh.export --config exp/student/config.yaml \
        --checkpoint exp/student/valid.loss.best.pth --output_dir exp/student/export

writes ``config.yaml`` (the training config without the distillation options: an
``EnhancementTask`` config) and ``model.pth`` (the ``student.*`` weights without the prefix),
which ``espnet2.bin.enh_inference --train_config --model_file`` loads like any ``enh_train``
model. ``--checkpoint`` may be a model file (``valid.loss.best.pth``, ``Nepoch.pth``) or the
trainer's ``checkpoint.pth``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Tuple, Union

import torch
import yaml

from espnet_plugin.utils.atomic import atomic_write

PathLike = Union[str, Path]
PREFIX = "student."


def student_state(checkpoint: PathLike) -> Dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "model" in state and isinstance(state["model"], dict) and "reporter" in state:
        state = state["model"]  # the trainer's checkpoint.pth
    student = {key[len(PREFIX):]: value for key, value in state.items() if key.startswith(PREFIX)}
    if not student:
        raise ValueError(f"{checkpoint}: no {PREFIX}* weights: not an enh_distill_train checkpoint")
    return student


def export_student(config: PathLike, checkpoint: PathLike, output_dir: PathLike) -> Tuple[Path, Path]:
    """``(config.yaml, model.pth)`` of the student under ``output_dir``."""
    from espnet_plugin.tasks.enh_distill import DISTILL_OPTIONS

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train_config = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    enh_config = {key: value for key, value in train_config.items() if key not in DISTILL_OPTIONS}
    state = student_state(checkpoint)
    config_out = atomic_write(
        output_dir / "config.yaml",
        lambda tmp: Path(tmp).write_text(yaml.safe_dump(enh_config, sort_keys=False), encoding="utf-8"),
    )
    model_out = atomic_write(output_dir / "model.pth", lambda tmp: torch.save(state, tmp))
    return config_out, model_out


def main(cmd=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config.yaml of the enh_distill_train run")
    parser.add_argument("--checkpoint", required=True, help="its model file or checkpoint.pth")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(cmd)
    config, model = export_student(args.config, args.checkpoint, args.output_dir)
    print(f"wrote {config} and {model}")


if __name__ == "__main__":
    main()
