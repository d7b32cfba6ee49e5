"""Figures of an exported DistillPruneTask run: kept structure per layer, and the training
history (sparsity, Lagrange multipliers, losses) read from ESPnet's reporter state."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch


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
        ("sparsity", ["train/expected_sparsity", "train/target_sparsity", "valid/expected_sparsity",
                      "train/macs_expected_sparsity", "train/macs_target_sparsity"]),
        ("Lagrange multipliers", ["train/lambda1", "train/lambda2", "train/macs_lambda1", "train/macs_lambda2"]),
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
