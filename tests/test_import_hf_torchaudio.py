"""HF transformers and torchaudio importers match the reference implementations numerically."""
import pytest
import torch
import torchaudio
from transformers import (
    HubertConfig,
    HubertForCTC,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from espnet_plugin.importers import import_model
from tests.conftest import TINY_CONV, randomize_

HF_TINY = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
    conv_dim=[c[0] for c in TINY_CONV],
    conv_kernel=[c[1] for c in TINY_CONV],
    conv_stride=[c[2] for c in TINY_CONV],
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    layerdrop=0.0,
)
LARGE = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def hf_reference(model, wavs, mask=None):
    """Our convention from HF: feature-projection output, then every layer's output."""
    base = getattr(model, model.base_model_prefix, model)
    captured = {}
    def keep(module, inputs, output):
        captured["proj"] = output[0] if isinstance(output, tuple) else output

    hook = base.feature_projection.register_forward_hook(keep)
    with torch.no_grad():
        out = base(wavs, attention_mask=mask, output_hidden_states=True)
    hook.remove()
    # HF's last hidden_states entry is the raw residual stream for pre-LN models; ours is normed
    return [captured["proj"]] + list(out.hidden_states[1:-1]) + [out.last_hidden_state]


def assert_matches(ours, ref, lengths=None):
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        if lengths is not None:
            valid = torch.arange(a.shape[1])[None] < lengths[:, None]
            a, b = a[valid], b[valid]
        assert rel_err(a, b) < 1e-4, f"hidden state {i}: relative error {rel_err(a, b)}"


@pytest.mark.parametrize(
    "cls,config",
    [
        (HubertModel, HubertConfig(**HF_TINY)),
        (HubertModel, HubertConfig(**HF_TINY, **LARGE)),
        (Wav2Vec2Model, Wav2Vec2Config(**HF_TINY)),
        (Wav2Vec2Model, Wav2Vec2Config(**HF_TINY, **LARGE)),
        (WavLMModel, WavLMConfig(**HF_TINY)),
        (WavLMModel, WavLMConfig(**HF_TINY, **LARGE)),
    ],
    ids=["hubert-base", "hubert-large", "w2v2-base", "w2v2-large", "wavlm-base", "wavlm-large"],
)
def test_hf_models_match(cls, config, wavs):
    torch.manual_seed(0)
    ref = randomize_(cls(config), std=0.2).eval()
    ours, info = import_model(ref)
    assert info["source_format"] == "huggingface"
    assert ours.num_params() == sum(p.numel() for n, p in ref.named_parameters() if n != "masked_spec_embed")
    with torch.no_grad():
        hidden, _ = ours.extract_hidden_states(wavs)
    assert_matches(hidden, hf_reference(ref, wavs))


def test_hf_padded_batch_matches(wavs):
    config = WavLMConfig(**HF_TINY, **LARGE)  # layer-norm extractor: padding-safe in HF
    ref = randomize_(WavLMModel(config), std=0.2).eval()
    ours, _ = import_model(ref)
    lengths = torch.tensor([4000, 2600])
    mask = (torch.arange(4000)[None] < lengths[:, None]).long()
    padded = wavs * mask
    with torch.no_grad():
        hidden, frames = ours.extract_hidden_states(padded, lengths)
    assert frames.tolist() == [12, 7]
    assert_matches(hidden, hf_reference(ref, padded, mask), frames)


@pytest.mark.parametrize("cls", [HubertForCTC, Wav2Vec2ForPreTraining])
def test_hf_wrapper_classes_and_saved_directory(cls, wavs, tmp_path):
    config_cls = HubertConfig if cls is HubertForCTC else Wav2Vec2Config
    ref = randomize_(cls(config_cls(**HF_TINY, vocab_size=10)), std=0.2).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours, info = import_model(tmp_path / "hf")
    assert info["source_format"] == "huggingface"
    with torch.no_grad():
        hidden, _ = ours.extract_hidden_states(wavs)
    assert_matches(hidden, hf_reference(ref, wavs))


