"""egs2/mini_synth_enh: its data preparation, its model configs (sizes, causality, feature
paths), the score parsers and the report, and a tiny run of every stage in this process
(tiny models, one-step schedules) through the recipe's own scripts.

The default run itself is a benchmark (docs/benchmarks.md).
"""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from espnet_plugin.utils.audio import mix_at_snr
from espnet_plugin.utils.kaldi_data import read_scp
from tests.conftest import load_recipe_local

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "mini_synth_enh"
CONF = RECIPE / "conf"
needs_tools = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                 reason="needs espeak-ng and sox")


def load_local(name: str):
    return load_recipe_local("mini_synth_enh", name)


prepare_data = load_local("prepare_data")
train_students = load_local("train_students")
score = load_local("score")
report = load_local("report")

TINY_DATA = dict(num_train=6, num_valid=2, num_test=2, num_speakers=8, seed=3)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("needs espeak-ng and sox")
    out = tmp_path_factory.mktemp("enh_corpus")
    prepare_data.prepare(out, **TINY_DATA)
    return out


def digest(root: Path) -> str:
    h = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes().replace(str(root).encode(), b""))
    return h.hexdigest()


# ----------------------------------------------------------------------------- data
@needs_tools
def test_data_is_deterministic_and_noisy_only_dirs_hold_no_reference(corpus, tmp_path):
    prepare_data.prepare(tmp_path / "again", **TINY_DATA)
    assert digest(tmp_path / "again") == digest(corpus)
    for split in ("train_noisy_only", "valid_noisy_only"):
        assert sorted(p.name for p in (corpus / "data" / split).iterdir()) == ["speech_mix_shape", "wav.scp"]


@needs_tools
def test_test_set_covers_the_snr_grid_and_mixtures_have_their_snr(corpus):
    test = corpus / "data" / "test"
    snrs = {utt: float(v) for utt, v in read_scp(test / "utt2snr")}
    assert len(snrs) == 2 * 5 and sorted(set(snrs.values())) == [-5.0, 0.0, 5.0, 10.0, 15.0]
    noisy, clean = dict(read_scp(test / "wav.scp")), dict(read_scp(test / "spk1.scp"))
    for utt, snr in snrs.items():
        x, _ = soundfile.read(noisy[utt])
        s, _ = soundfile.read(clean[utt])
        measured = 10 * np.log10(np.mean(s**2) / np.mean((x - s) ** 2))
        assert abs(measured - snr) < 0.2, (utt, measured, snr)
    kinds = {v for _, v in read_scp(test / "utt2noise")}
    assert kinds <= set(prepare_data.NOISE_KINDS) and len(kinds) >= 4
    shapes = {u: int(n) for u, n in read_scp(test / "speech_mix_shape")}
    assert all(soundfile.info(noisy[u]).frames == n for u, n in shapes.items())


@needs_tools
def test_speakers_and_noise_material_are_disjoint(corpus):
    spk = {split: {s for _, s in read_scp(corpus / "data" / split / "utt2spk")} for split in ("train", "valid", "test")}
    assert not (spk["train"] & spk["test"]) and not (spk["train"] & spk["valid"]) and not (spk["valid"] & spk["test"])
    for colour in prepare_data.SOX_COLOURS:
        train, _ = soundfile.read(corpus / "noise" / f"{colour}_train.wav")
        test, _ = soundfile.read(corpus / "noise" / f"{colour}_test.wav")
        assert len(train) > 2 * len(test) > 0
        assert not np.array_equal(train[: len(test)], test)


