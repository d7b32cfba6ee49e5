#!/usr/bin/env python3
"""SUPERB downstream runs (KS, ASR, IC, PR) for every model, with s3prl's code unchanged.

KS, ASR and IC go through s3prl's runner; for each model x task, in ``--out/<model>_<task>/``:

    python -m s3prl_upstream.run_downstream -m train -u UPSTREAM [-k MODEL_DIR] -d TASK -c CONFIG \
        -p EXPDIR --device cpu --seed SEED -o "DATA PATHS[,,SCHEDULE]"   > train.log
    python -m s3prl_upstream.run_downstream -m evaluate [-t test-clean] -e EXPDIR/CKPT --device cpu \
                                                                        > evaluate.log

(each a subprocess), then writes ``--out/<model>_<task>.json`` with the test metric parsed from
the runner's files: KS accuracy from the ``test at step ...`` line the speech_commands expert
appends to ``log.log``; ASR WER (and the character-level UER) from the ``test-clean wer: ...``
lines the asr expert prints, plus an ESPnet-style word error breakdown (Snt, Wrd, Corr, Sub, Del,
Ins, Err, S.Err) computed from the ``test-clean-noLM-{hyp,ref}.ark`` files it writes. The
checkpoint evaluated is the dev-best one (``dev-best.ckpt`` / ``dev-clean-best.ckpt``) when the
runner saved one, else the last ``states-*.ckpt`` (the ASR expert only saves a dev-best below
its initial best WER of 100). IC is like KS (``fluent_commands``, accuracy from ``log.log``).

PR goes through s3prl's problem API, which trains and tests in one call:

    python -m s3prl_upstream.problem SuperbPR --config CONFIG --target_dir EXPDIR \
        --build_upstream.name UPSTREAM --build_upstream.path_or_url MODEL_DIR --train.seed SEED
                                                                        > train.log

with the layout's ``{train,dev,test}.csv`` copied into EXPDIR first; the PER (in %) is read from
``EXPDIR/evaluate/valid_best/test/result.yaml``.

A run whose JSON exists with the same settings is skipped; a run whose training finished
(``train.done``) is only evaluated again; anything else in its directory is started afresh.
Models: ``NAME=MODEL_DIR`` (a compact model directory; upstream ``espnet_compress_local``) or
``NAME=s3prl:UPSTREAM`` (an s3prl hub upstream without a checkpoint, e.g. ``fbank_no_cmvn``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

TASKS: Dict[str, Dict[str, Any]] = {
    "ks": {
        "downstream": "speech_commands",
        "split": "test",
        "best": "dev-best.ckpt",
        "metric": "accuracy",
    },
    "asr": {
        "downstream": "asr",
        "split": "test-clean",
        "best": "dev-clean-best.ckpt",
        "metric": "wer",
    },
    "ic": {
        "downstream": "fluent_commands",
        "split": "test",
        "best": "dev-best.ckpt",
        "metric": "accuracy",
    },
    "pr": {
        "problem": "SuperbPR",
        "split": "test",
        "metric": "per",
    },
}


# ----------------------------------------------------------------------------- command lines
def data_overrides(task: str, root: Path, dict_path: Path) -> List[str]:
    if task == "ks":
        return [
            f"config.downstream_expert.datarc.speech_commands_root={str(root / 'train')!r}",
            f"config.downstream_expert.datarc.speech_commands_test_root={str(root / 'test')!r}",
        ]
    if task == "ic":
        return [f"config.downstream_expert.datarc.file_path={str(root)!r}"]
    if task == "pr":  # the problem API reads its CSVs from the target dir (copied there)
        return []
    return [
        f"config.downstream_expert.datarc.libri_root={str(root)!r}",
        f"config.downstream_expert.datarc.bucket_file={str(root / 'len_for_bucket')!r}",
        f"config.downstream_expert.datarc.dict_path={str(dict_path)!r}",
    ]


def schedule_overrides(steps: Optional[int], problem: bool = False) -> List[str]:
    """--steps N: N training steps, dev evaluation (and a checkpoint) at N/2 and N; as the
    runner's ``-o`` items, or as the problem API's ``--train.*`` option pairs."""
    if not steps:
        return []
    every = steps // 2 if steps % 2 == 0 and steps >= 2 else steps
    if problem:
        values = {"total_steps": steps, "eval_step": every, "save_step": every, "log_step": every}
        return [item for key, value in values.items() for item in (f"--train.{key}", str(value))]
    return [
        f"config.runner.total_steps={steps}",
        f"config.runner.eval_step={every}",
        f"config.runner.save_step={every}",
        f"config.runner.log_step={every}",
    ]


def upstream_args(spec: str) -> List[str]:
    if spec.startswith("s3prl:"):
        return ["-u", spec[len("s3prl:") :]]
    return ["-u", "espnet_compress_local", "-k", str(Path(spec).resolve())]


def problem_upstream_args(spec: str) -> List[str]:
    if spec.startswith("s3prl:"):
        return ["--build_upstream.name", spec[len("s3prl:") :], "--build_upstream.path_or_url", "None"]
    return ["--build_upstream.name", "espnet_compress_local", "--build_upstream.path_or_url", str(Path(spec).resolve())]


def runner(python: str) -> List[str]:
    return [python, "-m", "s3prl_upstream.run_downstream"]


def problem_runner(python: str, problem: str) -> List[str]:
    return [python, "-m", "s3prl_upstream.problem", problem]


# ----------------------------------------------------------------------------- parsing
def last_float(pattern: str, text: str) -> Optional[float]:
    found = re.findall(pattern, text, flags=re.MULTILINE)
    return float(found[-1]) if found else None


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


def read_ark(path: Path) -> Dict[str, List[str]]:
    out = {}
    for line in read(path).splitlines():
        if line.strip():
            utt, *words = line.split()
            out[utt] = words
    return out


def align_counts(ref: Sequence[str], hyp: Sequence[str]) -> Tuple[int, int, int, int]:
    """(correct, substitutions, deletions, insertions) of a minimum-edit alignment."""
    n, m = len(ref), len(hyp)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(
                cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]), cost[i - 1][j] + 1, cost[i][j - 1] + 1
            )
    cor = sub = dele = ins = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            if ref[i - 1] == hyp[j - 1]:
                cor += 1
            else:
                sub += 1
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            dele += 1
            i -= 1
        else:
            ins += 1
            j -= 1
    return cor, sub, dele, ins


def error_table(refs: Dict[str, List[str]], hyps: Dict[str, List[str]]) -> Dict[str, Any]:
    """ESPnet's score table: Snt, Wrd, Corr/Sub/Del/Ins/Err in % of Wrd, S.Err in % of Snt."""
    totals = [0, 0, 0, 0]
    sentence_errors = words = 0
    for utt, ref in refs.items():
        counts = align_counts(ref, hyps.get(utt, []))
        totals = [a + b for a, b in zip(totals, counts)]
        words += len(ref)
        sentence_errors += any(counts[1:])
    pct = lambda x, d: round(100.0 * x / d, 2) if d else None  # noqa: E731
    cor, sub, dele, ins = totals
    return {
        "Snt": len(refs),
        "Wrd": words,
        "Corr": pct(cor, words),
        "Sub": pct(sub, words),
        "Del": pct(dele, words),
        "Ins": pct(ins, words),
        "Err": pct(sub + dele + ins, words),
        "S.Err": pct(sentence_errors, len(refs)),
    }


