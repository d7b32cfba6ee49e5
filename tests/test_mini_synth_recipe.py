"""egs2/mini_synth's own scripts: corpus synthesis, the SUPERB layouts, the parsing and
bookkeeping of local/evaluate_superb.py and the rows of local/report.py.

The corpus is a small one (6 speakers) synthesised once per module with espeak-ng (~5 s); the
s3prl runs themselves are covered by tests/test_s3prl_upstream.py and
tests/test_s3prl_problem_api.py, and the full recipe is a benchmark (docs/benchmarks.md).
"""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from espnet_plugin.utils.audio import espeak_phonemes, mix_at_snr
from espnet_plugin.utils.kaldi_data import read_scp
from tests.conftest import load_recipe_local

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "mini_synth"
needs_espeak = pytest.mark.skipif(  # the corpus speaks with both synthesisers (`make` installs them)
    shutil.which("espeak-ng") is None or shutil.which("flite") is None, reason="needs espeak-ng and flite")


def load_local(name: str):
    return load_recipe_local("mini_synth", name)


synth_corpus = load_local("synth_corpus")
superb_layouts = load_local("superb_layouts")
evaluate_superb = load_local("evaluate_superb")
report = load_local("report")

SYNTH_ARGS = dict(num_speakers=8, utts_per_speaker=3, keyword_reps=1, commands_per_speaker=15, seed=3)


def synthesise(out: Path) -> Path:
    synth_corpus.synthesise(out, **SYNTH_ARGS)
    return out / "data"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    return synthesise(tmp_path_factory.mktemp("corpus"))


def files_digest(root: Path) -> str:
    digest = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes().replace(str(root).encode(), b""))
    return digest.hexdigest()


# ----------------------------------------------------------------------------- stage 1
@needs_espeak
def test_corpus_is_deterministic_for_a_seed(corpus, tmp_path):
    again = synthesise(tmp_path / "again").parent
    assert files_digest(again) == files_digest(corpus.parent)
    synth_corpus.synthesise(tmp_path / "other", **dict(SYNTH_ARGS, seed=4))
    assert (tmp_path / "other" / "data" / "train" / "text").read_text() != (corpus / "train" / "text").read_text()


@needs_espeak
def test_corpus_splits_speakers_and_covers_every_intent(corpus):
    splits = ("train", "dev", "test", "test_unseen")
    speakers = {split: {s for _, s in read_scp(corpus / split / "utt2spk")} for split in splits}
    assert speakers["dev"] and speakers["test"] and len(speakers["train"]) == 6 and len(speakers["test_unseen"]) == 4
    for i, a in enumerate(splits):  # every split has its own speakers
        assert all(not (speakers[a] & speakers[b]) for b in splits[i + 1:])
    # voice families: the held-out one (flite's kal voices) is only in test_unseen; train has both others
    table = [line.split("\t") for line in (corpus / "speakers.tsv").read_text().splitlines()[1:]]
    family = {row[0]: row[1] for row in table}
    assert {family[s] for s in speakers["test_unseen"]} == {"flite-kal"}
    assert {family[s] for s in speakers["train"]} == {"espeak-ng", "flite-arctic"}
    assert {family[s] for split in ("dev", "test") for s in speakers[split]} == {"espeak-ng"}
    assert {row[3] for row in table if row[1] == "flite-kal"} == {"kal", "kal16"}
    for split in splits + ("keywords", "commands"):
        utts = [u for u, _ in read_scp(corpus / split / "wav.scp")]
        shapes = dict(read_scp(corpus / split / "speech_shape"))
        assert utts and set(shapes) == set(utts)
        utt, path = next(iter(read_scp(corpus / split / "wav.scp")))
        info = soundfile.info(path)
        assert info.samplerate == 16000 and info.frames == int(shapes[utt])
    words = {t for _, text in read_scp(corpus / "keywords" / "text") for t in text.split()}
    assert words == set(synth_corpus.KEYWORDS + synth_corpus.UNKNOWN_WORDS)
    intents = [line.split("\t") for line in (corpus / "commands" / "intent").read_text().splitlines()]
    texts = dict(read_scp(corpus / "commands" / "text"))
    assert len(intents) == (8 + 4) * 15
    per_speaker = {}
    for utt, action, obj, location in intents:
        per_speaker.setdefault(utt.split("-")[0], set()).add((action, obj))
        assert (location == "none") == (" in the " not in texts[utt])
    expected = {(action, obj) for _, action, obj, _ in synth_corpus.COMMAND_INTENTS}
    assert all(pairs == expected for pairs in per_speaker.values())  # 15 per speaker: every intent


