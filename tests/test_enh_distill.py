"""Two-step distillation of ESPnet enh models: feature hooks and their errors, the losses on
3-D and 4-D activations with padding, EnhDistillModel's stages (the kd stage never reads the
reference), EnhDistillTask through ESPnet's trainer in this process (a teacher from
``enh_train``, step 1 on noisy speech alone, step 2 initialised from step 1, resume of an
interrupted run), and the export to ``enh_inference``.

Models are tiny causal TCN mask estimators on a 256-point STFT; the data are eight 0.5-1 s
harmonic "voices" in white noise, so every training run takes a few seconds.
"""
import argparse
import io
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from espnet_plugin.enh.features import (
    FeatureError,
    FeatureRecorder,
    FeatureSource,
    detect_layout,
    feature_and_mask,
    find_module,
    first_tensor,
    to_btc,
)
from espnet_plugin.enh.output_distill import OutputDistillLoss
from espnet_plugin.losses import LOSSES, MaskedGenerativeLoss, build_distill_loss
from espnet_plugin.utils.kaldi_data import write_scp, write_shape_file

from espnet_plugin.tasks.enh_distill import EnhDistillTask  # noqa: E402  (imports ESPnet)
from espnet2.tasks.enh import EnhancementTask  # noqa: E402

from espnet_plugin.enh.export import export_student  # noqa: E402
from espnet_plugin.enh.model import EnhDistillModel, parse_feature_pairs  # noqa: E402

FS = 16000
STFT = {"n_fft": 256, "hop_length": 128}
TEACHER_TCN = {"layer": 3, "stack": 1, "bottleneck_dim": 24, "hidden_dim": 48}
STUDENT_TCN = {"layer": 2, "stack": 1, "bottleneck_dim": 12, "hidden_dim": 24}
STREAM = "separator.tcn.network.3:input"  # the TCN's residual stream after its last block (B, C, T)
PAIRS = [
    {"teacher": STREAM, "student": STREAM, "loss": "similarity_preserving", "conf": {"axis": "time"}},
    {"teacher": "separator.tcn.network.2.0.2", "student": "separator.tcn.network.2.0.1",
     "loss": "generative_denoise", "weight": 0.5},
]


pytestmark = pytest.mark.usefixtures("single_thread")


def enh_args(tcn=STUDENT_TCN, **extra) -> argparse.Namespace:
    args = EnhDistillTask.get_parser().parse_args([])
    args.encoder, args.encoder_conf = "stft", dict(STFT, use_builtin_complex=True)
    args.decoder, args.decoder_conf = "stft", dict(STFT)
    args.separator = "tcn"
    args.separator_conf = dict(tcn, num_spk=1, causal=True, norm_type="cLN", nonlinear="sigmoid")
    args.criterions = [{"name": "si_snr", "conf": {}, "wrapper": "fixed_order", "wrapper_conf": {}}]
    for key, value in extra.items():
        setattr(args, key, value)
    return args


def build_enh(tcn, seed=0):
    torch.manual_seed(seed)
    return EnhancementTask.build_model(enh_args(tcn))


def batch(lengths=(16000, 11000, 7000), seed=0):
    gen = torch.Generator().manual_seed(seed)
    speech = 0.1 * torch.randn(len(lengths), max(lengths), generator=gen)
    for i, n in enumerate(lengths):
        speech[i, n:] = 0.0
    return speech, torch.tensor(lengths)


# ----------------------------------------------------------------------------- hooks
def test_a_missing_path_is_named_with_the_paths_that_exist():
    model = build_enh(STUDENT_TCN)
    with pytest.raises(FeatureError) as info:
        FeatureRecorder(model, [FeatureSource.parse("separator.tcn.network.2.0.7")], "student")
    message = str(info.value)
    assert "'separator.tcn.network.2.0.7'" in message and "student" in message
    assert "separator.tcn.network.2.0.1" in message and "encoder" in message  # the paths that exist
    with pytest.raises(FeatureError, match="Did you mean separator.rnn"):
        find_module(torch.nn.Module().add_module("separator", None) or _rnn_model(), "separator.rn", "teacher")
    with pytest.raises(ValueError, match="unknown loss 'sp'"):
        parse_feature_pairs([{"teacher": "a", "student": "b", "loss": "sp"}])
    with pytest.raises(ValueError, match="accepts only"):
        parse_feature_pairs([{"teacher": "a", "student": "b", "loss": "channel_wise", "layer": 1}])
    teacher = build_enh(TEACHER_TCN)
    with pytest.raises(FeatureError, match="the teacher has no module 'separator.lstm'"):
        EnhDistillModel(model, teacher, feature_pairs=[{"teacher": "separator.lstm", "student": STREAM,
                                                        "loss": "similarity_preserving"}])