def torchaudio_tiny(kind, large):
    conv = [tuple(c) for c in TINY_CONV]
    common = dict(
        extractor_mode="layer_norm" if large else "group_norm",
        extractor_conv_layer_config=conv,
        extractor_conv_bias=large,
        encoder_embed_dim=32,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=3,
        encoder_num_heads=4,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=48,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=large,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )
    if kind == "wavlm":
        return torchaudio.models.wavlm_model(encoder_num_buckets=320, encoder_max_distance=800, **common)
    return torchaudio.models.wav2vec2_model(**common)


def torchaudio_reference(model, wavs, lengths=None):
    with torch.no_grad():
        layers, _ = model.extract_features(wavs, lengths)
        final, _ = model(wavs, lengths)
        features, _ = model.feature_extractor(wavs, lengths)
        proj = model.encoder.feature_projection(features)
    if model.encoder.transformer.layers[0].layer_norm_first:
        layers[-1] = final
    return [proj] + layers


@pytest.mark.parametrize("kind,large", [("wav2vec2", False), ("wav2vec2", True), ("wavlm", False), ("wavlm", True)])
def test_torchaudio_models_match(kind, large, wavs, tmp_path):
    ref = randomize_(torchaudio_tiny(kind, large), std=0.2).eval()
    # torchaudio's WavLM asserts on padding masks, so it is compared unpadded
    lengths = None if kind == "wavlm" else torch.tensor([4000, 2600])
    expected = torchaudio_reference(ref, wavs, lengths)
    ours, info = import_model(ref)
    assert info["source_format"] == "torchaudio"
    with torch.no_grad():
        hidden, frames = ours.extract_hidden_states(wavs, lengths)
    assert_matches(hidden, expected, frames)
    # the same model saved as a bare state dict: architecture inferred from shapes
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    from_file, info = import_model(tmp_path / "w.pt", num_heads=4)
    assert info["source_format"] == "torchaudio" and from_file.config == ours.config
    with torch.no_grad():
        assert_matches(from_file.extract_hidden_states(wavs, lengths)[0], expected, frames)


def test_torchaudio_hubert_pretrain_model(wavs):
    ref = torchaudio.models.hubert_pretrain_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[tuple(c) for c in TINY_CONV],
        extractor_conv_bias=False, encoder_embed_dim=32, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4,
        encoder_attention_dropout=0.0, encoder_ff_interm_features=48, encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0, mask_prob=0.0,
        mask_selection="static", mask_other=0.0, mask_length=10, no_mask_overlap=False, mask_min_space=1,
        mask_channel_prob=0.0, mask_channel_selection="static", mask_channel_other=0.0, mask_channel_length=10,
        no_mask_channel_overlap=False, mask_channel_min_space=1, skip_masked=False, skip_nomask=False,
        num_classes=10, final_dim=16, feature_grad_mult=None,
    )
    randomize_(ref, std=0.2).eval()
    ours, _ = import_model(ref)
    with torch.no_grad():
        hidden, _ = ours.extract_hidden_states(wavs)
    assert_matches(hidden, torchaudio_reference(ref.wav2vec2, wavs))


def test_hf_directory_with_normalising_feature_extractor(tmp_path, wavs):
    from transformers import Wav2Vec2FeatureExtractor

    ref = randomize_(HubertModel(HubertConfig(**HF_TINY, **LARGE)), std=0.2).eval()
    ref.save_pretrained(tmp_path / "hf")
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(tmp_path / "hf")
    ours, _ = import_model(tmp_path / "hf")
    assert ours.config.normalize_waveform
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "hf")
    inputs = extractor(list(wavs.numpy()), sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
        hidden, _ = ours.extract_hidden_states(wavs)
    assert_matches(hidden, hf_reference(ref, inputs))