def test_perturbations_keep_what_they_promise():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    assert abs(len(synth_corpus.speed_perturb(wav, 1.1)) - 16000 / 1.1) < 1  # faster: shorter
    assert abs(len(synth_corpus.speed_perturb(wav, 0.9)) - 16000 / 0.9) < 1
    assert synth_corpus.speed_perturb(wav, 1.0) is wav
    wet = synth_corpus.reverberate(wav, 0.4, rng)
    assert len(wet) == len(wav) and np.isclose(np.mean(wet**2), np.mean(wav**2), rtol=1e-3)
    assert not np.allclose(wet, wav)
    spectra = {}
    for kind in synth_corpus.NOISE_KINDS:
        noise = synth_corpus.make_noise(kind, 16000, rng)
        power = np.abs(np.fft.rfft(noise)) ** 2
        freqs = np.fft.rfftfreq(16000, 1 / 16000)
        spectra[kind] = power[(freqs > 50) & (freqs < 500)].sum() / power[(freqs > 2000) & (freqs < 8000)].sum()
        mixed, _ = mix_at_snr(wav, noise, 10.0)
        snr = 10 * np.log10(np.mean(wav**2) / np.mean((mixed - wav) ** 2))
        assert abs(snr - 10.0) < 0.01, kind
    # low- vs high-frequency power: brown > pink > white; hum is all low frequencies
    assert spectra["brown"] > spectra["pink"] > spectra["white"] and spectra["hum"] > 100 * spectra["white"]


# ----------------------------------------------------------------------------- stage 6 (layouts)
@needs_espeak
def test_speech_commands_layout(corpus, tmp_path):
    out = tmp_path / "ks"
    superb_layouts.speech_commands(corpus, out, seed=0)
    test_classes = {p.name for p in (out / "test").iterdir()}
    assert test_classes == set(superb_layouts.KEYWORDS) | {"_unknown_", "_silence_"}
    train_words = {p.name for p in (out / "train").iterdir()} - {"_background_noise_"}
    assert train_words == set(synth_corpus.KEYWORDS + synth_corpus.UNKNOWN_WORDS)
    splits = superb_layouts.speaker_splits(corpus)
    n_dev_speakers = sum(s == "dev" for s in splits.values())
    ids = {p.name.split("_nohash_")[0] for p in (out / "train").glob("*/*_nohash_*.wav")}
    # s3prl moves train clips to dev by the hash of the speaker id: each corpus split keeps its speakers
    assert sum(superb_layouts.hash_split(i) == "dev" for i in ids) == n_dev_speakers
    assert all(superb_layouts.hash_split(i) in ("train", "dev") for i in ids)
    wav, rate = soundfile.read(next((out / "test" / "yes").iterdir()))
    assert rate == 16000 and len(wav) == 16000
    # test splits are balanced as Speech Commands' is: per speaker, each keyword, _unknown_ (the
    # first unknown words) and one _silence_ clip; the held-out voices likewise under test_unseen/
    assert {p.name for p in (out / "test_unseen").iterdir()} == test_classes
    for split in ("test", "test_unseen"):
        speakers = sum(s == split for s in splits.values())
        per_class = {p.name: len(list(p.iterdir())) for p in (out / split).iterdir()}
        assert per_class == {c: speakers for c in test_classes}  # keyword_reps=1 in SYNTH_ARGS


