"""Export a compact model directory to ONNX, then check the file with onnxruntime.

    python -m espnet_plugin.bin.export_onnx --model_dir DIR --output model.onnx [--layers 0 4 8] [--int8]

Inputs `wavs` (batch, samples) float32 and `wav_lengths` (batch,) int64; outputs
`hidden_state_<i>` (batch, frames, dim) per chosen index and `frame_lengths` (batch,).
After writing, a random padded batch runs through onnxruntime and torch; the command fails
(exit 1) when the max abs error on any hidden state reaches 1e-4. `--int8` also writes
`<name>.int8.onnx` (dynamic int8 quantisation) and reports its error without a limit.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from espnet_plugin.compact import ModelFormatError, load_model
from espnet_plugin.deploy.onnx_export import (
    TOLERANCE,
    OnnxExportError,
    check_writable,
    export_onnx,
    int8_path,
    quantize_int8,
    resolve_layers,
    verify_onnx,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="compact model directory (config.yaml + model.safetensors)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--layers", type=int, nargs="+", default=None, help="hidden-state indices to output (default: all N + 1)"
    )
    parser.add_argument("--int8", action="store_true", help="also write <name>.int8.onnx (dynamic int8 quantisation)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model = load_model(args.model_dir)
        layers = resolve_layers(model.config.num_layers, args.layers)
        if args.int8:
            check_writable(int8_path(args.output))
        out = export_onnx(model, args.output, layers)
    except (ModelFormatError, OnnxExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    error = verify_onnx(model, out)
    if not error < TOLERANCE:
        print(
            f"error: {out}: max abs error {error:.3g} against the torch model, not below {TOLERANCE:g}; "
            "the export is wrong, do not deploy it",
            file=sys.stderr,
        )
        return 1
    logging.info("wrote %s (hidden states %s); onnxruntime vs torch max abs error %.3g", out, layers, error)
    if args.int8:
        quantized = quantize_int8(out)
        logging.info("wrote %s (dynamic int8); max abs error %.3g (not checked)", quantized, verify_onnx(model, quantized))
    return 0


if __name__ == "__main__":
    sys.exit(main())
