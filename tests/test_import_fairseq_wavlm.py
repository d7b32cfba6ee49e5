"""fairseq HuBERT / wav2vec 2.0 and official WavLM checkpoints import exactly.

Each reference is s3prl's copy of the original model code (fairseq's HubertModel and
Wav2Vec2Model, Microsoft's WavLM), built tiny with every parameter random (norms
included), saved in the on-disk layout of the real checkpoints and imported through
``import_model`` (format detection included). Every hidden state must match the
reference's: index 0 the input of ``model.encoder`` with padded frames zeroed (before the
positional convolution), index i the output of encoder layer i, the last one the encoder's
output (after ``encoder.layer_norm`` for pre-LN models).
"""
import argparse
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig
from s3prl.upstream.wav2vec2.wav2vec2_model import Wav2Vec2Config, Wav2Vec2Model
from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig
from s3prl.upstream.wavlm.modules import MultiheadAttention as WavLMAttention

from espnet_plugin.models.components import relative_position_buckets
from espnet_plugin.importers import CheckpointFormatError, import_model
from espnet_plugin.importers.fairseq import is_fairseq
from espnet_plugin.importers.fairseq_config import parse_conv_layers
from espnet_plugin.importers.wavlm_official import is_wavlm_official

CONV = "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2"
ARCH = dict(
    encoder_layers=3,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=48,
    encoder_attention_heads=4,
    conv_feature_layers=CONV,
    conv_pos=16,
    conv_pos_groups=4,
)
BASE = dict(extractor_mode="default", layer_norm_first=False, conv_bias=False)
LARGE = dict(extractor_mode="layer_norm", layer_norm_first=True, conv_bias=False)
SAMPLES = 4000  # 12 frames
# 2997 samples = 9 frames both by the conv formula (ours, wav2vec 2.0) and by the
# all-samples-padded rule of HuBERT / WavLM, so every reference pads like we do
LENGTHS = torch.tensor([SAMPLES, 2997])
TOLERANCE = 1e-4


# ------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These models are tiny: intra-op threads only add sync cost (hundreds of ms on a busy
    2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, scaled so activations stay O(1) through the tiny model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen)
                is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm))
                if name in ("weight_g", "grep_a") or (is_norm and name == "weight"):
                    p.copy_(1.0 + 0.3 * noise)
                elif isinstance(module, nn.Embedding):
                    p.copy_(noise)
                elif p.dim() >= 2:
                    p.copy_(noise / math.sqrt(p[0].numel()))
                else:
                    p.copy_(0.3 * noise)
    return model.eval()


def waveforms(seed: int = 7) -> torch.Tensor:
    return torch.randn(len(LENGTHS), SAMPLES, generator=torch.Generator().manual_seed(seed)) * 0.5