@needs_espeak
def test_librispeech_layout(corpus, tmp_path):
    out = tmp_path / "asr"
    superb_layouts.librispeech(corpus, out)
    for split, name in superb_layouts.LIBRISPEECH_SPLITS.items():
        flacs = sorted(out.glob(f"{name}/*/*/*.flac"))
        assert len(flacs) == len(list(read_scp(corpus / split / "wav.scp")))
        rows = list(csv.DictReader(open(out / "len_for_bucket" / f"{name}.csv")))
        assert sorted(r["file_path"] for r in rows) == sorted(str(p.relative_to(out)) for p in flacs)
        lengths = [int(r["length"]) for r in rows]
        assert lengths == sorted(lengths, reverse=True)
        assert lengths[0] == soundfile.info(out / rows[0]["file_path"]).frames
    transcripts = [line.split(" ", 1)[1] for t in out.glob("*/*/*/*.trans.txt") for line in t.read_text().splitlines()]
    corpus_texts = {text.upper() for split in ("train", "dev", "test", "test_unseen") for _, text in read_scp(corpus / split / "text")}
    assert set(transcripts) == corpus_texts
    entries = [line.split() for line in (out / "char.dict").read_text().splitlines()]
    counts = [int(n) for _, n in entries]
    assert counts == sorted(counts, reverse=True) and entries[0][0] in "|E"
    assert {c for c, _ in entries} == set("".join(transcripts).replace(" ", "|"))
    assert sum(counts) == sum(len(t) for t in transcripts)


@needs_espeak
def test_fluent_commands_layout(corpus, tmp_path):
    out = tmp_path / "ic"
    superb_layouts.fluent_commands(corpus, out)
    tables = {name: list(csv.DictReader(open(out / "data" / f"{name}_data.csv"))) for name in ("train", "valid", "test")}
    assert sum(map(len, tables.values())) == 8 * 15  # the 4 held-out speakers are not in the IC layout
    for name in ("valid", "test"):
        for slot in ("action", "object", "location"):
            assert {r[slot] for r in tables[name]} <= {r[slot] for r in tables["train"]}
    row = tables["test"][0]
    assert (out / row["path"]).is_file() and row["transcription"]
    intents = {line.split("\t")[0]: line.split("\t")[1:] for line in (corpus / "commands" / "intent").read_text().splitlines()}
    assert [row["action"], row["object"], row["location"]] == intents[Path(row["path"]).stem]


def test_fluent_commands_layout_names_values_unseen_in_train(tmp_path):
    data = tmp_path / "data"
    for split, spk in (("train", "a"), ("dev", "b"), ("test", "c")):
        (data / split).mkdir(parents=True)
        (data / split / "utt2spk").write_text(f"{spk}-s000 {spk}\n")
    wav = tmp_path / "x.wav"
    soundfile.write(wav, [0.0] * 1600, 16000)
    (data / "commands").mkdir()
    (data / "commands" / "text").write_text("a-c0 lights on\nb-c0 bring me some juice\nc-c0 lights on\n")
    (data / "commands" / "utt2spk").write_text("a-c0 a\nb-c0 b\nc-c0 c\n")
    (data / "commands" / "wav.scp").write_text(f"a-c0 {wav}\nb-c0 {wav}\nc-c0 {wav}\n")
    (data / "commands" / "intent").write_text(
        "a-c0\tactivate\tlights\tnone\nb-c0\tbring\tjuice\tnone\nc-c0\tactivate\tlights\tnone\n")
    with pytest.raises(SystemExit, match=r"action values \['bring'\] occur in valid but not in train"):
        superb_layouts.fluent_commands(data, tmp_path / "ic")


@needs_espeak
def test_phoneme_csvs(corpus, tmp_path):
    out = tmp_path / "pr"
    superb_layouts.phoneme_csvs(corpus, out)
    tables = {split: list(csv.DictReader(open(out / f"{split}.csv"))) for split in ("train", "dev", "test", "test_unseen")}
    vocabulary = {p for row in tables["train"] for p in row["transcription"].split()}
    assert [r["id"] for r in tables["train"]] == [u for u, _ in read_scp(corpus / "train" / "text")]
    for split, rows in tables.items():  # dev / test keep the utterances whose phonemes train has
        utts = [u for u, _ in read_scp(corpus / split / "text")]
        assert rows and [r["id"] for r in rows] == [u for u in utts if u in {r["id"] for r in rows}]
        assert all(Path(r["wav_path"]).is_absolute() and Path(r["wav_path"]).is_file() for r in rows)
        assert {p for r in rows for p in r["transcription"].split()} <= vocabulary
    assert not any(ch in row["transcription"] for rows in tables.values() for row in rows for ch in "',_")
    # a function of the text: the lexicon entry of each word, in order
    text = dict(read_scp(corpus / "train" / "text"))[tables["train"][0]["id"]]
    expected = [p for word in text.split() for p in espeak_phonemes(word)]
    assert tables["train"][0]["transcription"].split() == expected
    assert espeak_phonemes("yes") == espeak_phonemes("yes") != []


