"""s3prl's problem API (``s3prl.problem``) through ``python -m s3prl_upstream.problem`` with the
``espnet_compress_local`` upstream, end to end on CPU with the shipped tiny configs:

- SuperbPR (configs/pr/tiny.yaml) from stage 1 (stage 0 downloads G2P lexicons) on CSVs of
  espeak-ng utterances with espeak-ng phoneme transcriptions;
- SuperbSF (configs/sf/tiny.yaml) from stage 0 on a generated corpus in Audio SNIPS's layout
  (SF's data preparation only reads local files).

Both run in subprocesses, as a user would: ~16-20 s each on 2 CPU cores (11-15 s of it importing
s3prl), the whole file ~55 s. The SF configs are also checked against SuperbSF.default_config,
read from its source.
"""
import ast
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import soundfile
import yaml

import espnet_plugin
from espnet_plugin.models import SpeechEncoder
from tests.conftest import randomize_, tiny_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "s3prl_upstream" / "configs"
S3PRL_DIR = Path(importlib.util.find_spec("s3prl").submodule_search_locations[0])

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

# A toy SLU grammar: templates of (words, slot) chunks; every utterance has at least one slot.
TEMPLATES = [
    ("PlayMusic", [("play", "O"), ("{artist}", "artist"), ("in the", "O"), ("{room}", "room")]),
    ("GetWeather", [("what is the weather in", "O"), ("{city}", "city")]),
    ("SetAlarm", [("wake me up at", "O"), ("{time}", "time"), ("in", "O"), ("{city}", "city")]),
    ("PlayMusic", [("put on some", "O"), ("{artist}", "artist")]),
]
VALUES = {
    "artist": ["adele", "miles davis", "the beatles", "nina simone"],
    "room": ["kitchen", "living room", "bedroom"],
    "city": ["paris", "new york", "boston", "tokyo", "berlin"],
    "time": ["seven am", "noon", "half past six"],
}
# SUPERB's SNIPS speaker split (SuperbSF.default_config), a subset of it; speaker -> espeak voice
SPEAKERS = {
    "train": {"Ivy": "en-us+f2", "Joanna": "en-us+f4", "Joey": "en-us+m1"},
    "valid": {"Aditi": "en-us+m3"},
    "test": {"Brian": "en-gb"},
}
PER_SPEAKER = 4  # 12 train, 4 valid, 4 test utterances


def _sentences(count: int):
    """(intent, words, per-word slot tags) for the first ``count`` utterances of the grammar;
    each slot cycles through its values."""
    used = dict.fromkeys(VALUES, 0)
    for n in range(count):
        intent, chunks = TEMPLATES[n % len(TEMPLATES)]
        words, tags = [], []
        for chunk, slot in chunks:
            if slot in VALUES:
                chunk = VALUES[slot][used[slot] % len(VALUES[slot])]
                used[slot] += 1
            words += chunk.split()
            tags += [slot] * len(chunk.split())
        yield intent, words, tags


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """An Audio-SNIPS-like corpus (all.iob.snips.txt + {split}/<speaker>-snips-<split>-<n>.wav)
    and its utterance table (with phoneme transcriptions for PR)."""
    from espnet_plugin.utils.audio import espeak_phonemes, synthesize

    root = tmp_path_factory.mktemp("snips")
    rows, lines, n = [], [], 0
    sentences = _sentences(sum(map(len, SPEAKERS.values())) * PER_SPEAKER)
    for split, speakers in SPEAKERS.items():
        for speaker, voice in speakers.items():
            for _ in range(PER_SPEAKER):
                intent, words, tags = next(sentences)
                uid = f"{speaker}-snips-{split}-{n}"
                text = " ".join(words)
                path = root / split / f"{uid}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(str(path), synthesize(text, voice).numpy(), 16000, subtype="PCM_16")
                lines.append(f"{uid} BOS {text.upper()} EOS\tO {' '.join(tags)} {intent}\n")
                rows.append(dict(id=uid, split=split, speaker=speaker, wav_path=str(path), words=text.upper(),
                                 iob=" ".join(tags), phonemes=" ".join(espeak_phonemes(text))))
                n += 1
    (root / "all.iob.snips.txt").write_text("".join(lines))
    return root, pd.DataFrame(rows)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = randomize_(SpeechEncoder(tiny_config(num_layers=2)), seed=0, std=0.2).eval()
    directory = tmp_path_factory.mktemp("model") / "hubert_tiny"
    espnet_plugin.save_model(model, directory)
    return directory


