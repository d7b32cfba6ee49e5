"""The SUPERB downstream configs shipped in s3prl_upstream/configs/{ic,pr,asr,sid,er}.

Fast checks (no s3prl.hub, no s3prl.problem import): every YAML parses; for the legacy-runner
tasks the downstream expert is built from the config's ``downstream_expert`` section on a tiny
generated corpus in the real layout, one batch of every dataloader the runner uses goes through
``forward`` with fake upstream features, and the optimizer / SpecAugment blocks build; the PR
config (s3prl.problem.SuperbPR) is merged onto SuperbPR's default config, read from its source,
and checked key by key against the methods that consume it; char.dict has the LibriSpeech
character set.
"""
import ast
import importlib
import importlib.util
import json
import math
import string
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "s3prl_upstream" / "configs"
TASKS = ["ic", "pr", "asr", "sid", "er"]
LEGACY = {"ic": "fluent_commands", "asr": "asr", "sid": "voxceleb1", "er": "emotion"}
VARIANTS = ["superb", "tiny"]
SR = 16000
UPSTREAM_DIM = 8
UPSTREAM_RATE = 320

S3PRL_DIR = Path(importlib.util.find_spec("s3prl").submodule_search_locations[0])


def load(task, variant):
    with open(CONFIGS / task / f"{variant}.yaml") as f:
        return yaml.safe_load(f)


def need_pandas():
    # fluent_commands/expert.py, asr/dataset.py and downstream/specaug.py import pandas at the
    # top; it is a dependency of s3prl's runner that espnet-s3prl does not declare.
    return pytest.importorskip("pandas", reason="pandas is not installed (s3prl's IC/ASR experts and SpecAug import it)")


def write_wav(path: Path, seconds: float, seed: int, sr: int = SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(str(path), (0.1 * rng.standard_normal(int(seconds * sr))).astype("float32"), sr)


# ---------------------------------------------------------------- tiny corpora in real layouts
def make_fsc(root: Path):
    """Fluent Speech Commands: data/{train,valid,test}_data.csv + wavs/speakers/<spk>/<utt>.wav."""
    intents = [("activate", "lights", "kitchen"), ("deactivate", "music", "none"), ("increase", "heat", "bedroom")]
    rows = {"train": [], "valid": [], "test": []}
    n = 0
    for split, count in [("train", 9), ("valid", 3), ("test", 3)]:
        for i in range(count):
            action, obj, loc = intents[i % len(intents)]
            rel = f"wavs/speakers/spk{i % 2}/{split}{i}.wav"
            write_wav(root / rel, 0.4 + 0.05 * i, n)
            n += 1
            rows[split].append(f"{len(rows[split])},{rel},spk{i % 2},{action} {obj},{action},{obj},{loc}")
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, lines in rows.items():
        text = ",path,speakerId,transcription,action,object,location\n" + "\n".join(lines) + "\n"
        (root / "data" / f"{split}_data.csv").write_text(text)
    return {"file_path": str(root)}


def make_voxceleb1(root: Path):
    """VoxCeleb1: {dev,test}/wav/id1000N/<video>/<nnnnn>.wav + iden_split.txt (1 train, 2 dev, 3 test)."""
    lines, n = [], 0
    for spk in ["id10001", "id10002", "id10003"]:
        part = "test" if spk == "id10003" else "dev"
        for k in range(4):
            rel = f"{spk}/vid{k % 2}/{k:05d}.wav"
            write_wav(root / part / "wav" / rel, 0.5 + 0.1 * k, n)
            n += 1
            lines.append(f"{1 if k < 2 else (2 if k == 2 else 3)} {rel}")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return {"file_path": str(root), "meta_data": str(root / "iden_split.txt")}


def make_iemocap(root: Path):
    """IEMOCAP after IEMOCAP_preprocess.py: meta_data/Session1/{train,test}_meta_data.json."""
    labels = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
    n = 0

    def entries(session, count):
        nonlocal n
        out = []
        for i in range(count):
            rel = f"Session{session}/sentences/wav/Ses0{session}F_impro01/Ses0{session}F_impro01_F{i:03d}.wav"
            write_wav(root / rel, 0.4 + 0.05 * i, n)
            n += 1
            out.append({"path": rel, "label": list(labels)[i % 4], "speaker": f"Ses0{session}F"})
        return out

    meta = root / "meta_data" / "Session1"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "train_meta_data.json").write_text(json.dumps({"labels": labels, "meta_data": entries(2, 10)}))
    (meta / "test_meta_data.json").write_text(json.dumps({"labels": labels, "meta_data": entries(1, 4)}))
    return {"root": str(root), "meta_data": str(root / "meta_data")}


