"""Export a compact model to ONNX and check it with onnxruntime.

The ONNX graph has two inputs and one output per chosen hidden state, plus the frame
lengths; batch, sample and frame axes are dynamic:

    wavs            float32 (batch, samples)   16 kHz audio, zero-padded to the longest utterance
    wav_lengths     int64   (batch,)           valid samples of each utterance
    hidden_state_i  float32 (batch, frames, embed_dim)   index i of the SUPERB convention
    frame_lengths   int64   (batch,)           valid frames of each utterance

Hidden state i is what ``SpeechEncoder.extract_hidden_states`` returns at index i (see
docs/model_format.md); frames past ``frame_lengths`` are padding. The graph does not repeat
``extract_hidden_states``' input checks (lengths within the padded size and at least the
receptive field, finite samples): the caller guarantees them. The file's ``metadata_props``
record the downsampling rate, the receptive field (in samples) and the exported hidden-state
indices (``espnet_compress.*`` keys; :func:`read_metadata`).

Export uses PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``),
which needs only the ``onnx`` package.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from espnet_plugin.utils.atomic import atomic_write
from espnet_plugin.utils.audio import SAMPLE_RATE

PathLike = Union[str, os.PathLike]

INPUT_NAMES = ("wavs", "wav_lengths")
FRAME_LENGTHS = "frame_lengths"
OPSET = 17
TOLERANCE = 1e-4  # max abs error, fp32 ONNX vs torch, on every hidden state
EXPORT_SECONDS = 1.0  # length of the example batch traced at export (any length runs afterwards)
# verification batch: lengths unlike the export example, the shorter ones padded
VERIFY_SECONDS = (1.7, 1.1, 0.6)
INT8_OP_TYPES = ("MatMul",)
# metadata_props of an exported file: what a runtime needs besides the graph (s3prl's
# espnet_compress_onnx upstream reads them)
METADATA_DOWNSAMPLE_RATE = "espnet_compress.downsample_rate"
METADATA_RECEPTIVE_FIELD = "espnet_compress.receptive_field"
METADATA_LAYERS = "espnet_compress.hidden_states"

# Known, harmless warnings of the TorchScript exporter: its deprecation notice, and GroupNorm's
# batch-size check, which the tracer reports as a Python bool that does not vary with the input.
_QUIET = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed",
    "Converting a tensor to a Python boolean might cause the trace to be incorrect",
)


class OnnxExportError(RuntimeError):
    """An output path that cannot be written, or an export whose check failed."""


def hidden_state_name(index: int) -> str:
    return f"hidden_state_{index}"


def resolve_layers(num_layers: int, layers: Optional[Sequence[int]] = None) -> List[int]:
    """The hidden-state indices to export, in the order given (all N + 1 when ``layers`` is None)."""
    if layers is None or len(layers) == 0:
        return list(range(num_layers + 1))
    bad = [i for i in layers if not 0 <= int(i) <= num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: this model has hidden states 0..{num_layers}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {list(layers)}: each index at most once")
    return [int(i) for i in layers]


class HiddenStatesGraph(nn.Module):
    """What is traced: the encoder's forward, the chosen hidden states and the frame lengths."""

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        super().__init__()
        self.model, self.layers = model, list(layers)

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        hidden_states, frame_lengths = self.model(wavs, wav_lengths)
        return (*(hidden_states[i] for i in self.layers), frame_lengths)


def output_names(layers: Sequence[int]) -> List[str]:
    return [hidden_state_name(i) for i in layers] + [FRAME_LENGTHS]