def _rnn_model():
    args = enh_args()
    args.separator, args.separator_conf = "rnn", {"rnn_type": "lstm", "num_spk": 1, "layer": 2, "unit": 8}
    return EnhancementTask.build_model(args)


def test_hooks_read_outputs_inputs_and_packed_sequences():
    model = _rnn_model().eval()
    sources = [FeatureSource.parse(p) for p in ("separator.rnn.nbrnn", "separator.linear.0:input", "encoder")]
    recorder = FeatureRecorder(model, sources, "student")
    speech, lengths = batch()
    with torch.no_grad():
        model.forward_enhance(speech, lengths, {})
    lstm = recorder.get(sources[0])  # a PackedSequence, unpacked: (B, T, units), zeros past each length
    encoded, frame_lengths = recorder.values[sources[2]]
    assert lstm.shape == (3, encoded.shape[1], 8)
    assert torch.all(lstm[2, frame_lengths[2]:] == 0) and lstm[2, : frame_lengths[2]].abs().sum() > 0
    assert recorder.get(sources[1]).shape == (3, encoded.shape[1], 8)  # the projection's input
    recorder.clear()
    with pytest.raises(FeatureError, match="was not called"):
        recorder.get(sources[0])
    recorder.remove()
    with torch.no_grad():
        model.forward_enhance(speech, lengths, {})
    assert recorder.values == {}


def test_layouts_detection_and_reshaping():
    x = torch.arange(2 * 3 * 5 * 4, dtype=torch.float).reshape(2, 3, 5, 4)  # (B, C, T, F)
    assert detect_layout(x.shape, 5, "f") == "bctf"
    y = to_btc(x, "bctf")
    assert y.shape == (2, 5, 12) and torch.equal(y[1, 2], x[1, :, 2, :].reshape(-1))
    z = torch.randn(2, 7, 5)
    assert detect_layout(z.shape, 5, "f") == "bct" and detect_layout(z.shape, 7, "f") == "btc"
    assert torch.equal(to_btc(z, "bct"), z.transpose(1, 2))
    with pytest.raises(FeatureError, match="both axes"):
        detect_layout((2, 5, 5), 5, "student x")
    with pytest.raises(FeatureError, match="no time axis of 9 frames"):
        detect_layout((2, 7, 5), 9, "student x")
    with pytest.raises(FeatureError, match="3-D or 4-D"):
        detect_layout((2, 7), 7, "student x")
    complex_act = torch.complex(torch.randn(2, 5, 3), torch.randn(2, 5, 3))
    assert to_btc(complex_act, "btc").shape == (2, 5, 6)
    # another frame rate (an explicit layout): lengths scaled, ceil
    feats, mask, _ = feature_and_mask(torch.randn(2, 4, 10), "bct", torch.tensor([20, 7]), 20, "f")
    assert mask.sum(1).tolist() == [10, 4]
    assert first_tensor((None, (torch.ones(1), 3))).shape == (1,)