# ----------------------------------------------------------------------------- stage 7 bookkeeping
def test_alignment_counts_and_error_table():
    assert evaluate_superb.align_counts("a b c d".split(), "a x c d e".split()) == (3, 1, 0, 1)
    assert evaluate_superb.align_counts("a b c".split(), []) == (0, 0, 3, 0)
    table = evaluate_superb.error_table({"u1": "a b c d".split(), "u2": "e f".split()},
                                        {"u1": "a x c d e".split(), "u2": "e f".split()})
    assert table == {"Snt": 2, "Wrd": 6, "Corr": 83.33, "Sub": 16.67, "Del": 0.0, "Ins": 16.67,
                     "Err": 33.33, "S.Err": 50.0}


def test_schedule_and_step_overrides(tmp_path):
    assert evaluate_superb.schedule_overrides(None) == []
    runner_items = evaluate_superb.schedule_overrides(600)
    assert "config.runner.total_steps=600" in runner_items and "config.runner.eval_step=300" in runner_items
    problem_items = evaluate_superb.schedule_overrides(7, problem=True)
    assert problem_items[:2] == ["--train.total_steps", "7"] and "--train.eval_step" in problem_items
    config = tmp_path / "c.yaml"
    config.write_text("runner:\n  total_steps: 300\n")
    assert evaluate_superb.total_steps(config, []) == 300
    assert evaluate_superb.total_steps(config, runner_items) == 600
    config.write_text("train:\n  total_steps: 40\n")
    assert evaluate_superb.total_steps(config, []) == 40
    assert evaluate_superb.total_steps(config, problem_items) == 7
    assert evaluate_superb.upstream_args("s3prl:fbank_no_cmvn") == ["-u", "fbank_no_cmvn"]
    assert evaluate_superb.problem_upstream_args("s3prl:fbank_no_cmvn")[-1] == "None"
    assert evaluate_superb.problem_upstream_args(str(tmp_path))[1] == "espnet_compress_local"


def test_parsers_read_the_runner_and_problem_outputs(tmp_path):
    ks = tmp_path / "ks"
    ks.mkdir()
    (ks / "log.log").write_text("dev at step 100: 0.5\nNew best on dev at step 100: 0.5\n"
                                "dev at step 200: 0.625\ntest at step 0: 0.75\n")
    assert evaluate_superb.parse_ks(ks, "") == {"value": 0.75, "dev_best": 0.625}
    (ks / "log.log").write_text("dev at step 100: 0.5\n")
    assert evaluate_superb.parse_ks(ks, "test acc: 0.25\n")["value"] == 0.25

    asr = tmp_path / "asr"
    asr.mkdir()
    (asr / "test-clean-noLM-ref.ark").write_text("u1 A B C D\nu2 E F\n")
    (asr / "test-clean-noLM-hyp.ark").write_text("u1 A X C D E\nu2 E F\n")
    parsed = evaluate_superb.parse_asr(asr, "test-clean uer: 12.5\ntest-clean wer: 33.333333\n",
                                       "dev-clean wer: 101.5\ndev-clean wer: 90.0\n", "test-clean")
    assert parsed["value"] == pytest.approx(33.333333) and parsed["uer"] == 12.5 and parsed["dev_best"] == 90.0
    assert parsed["wer_details"]["Err"] == 33.33

    pr = tmp_path / "pr"
    (pr / "evaluate" / "valid_best" / "test").mkdir(parents=True)
    (pr / "train" / "valid_best").mkdir(parents=True)
    (pr / "evaluate" / "valid_best" / "test" / "result.yaml").write_text(yaml.safe_dump({"loss": 1.0, "per": 0.25}))
    (pr / "train" / "valid_best" / "training_stats.yaml").write_text(
        yaml.safe_dump({"global_step": 10, "valid_best_metrics": {"loss": 2.0, "per": 0.5}}))
    assert evaluate_superb.parse_problem(pr, "test", "per") == {"value": 25.0, "dev_best": 50.0}
    assert evaluate_superb.parse_problem(tmp_path / "missing", "test", "per") == {"value": None, "dev_best": None}