def sample_padding_mask(lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The waveform padding mask s3prl's upstream experts pass (True = padding)."""
    if lengths is None:
        return None
    return torch.arange(SAMPLES)[None, :] >= lengths[:, None]


def reference_hidden_states(model: nn.Module, run: Callable, wavs, lengths) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """(hidden states in our convention, frame padding mask) of a fairseq-style model."""
    captured: Dict[str, torch.Tensor] = {}
    layer_outputs: List[torch.Tensor] = []
    hooks = [model.encoder.register_forward_pre_hook(lambda m, args: captured.setdefault("input", args[0].clone()))]
    for layer in model.encoder.layers:
        hooks.append(layer.register_forward_hook(lambda m, i, out: layer_outputs.append(out[0].transpose(0, 1))))
    try:
        with torch.no_grad():
            final, frame_mask = run(model, wavs, sample_padding_mask(lengths))
    finally:
        for hook in hooks:
            hook.remove()
    first = captured["input"]
    if frame_mask is None:
        frame_mask = torch.zeros(first.shape[:2], dtype=torch.bool)
    first = first.masked_fill(frame_mask[..., None], 0.0)
    return [first] + layer_outputs[:-1] + [final], frame_mask


def run_hubert(model, wavs, padding_mask):
    return model.extract_features(wavs, padding_mask=padding_mask, mask=False)


def run_wav2vec2(model, wavs, padding_mask):
    res = model.extract_features(wavs, padding_mask, mask=False)
    return res["x"], res["padding_mask"]


def run_wavlm(model, wavs, padding_mask):
    return model.extract_features(wavs, padding_mask=padding_mask, mask=False)


def expert_normalized(wavs: torch.Tensor, lengths) -> torch.Tensor:
    """What s3prl's experts feed a ``normalize`` model: layer_norm per utterance, then zero padding."""
    lengths = lengths if lengths is not None else torch.full((len(wavs),), wavs.shape[1])
    out = torch.zeros_like(wavs)
    for i, n in enumerate(lengths.tolist()):
        out[i, :n] = F.layer_norm(wavs[i, :n], (n,))
    return out


def assert_matches_reference(path, model: nn.Module, run: Callable, lengths=LENGTHS, expected_format="fairseq"):
    ours, provenance = import_model(path)
    assert provenance["source_format"] == expected_format
    wavs = waveforms()
    reference_input = expert_normalized(wavs, lengths) if ours.config.normalize_waveform else wavs
    expected, frame_mask = reference_hidden_states(model, run, reference_input, lengths)
    with torch.no_grad():
        hidden, frame_lengths = ours(wavs, lengths)
    assert len(hidden) == len(expected) == len(model.encoder.layers) + 1
    if lengths is not None:
        assert torch.equal(frame_lengths, (~frame_mask).sum(-1)), "the reference pads other frames than we do"
    for i, (a, b) in enumerate(zip(hidden, expected)):
        assert a.shape == b.shape, f"hidden state {i}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        error = ((a - b).norm() / b.norm()).item()
        assert error < TOLERANCE, f"hidden state {i}: relative error {error:.2e}"
    return ours


# ----------------------------------------------------------- reference models
def hubert_reference(layout: dict, seed: int) -> Tuple[HubertModel, dict]:
    cfg = HubertConfig(label_rate=50.0, **ARCH, **layout)
    task = HubertPretrainingConfig(label_rate=50.0, normalize=layout["extractor_mode"] == "layer_norm")
    model = randomize_(HubertModel(cfg, task, dictionaries=[list(range(10))]), seed)
    full_cfg = {
        "_name": None,
        "common": {"seed": 1},
        "model": {"_name": "hubert", **dataclasses.asdict(cfg)},
        "task": {"_name": "hubert_pretraining", **dataclasses.asdict(task)},
    }
    return model, full_cfg


def wav2vec2_cfg(**overrides) -> Wav2Vec2Config:
    arch = dict(ARCH, conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2")
    arch.update(quantize_targets=True, latent_vars=8, latent_groups=2, final_dim=16, **overrides)
    return Wav2Vec2Config(**arch)


def wavlm_reference(layout: dict, seed: int, **overrides) -> Tuple[WavLM, dict]:
    wavlm = dict(relative_position_embedding=True, gru_rel_pos=True, num_buckets=32, max_distance=64)
    cfg = WavLMConfig(
        {**ARCH, **layout, **wavlm, "normalize": layout["extractor_mode"] == "layer_norm", **overrides}
    )
    return randomize_(WavLM(cfg), seed), dict(cfg.__dict__)


# -------------------------------------------------------------------- tests
@pytest.mark.parametrize("layout", [BASE, LARGE], ids=["base", "large"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "padded"])
def test_hubert_matches_fairseq(tmp_path, layout, lengths):
    model, cfg = hubert_reference(layout, seed=1)
    path = tmp_path / "hubert.pt"
    torch.save({"cfg": cfg, "model": model.state_dict(), "optimizer_history": []}, path)
    ours = assert_matches_reference(path, model, run_hubert, lengths)
    assert ours.config.model_type == "hubert"
    assert ours.config.layer_norm_first == layout["layer_norm_first"]
    assert ours.config.normalize_waveform == (layout["extractor_mode"] == "layer_norm")
    assert ours.config.conv_layers == parse_conv_layers(CONV, "test")


@pytest.mark.parametrize(
    "layout",
    [BASE, dict(extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True)],
    ids=["base", "large-lv60"],
)
def test_wav2vec2_matches_fairseq(tmp_path, layout):
    """CNN width = model width: fairseq has no post_extract_proj (we insert an identity)."""
    model = randomize_(Wav2Vec2Model(wav2vec2_cfg(**layout)), seed=2)
    assert model.post_extract_proj is None and model.quantizer is not None
    cfg = {"model": {"_name": "wav2vec2", **dataclasses.asdict(model.cfg)}, "task": {"_name": "audio_pretraining"}}
    path = tmp_path / "wav2vec2.pt"
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    ours = assert_matches_reference(path, model, run_wav2vec2, torch.tensor([SAMPLES, 3100]))
    assert ours.config.model_type == "wav2vec2"


def test_wav2vec2_legacy_args_checkpoint(tmp_path):
    """Older fairseq checkpoints pickle an argparse.Namespace as ``args`` and no ``cfg``."""
    model = randomize_(Wav2Vec2Model(wav2vec2_cfg(**BASE)), seed=3)
    args = argparse.Namespace(arch="wav2vec2", **dataclasses.asdict(model.cfg))
    path = tmp_path / "wav2vec2_legacy.pt"
    torch.save({"args": args, "cfg": None, "model": model.state_dict()}, path)
    assert_matches_reference(path, model, run_wav2vec2)


def test_finetuned_hubert_ctc_checkpoint(tmp_path):
    """Fine-tuned: the encoder sits under w2v_encoder.w2v_model., its cfg in w2v_args."""
    model, pretrain_cfg = hubert_reference(BASE, seed=4)
    state = {f"w2v_encoder.w2v_model.{k}": v for k, v in model.state_dict().items()
             if not k.startswith(("label_embs_concat", "final_proj"))}
    state["w2v_encoder.proj.weight"] = torch.randn(29, 32)
    state["w2v_encoder.proj.bias"] = torch.randn(29)
    cfg = {"model": {"_name": "hubert_ctc", "w2v_path": "/nowhere/hubert.pt", "w2v_args": pretrain_cfg},
           "task": {"_name": "audio_finetuning"}}
    path = tmp_path / "hubert_ctc.pt"
    torch.save({"cfg": cfg, "model": state}, path)
    ours = assert_matches_reference(path, model, run_hubert)
    assert ours.config.model_type == "hubert"


def test_s3prl_converted_checkpoint(tmp_path):
    """s3prl's own copies of fairseq checkpoints: model_cfg / task_cfg / model_weight."""
    model, cfg = hubert_reference(BASE, seed=5)
    path = tmp_path / "hubert_converted.pt"
    torch.save(
        {"task_cfg": cfg["task"], "model_cfg": cfg["model"], "model_weight": model.state_dict(),
         "dictionaries_symbols": [[str(i) for i in range(10)]]},
        path,
    )
    assert_matches_reference(path, model, run_hubert)


@pytest.mark.parametrize(
    "layout",
    [BASE, dict(extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True)],
    ids=["base", "large"],
)
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "padded"])
def test_wavlm_matches_official(tmp_path, layout, lengths):
    model, cfg = wavlm_reference(layout, seed=6)
    path = tmp_path / "wavlm.pt"
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    ours = assert_matches_reference(path, model, run_wavlm, lengths, expected_format="wavlm-official")
    assert ours.config.model_type == "wavlm"
    assert (ours.config.rel_pos_heads, ours.config.num_buckets, ours.config.max_distance) == (4, 32, 64)