# ----------------------------------------------------------------------------- losses
def padded_activations(shape, lengths, seed):
    """An activation with time on axis 2, garbage (large values) past each length."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen)
    for b, n in enumerate(lengths):
        x[b, :, n:] = 1e4
    return x


LOSS_CASES = [
    ("similarity_preserving", {"axis": "time"}),
    ("similarity_preserving", {"axis": "batch"}),
    ("generative_denoise", {}),
    ("masked_generative", {}),
    ("channel_wise", {}),
    ("layer_to_layer", {}),
]


@pytest.mark.parametrize("name,conf", LOSS_CASES, ids=[f"{n}-{c.get('axis', '')}" for n, c in LOSS_CASES])
@pytest.mark.parametrize("dims", ["3d", "4d"])
def test_each_loss_on_padded_3d_and_4d_activations(name, conf, dims):
    lengths = [9, 6, 4]
    s_shape, t_shape = ((3, 4, 9), (3, 6, 9)) if dims == "3d" else ((3, 2, 9, 3), (3, 3, 9, 2))
    layout = "bct" if dims == "3d" else "bctf"
    frame_lengths = torch.tensor(lengths)

    def value(s_raw, t_raw, seed=0):
        s, mask, _ = feature_and_mask(s_raw, None, frame_lengths, 9, "student")
        t, _, _ = feature_and_mask(t_raw, None, frame_lengths, 9, "teacher")
        torch.manual_seed(1)
        loss = build_distill_loss([{"name": name, "conf": {**conf, "layer_map": [[0, 0]]}}], s.shape[-1], t.shape[-1])
        torch.manual_seed(seed)  # the noise / frame masks of the generative losses
        return loss([s], [t], mask)[0]

    s_raw = padded_activations(s_shape, lengths, 0).requires_grad_(True)
    t_raw = padded_activations(t_shape, lengths, 1)
    assert detect_layout(s_raw.shape, 9, "s") == layout
    reference = value(s_raw, t_raw)
    assert torch.isfinite(reference) and reference.item() != 0.0
    reference.backward()
    for b, n in enumerate(lengths):  # no gradient reaches a padded frame
        assert torch.all(s_raw.grad[b, :, n:] == 0)
    # other padding values: the same loss
    s_other, t_other = s_raw.detach().clone(), t_raw.clone()
    for b, n in enumerate(lengths):
        s_other[b, :, n:], t_other[b, :, n:] = -3.0, float("nan")
    assert torch.allclose(value(s_other, t_other), reference, atol=1e-5)
    if name == "similarity_preserving" and conf["axis"] == "time":  # per utterance: shorter padding, same term
        trimmed = value(s_raw.detach()[:, :, :9], t_raw[:, :, :9])
        assert torch.allclose(trimmed, reference, atol=1e-6)


def test_masked_generative_masks_frames_in_training_only():
    s, t = torch.randn(2, 10, 4), torch.randn(2, 10, 6)
    mask = torch.ones(2, 10, dtype=torch.bool)
    loss = MaskedGenerativeLoss(4, 6, layer_map=[[0, 0]], mask_ratio=0.5)
    assert isinstance(loss, LOSSES["masked_generative"])
    loss.eval()
    first, second = loss([s], [t], mask)[0], loss([s], [t], mask)[0]
    assert torch.equal(first, second)  # eval: nothing masked, deterministic
    loss.train()
    values = {loss([s], [t], mask)[0].item() for _ in range(4)}
    assert len(values) > 1  # training: a new random frame mask each call
    no_mask = MaskedGenerativeLoss(4, 6, layer_map=[[0, 0]], mask_ratio=0.0)
    no_mask.load_state_dict(loss.state_dict())
    assert torch.equal(no_mask([s], [t], mask)[0], first)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedGenerativeLoss(4, 6, layer_map=[[0, 0]], mask_ratio=1.0)


def test_output_distillation_masks_padded_samples():
    lengths = torch.tensor([100, 60])
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 100, generator=gen)
    student = (0.5 * teacher + 0.1 * torch.randn(2, 100, generator=gen)).requires_grad_(True)
    for criterion in ("si_snr", "snr", "l1"):
        loss = OutputDistillLoss(criterion)
        value, _ = loss(student, teacher, lengths)
        garbage_s, garbage_t = student.detach().clone(), teacher.clone()
        garbage_s[1, 60:], garbage_t[1, 60:] = 1e3, -7.0
        assert torch.allclose(loss(garbage_s, garbage_t, lengths)[0], value, atol=1e-4)
        student.grad = None
        value.backward()
        assert torch.all(student.grad[1, 60:] == 0)
    # SI-SNR is scale invariant: a scaled teacher output is a perfect student
    perfect, _ = OutputDistillLoss("si_snr")(3.0 * teacher, teacher, lengths)
    assert perfect.item() < -60


# ----------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def teacher():
    return build_enh(TEACHER_TCN, seed=1)


def distill_model(teacher, stage="kd", pairs=PAIRS, **kwargs):
    return EnhDistillModel(build_enh(STUDENT_TCN, seed=2), teacher, stage=stage, feature_pairs=pairs, **kwargs)


def test_kd_stage_never_reads_the_reference(teacher):
    model = distill_model(teacher, output_kd={"weight": 1.0})
    speech, lengths = batch()
    loss, stats, _ = model(speech, lengths)
    poisoned, _, _ = model(speech, lengths, speech_ref1=torch.full_like(speech, float("nan")))
    assert torch.isfinite(loss) and torch.isfinite(poisoned)
    assert "si_snr_loss" not in stats and {"kd", "kd0_similarity_preserving", "output_kd_si_snr"} <= set(stats)
    with pytest.raises(ValueError, match="needs the clean reference speech_ref1"):
        distill_model(teacher, stage="supervised", kd_weight=0.5)(speech, lengths)


def test_a_batch_with_as_many_frames_as_channels_keeps_the_probed_layout(teacher):
    """The layout is detected once, at construction (a second of noise); a later batch whose
    frame count equals the student's 12 channels is (B, 12, 12) and must not be re-guessed."""
    model = distill_model(teacher, pairs=PAIRS[:1])
    speech, lengths = batch(lengths=(11 * STFT["hop_length"],) * 2)
    assert model.student.encoder(speech, lengths)[0].shape[1] == 12  # frames == channels
    loss, stats, _ = model(speech, lengths)
    assert torch.isfinite(loss) and stats["kd0_similarity_preserving"] >= 0