def parse_ks(expdir: Path, evaluate_log: str) -> Dict[str, Any]:
    log = read(expdir / "log.log")
    test = last_float(r"^test at step \d+: ([0-9.eE+-]+)$", log)
    if test is None:  # the same number, as printed
        test = last_float(r"^test acc: ([0-9.eE+-]+)", evaluate_log)
    dev = re.findall(r"^dev at step \d+: ([0-9.eE+-]+)$", log, flags=re.MULTILINE)
    return {"value": test, "dev_best": max(map(float, dev)) if dev else None}


def parse_problem(expdir: Path, split: str, metric: str) -> Dict[str, Any]:
    """The problem API's test result of its best-on-valid checkpoint; error rates in %."""
    import yaml

    result = yaml.safe_load(read(expdir / "evaluate" / "valid_best" / split / "result.yaml")) or {}
    stats = yaml.safe_load(read(expdir / "train" / "valid_best" / "training_stats.yaml")) or {}
    test, dev = result.get(metric), (stats.get("valid_best_metrics") or {}).get(metric)
    return {"value": None if test is None else 100.0 * float(test), "dev_best": None if dev is None else 100.0 * float(dev)}


def parse_asr(expdir: Path, evaluate_log: str, train_log: str, split: str) -> Dict[str, Any]:
    refs = read_ark(expdir / f"{split}-noLM-ref.ark")
    hyps = read_ark(expdir / f"{split}-noLM-hyp.ark")
    dev = re.findall(r"^dev-clean wer: ([0-9.eE+-]+)", train_log, flags=re.MULTILINE)
    result = {
        "value": last_float(rf"^{re.escape(split)} wer: ([0-9.eE+-]+)", evaluate_log),
        "uer": last_float(rf"^{re.escape(split)} uer: ([0-9.eE+-]+)", evaluate_log),
        "dev_best": min(map(float, dev)) if dev else None,
    }
    if refs:
        result["wer_details"] = error_table(refs, hyps)
        if result["value"] is not None and abs(result["wer_details"]["Err"] - result["value"]) > 0.01:
            print(f"warning: {expdir}: WER from the arks {result['wer_details']['Err']} != runner's {result['value']}")
    return result