def make_librispeech(root: Path, splits):
    """LibriSpeech tree (.flac + <spk>-<chap>.trans.txt) and len_for_bucket/<split>.csv."""
    words = ["HELLO WORLD", "IT'S A TEST", "SPEECH MODELS", "QUICK BROWN FOX", "ZERO ONE TWO"]
    bucket = root / "len_for_bucket"
    bucket.mkdir(parents=True, exist_ok=True)
    n = 0
    for s_idx, split in enumerate(splits):
        rows = []
        for spk in [100 + s_idx * 10, 101 + s_idx * 10]:
            chap = 7
            trans = []
            for u in range(3):
                uid = f"{spk}-{chap}-{u:04d}"
                rel = f"{split}/{spk}/{chap}/{uid}.flac"
                seconds = 1.0 + 0.1 * u  # >= 51 frames at 20 ms: room for the CTC targets
                write_wav(root / rel, seconds, n)
                n += 1
                trans.append(f"{uid} {words[(n + u) % len(words)]}")
                rows.append((rel, int(SR * seconds)))
            (root / split / str(spk) / str(chap) / f"{spk}-{chap}.trans.txt").write_text("\n".join(trans) + "\n")
        rows.sort(key=lambda r: -r[1])
        (bucket / f"{split}.csv").write_text("file_path,length\n" + "".join(f"{p},{l}\n" for p, l in rows))
    return {"libri_root": str(root), "bucket_file": str(bucket)}


# ---------------------------------------------------------------- helpers
class _Logger:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, key, value, global_step=0):
        self.scalars[key] = value


