"""Import a HuBERT / WavLM / wav2vec 2.0 checkpoint into the compact model format.

    python -m espnet_plugin.bin.import_model --input PATH --output_dir DIR
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from espnet_plugin.compact import save_model
from espnet_plugin.importers import CheckpointFormatError, import_model
from espnet_plugin.importers.common import formats_help


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=formats_help()
    )
    parser.add_argument("--input", required=True, help="checkpoint file or model directory")
    parser.add_argument("--output_dir", required=True, help="where to write config.yaml + model.safetensors")
    parser.add_argument(
        "--num_heads", type=int, default=None, help="attention heads, only for bare state dicts of unusual width"
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model, provenance = import_model(args.input, num_heads=args.num_heads)
    except CheckpointFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = save_model(model, args.output_dir, provenance)
    cfg = model.config
    logging.info(
        "imported %s (%s): %s, %d layers, width %d, %.2f M params, %.2f G MACs per second of audio -> %s",
        provenance["source"],
        provenance["source_format"],
        cfg.model_type,
        cfg.num_layers,
        cfg.embed_dim,
        model.num_params() / 1e6,
        model.expected_macs().item() / 1e9,
        out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
