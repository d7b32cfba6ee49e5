"""Export a DistillPruneTask checkpoint: prune (if gated) and write the compact model.

Writes, in ``output_dir``: the compact model (``config.yaml`` + ``model.safetensors``);
``distill_loss.pth``, the distillation heads / projections for the next stage's
``--init_param``; ``summary.yaml`` (params, MACs, per-layer heads / FFN units / conv
channels, sparsity against the teacher and the target, and ``budget_fit``: how far the
deterministic masks were from the budget and how many units the export moved to meet it);
``architecture.png``; and, when the experiment directory has ESPnet's ``checkpoint.pth``,
``training.png`` (sparsity, lambdas and losses per epoch). Command line: ``python -m espnet_plugin.bin.export_model``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import yaml

from espnet_plugin.compact import save_model
from espnet_plugin.distill.report import plot_architecture, plot_training, training_history
from espnet_plugin.models.model import load_weights_strictly
from espnet_plugin.models.summary import architecture_summary
from espnet_plugin.pruning import prune_model
from espnet_plugin.pruning.prune import BudgetFit, KeepRule, fit_to_budget


def budget_keep(model, tolerance: float) -> Tuple[KeepRule, BudgetFit]:
    """The units to export so that the stage-1 budget's metric lands within ``tolerance`` of
    its target (:func:`fit_to_budget`)."""
    target = (1.0 - model.lagrangian.target_sparsity) * model.reference_cost
    return fit_to_budget(model.student, model.budget_cost, target, tolerance)


def export(config: Path, checkpoint: Path, output_dir: Path, fit_tolerance: Optional[float] = 0.005) -> Dict[str, Any]:
    """``fit_tolerance``: move a gated student's masks until the budget's metric is within this
    fraction of its target (None: export the deterministic masks as they are)."""
    from espnet_plugin.tasks.distill_prune import DistillPruneTask

    model, args = DistillPruneTask.build_model_from_file(config, None, device="cpu")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.adopt_architecture(state)  # a student that shrank during training
    # ESPnet's own loader is lenient (a gated checkpoint would load into an ungated model):
    # every weight must be there, with its shape, and nothing else
    load_weights_strictly(
        model, state, f"{checkpoint} (the model that {config} describes; was the config edited, or is the "
        "checkpoint from another experiment?)", ValueError,
    )
    model.eval()
    student = model.student
    fit = None
    if not student.config.gates.any:
        dense = student
    elif model.lagrangian is not None and fit_tolerance is not None:
        keep, fit = budget_keep(model, fit_tolerance)
        dense = prune_model(student, keep)
    else:
        dense = prune_model(student)
    teacher = model.teacher
    summary = architecture_summary(dense, model.cost_seconds)
    teacher_summary = architecture_summary(teacher, model.cost_seconds)
    summary.update(
        teacher_params=teacher_summary["params"],
        teacher_macs_per_second=teacher_summary["macs_per_second"],
        params_sparsity=round(1.0 - summary["params"] / teacher_summary["params"], 6),
        macs_sparsity=round(1.0 - summary["macs_per_second"] / teacher_summary["macs_per_second"], 6),
    )
    if model.lagrangian is not None:
        summary["target"] = {"metric": model.sparsity_metric, "sparsity": model.lagrangian.target_sparsity}
        if model.macs_lagrangian is not None:
            summary["target"]["macs_sparsity"] = model.macs_lagrangian.target_sparsity
        if fit is not None:
            summary["budget_fit"] = {"metric": model.sparsity_metric, "tolerance": fit_tolerance, **fit.as_dict()}
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
