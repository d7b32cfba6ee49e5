"""Export a DistillPruneTask checkpoint: prune (if gated) and write the compact model.

    python -m espnet_plugin.bin.export_model --config exp/stage1/config.yaml \
        --checkpoint exp/stage1/latest.pth --output_dir exp/stage1_pruned

Writes, in ``output_dir``: the compact model (``config.yaml`` + ``model.safetensors``);
``distill_loss.pth``, the distillation heads / projections for the next stage's
``--init_param``; ``summary.yaml`` (params, MACs, per-layer heads / FFN units / conv
channels, sparsity against the teacher and the target); ``architecture.png``; and, when the
experiment directory has ESPnet's ``checkpoint.pth``, ``training.png`` (sparsity, lambdas
and losses per epoch).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml

from espnet_plugin.compact import save_model
from espnet_plugin.models.summary import architecture_summary
from espnet_plugin.pruning import prune_model


def export(config: Path, checkpoint: Path, output_dir: Path) -> Dict[str, Any]:
    from espnet_plugin.tasks.distill_prune import DistillPruneTask

    model, args = DistillPruneTask.build_model_from_file(config, checkpoint, device="cpu")
    model.eval()
    student = model.student
    dense = prune_model(student) if student.config.gates.any else student
    teacher = model.teacher
    summary = architecture_summary(dense)
    teacher_summary = architecture_summary(teacher)
    summary.update(
        teacher_params=teacher_summary["params"],
        teacher_macs_per_second=teacher_summary["macs_per_second"],
        params_sparsity=round(1.0 - summary["params"] / teacher_summary["params"], 6),
        macs_sparsity=round(1.0 - summary["macs_per_second"] / teacher_summary["macs_per_second"], 6),
    )
    if model.lagrangian is not None:
        summary["target"] = {"metric": model.sparsity_metric, "sparsity": model.lagrangian.target_sparsity}
    elif args.student_path and (Path(args.student_path) / "summary.yaml").is_file():
        # stage 2 has no regulariser: keep the budget its stage-1 student was pruned to
        previous = yaml.safe_load((Path(args.student_path) / "summary.yaml").read_text(encoding="utf-8")) or {}
        if "target" in previous:
            summary["target"] = previous["target"]
    provenance = {
        "source": str(args.teacher_path),
        "checkpoint": str(checkpoint),
        "training_config": str(config),
        "sparsity": summary["params_sparsity"],
        "macs_sparsity": summary["macs_sparsity"],
    }
    save_model(dense, output_dir, provenance)
    heads = {f"distill_loss.{k}": v for k, v in model.distill_loss.state_dict().items()}
    torch.save(heads, output_dir / "distill_loss.pth")
    (output_dir / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False), encoding="utf-8")
    plot_architecture(teacher_summary, summary, output_dir / "architecture.png")
    trainer_state = checkpoint.parent / "checkpoint.pth"
    if trainer_state.is_file():
        history = training_history(trainer_state)
        if history:
            plot_training(history, output_dir / "training.png")
    return summary


def plot_architecture(teacher: Dict[str, Any], student: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    panels = [
        ("conv channels", teacher["conv_channels"], student["conv_channels"], "conv layer"),
        ("attention heads", [l["heads"] for l in teacher["layers"]], [l["heads"] for l in student["layers"]], "layer"),
        ("FFN units", [l["ffn_units"] for l in teacher["layers"]], [l["ffn_units"] for l in student["layers"]], "layer"),
    ]
    for ax, (title, full, kept, xlabel) in zip(axes, panels):
        # a DistilHuBERT-style student may have fewer layers than the teacher
        ax.bar(range(1, len(full) + 1), full, color="#d0d0d0", label="teacher")
        ax.bar(range(1, len(kept) + 1), kept, color="#2c7fb8", label="student")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_xticks(list(range(1, max(len(full), len(kept)) + 1)))
    axes[0].legend()
    fig.suptitle(
        f"{student['params'] / 1e6:.2f} M of {teacher['params'] / 1e6:.2f} M params, "
        f"{student['macs_per_second'] / 1e9:.2f} of {teacher['macs_per_second'] / 1e9:.2f} G MACs/s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_history(trainer_state: Path) -> Dict[str, List[float]]:
    """Per-epoch train / valid values of every reported statistic (ESPnet's reporter)."""
    state = torch.load(trainer_state, map_location="cpu", weights_only=False)
    stats = state.get("reporter", {}).get("stats", {})
    history: Dict[str, List[float]] = {"epoch": []}
    for epoch in sorted(stats):
        history["epoch"].append(epoch)
        for phase in ("train", "valid"):
            for key, value in stats[epoch].get(phase, {}).items():
                if key in ("time", "total_count") or not isinstance(value, (int, float)):
                    continue
                history.setdefault(f"{phase}/{key}", []).append(float(value))
    return history if history["epoch"] else {}


def plot_training(history: Dict[str, List[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("sparsity", ["train/expected_sparsity", "train/target_sparsity", "valid/expected_sparsity"]),
        ("Lagrange multipliers", ["train/lambda1", "train/lambda2"]),
        ("losses", ["train/distill", "valid/distill", "train/loss", "valid/loss"]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    epochs = history["epoch"]
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            if key in history and len(history[key]) == len(epochs):
                ax.plot(epochs, history[key], marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="the experiment's config.yaml")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a model file of the experiment (*.pth)")
    parser.add_argument("--output_dir", type=Path, required=True)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in (args.config, args.checkpoint):
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    summary = export(args.config, args.checkpoint, args.output_dir)
    logging.info(
        "exported %s: %.3f M params (%.1f %% sparsity), %.3f G MACs/s (%.1f %% sparsity)",
        args.output_dir,
        summary["params"] / 1e6,
        100 * summary["params_sparsity"],
        summary["macs_per_second"] / 1e9,
        100 * summary["macs_sparsity"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