@pytest.mark.parametrize(
    "overrides,model_type",
    [(dict(gru_rel_pos=False), "wavlm"), (dict(relative_position_embedding=False), "hubert")],
    ids=["no-gate", "no-relative-positions"],
)
def test_wavlm_variants(tmp_path, overrides, model_type):
    model, cfg = wavlm_reference(BASE, seed=8, **overrides)
    path = tmp_path / "wavlm_variant.pt"
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    ours = assert_matches_reference(path, model, run_wavlm, expected_format="wavlm-official")
    assert ours.config.model_type == model_type


def test_relative_position_buckets_match_wavlm_at_real_sizes():
    """The tiny models see distances below 12 frames; check long ones with WavLM's sizes."""
    reference = WavLMAttention(
        32, 4, self_attention=True, has_relative_attention_bias=True, num_buckets=320, max_distance=800
    )
    frames = 1200
    positions = torch.arange(frames)
    expected = reference._relative_positions_bucket(positions[None, :] - positions[:, None], bidirectional=True)
    assert torch.equal(relative_position_buckets(frames, 320, 800, "cpu"), expected)


# ---------------------------------------------------------- format handling
def test_detection_tells_the_layouts_apart():
    _, hubert_cfg = hubert_reference(BASE, seed=0)
    _, wavlm_cfg = wavlm_reference(BASE, seed=0)
    state = {"encoder.layers.0.fc1.weight": torch.zeros(1)}
    fairseq_ckpt = {"cfg": hubert_cfg, "model": state}
    wavlm_ckpt = {"cfg": wavlm_cfg, "model": state}
    assert is_fairseq(fairseq_ckpt) and not is_wavlm_official(fairseq_ckpt)
    assert is_wavlm_official(wavlm_ckpt) and not is_fairseq(wavlm_ckpt)
    assert not is_fairseq(state) and not is_wavlm_official(state)