def check_writable(path: PathLike) -> Path:
    """Raise OnnxExportError naming ``path`` unless a file can be created there (tried for real:
    a temporary file in its directory)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise OnnxExportError(f"{path}: is a directory; give the path of the .onnx file to write")
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise OnnxExportError(f"{path}: cannot write the ONNX file, directory {parent} {why}")
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=f".{path.name}."):
            pass
    except OSError as exc:
        raise OnnxExportError(f"{path}: cannot write the ONNX file in {parent} ({exc.strerror or exc})") from exc
    if path.exists() and not os.access(path, os.W_OK):
        raise OnnxExportError(f"{path}: cannot write the ONNX file, permission denied")
    return path


def example_batch(seconds: Sequence[float], seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A zero-padded batch of random audio with the given lengths (in seconds)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([int(s * SAMPLE_RATE) for s in seconds], dtype=torch.long)
    wavs = torch.randn(len(seconds), int(lengths.max()), generator=gen) * 0.5
    wavs = wavs * (torch.arange(wavs.shape[1])[None] < lengths[:, None])
    return wavs, lengths


def export_onnx(
    model: nn.Module, output: PathLike, layers: Optional[Sequence[int]] = None, opset: int = OPSET
) -> Path:
    """Write ``model`` (a gate-free SpeechEncoder, e.g. from ``load_model``) to ``output``.

    ``layers`` picks hidden-state indices (default: all N + 1). The file is replaced
    atomically; raises OnnxExportError when ``output`` cannot be written.
    """
    if model.config.gates.any:
        raise ValueError("export_onnx takes a dense model: prune the gated model first (espnet_plugin.pruning)")
    output = check_writable(output)
    chosen = resolve_layers(model.config.num_layers, layers)
    graph = HiddenStatesGraph(model, chosen).eval()
    names = output_names(chosen)
    dynamic_axes: Dict[str, Dict[int, str]] = {
        "wavs": {0: "batch", 1: "samples"},
        "wav_lengths": {0: "batch"},
        FRAME_LENGTHS: {0: "batch"},
    }
    dynamic_axes.update({name: {0: "batch", 1: "frames"} for name in names[:-1]})
    # batch 2, one utterance padded: the traced graph takes the masked path
    wavs, lengths = example_batch((EXPORT_SECONDS, EXPORT_SECONDS * 0.75))

    metadata = {
        METADATA_DOWNSAMPLE_RATE: str(model.downsample_rate),
        METADATA_RECEPTIVE_FIELD: str(model.receptive_field),
        METADATA_LAYERS: ",".join(str(i) for i in chosen),
    }

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            for message in _QUIET:
                warnings.filterwarnings("ignore", message=message)
            torch.onnx.export(
                graph,
                (wavs, lengths),
                tmp,
                input_names=list(INPUT_NAMES),
                output_names=names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        add_metadata(tmp, metadata)

    try:
        return atomic_write(output, write)
    except OSError as exc:
        raise OnnxExportError(f"{output}: cannot write the ONNX file ({exc.strerror or exc})") from exc


def add_metadata(path: PathLike, metadata: Dict[str, str]) -> None:
    """Write ``metadata`` into the ONNX file's ``metadata_props`` (kept by int8 quantisation)."""
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def read_metadata(sess) -> Dict[str, str]:
    """The ``metadata_props`` of a session's model ({} for a file from elsewhere)."""
    return dict(sess.get_modelmeta().custom_metadata_map)


def session(path: PathLike, threads: Optional[int] = None):
    """An onnxruntime CPU session; ``threads`` fixes intra- and inter-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(sess, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> Dict[str, np.ndarray]:
    """Run a session (or a path to an .onnx file); returns {output name: array}."""
    if not hasattr(sess, "run"):
        sess = session(sess)
    feeds = {
        "wavs": wavs.detach().cpu().float().numpy(),
        "wav_lengths": wav_lengths.detach().cpu().long().numpy(),
    }
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def max_error(
    model: nn.Module, sess, wavs: torch.Tensor, wav_lengths: torch.Tensor
) -> Tuple[float, Dict[str, float]]:
    """Max abs difference between the torch model and the ONNX model over every exported
    hidden state (padded frames included); also per output. Frame lengths must agree exactly."""
    with torch.no_grad():
        reference, frame_lengths = model.extract_hidden_states(wavs, wav_lengths)
    outputs = run_onnx(sess, wavs, wav_lengths)
    if not np.array_equal(outputs[FRAME_LENGTHS], frame_lengths.cpu().numpy()):
        raise OnnxExportError(
            f"frame_lengths differ: ONNX {outputs[FRAME_LENGTHS].tolist()}, torch {frame_lengths.tolist()}"
        )
    errors = {}
    for name, value in outputs.items():
        if name == FRAME_LENGTHS:
            continue
        expected = reference[int(name.rsplit("_", 1)[1])].cpu().numpy()
        if value.shape != expected.shape:
            raise OnnxExportError(f"{name}: ONNX shape {value.shape}, torch shape {expected.shape}")
        errors[name] = float(np.abs(value - expected).max())
    return max(errors.values()), errors


def verify_onnx(model: nn.Module, path: PathLike, seconds: Sequence[float] = VERIFY_SECONDS, seed: int = 1) -> float:
    """Max error of the ONNX file against ``model`` on a random padded batch whose lengths
    differ from the export example (so the dynamic axes are exercised)."""
    wavs, lengths = example_batch(seconds, seed)
    return max_error(model, session(path), wavs, lengths)[0]


def int8_path(path: PathLike) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (beside it)."""
    path = Path(path)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}.int8.onnx")


def quantize_int8(
    path: PathLike, output: Optional[PathLike] = None, op_types: Sequence[str] = INT8_OP_TYPES
) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised at run time) of an
    fp32 ONNX file with onnxruntime; writes ``output`` (default: ``int8_path(path)``).

    Only ``op_types`` are quantised: by default the matrix multiplications (the transformer's
    projections and FFNs); the CNN stays fp32, because onnxruntime's ConvInteger was slower
    than the fp32 convolution in our measurements without reducing the error."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output = check_writable(output if output is not None else int8_path(path))

    def write(tmp: str) -> None:
        # the quantiser logs every tensor it leaves in float at INFO level: keep the user's log readable
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))
        try:
            quantize_dynamic(str(path), tmp, weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types))
        finally:
            root.setLevel(level)

    return atomic_write(output, write)


__all__ = [
    "FRAME_LENGTHS",
    "INPUT_NAMES",
    "OnnxExportError",
    "TOLERANCE",
    "check_writable",
    "example_batch",
    "export_onnx",
    "hidden_state_name",
    "int8_path",
    "max_error",
    "quantize_int8",
    "read_metadata",
    "resolve_layers",
    "run_onnx",
    "session",
    "verify_onnx",
]