# ----------------------------------------------------------------------------- one run
def run_logged(cmd: List[str], log: Path, env: Dict[str, str], cwd: Path) -> Tuple[int, float]:
    start = time.time()
    with open(log, "w", encoding="utf-8") as f:
        f.write("# " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(cwd))
    return rc, time.time() - start


def train_command(spec: str, task: str, config: Path, expdir: Path, overrides: List[str], args) -> List[str]:
    info = TASKS[task]
    if "problem" in info:
        cmd = problem_runner(args.python, info["problem"]) + ["--config", str(config), "--target_dir", str(expdir)]
        return cmd + problem_upstream_args(spec) + ["--train.seed", str(args.seed)] + overrides
    cmd = runner(args.python) + ["-m", "train"] + upstream_args(spec)
    cmd += ["-d", info["downstream"], "-c", str(config), "-p", str(expdir), "--device", "cpu"]
    return cmd + ["--seed", str(args.seed), "-o", ",,".join(overrides)]


def runner_checkpoint(expdir: Path, best: str) -> Path:
    """The runner's dev-best checkpoint, else its last ``states-*.ckpt``."""
    if (expdir / best).is_file():
        return expdir / best
    states = sorted(expdir.glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
    if not states:
        raise RuntimeError(f"no checkpoint in {expdir}")
    return states[-1]


def evaluate_one(model: str, spec: str, task: str, args: argparse.Namespace, env: Dict[str, str]) -> Dict[str, Any]:
    info = TASKS[task]
    problem = "problem" in info
    expdir = (args.out / f"{model}_{task}").resolve()
    result_path = args.out / f"{model}_{task}.json"
    config = Path(getattr(args, f"{task}_config")).resolve()
    data = getattr(args, f"{task}_data").resolve()
    overrides = data_overrides(task, data, args.dict_path.resolve()) + schedule_overrides(args.steps, problem)
    settings = {
        "model": model,
        "task": task,
        "upstream": spec,
        "data": str(data),
        "config": str(config),
        "overrides": overrides,
        "seed": args.seed,
    }
    if result_path.is_file():
        previous = json.loads(result_path.read_text(encoding="utf-8"))
        if {k: previous.get(k) for k in settings} == settings and previous.get("value") is not None:
            print(f"[{model}/{task}] done before, skipped", flush=True)
            return previous
    done = expdir / "train.done"
    if done.is_file() and json.loads(read(done) or "{}") != settings:
        done.unlink()
    train_log, evaluate_log = expdir / "train.log", expdir / "evaluate.log"
    train_seconds = None
    if not done.is_file():
        if expdir.exists():
            shutil.rmtree(expdir)
        expdir.mkdir(parents=True)
        if problem:  # SuperbPR from stage 1 reads {train,dev,test}.csv in its target dir
            for split in ("train", "dev", "test"):
                shutil.copyfile(data / f"{split}.csv", expdir / f"{split}.csv")
        print(f"[{model}/{task}] train -> {train_log}", flush=True)
        rc, train_seconds = run_logged(train_command(spec, task, config, expdir, overrides, args), train_log, env, args.cwd)
        if rc != 0:
            raise RuntimeError(f"[{model}/{task}] training failed (exit {rc}); see {train_log}")
        done.write_text(json.dumps(settings), encoding="utf-8")
    evaluate_seconds = None
    if problem:  # trained and tested in one call
        checkpoint = expdir / "train" / "valid_best"
        parsed = parse_problem(expdir, info["split"], info["metric"])
    else:
        checkpoint = runner_checkpoint(expdir, info["best"])
        cmd = runner(args.python) + ["-m", "evaluate", "-t", info["split"], "-e", str(checkpoint), "--device", "cpu"]
        print(f"[{model}/{task}] evaluate {checkpoint.name} on {info['split']} -> {evaluate_log}", flush=True)
        rc, evaluate_seconds = run_logged(cmd, evaluate_log, env, args.cwd)
        if rc != 0:
            raise RuntimeError(f"[{model}/{task}] evaluation failed (exit {rc}); see {evaluate_log}")
        if task == "asr":
            parsed = parse_asr(expdir, read(evaluate_log), read(train_log), info["split"])
        else:
            parsed = parse_ks(expdir, read(evaluate_log))
    if parsed["value"] is None:
        raise RuntimeError(f"[{model}/{task}] no {info['metric']} on {info['split']} in {expdir}")
    result = dict(
        settings,
        metric=info["metric"],
        split=info["split"],
        **parsed,
        checkpoint=str(checkpoint),
        total_steps=total_steps(config, overrides),
        expdir=str(expdir),
        train_seconds=round(train_seconds, 1) if train_seconds is not None else None,
        evaluate_seconds=None if evaluate_seconds is None else round(evaluate_seconds, 1),
    )
    if train_seconds is None and result_path.is_file():  # keep the training time of an earlier call
        result["train_seconds"] = json.loads(result_path.read_text(encoding="utf-8")).get("train_seconds")
    result_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    value = parsed["value"]
    shown = f"{100 * value:.2f} % accuracy" if info["metric"] == "accuracy" else f"{info['metric'].upper()} {value:.2f} %"
    print(f"[{model}/{task}] {info['split']}: {shown} ({checkpoint.name})", flush=True)
    return result


def total_steps(config: Path, overrides: List[str]) -> Optional[int]:
    """Training steps of a run: the override when there is one, else the config's."""
    import yaml

    for i, item in enumerate(overrides):
        if item.startswith("config.runner.total_steps="):
            return int(item.split("=", 1)[1])
        if item == "--train.total_steps":
            return int(overrides[i + 1])
    conf = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    return (conf.get("runner") or conf.get("train") or {}).get("total_steps")


# ----------------------------------------------------------------------------- main
def main() -> None:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="NAME=MODEL_DIR or NAME=s3prl:UPSTREAM")
    parser.add_argument("--tasks", nargs="+", default=["ks", "asr"], choices=sorted(TASKS))
    parser.add_argument("--ks_data", type=Path, help="Speech Commands layout (train/, test/)")
    parser.add_argument("--asr_data", type=Path, help="LibriSpeech layout (+ len_for_bucket/)")
    parser.add_argument("--ic_data", type=Path, help="Fluent Speech Commands layout (data/*_data.csv, wavs/)")
    parser.add_argument("--pr_data", type=Path, help="PR CSVs ({train,dev,test}.csv with phoneme transcriptions)")
    parser.add_argument("--ks_config", type=Path, default=here / "conf" / "superb_ks.yaml")
    parser.add_argument("--asr_config", type=Path, default=here / "conf" / "superb_asr.yaml")
    parser.add_argument("--ic_config", type=Path, default=here / "conf" / "superb_ic.yaml")
    parser.add_argument("--pr_config", type=Path, default=here / "conf" / "superb_pr.yaml")
    parser.add_argument(
        "--dict_path", type=Path, help="ASR char.dict (default: ASR_DATA/char.dict, else s3prl_upstream's)"
    )
    parser.add_argument("--steps", type=int, default=None, help="override the configs' total_steps")
    parser.add_argument(
        "--out", type=Path, required=True, help="runs in OUT/<model>_<task>/, results in OUT/<model>_<task>.json"
    )
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--nj", type=int, default=1, help="runs at a time (each gets OMP threads / nj)")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()

    models = []
    for item in args.models:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            parser.error(f"--models: expected NAME=MODEL_DIR or NAME=s3prl:UPSTREAM, got {item!r}")
        models.append((name, spec))
    for task in args.tasks:
        if getattr(args, f"{task}_data") is None:
            parser.error(f"--{task}_data is needed for task {task}")
    if args.dict_path is None and args.asr_data is not None and (args.asr_data / "char.dict").is_file():
        args.dict_path = args.asr_data / "char.dict"
    if args.dict_path is None:
        from s3prl_upstream import config_path

        args.dict_path = Path(config_path("asr/char.dict"))
    args.out.mkdir(parents=True, exist_ok=True)
    args.cwd = args.out.resolve()  # s3prl writes nothing relative to the cwd with -p, but keep it out of the repo

    env = dict(os.environ)
    threads = int(env.get("OMP_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = str(max(1, threads // max(1, args.nj)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    threads_each = env["OMP_NUM_THREADS"]
    print(f"{len(models)} models x {len(args.tasks)} tasks, {args.nj} at a time, OMP_NUM_THREADS={threads_each}", flush=True)

    # longest runs first (ASR, then PR / IC, then KS): two workers finish closer together
    longest_first = {"asr": 0, "pr": 1, "ic": 2, "ks": 3}
    jobs = sorted(((m, spec, t) for m, spec in models for t in args.tasks), key=lambda job: longest_first[job[2]])
    failures = []

    def work(job):
        try:
            return evaluate_one(*job[:3], args, env)
        except Exception as exc:  # one failed run does not stop the others
            failures.append(str(exc))
            print(str(exc), file=sys.stderr, flush=True)
            return None

    start = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.nj)) as pool:
        list(pool.map(work, jobs))
    print(f"SUPERB runs: {time.time() - start:.0f} s", flush=True)
    if failures:
        raise SystemExit(f"{len(failures)} of {len(jobs)} runs failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