def test_stages_combine_the_losses(teacher):
    speech, lengths = batch()
    ref = speech.clone()
    torch.manual_seed(0)
    kd_model = distill_model(teacher).eval()
    kd = kd_model(speech, lengths)[1]["kd"]
    one = distill_model(teacher, stage="one_step", alpha=0.3).eval()
    one.load_state_dict(kd_model.state_dict())
    loss, stats, _ = one(speech, lengths, speech_ref1=ref)
    assert torch.allclose(stats["kd"], kd)
    assert torch.allclose(loss, 0.3 * stats["kd"] + 0.7 * stats["sup"])
    sup_model = distill_model(teacher, stage="supervised")
    assert sup_model.teacher is None and not sup_model.uses_kd and len(sup_model.kd_losses) == 0  # not needed
    sup_model.load_state_dict(one.state_dict(), strict=False)
    sup_model.eval()
    loss, stats, _ = sup_model(speech, lengths, speech_ref1=ref)
    assert "kd" not in stats and torch.allclose(loss, stats["si_snr_loss"])
    kept = distill_model(teacher, stage="supervised", kd_weight=0.25).eval()
    kept.load_state_dict(kd_model.state_dict())
    loss, stats, _ = kept(speech, lengths, speech_ref1=ref)
    assert torch.allclose(loss, stats["sup"] + 0.25 * stats["kd"])


def test_teacher_is_frozen_outside_the_module_tree(teacher):
    model = distill_model(teacher)
    model.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(key.startswith(("teacher", "_teacher")) for key in model.state_dict())
    assert all(key.startswith(("student.", "kd_losses.")) for key in model.state_dict())
    speech, lengths = batch()
    loss, _, _ = model(speech, lengths)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert model.student.separator.tcn.network[1].weight.grad is not None


def test_what_lies_past_the_valid_frames_does_not_change_the_kd_loss(teacher):
    """Samples past the last valid STFT frame's window (n + n_fft / 2) reach no valid frame of a
    causal model, and the padded frames are masked: garbage there leaves the loss unchanged."""
    model = distill_model(teacher, output_kd={"weight": 1.0}).eval()
    speech, lengths = batch((16000, 9000))
    reference = model(speech, lengths)[1]
    noisy_padding = speech.clone()
    noisy_padding[1, 9000 + STFT["n_fft"] // 2 + 1:] = 5.0 * torch.randn(16000 - 9000 - STFT["n_fft"] // 2 - 1)
    changed = model(noisy_padding, lengths)[1]
    for key in ("kd0_similarity_preserving", "kd1_generative_denoise"):
        assert torch.allclose(changed[key], reference[key], atol=1e-6), key


def test_a_4d_pair_through_hooks():
    """Conv2d activations (B, C, T, F) of DC-CRN-like models: a toy ESPnet-shaped pair."""
    teacher, student = build_enh(TEACHER_TCN, seed=3), build_enh(STUDENT_TCN, seed=4)
    for model, channels in ((teacher, 3), (student, 2)):
        model.separator.add_module("probe", torch.nn.Conv2d(1, channels, 3, padding=1))
        forward = model.separator.forward

        def with_probe(input, ilens, additional=None, _forward=forward, _model=model):
            _model.separator.probe(abs(input).unsqueeze(1))  # (B, C, T, F)
            return _forward(input, ilens, additional)

        model.separator.forward = with_probe
    pairs = [{"teacher": "separator.probe", "student": "separator.probe", "loss": "channel_wise"}]
    model = EnhDistillModel(student, teacher, feature_pairs=pairs)
    align = model.kd_losses["kd0_channel_wise"].losses["channel_wise"].align[0]
    assert (align.in_features, align.out_features) == (2 * 129, 3 * 129)
    speech, lengths = batch()
    assert torch.isfinite(model(speech, lengths)[0])


# ----------------------------------------------------------------------------- ESPnet's trainer
def harmonic_voice(seconds, f0, rng):
    t = np.arange(int(seconds * FS)) / FS
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t) ** 2
    voice = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 8))
    return (0.1 * envelope * voice).astype(np.float32)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """data/noisy (wav.scp only) and data/full (wav.scp + spk1.scp), eight utterances."""
    root = tmp_path_factory.mktemp("enh_distill")
    rng = np.random.default_rng(0)
    noisy, clean = {}, {}
    for i in range(8):
        voice = harmonic_voice(rng.uniform(0.5, 1.0), rng.uniform(100, 220), rng)
        mix = voice + 0.05 * rng.standard_normal(len(voice)).astype(np.float32)
        for kind, wav, table in (("noisy", mix, noisy), ("clean", voice, clean)):
            path = root / "wav" / kind / f"u{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, wav, FS)
            table[f"u{i}"] = str(path)
    for name, tables in (("noisy", {"wav.scp": noisy}), ("full", {"wav.scp": noisy, "spk1.scp": clean})):
        for file, table in tables.items():
            write_scp(root / "data" / name / file, table)
        write_shape_file(root / "data" / name / "wav.scp", root / "data" / name / "speech_mix_shape")
    return root