def run_problem(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "s3prl_upstream.problem", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(result):
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def _test_result(target: Path) -> dict:
    path = target / "evaluate" / "valid_best" / "test" / "result.yaml"
    assert path.is_file(), sorted(str(p.relative_to(target)) for p in target.rglob("*"))[:50]
    result = yaml.safe_load(path.read_text())
    assert all(math.isfinite(value) for value in result.values()), result
    return result


# ------------------------------------------------------------------ SF configs vs SuperbSF.default_config
def _method(path: Path, cls: str, name: str) -> ast.FunctionDef:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"{cls}.{name} not found in {path}")


def _params(fn: ast.FunctionDef) -> set:
    return {a.arg for a in fn.args.args + fn.args.kwonlyargs} - {"self"}


def superb_sf_default_config() -> dict:
    """SuperbSF.default_config() evaluated from its source (no s3prl.problem import)."""
    fn = _method(S3PRL_DIR / "problem" / "asr" / "superb_sf.py", "SuperbSF", "default_config")
    ret = next(n for n in fn.body if isinstance(n, ast.Return))
    return eval(compile(ast.Expression(ret.value), "default_config", "eval"), {"dict": dict, "MISSING": "???"})


@pytest.mark.parametrize("variant", ["superb", "tiny"])
def test_sf_config_against_default(variant):
    from omegaconf import OmegaConf

    default = superb_sf_default_config()
    conf = yaml.safe_load((CONFIGS / "sf" / f"{variant}.yaml").read_text())
    run = _method(S3PRL_DIR / "problem" / "asr" / "run.py", "ASR", "run")
    assert set(conf) <= set(default) | _params(run), set(conf) - set(default) - _params(run)
    for block in ["prepare_data", "build_tokenizer", "build_batch_sampler", "build_featurizer",
                  "build_downstream", "build_model", "build_task", "build_optimizer", "build_scheduler"]:
        assert set(conf.get(block) or {}) <= set(default[block]), block
    train_fields = {n.target.id for n in ast.walk(_method(S3PRL_DIR / "problem" / "base.py", "Problem", "train"))
                    if isinstance(n, ast.AnnAssign)}
    assert set(conf["train"]) <= train_fields, set(conf["train"]) - train_fields
    rnn = _params(_method(S3PRL_DIR / "nn" / "rnn.py", "RNNEncoder", "__init__"))
    assert set(conf["build_downstream"]["model_conf"]) <= rnn - {"input_size", "output_size"}
    specaug = _params(_method(S3PRL_DIR / "nn" / "specaug.py", "SpecAug", "__init__"))
    assert set(conf["build_downstream"]["specaug_conf"]) <= specaug
    upstream = _params(_method(S3PRL_DIR / "nn" / "upstream.py", "S3PRLUpstream", "__init__"))
    assert set(conf["build_upstream"]) <= upstream and conf["build_upstream"]["name"] == "espnet_compress_local"
    # merged as SuperbSF.main() does: default <- yaml, nothing MISSING
    merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(default), conf), resolve=True, throw_on_missing=True)
    reference = OmegaConf.to_container(OmegaConf.create(default))  # tuples as lists, as merged
    assert merged["prepare_data"] == {**reference["prepare_data"], "dataset_root": conf["prepare_data"]["dataset_root"]}
    assert merged["build_task"] == reference["build_task"]
    assert merged["build_tokenizer"] == {"vocab_type": "character"}
    if variant == "superb":  # every published number is the default's
        for key in set(reference) - {"target_dir", "build_upstream", "prepare_data"}:
            assert merged[key] == reference[key], key
        assert (merged["device"], merged["num_workers"], merged["eval_batch"]) == ("cuda", 6, -1)  # run()'s defaults
    else:
        assert merged["start"] == 0 and merged["device"] == "cpu" and merged["num_workers"] == 0
        assert merged["train"]["total_steps"] <= 100 and merged["train"]["eval_step"] <= 20
        assert len(merged["build_downstream"]["model_conf"]["hidden_size"]) == 1