def fake_features(wavs, gen):
    return [torch.randn(len(w) // UPSTREAM_RATE + 1, UPSTREAM_DIM, generator=gen) for w in wavs]


def build_expert(task, config, expdir):
    module = importlib.import_module(f"s3prl.downstream.{LEGACY[task]}.expert")
    config["downstream_expert"]["datarc"]["num_workers"] = 0  # no worker processes in tests
    # Same call as s3prl.downstream.runner.Runner._get_downstream (config fields + CLI args).
    return module.DownstreamExpert(
        upstream_dim=UPSTREAM_DIM,
        upstream_rate=UPSTREAM_RATE,
        **config,
        expdir=str(expdir),
        downstream_variant=None,
    )


def run_splits(expert, config, expdir, backward=True):
    """One train batch (and its backward) and the first batch of every eval dataloader."""
    gen = torch.Generator().manual_seed(0)
    train_split = config["runner"].get("train_dataloader", "train")
    splits = [train_split] + list(config["runner"]["eval_dataloaders"])
    for split in splits:
        expert.train(split == train_split)
        wavs, *others = next(iter(expert.get_dataloader(split)))
        assert len(wavs) > 0 and all(np.asarray(w).ndim == 1 for w in wavs)
        records = defaultdict(list)
        loss = expert(split, fake_features(wavs, gen), *others, records=records, batch_id=0)
        assert torch.isfinite(loss), split
        if split == train_split and backward:
            loss.backward()
        logger = _Logger()
        expert.log_records(split, records=records, logger=logger, global_step=1, batch_ids=[0], total_batch_num=1)
        assert logger.scalars and all(math.isfinite(v) for v in logger.scalars.values()), split
    return splits


# ---------------------------------------------------------------- tests
def test_every_yaml_parses():
    files = sorted(p for t in TASKS for p in (CONFIGS / t).glob("*.yaml"))
    assert {(p.parent.name, p.stem) for p in files} >= {(t, v) for t in TASKS for v in VARIANTS}
    for path in files:
        with open(path) as f:
            text = f.read()
        assert text.startswith("#"), f"{path} must start with the usage / override comment"
        conf = yaml.safe_load(text)
        assert isinstance(conf, dict) and conf, path


@pytest.mark.parametrize("task", sorted(LEGACY))
@pytest.mark.parametrize("variant", VARIANTS)
def test_legacy_runner_sections(task, variant):
    """The runner-level blocks that s3prl.downstream.runner.Runner reads."""
    from s3prl.optimizers import get_optimizer

    config = load(task, variant)
    runner = config["runner"]
    for key in ["total_steps", "gradient_clipping", "gradient_accumulate_steps", "log_step", "eval_step",
                "save_step", "max_keep", "eval_dataloaders"]:
        assert key in runner, (task, variant, key)
    assert runner["eval_dataloaders"]
    model = torch.nn.Linear(2, 2)
    optimizer = get_optimizer([model], runner["total_steps"], config["optimizer"])
    assert optimizer.param_groups[0]["lr"] == config["optimizer"]["lr"]
    assert "scheduler" not in config  # SUPERB trains with a constant learning rate
    if variant == "superb":
        assert runner["total_steps"] >= 30000
    else:
        assert runner["total_steps"] <= 100 and runner["eval_step"] <= 20
        assert config["downstream_expert"]["datarc"]["num_workers"] == 0
    if "specaug" in config:
        need_pandas()
        from s3prl.downstream.specaug import SpecAug

        specaug = SpecAug(**config["specaug"])
        feats = [torch.randn(60, 64), torch.randn(45, 64)]  # the runner passes a list of (T, D)
        out, _ = specaug(feats)
        assert [tuple(o.shape) for o in out] == [(60, 64), (45, 64)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_ic_expert(variant, tmp_path):
    need_pandas()
    config = load("ic", variant)
    config["downstream_expert"]["datarc"].update(make_fsc(tmp_path / "fsc"))
    expert = build_expert("ic", config, tmp_path)
    assert expert.values_per_slot == [3, 3, 3]
    assert run_splits(expert, config, tmp_path) == ["train", "dev", "test"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_sid_expert(variant, tmp_path, monkeypatch):
    from s3prl_upstream import compat

    # The dataset caches its file lists in site-packages and reuses them for any corpus; our
    # shim gives each dataset its own cache under XDG_CACHE_HOME: keep this fake corpus there.
    compat.apply()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = load("sid", variant)
    config["downstream_expert"]["datarc"].update(make_voxceleb1(tmp_path / "vox1"))
    expert = build_expert("sid", config, tmp_path)
    assert (len(expert.train_dataset), len(expert.dev_dataset), len(expert.test_dataset)) == (6, 3, 3)
    assert sorted(set(expert.train_dataset.label)) == [0, 1, 2]
    assert run_splits(expert, config, tmp_path) == ["train", "dev", "test"]
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.pkl")) == ["dev.pkl", "test.pkl", "train.pkl"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_er_expert(variant, tmp_path):
    config = load("er", variant)
    config["downstream_expert"]["datarc"].update(make_iemocap(tmp_path / "iemocap"))
    expert = build_expert("er", config, tmp_path)
    assert (len(expert.train_dataset), len(expert.dev_dataset), len(expert.test_dataset)) == (8, 2, 4)
    assert run_splits(expert, config, tmp_path) == ["train", "dev", "test"]


def test_er_optional_deep_model(tmp_path):
    """superb.yaml's optional DeepModel (CNNSelfAttention) head builds and runs too."""
    config = load("er", "superb")
    config["downstream_expert"]["modelrc"]["select"] = "DeepModel"
    config["downstream_expert"]["datarc"].update(make_iemocap(tmp_path / "iemocap"))
    expert = build_expert("er", config, tmp_path)
    run_splits(expert, config, tmp_path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_asr_expert(variant, tmp_path):
    need_pandas()
    config = load("asr", variant)
    datarc = config["downstream_expert"]["datarc"]
    # dict_path is relative to the repository root in the shipped files
    assert (ROOT / datarc["dict_path"]).is_file()
    datarc["dict_path"] = str(ROOT / datarc["dict_path"])
    split_names = sorted({s for key in ["train"] + config["runner"]["eval_dataloaders"] for s in datarc[key]})
    datarc.update(make_librispeech(tmp_path / "LibriSpeech", split_names))
    expert = build_expert("asr", config, tmp_path)
    assert expert.model.linear.out_features == 32
    assert expert.decoder is None
    run_splits(expert, config, tmp_path, backward=variant == "tiny")  # BLSTM-1024 backward: seconds
    assert (tmp_path / "dev-clean-noLM-hyp.ark").is_file()


def test_char_dict():
    from s3prl.downstream.asr.dictionary import Dictionary

    path = CONFIGS / "asr" / "char.dict"
    lines = path.read_text().splitlines()
    assert len(lines) == 28 and all(len(line.split(" ")) == 2 and line.split(" ")[1].isdigit() for line in lines)
    d = Dictionary.load(str(path))
    assert d.symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert d.bos() == 0  # the CTC blank of the ASR expert
    assert set(d.symbols[4:]) == set(string.ascii_uppercase) | {"|", "'"}
    assert d.symbols[4] == "|" and d.symbols[5] == "E"  # s3prl's order (frequency-sorted)
    ids = d.encode_line("I T ' S | A | T E S T |", line_tokenizer=lambda x: x.split())
    assert d.unk() not in ids.tolist()
    assert d.string(ids[:-1].tolist()) == "I T ' S | A | T E S T |"


# ---------------------------------------------------------------- PR via s3prl.problem.SuperbPR
def _function_source(path: Path, cls: str, fn: str):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == fn:
                    return item
    raise AssertionError(f"{cls}.{fn} not found in {path}")


def _params(fn: ast.FunctionDef):
    return {a.arg for a in fn.args.args + fn.args.kwonlyargs} - {"self"}


def superb_pr_default_config():
    """SuperbPR.default_config() evaluated from its source (importing s3prl.problem pulls in
    s3prl.hub, espnet and nltk: ~20 s)."""
    fn = _function_source(S3PRL_DIR / "problem" / "asr" / "superb_pr.py", "SuperbPR", "default_config")
    ret = next(n for n in fn.body if isinstance(n, ast.Return))
    return eval(compile(ast.Expression(ret.value), "default_config", "eval"), {"dict": dict, "MISSING": "???"})


@pytest.mark.parametrize("variant", VARIANTS)
def test_pr_problem_config(variant):
    from omegaconf import OmegaConf

    default = superb_pr_default_config()
    assert default["build_optimizer"]["conf"]["lr"] == 1.0e-2  # the published PR numbers
    assert default["train"]["total_steps"] == 100000
    conf = load("pr", variant)
    # top level: the default config's keys plus run()'s own arguments
    run_params = _params(_function_source(S3PRL_DIR / "problem" / "asr" / "run.py", "ASR", "run"))
    assert set(conf) <= set(default) | run_params, set(conf) - set(default) - run_params
    # each block only holds keys that its consumer accepts
    for block in ["prepare_data", "build_tokenizer", "build_batch_sampler", "build_featurizer",
                  "build_downstream", "build_model", "build_task", "build_optimizer"]:
        assert set(conf.get(block) or {}) <= set(default[block]) | {"conf"}, block
    train_cfg = _function_source(S3PRL_DIR / "problem" / "base.py", "Problem", "train")
    train_fields = {n.target.id for n in ast.walk(train_cfg) if isinstance(n, ast.AnnAssign)}
    assert set(conf["train"]) <= train_fields, set(conf["train"]) - train_fields
    sampler = S3PRL_DIR / "dataio" / "sampler"
    slice_params = _params(_function_source(sampler / "sorted_sampler.py", "SortedSliceSampler", "__init__"))
    fixed_params = _params(_function_source(sampler / "fixed_batch_size_batch_sampler.py", "FixedBatchSizeBatchSampler", "__init__"))
    assert set(conf["build_batch_sampler"]["train"]) <= slice_params
    assert set(conf["build_batch_sampler"]["valid"]) <= fixed_params
    assert set(conf["build_batch_sampler"]["test"]) <= fixed_params
    linear = _function_source(S3PRL_DIR / "nn" / "linear.py", "FrameLevelLinear", "__init__")
    assert set(conf["build_downstream"]) <= _params(linear) - {"input_size", "output_size"}
    upstream = _function_source(S3PRL_DIR / "nn" / "upstream.py", "S3PRLUpstream", "__init__")
    assert set(conf["build_upstream"]) <= _params(upstream)
    assert conf["build_upstream"]["name"] == "espnet_compress_local"
    # merged as SuperbPR.main() does: default <- yaml, every MISSING filled
    merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(default), conf), resolve=True, throw_on_missing=True)
    getattr(torch.optim, merged["build_optimizer"]["name"])(torch.nn.Linear(2, 2).parameters(), **merged["build_optimizer"]["conf"])
    assert merged["build_tokenizer"]["vocab_type"] == "phoneme"
    if variant == "superb":
        for key in ["train", "build_optimizer", "build_batch_sampler", "build_downstream", "prepare_data"]:
            assert {k: merged[key][k] for k in default[key] if k != "dataset_root"} == {
                k: v for k, v in default[key].items() if k != "dataset_root"}, key
    else:
        assert merged["start"] == 1 and merged["device"] == "cpu" and merged["num_workers"] == 0
        assert merged["train"]["total_steps"] <= 100 and merged["train"]["eval_step"] <= 20