def test_noise_kinds_and_mixing():
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    bank = prepare_data.NoiseBank({c: rng.standard_normal(64000).astype(np.float32) for c in prepare_data.SOX_COLOURS},
                                  [np.sin(2 * np.pi * 200 * t).astype(np.float32)])
    for kind in prepare_data.NOISE_KINDS:
        noise = bank.make(kind, 16000, rng)
        assert noise.shape == (16000,) and np.isfinite(noise).all() and np.std(noise) > 0, kind
    clean = (0.5 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    noisy, reference = mix_at_snr(clean, 10 * rng.standard_normal(len(clean)).astype(np.float32), -5.0, peak=0.95)
    assert np.abs(noisy).max() <= 0.95 + 1e-6  # scaled down together, SNR kept
    assert abs(10 * np.log10(np.mean(reference**2) / np.mean((noisy - reference) ** 2)) + 5.0) < 1e-3
    with pytest.raises(ValueError, match="unknown noise kind"):
        bank.make("rain", 100, rng)


# ----------------------------------------------------------------------------- models
def build(config_path: Path):
    from espnet2.tasks.enh import EnhancementTask

    args = EnhancementTask.get_parser().parse_args([])
    for key, value in yaml.safe_load(config_path.read_text()).items():
        setattr(args, key, value)
    return EnhancementTask.build_model(args)


@pytest.fixture(scope="module")
def models():
    return {name: build(CONF / f"{name}.yaml") for name in ("teacher", "student_60k", "student_30k")}


def test_model_sizes_match_the_papers_compression(models):
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert 1.9e6 <= params["teacher"] <= 2.1e6
    assert 55e3 <= params["student_60k"] <= 66e3 and 27e3 <= params["student_30k"] <= 33e3
    assert params["teacher"] / params["student_60k"] >= 30 and params["teacher"] / params["student_30k"] >= 60


def test_students_are_causal_with_a_32_ms_latency(models):
    from espnet_plugin.enh.costs import algorithmic_latency, real_time_factor

    window = 512
    for name in ("student_60k", "student_30k"):
        latency = algorithmic_latency(models[name], step=32)
        assert window - 40 <= latency["samples"] < window, (name, latency)  # probes every 32 samples
    conf = yaml.safe_load((CONF / "teacher.yaml").read_text())["separator_conf"]
    assert conf["causal"] and conf["norm_type"] == "cLN"
    # a non-causal TCN looks ahead by its receptive field: the measurement sees it
    non_causal = build(CONF / "student_30k.yaml")
    non_causal.separator.tcn = type(non_causal.separator.tcn)(
        N=257, B=8, H=16, P=3, X=3, R=1, C=1, norm_type="cLN", causal=False, mask_nonlinear="sigmoid")
    assert algorithmic_latency(non_causal, step=32)["samples"] > window + 3 * 256
    assert 0 < real_time_factor(models["student_30k"], seconds=1.0, runs=1) < 10


def test_every_method_config_builds_with_both_student_sizes(models):
    """The feature paths of every method exist in the teacher and in both students."""
    from espnet_plugin.enh.model import EnhDistillModel

    for method, runs in train_students.METHODS.items():
        for _, method_conf in runs:
            conf = yaml.safe_load((CONF / "methods" / f"{method_conf}.yaml").read_text())
            for size in ("60k", "30k"):
                model = EnhDistillModel(models[f"student_{size}"], models["teacher"],
                                        stage=conf["stage"], feature_pairs=conf.get("feature_pairs"),
                                        alpha=conf.get("alpha", 0.5), output_kd=conf.get("output_kd"))
                for recorder in model._recorders.values():
                    recorder.remove()
                if conf["stage"] != "supervised":
                    assert len(model.kd_losses) == len(conf.get("feature_pairs", [])), method_conf


# ----------------------------------------------------------------------------- parsers and report
def write_scores(exp: Path, key: str, utts, sdr_offset: float) -> None:
    scoring = exp / "scores" / key / "scoring"
    scoring.mkdir(parents=True, exist_ok=True)
    for metric, name in report.METRIC_FILES.items():
        base = {"sdr": 0.0, "si_snr": -1.0, "stoi": 0.7, "estoi": 0.5, "pesq": 1.5}[metric]
        scale = 1.0 if metric in ("sdr", "si_snr") else 0.01
        lines = [f"{utt} {base + scale * (snr + sdr_offset)}" for utt, snr in utts]
        (scoring / name).write_text("\n".join(lines) + "\n")
    (exp / "scores" / key / "done").touch()


def test_report_rows_verdict_and_figure(tmp_path):
    utts = [(f"u{i}_snr{snr:+d}", snr) for i in range(2) for snr in (-5, 0, 5)]
    test = tmp_path / "test"
    test.mkdir()
    (test / "utt2snr").write_text("".join(f"{u} {s:.2f}\n" for u, s in utts))
    exp = tmp_path / "exp"
    write_scores(exp, "noisy", utts, 0.0)
    write_scores(exp, "teacher", utts, 8.0)
    for seed in (0, 1):
        write_scores(exp, f"supervised/30k/seed{seed}", utts, 3.0 + seed)
        write_scores(exp, f"two_step_sp_time/30k/seed{seed}", utts, 4.0 + seed)
        write_scores(exp, f"two_step_gdd/30k/seed{seed}", utts, 2.0 + seed)
        write_scores(exp, f"two_step_mgd/30k/seed{seed}", utts, 2.5 + seed)
    scores = report.read_scores(exp)
    assert set(scores) == {"noisy", "teacher", *(f"{m}/30k/seed{s}" for m in
                           ("supervised", "two_step_sp_time", "two_step_gdd", "two_step_mgd") for s in (0, 1))}
    utt2snr = {u: float(s) for u, s in utts}
    rows = report.build_rows(scores, utt2snr, {"teacher": 2_000_000, "30k": 30_000})
    json.dumps(rows)
    assert {"method", "size", "seed", "params", "snr_db", "sdr", "si_snr", "stoi", "pesq"} <= set(rows[0])
    row = next(r for r in rows if r["method"] == "two_step_sp_time" and r["seed"] == 1 and r["snr_db"] == -5.0)
    assert row["size"] == "30k" and row["params"] == 30_000 and row["num_utts"] == 2
    assert row["sdr"] == pytest.approx(0.0) and row["sdr_improvement"] == pytest.approx(5.0)
    noisy = next(r for r in rows if r["method"] == "noisy" and r["snr_db"] == 0.0)
    assert noisy["size"] is None and noisy["seed"] is None and noisy["params"] == 0
    assert {r["method"] for r in rows} <= set(report.METHODS)
    lines = report.verdict(rows, ["30k"], {"30k": 66.7})
    assert "beats supervised-only training at -5 dB input SNR by **+1.00 dB**" in lines[0]
    assert any("masking (MGD) by 0.50 dB" in line for line in lines)
    costs = {"teacher": {"params": 2e6, "latency_ms": 31.9, "rtf": 0.05}, "30k": {"params": 3e4, "latency_ms": 31.9, "rtf": 0.01}}
    text = report.results_md(rows, ["30k"], costs, {"machine": "test"})
    assert "| two-step, SP time | -0.50 ± 0.71 |" in text and "67x" in text
    report.plot(rows, ["30k"], exp / "figures" / "sdr.png")
    assert (exp / "figures" / "sdr.png").stat().st_size > 10_000
    # a student worse than supervised: said plainly, with the gap
    worse = [dict(r, sdr=r["sdr"] - 3.0) if r["method"].startswith("two_step") else r for r in rows]
    assert "**no** two-step student beats" in report.verdict(worse, ["30k"], {})[0]
    with pytest.raises(ValueError, match="unexpected score directory"):
        report.parse_key("bogus/30k/seed0")


# ----------------------------------------------------------------------------- a tiny run, every stage
def tiny_conf(tmp: Path) -> Path:
    """The recipe's conf/ with tiny models (the same module paths: teacher 5 blocks, student 3)."""
    conf = tmp / "conf"
    shutil.copytree(CONF, conf)
    for name, blocks, width in (("teacher", 5, 16), ("student_30k", 3, 8)):
        config = yaml.safe_load((conf / f"{name}.yaml").read_text())
        config["separator_conf"].update(layer=blocks, bottleneck_dim=width, hidden_dim=2 * width)
        if name == "teacher":
            config.update(max_epoch=1, num_iters_per_epoch=2)
        (conf / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return conf


@needs_tools
def test_a_tiny_run_of_every_stage(corpus, tmp_path):
    from espnet2.bin.enh_train import main as enh_train

    conf, exp, data = tiny_conf(tmp_path), tmp_path / "exp", corpus / "data"
    train_students.quiet_root_logger()
    enh_train(["--config", str(conf / "teacher.yaml"), "--output_dir", str(exp / "teacher"), "--ngpu", "0",
               "--train_data_path_and_name_and_type", f"{data / 'train' / 'wav.scp'},speech_mix,sound",
               "--train_data_path_and_name_and_type", f"{data / 'train' / 'spk1.scp'},speech_ref1,sound",
               "--train_shape_file", str(data / "train" / "speech_mix_shape"),
               "--valid_data_path_and_name_and_type", f"{data / 'valid' / 'wav.scp'},speech_mix,sound",
               "--valid_data_path_and_name_and_type", f"{data / 'valid' / 'spk1.scp'},speech_ref1,sound",
               "--valid_shape_file", str(data / "valid" / "speech_mix_shape")])
    argv = ["--exp", str(exp), "--data", str(data), "--teacher", str(exp / "teacher"), "--conf", str(conf),
            "--sizes", "30k", "--seeds", "0", "--kd_epochs", "1", "--sup_epochs", "1",
            "--extra", "--num_iters_per_epoch 1"]
    parser_args = train_students.parse_args(argv)
    for method in train_students.METHODS:
        key, error, _ = train_students.run_chain((parser_args, method, "30k", 0))
        assert error is None, error
    step1 = exp / "students" / "two_step_sp_time" / "30k" / "seed0" / "step1"
    step1_config = yaml.safe_load((step1 / "config.yaml").read_text())
    assert step1_config["stage"] == "kd" and all("noisy_only" in p for p, _, _ in
                                                  step1_config["train_data_path_and_name_and_type"])
    step2_config = yaml.safe_load((step1.parent / "step2" / "config.yaml").read_text())
    assert step2_config["init_param"] == [f"{step1 / 'valid.loss.best.pth'}:student:student"]
    # finished runs are skipped when the driver runs again
    stamp = (step1 / "checkpoint.pth").stat().st_mtime
    assert train_students.run_chain((parser_args, "two_step_sp_time", "30k", 0))[1] is None
    assert (step1 / "checkpoint.pth").stat().st_mtime == stamp

    for key, config, model_file in score.find_models(exp):
        job = (exp, data / "test", key, config, model_file, 1)
        assert score.score_model(job) == (key, None)
    assert len(list((exp / "scores").rglob("done"))) == 2 + len(train_students.METHODS)
    enhanced = dict(read_scp(exp / "scores" / "supervised" / "30k" / "seed0" / "enhanced" / "spk1.scp"))
    assert soundfile.info(next(iter(enhanced.values()))).samplerate == 16000

    scores = report.read_scores(exp)
    utt2snr = {u: float(v) for u, v in read_scp(data / "test" / "utt2snr")}
    rows = report.build_rows(scores, utt2snr, {})
    assert {r["method"] for r in rows} == set(report.METHODS)
    assert all(np.isfinite([r["sdr"], r["si_snr"], r["stoi"], r["pesq"]]).all() for r in rows)
    noisy = [r for r in rows if r["method"] == "noisy"]
    assert sorted(r["snr_db"] for r in noisy) == [-5.0, 0.0, 5.0, 10.0, 15.0]
    assert all(abs(r["sdr_improvement"]) < 1e-9 for r in noisy)