def config_yaml(path: Path, tcn, **extra) -> Path:
    conf = {
        "encoder": "stft", "encoder_conf": dict(STFT, use_builtin_complex=True),
        "decoder": "stft", "decoder_conf": dict(STFT),
        "separator": "tcn",
        "separator_conf": dict(tcn, num_spk=1, causal=True, norm_type="cLN", nonlinear="sigmoid"),
        "criterions": [{"name": "si_snr", "conf": {}, "wrapper": "fixed_order", "wrapper_conf": {}}],
        "optim": "adam", "optim_conf": {"lr": 0.003}, "batch_type": "folded", "batch_size": 4, "fold_length": [80000],
        "max_epoch": 2, "num_workers": 0, "sort_in_batch": "descending", "sort_batch": "descending",
        "best_model_criterion": [["valid", "loss", "min"]], "keep_nbest_models": 1, "num_att_plot": 0,
        "use_tensorboard": False, "use_matplotlib": False,
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(conf), encoding="utf-8")
    return path


def data_options(workdir, name, with_reference):
    options = []
    for split in ("train", "valid"):
        data = workdir / "data" / name
        options += [f"--{split}_data_path_and_name_and_type", f"{data / 'wav.scp'},speech_mix,sound",
                    f"--{split}_shape_file", str(data / "speech_mix_shape")]
        if with_reference:
            options += [f"--{split}_data_path_and_name_and_type", f"{data / 'spk1.scp'},speech_ref1,sound"]
    return options


@pytest.fixture(scope="module")
def enh_teacher(workdir):
    """A tiny teacher trained by ESPnet's own espnet2.bin.enh_train (in this process)."""
    from espnet2.bin.enh_train import main as enh_train

    exp = workdir / "exp" / "teacher"
    config = config_yaml(workdir / "conf" / "teacher.yaml", TEACHER_TCN)
    enh_train(["--config", str(config), "--output_dir", str(exp), "--ngpu", "0", "--seed", "0",
               *data_options(workdir, "full", True)])
    return exp


def distill(workdir, enh_teacher, name, stage, data, *extra, **conf):
    exp = workdir / "exp" / name
    config = config_yaml(workdir / "conf" / f"{name}.yaml", STUDENT_TCN, stage=stage, **conf)
    EnhDistillTask.main(cmd=[
        "--config", str(config), "--output_dir", str(exp), "--ngpu", "0", "--seed", "0",
        "--teacher_config", str(enh_teacher / "config.yaml"),
        "--teacher_model_file", str(enh_teacher / "valid.loss.best.pth"),
        *data_options(workdir, data, data == "full"), *extra,
    ])
    return exp


def reporter_stats(exp):
    return torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)["reporter"]["stats"]


@pytest.fixture(scope="module")
def step1(workdir, enh_teacher):
    """Step 1 on a data directory holding the noisy wav.scp only."""
    return distill(workdir, enh_teacher, "step1", "kd", "noisy", feature_pairs=PAIRS)


