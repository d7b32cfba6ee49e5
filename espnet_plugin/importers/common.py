"""Shared pieces of the checkpoint importers.

Every importer turns its source into (EncoderConfig, state dict in *HF-style names*) and
hands both to ``build_from_hf_style``. HF-style names are the ones transformers uses for
``Wav2Vec2Model`` (``feature_extractor.conv_layers.0.conv.weight``,
``encoder.layers.3.feed_forward.intermediate_dense.bias``, ...); torchaudio and fairseq
names are close to them, so each importer only renames what differs.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from espnet_plugin.models import EncoderConfig, LayerConfig, SpeechEncoder
from espnet_plugin.models.model import load_weights_strictly


class CheckpointFormatError(ValueError):
    """A checkpoint that no importer can read; the message names the file and the formats."""


ACCEPTED_FORMATS = (
    "a compact model directory written by espnet-compress (config.yaml + model.safetensors)",
    "a Hugging Face transformers directory or model (HubertModel, WavLMModel, Wav2Vec2Model, "
    "or their CTC / pre-training classes)",
    "a fairseq HuBERT or wav2vec 2.0 checkpoint (.pt with 'cfg' or 'args' and 'model'; pre-trained or "
    "fine-tuned *_ctc), or s3prl's converted copy of one ('model_cfg', 'task_cfg', 'model_weight')",
    "an official WavLM checkpoint (.pt with 'cfg' and 'model')",
    "a torchaudio Wav2Vec2Model (object, or .pt holding the model or its state_dict)",
    "an ESPnet HuBERT checkpoint (espnet2.bin.hubert_train output: *.pth, config.yaml beside or above it)",
)


def formats_help() -> str:
    return "accepted formats:\n" + "\n".join(f"  - {f}" for f in ACCEPTED_FORMATS)


def load_checkpoint_file(path: Path):
    """torch.load with a clear error; falls back to full unpickling (fairseq pickles its args).

    Loading a pickled checkpoint runs code from it: load only checkpoints you trust.
    """
    if path.stat().st_size == 0:
        raise CheckpointFormatError(f"{path}: the file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # pickled objects beyond tensors (fairseq's args): retry with full unpickling
    except Exception as exc:  # noqa: BLE001 - torch's unpickler fails in many ways on a non-checkpoint
        raise _unreadable(path, exc) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> CheckpointFormatError:
    return CheckpointFormatError(
        f"{path}: not a readable PyTorch checkpoint: truncated, corrupt or another kind of file "
        f"({type(exc).__name__}: {exc}); {formats_help()}"
    )


def strip_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def standard_stride(kernel: int) -> int:
    return 5 if kernel == 10 else 2


def conv_layers_from_state(state: Dict[str, torch.Tensor], prefix: str = "feature_extractor.conv_layers") -> List[List[int]]:
    """[channels, kernel, stride] per conv layer from weight shapes (strides: the standard CNN)."""
    layers = []
    i = 0
    while f"{prefix}.{i}.conv.weight" in state:
        out_ch, _, kernel = state[f"{prefix}.{i}.conv.weight"].shape
        layers.append([int(out_ch), int(kernel), standard_stride(int(kernel))])
        i += 1
    return layers


def count_layers(state: Dict[str, torch.Tensor], pattern: str) -> int:
    ids = {int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m}
    return max(ids) + 1 if ids else 0


_HF_TO_OURS = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.norm."),
    (r"^encoder\.pos_conv_embed\.conv\.weight_g$", "pos_conv.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv_embed\.conv\.weight_v$", "pos_conv.conv.parametrizations.weight.original1"),
    (r"^encoder\.pos_conv_embed\.", "pos_conv."),
    (r"^encoder\.layer_norm\.", "encoder_norm."),
    (r"^encoder\.layers\.0\.attention\.rel_attn_embed\.", "rel_attn_embed."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"layers.\1.attention_norm."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"layers.\1.ffn_norm."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"layers.\1.ffn.intermediate."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"layers.\1.ffn.output."),
    (r"^encoder\.layers\.(\d+)\.attention\.", r"layers.\1.attention."),
]


def rename_keys(state: Mapping[str, torch.Tensor], rules: Sequence[Tuple[str, str]]) -> Dict[str, torch.Tensor]:
    """Apply the first matching (regex, replacement) rule to every key; others are kept."""
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def hf_style_to_ours(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return rename_keys(state, _HF_TO_OURS)


def split_in_proj(state: Dict[str, torch.Tensor], prefix: str, new_prefix: str) -> None:
    """nn.MultiheadAttention's packed in_proj -> q_proj / k_proj / v_proj (in place)."""
    weight = state.pop(f"{prefix}in_proj_weight")
    bias = state.pop(f"{prefix}in_proj_bias")
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3), bias.chunk(3)):
        state[f"{new_prefix}{name}.weight"] = w
        state[f"{new_prefix}{name}.bias"] = b


def build_from_hf_style(
    config: EncoderConfig, state: Dict[str, torch.Tensor], source: str, ignore: Iterable[str] = ()
) -> SpeechEncoder:
    """Load HF-style weights into our model, strictly: every weight used, none missing."""
    ours = hf_style_to_ours(state)
    ignore_re = [re.compile(p) for p in ignore]
    ours = {k: v for k, v in ours.items() if not any(p.search(k) for p in ignore_re)}
    model = SpeechEncoder(config)
    load_weights_strictly(model, ours, f"{source} (detected architecture)", CheckpointFormatError)
    return model.eval()


def uniform_layers(num_layers: int, num_heads: int, ffn_dim: int) -> List[LayerConfig]:
    return [LayerConfig(num_heads, ffn_dim) for _ in range(num_layers)]


def default_num_heads(embed_dim: int, num_heads: Optional[int], source: str) -> int:
    """Heads are not visible in weight shapes; standard models use 64-dim heads."""
    if num_heads:
        return num_heads
    if embed_dim % 64:
        raise CheckpointFormatError(
            f"{source}: cannot infer the number of attention heads for width {embed_dim}; pass num_heads"
        )
    return embed_dim // 64