# ------------------------------------------------------------------ the entry point
def test_entry_point_usage():
    result = run_problem(timeout=60)
    assert result.returncode == 2 and "usage: python -m s3prl_upstream.problem PROBLEM" in result.stderr
    result = run_problem("--help", timeout=60)
    assert result.returncode == 0 and "SuperbPR" in result.stdout


def test_entry_point_unknown_problem():
    result = run_problem("SuperbXY", "--config", "x.yaml", timeout=120)
    assert result.returncode == 2
    assert "unknown PROBLEM 'SuperbXY'" in result.stderr and "SuperbSF" in result.stderr


# ------------------------------------------------------------------ SuperbPR, stages 1-4
@needs_espeak
def test_superb_pr_end_to_end(corpus, model_dir, tmp_path):
    _, table = corpus
    target = tmp_path / "pr"
    target.mkdir()
    for split, name in [("train", "train"), ("valid", "dev"), ("test", "test")]:
        part = table[table.split == split]
        part[["id", "wav_path"]].assign(transcription=part.phonemes).to_csv(target / f"{name}.csv", index=False)
    output = _ok(run_problem(
        "SuperbPR", "--config", CONFIGS / "pr" / "tiny.yaml", "--target_dir", target,
        "--cache_dir", tmp_path / "cache", "--build_upstream.path_or_url", model_dir,
    ))
    assert "Stage 4" in output and "test results" in output
    assert "valid at step 40" in output  # tiny.yaml: 40 steps, dev every 10
    assert (target / "train.tokenizer_data-phoneme.tokenizer.pkl").is_file()
    assert (target / "train" / "valid_best" / "model" / "state_dict.pt").is_file()
    args = yaml.safe_load((target / "train" / "valid_best" / "model" / "arguments.yaml").read_text())
    assert args["build_upstream"] == {"name": "espnet_compress_local", "path_or_url": str(model_dir)}
    result = _test_result(target)
    assert set(result) == {"loss", "per"} and result["per"] >= 0
    hyp = (target / "evaluate" / "valid_best" / "test" / "hyp").read_text().splitlines()
    assert sorted(line.split(" ", 1)[0] for line in hyp) == sorted(table[table.split == "test"].id)


# ------------------------------------------------------------------ SuperbSF, stages 0-4
SF_METRICS = {"loss", "wer", "cer", "slot_type_f1", "slot_value_cer", "slot_value_wer",
              "slot_edit_f1_full", "slot_edit_f1_part"}


@needs_espeak
def test_superb_sf_end_to_end(corpus, model_dir, tmp_path):
    root, table = corpus
    target = tmp_path / "sf"
    output = _ok(run_problem(
        "SuperbSF", "--config", CONFIGS / "sf" / "tiny.yaml", "--target_dir", target,
        "--cache_dir", tmp_path / "cache", "--prepare_data.dataset_root", root,
        "--build_upstream.path_or_url", model_dir,
    ))
    assert "Stage 0" in output and "Stage 4" in output and "test results" in output
    assert "valid at step 40" in output  # tiny.yaml: 40 steps, dev every 10
    # stage 0: SNIPS parsed into per-split CSVs with word-level slot tags
    for split in SPEAKERS:
        csv = pd.read_csv(target / f"{split}.csv")
        expected = table[table.split == split].sort_values("id")
        assert csv.id.tolist() == expected.id.tolist()
        assert csv.transcription.tolist() == expected.words.tolist()
        assert csv.iob.tolist() == expected.iob.tolist()
        assert set(csv.speaker) == set(SPEAKERS[split])
    # stages 1-2: slot inventory and character-slot tokenizer
    slots = (target / "tokenizer_data" / "slot.txt").read_text().split()
    assert sorted(slots) == sorted({"O", *VALUES})
    assert (target / "text-character.tokenizer.pkl").is_file()
    # stages 3-4: dev-best checkpoint, test result and slot-tagged references
    assert (target / "train" / "valid_best" / "model" / "state_dict.pt").is_file()
    result = _test_result(target)
    assert set(result) == SF_METRICS and 0 <= result["slot_type_f1"] <= 1
    ref = (target / "evaluate" / "valid_best" / "test" / "ref").read_text()
    assert re.search(r"B-city [A-Z ]+ E-city", ref), ref