def test_step1_trains_on_noisy_speech_alone(step1):
    assert not (step1.parent.parent / "data" / "noisy" / "spk1.scp").exists()
    stats = reporter_stats(step1)
    assert sorted(stats) == [1, 2]
    train = stats[2]["train"]
    assert {"kd", "kd0_similarity_preserving", "kd1_generative_denoise"} <= set(train)
    assert "si_snr_loss" not in train
    state = torch.load(step1 / "valid.loss.best.pth", map_location="cpu")
    assert not any(key.startswith(("teacher", "_teacher")) for key in state)


def test_step2_starts_from_the_step1_student(workdir, enh_teacher, step1):
    # lr 0: the step-2 student stays exactly what --init_param loaded
    exp = distill(workdir, enh_teacher, "step2_lr0", "supervised", "full",
                  "--init_param", f"{step1 / 'valid.loss.best.pth'}:student:student",
                  max_epoch=1, optim_conf={"lr": 0.0})
    before = torch.load(step1 / "valid.loss.best.pth", map_location="cpu")
    after = torch.load(exp / "1epoch.pth", map_location="cpu")
    assert set(after) == {key for key in before if key.startswith("student.")}
    assert all(torch.equal(after[key], before[key]) for key in after)
    assert "si_snr_loss" in reporter_stats(exp)[1]["train"]
    with pytest.raises(ValueError, match="add a spk1.scp as speech_ref1"):
        distill(workdir, enh_teacher, "step2_noref", "supervised", "noisy")


def test_export_gives_an_enh_inference_model(workdir, enh_teacher, step1, tmp_path):
    from espnet2.bin.enh_inference import SeparateSpeech

    config, model_file = export_student(step1 / "config.yaml", step1 / "valid.loss.best.pth", tmp_path / "export")
    exported = yaml.safe_load(config.read_text())
    assert "teacher_config" not in exported and "feature_pairs" not in exported and "stage" not in exported
    separate = SeparateSpeech(train_config=str(config), model_file=str(model_file), normalize_output_wav=False)
    wav, _ = soundfile.read(str(workdir / "wav" / "noisy" / "u0.wav"), dtype="float32")
    enhanced = separate(wav[None], fs=FS)[0]
    student = EnhancementTask.build_model(enh_args())
    student.load_state_dict(torch.load(model_file))
    student.eval()
    with torch.no_grad():
        speech_pre = student.forward_enhance(torch.from_numpy(wav)[None], torch.tensor([len(wav)]), {})[0][0]
    assert np.allclose(enhanced, speech_pre.numpy(), atol=1e-5)


class Interrupted(Exception):
    pass


def test_resume_after_an_interrupted_run_continues_the_schedule(workdir, enh_teacher, step1, monkeypatch):
    """The step-1 run again, stopped by an exception in its first step of epoch 2 (after epoch
    1's checkpoint), then ``--resume true``: it ends where the uninterrupted step 1 did."""
    calls = {"n": 0}
    forward = EnhDistillModel.forward

    def dies_in_epoch_2(self, *args, **kwargs):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:  # 2 train batches per epoch: the first batch of epoch 2
                raise Interrupted()
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(EnhDistillModel, "forward", dies_in_epoch_2)
    with pytest.raises(Interrupted):
        distill(workdir, enh_teacher, "interrupted", "kd", "noisy", feature_pairs=PAIRS)
    exp = workdir / "exp" / "interrupted"
    assert sorted(reporter_stats(exp)) == [1]
    monkeypatch.setattr(EnhDistillModel, "forward", forward)
    distill(workdir, enh_teacher, "interrupted", "kd", "noisy", "--resume", "true", feature_pairs=PAIRS)
    resumed, uninterrupted = reporter_stats(exp), reporter_stats(step1)
    assert sorted(resumed) == [1, 2]
    for epoch in (1, 2):
        assert math.isclose(resumed[epoch]["train"]["kd"], uninterrupted[epoch]["train"]["kd"], rel_tol=1e-5)
    final = torch.load(exp / "2epoch.pth", map_location="cpu")
    expected = torch.load(step1 / "2epoch.pth", map_location="cpu")
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in expected)


def test_print_config_is_yaml_with_the_distillation_options():
    out = io.StringIO()
    EnhDistillTask.print_config(file=out)
    config = yaml.safe_load(out.getvalue())
    assert config["stage"] == "kd" and config["feature_pairs"] == [] and config["separator"] == "rnn"
    assert "teacher_config" in config and config["criterions"][0]["name"] == "si_snr"