def test_runner_checkpoint_prefers_dev_best_then_the_last_states(tmp_path):
    with pytest.raises(RuntimeError, match="no checkpoint"):
        evaluate_superb.runner_checkpoint(tmp_path, "dev-best.ckpt")
    for step in (50, 500, 250):
        (tmp_path / f"states-{step}.ckpt").write_text("")
    assert evaluate_superb.runner_checkpoint(tmp_path, "dev-best.ckpt").name == "states-500.ckpt"
    (tmp_path / "dev-best.ckpt").write_text("")
    assert evaluate_superb.runner_checkpoint(tmp_path, "dev-best.ckpt").name == "dev-best.ckpt"


def test_evaluate_superb_rejects_bad_model_specs(tmp_path):
    result = subprocess.run([sys.executable, str(RECIPE / "local" / "evaluate_superb.py"), "--out", str(tmp_path),
                             "--models", "teacher", "--tasks", "ks", "--ks_data", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "expected NAME=MODEL_DIR or NAME=s3prl:UPSTREAM" in result.stderr
    result = subprocess.run([sys.executable, str(RECIPE / "local" / "evaluate_superb.py"), "--out", str(tmp_path),
                             "--models", "t=/x", "--tasks", "ic"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--ic_data is needed for task ic" in result.stderr
    result = subprocess.run([sys.executable, str(RECIPE / "local" / "evaluate_superb.py"), "--out", str(tmp_path),
                             "--models", "t=/x", "--tasks", "ks", "--ks_data", str(tmp_path), "--seeds", "ks=0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--seeds: expected TASK=N" in result.stderr


def test_runs_in_process_are_logged_isolated_and_undo_s3prls_isinstance_hack(tmp_path, monkeypatch):
    """A worker runs s3prl's entry points one after the other in its own process: each run's
    stdout / stderr go to its log, its exit status comes back, and the builtins.isinstance
    wrapper s3prl installs at every start is undone (nested wrappers slowed later runs down)."""
    import builtins

    from s3prl_upstream import run_downstream

    original = builtins.isinstance

    def fake_main(argv):
        wrapped = builtins.isinstance
        builtins.isinstance = lambda obj, cls: wrapped(obj, cls)  # what s3prl's hack_isinstance does
        print("stdout of", argv)
        print("stderr line", file=sys.stderr)
        raise SystemExit(3 if argv == ["fail"] else 0)

    monkeypatch.setattr(run_downstream, "main", fake_main)
    cmd = [sys.executable, "-m", "s3prl_upstream.run_downstream"]
    for argv, code in ((["ok"], 0), (["fail"], 3)):
        log = tmp_path / f"{argv[0]}.log"
        rc, seconds = evaluate_superb.run_in_process(cmd + argv, log, tmp_path)
        assert rc == code and seconds >= 0
        assert builtins.isinstance is original
        text = log.read_text()
        assert text.startswith("# " + " ".join(cmd + argv)) and f"stdout of {argv}" in text and "stderr line" in text
    assert os.getcwd() != str(tmp_path)  # the working directory is given back too


def test_unseen_splits_and_run_names(tmp_path):
    assert evaluate_superb.unseen_data("ks", tmp_path) is None  # a layout without held-out voices
    for task, name in (("ks", "test_unseen"), ("asr", "test-other"), ("pr", "test_unseen.csv")):
        (tmp_path / name).touch()
        assert evaluate_superb.unseen_data(task, tmp_path) == tmp_path / name
    assert evaluate_superb.unseen_data("ic", tmp_path) is None  # IC has no unseen-voices split
    assert evaluate_superb.run_name("compressed_macs", "ks", 2) == "compressed_macs_ks_seed2"


# ----------------------------------------------------------------------------- stage 8 (report)
def superb_json(exp: Path, model: str, task: str, seed: int = 0, **fields) -> None:
    (exp / "superb").mkdir(parents=True, exist_ok=True)
    run = dict(model=model, task=task, seed=seed, checkpoint=f"/x/{task}.ckpt", total_steps=10, **fields)
    (exp / "superb" / f"{model}_{task}_seed{seed}.json").write_text(json.dumps(run))


def test_report_rows_convert_every_metric_to_percent(tmp_path):
    superb_json(tmp_path, "teacher", "ks", value=0.5147, dev_best=0.541, unseen={"value": 0.25})
    superb_json(tmp_path, "teacher", "ks", seed=1, value=0.6147, dev_best=0.6, unseen={"value": 0.35})
    superb_json(tmp_path, "teacher", "ks", seed=10, value=0.5647, dev_best=0.6, unseen={"value": 0.30})
    superb_json(tmp_path, "teacher", "asr", value=91.88, uer=38.11, dev_best=94.9, unseen={"value": 99.0, "uer": 60.5})
    superb_json(tmp_path, "teacher", "ic", value=0.8, dev_best=0.85)
    superb_json(tmp_path, "teacher", "pr", value=40.5, dev_best=42.0, unseen={"value": 55.25})
    superb_json(tmp_path, "fbank", "ks", value=0.2)
    runs = {(m, t): report.superb(tmp_path, m, t) for m in ("teacher", "fbank") for t in report.TASK_COLUMNS
            if report.superb(tmp_path, m, t)}
    assert [r["seed"] for r in runs[("teacher", "ks")]["runs"]] == [0, 1, 10]  # numeric seed order
    metrics = report.task_metrics(runs, "teacher")
    # means over seeds in %, sample standard deviation, the values in seed order; unseen voices alike
    assert metrics["ks_accuracy"] == 56.47 and metrics["ks_accuracy_std"] == 5.0
    assert metrics["ks_accuracy_seeds"] == [51.47, 61.47, 56.47]
    assert metrics["ks_accuracy_unseen"] == 30.0 and metrics["ks_accuracy_unseen_std"] == 5.0
    assert (metrics["asr_wer"], metrics["asr_cer"], metrics["asr_wer_std"]) == (91.88, 38.11, None)
    assert (metrics["asr_wer_unseen"], metrics["asr_cer_unseen"], metrics["pr_per_unseen"]) == (99.0, 60.5, 55.25)
    assert (metrics["ic_accuracy"], metrics["pr_per"]) == (80.0, 40.5) and "ic_accuracy_unseen" not in metrics
    # ks / asr are always present (null when not run), ic / pr only where run
    assert report.task_metrics(runs, "fbank") == {"ks_accuracy": 20.0, "ks_accuracy_std": None,
                                                  "ks_accuracy_seeds": [20.0], "asr_wer": None, "asr_cer": None}
    rows = [{"model": "teacher", "params": 1000, "macs_per_second": 2e9, "rtf": 0.01, **metrics},
            {"model": "fbank", "params": 0, "macs_per_second": None, "rtf": 0.001, **report.task_metrics(runs, "fbank")}]
    env = dict(date="d", python="3", espnet="e", espnet_compress="c", s3prl="s", torch="t", git_hash=None, dirty=False,
               commit_date=None, cpu="cpu", cpu_count=2)
    text = report.markdown(tmp_path, env, rows, runs, "rtf", {})
    assert ("|model|params|MACs/s (G)|RTF|KS acc ↑|KS acc unseen ↑|ASR WER ↓|ASR CER ↓|ASR WER unseen ↓|"
            "ASR CER unseen ↓|IC acc ↑|PR PER ↓|PR PER unseen ↓|") in text
    assert "|teacher|1,000|2.0000|0.0100|56.47 ± 5.00|30.00 ± 5.00|91.88|38.11|99.00|60.50|80.00|40.50|55.25|" in text
    assert "|fbank|0|n/a|0.0010|20.00|n/a|n/a|n/a|n/a|n/a|n/a|n/a|n/a|" in text
    assert "|teacher|0|10|ic.ckpt|85.00|80.00|n/a|" in text  # dev / test accuracy of the IC table in %
    assert "|teacher|1|10|ks.ckpt|60.00|61.47|35.00|" in text  # one line per seed, with the unseen voices
    assert "- teacher vs fbank: KS acc +36.47 ± 5.00 (better)\n" in text  # fbank: KS alone
    rows[1]["ks_accuracy"] = 53.0  # 3.47 points below the teacher, less than its spread of 5
    assert "KS acc +3.47 ± 5.00 (better, within the spread)" in report.markdown(tmp_path, env, rows, runs, "rtf", {})
    for cost in ("params", "macs"):
        report.plot_metric_vs_cost(rows, tmp_path / f"plot_{cost}.png", cost)
        assert (tmp_path / f"plot_{cost}.png").stat().st_size > 10000


def test_report_target_is_absolute(tmp_path):
    (tmp_path / "stage1_pruned").mkdir()
    summary = {"target": {"metric": "params", "sparsity": 0.75}, "teacher_params": 933792,
               "teacher_macs_per_second": 84_700_000}
    (tmp_path / "stage1_pruned" / "summary.yaml").write_text(yaml.safe_dump(summary))
    assert report.target_of(tmp_path) == {"params": 233448}
    summary["target"] = {"metric": "macs", "sparsity": 0.5}
    (tmp_path / "stage1_pruned" / "summary.yaml").write_text(yaml.safe_dump(summary))
    assert report.target_of(tmp_path) == {"macs_per_second": 42_350_000}
    summary["target"] = {"metric": "flops", "sparsity": 0.5}
    (tmp_path / "stage1_pruned" / "summary.yaml").write_text(yaml.safe_dump(summary))
    with pytest.raises(ValueError, match="unknown target metric 'flops'"):
        report.target_of(tmp_path)


# ----------------------------------------------------------------------------- run.sh
@needs_espeak
def test_run_sh_stages_skip_when_done_and_reject_unknown_options(tmp_path):
    """run.sh's data stages (1, 2 and the four SUPERB layouts of 8) on a tiny corpus; a second
    call skips them by their stamps. The training stages are covered by the task tests and the
    full recipe by the benchmark."""
    def run_sh(*args):
        env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
        return subprocess.run(["bash", str(RECIPE / "run.sh"), "--exp", str(tmp_path / "exp"), "--num_speakers", "8",
                               "--utts_per_speaker", "3", "--num_clusters", "8", *args],
                              capture_output=True, text=True, env=env, timeout=600)

    first = run_sh("--stop_stage", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    labels = dict(read_scp(tmp_path / "exp" / "corpus" / "data" / "train" / "hubert_labels"))
    assert labels and len((tmp_path / "exp" / "hubert_tokens.txt").read_text().split()) == 8 + 1  # + <unk>
    layouts = run_sh("--stage", "6", "--stop_stage", "6")
    assert layouts.returncode == 0, layouts.stderr[-3000:]
    superb_data = tmp_path / "exp" / "superb_data"
    for expected in ("ks/test/yes", "ks/test_unseen/yes", "asr/len_for_bucket/train-clean-100.csv",
                     "asr/len_for_bucket/test-other.csv", "ic/data/train_data.csv", "pr/test.csv", "pr/test_unseen.csv"):
        assert (superb_data / expected).exists(), expected
    again = run_sh("--stop_stage", "2")
    assert again.returncode == 0
    assert "stage 1 (synthesise the corpus with espeak-ng and flite" in again.stdout
    assert "done before, skipped" in again.stdout.split("stage 1 (", 1)[1].splitlines()[0]
    assert "stage 2 (MFCC k-means targets for HuBERT): done before, skipped" in again.stdout
    wrong = run_sh("--stages", "3")
    assert wrong.returncode == 2 and "unknown option: --stages" in wrong.stderr