def test_fairseq_cfg_without_architecture_keys(tmp_path):
    path = tmp_path / "broken_hubert.pt"
    cfg = {"model": {"_name": "hubert", "encoder_layers": 3}, "task": {"_name": "hubert_pretraining"}}
    torch.save({"cfg": cfg, "model": {"encoder.layers.0.fc1.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointFormatError) as err:
        import_model(path)
    message = str(err.value)
    assert str(path) in message
    assert "encoder_embed_dim" in message and "encoder_attention_heads" in message


def test_wavlm_cfg_without_architecture_keys(tmp_path):
    path = tmp_path / "broken_wavlm.pt"
    torch.save({"cfg": {"relative_position_embedding": True}, "model": {"mask_emb": torch.zeros(4)}}, path)
    with pytest.raises(CheckpointFormatError, match=r"broken_wavlm\.pt.*encoder_layers"):
        import_model(path)


@pytest.mark.parametrize(
    "change,pattern",
    [
        (dict(layer_type="conformer"), "layer_type"),
        (dict(activation_fn="relu"), "activation_fn"),
        (dict(conv_feature_layers="__import__('os').getcwd()"), "conv_feature_layers"),
        (dict(_name="data2vec_audio"), "data2vec_audio"),
    ],
)
def test_unsupported_fairseq_variants_are_refused(tmp_path, change, pattern):
    model, cfg = hubert_reference(BASE, seed=0)
    cfg["model"].update(change)
    path = tmp_path / "variant.pt"
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    with pytest.raises(CheckpointFormatError, match=pattern):
        import_model(path)


def test_conv_feature_layers_parsing():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", "x") == (
        [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2
    )
    assert parse_conv_layers([(8, 3, 2)], "x") == [[8, 3, 2]]
    for bad in ("[(1,2)]", "[(1,2,3)] * 10**9", "[(1,2,3)] * 300", "open('f')", "[(1,2,3)] - [(1,2,3)]"):
        with pytest.raises(CheckpointFormatError, match="conv_feature_layers"):
            parse_conv_layers(bad, "x")
