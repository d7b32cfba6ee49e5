"""Export a DistillPruneTask checkpoint: prune (if gated) and write the compact model.

    python -m espnet_plugin.bin.export_model --config exp/stage1/config.yaml \
        --checkpoint exp/stage1/latest.pth --output_dir exp/stage1_pruned

What it writes: :mod:`espnet_plugin.distill.export`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from espnet_plugin.distill.export import export


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="the experiment's config.yaml")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a model file of the experiment (*.pth)")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument(
        "--fit_tolerance", type=float, default=0.005,
        help="a stage-1 export opens / closes the units nearest the threshold (by log_alpha) until the budget's "
        "params or MACs are within this fraction of the target (docs/pruning.md, 'Export on budget'); 0 or less: "
        "export the deterministic masks as they are",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in (args.config, args.checkpoint):
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    summary = export(args.config, args.checkpoint, args.output_dir,
                     args.fit_tolerance if args.fit_tolerance > 0 else None)
    if "budget_fit" in summary:
        fit = summary["budget_fit"]
        logging.info("budget fit (%s): deterministic masks %d, target %d, exported %d (%d units moved)",
                     fit["metric"], fit["deterministic_masks"], fit["target"], fit["exported"], fit["units_changed"])
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
