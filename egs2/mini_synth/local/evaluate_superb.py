#!/usr/bin/env python3
"""SUPERB downstream runs (KS, ASR, IC, PR) for every model and seed, with s3prl's code unchanged.

KS, ASR and IC go through s3prl's runner; for each model x task x seed, in
``--out/<model>_<task>_seed<S>/``:

    python -m s3prl_upstream.run_downstream -m train -u UPSTREAM [-k MODEL_DIR] -d TASK -c CONFIG \
        -p EXPDIR --device cpu --seed S -o "DATA PATHS[,,SCHEDULE]"        > train.log
    python -m s3prl_upstream.run_downstream -m evaluate [-t test-clean] -e EXPDIR/CKPT --device cpu \
                                                                        > evaluate.log

then, when the layout has the held-out voices, the same checkpoint on them (KS: ``-t test -o
...speech_commands_test_root=DATA/test_unseen``; ASR: ``-t test-other``) > evaluate_unseen.log,
and writes ``--out/<model>_<task>_seed<S>.json`` with the test metric parsed from the runner's
files: KS accuracy from the ``test at step ...`` line the speech_commands expert appends to
``log.log`` (unseen voices: the ``test acc:`` line it prints); ASR WER (and the character-level
UER) from the ``test-clean wer: ...`` lines the asr expert prints, plus an ESPnet-style word error
breakdown (Snt, Wrd, Corr, Sub, Del, Ins, Err, S.Err) computed from the
``test-clean-noLM-{hyp,ref}.ark`` files it writes. The checkpoint evaluated is the dev-best one
(``dev-best.ckpt`` / ``dev-clean-best.ckpt``) when the runner saved one, else the last
``states-*.ckpt`` (the ASR expert only saves a dev-best below its initial best WER of 100). IC is
like KS (``fluent_commands``, accuracy from ``log.log``; no unseen-voices split).

PR goes through s3prl's problem API, which trains and tests in one call:

    python -m s3prl_upstream.problem SuperbPR --config CONFIG --target_dir EXPDIR \
        --build_upstream.name UPSTREAM --build_upstream.path_or_url MODEL_DIR --train.seed S \
        [--prepare_data.test_sets "['test', 'test_unseen']"]                > train.log

with the layout's ``{train,dev,test[,test_unseen]}.csv`` copied into EXPDIR first; the PERs (in %)
are read from ``EXPDIR/evaluate/valid_best/{test,test_unseen}/result.yaml``.

Seeds: ``--seeds ks=3 asr=1`` runs a task with seeds ``--seed``, ``--seed`` + 1, ... (default one
each). The runs are shared out between ``--nj`` worker processes (longest first, each to the
least loaded worker; OMP threads divided between them), and a worker runs the command lines
above one after the other in its own process, through the entry points' ``main(argv)`` with file
descriptors 1 and 2 sent to the log: s3prl imports every upstream at start-up, once per worker
instead of two or three times per run.

A run whose JSON exists with the same settings is skipped; a run whose training finished
(``train.done``) is only evaluated again; anything else in its directory is started afresh.
Models: ``NAME=MODEL_DIR`` (a compact model directory; upstream ``espnet_compress_local``) or
``NAME=s3prl:UPSTREAM`` (an s3prl hub upstream without a checkpoint, e.g. ``fbank_no_cmvn``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
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
def run_in_process(cmd: List[str], log: Path, cwd: Path) -> Tuple[int, float]:
    """Run ``python -m MODULE ARGS`` (an s3prl_upstream entry point) in this process, its stdout
    and stderr (file descriptors 1 and 2) sent to ``log``: s3prl.hub is imported once per worker
    process instead of once per run (~25 s of CPU each on these machines). s3prl's runner wraps
    ``builtins.isinstance`` at every start (``hack_isinstance``, a DDP workaround); the wrapper is
    undone after each run, or they would nest and slow every later run down."""
    import builtins

    from s3prl_upstream import problem, run_downstream

    entry = {"s3prl_upstream.run_downstream": run_downstream.main, "s3prl_upstream.problem": problem.main}[cmd[2]]
    start, here = time.time(), os.getcwd()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    isinstance_before = builtins.isinstance
    rc = 0
    with open(log, "w", encoding="utf-8") as f:
        f.write("# " + " ".join(cmd) + "\n")
        f.flush()
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            os.chdir(cwd)
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):  # whatever sys.stdout is
                entry(cmd[3:])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 (reported in the log; the caller raises with its path)
            traceback.print_exc(file=f)
            rc = 1
        finally:
            builtins.isinstance = isinstance_before
            os.chdir(here)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return rc, time.time() - start


def train_command(spec: str, task: str, config: Path, expdir: Path, overrides: List[str], args, seed: int) -> List[str]:
    info = TASKS[task]
    if "problem" in info:
        cmd = problem_runner(args.python, info["problem"]) + ["--config", str(config), "--target_dir", str(expdir)]
        return cmd + problem_upstream_args(spec) + ["--train.seed", str(seed)] + overrides
    cmd = runner(args.python) + ["-m", "train"] + upstream_args(spec)
    cmd += ["-d", info["downstream"], "-c", str(config), "-p", str(expdir), "--device", "cpu"]
    return cmd + ["--seed", str(seed), "-o", ",,".join(overrides)]


def runner_checkpoint(expdir: Path, best: str) -> Path:
    """The runner's dev-best checkpoint, else its last ``states-*.ckpt``."""
    if (expdir / best).is_file():
        return expdir / best
    states = sorted(expdir.glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
    if not states:
        raise RuntimeError(f"no checkpoint in {expdir}")
    return states[-1]


def unseen_data(task: str, data: Path) -> Optional[Path]:
    """The layout's held-out-voices test split, if it has one (IC has none)."""
    path = data / {"ks": "test_unseen", "asr": "test-other", "pr": "test_unseen.csv"}.get(task, "-")
    return path if path.exists() else None


def run_name(model: str, task: str, seed: int) -> str:
    return f"{model}_{task}_seed{seed}"


def evaluate_runner(
    task: str, expdir: Path, split: str, overrides: List[str], log: Path, args: argparse.Namespace
) -> Tuple[Path, float]:
    checkpoint = runner_checkpoint(expdir, TASKS[task]["best"])
    cmd = runner(args.python) + ["-m", "evaluate", "-t", split, "-e", str(checkpoint), "--device", "cpu"]
    if overrides:
        cmd += ["-o", ",,".join(overrides)]
    rc, seconds = run_in_process(cmd, log, args.cwd)
    if rc != 0:
        raise RuntimeError(f"[{expdir.name}] evaluation on {split} failed (exit {rc}); see {log}")
    return checkpoint, seconds


def evaluate_one(model: str, spec: str, task: str, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    info = TASKS[task]
    problem = "problem" in info
    name = run_name(model, task, seed)
    expdir = (args.out / name).resolve()
    result_path = args.out / f"{name}.json"
    config = Path(getattr(args, f"{task}_config")).resolve()
    data = getattr(args, f"{task}_data").resolve()
    unseen = unseen_data(task, data)
    overrides = data_overrides(task, data, args.dict_path.resolve()) + schedule_overrides(args.steps, problem)
    if problem and unseen is not None:
        overrides += ["--prepare_data.test_sets", "['test', 'test_unseen']"]
    settings = {
        "model": model,
        "task": task,
        "upstream": spec,
        "data": str(data),
        "config": str(config),
        "overrides": overrides,
        "seed": seed,
    }
    if result_path.is_file():
        previous = json.loads(result_path.read_text(encoding="utf-8"))
        if {k: previous.get(k) for k in settings} == settings and previous.get("value") is not None:
            print(f"[{name}] done before, skipped", flush=True)
            return previous
    done = expdir / "train.done"
    if done.is_file() and json.loads(read(done) or "{}") != settings:
        done.unlink()
    train_log, evaluate_log, unseen_log = expdir / "train.log", expdir / "evaluate.log", expdir / "evaluate_unseen.log"
    train_seconds = None
    if not done.is_file():
        if expdir.exists():
            shutil.rmtree(expdir)
        expdir.mkdir(parents=True)
        if problem:  # SuperbPR from stage 1 reads {train,dev,test[,test_unseen]}.csv in its target dir
            for csv_path in [data / f"{split}.csv" for split in ("train", "dev", "test")] + ([unseen] if unseen else []):
                shutil.copyfile(csv_path, expdir / csv_path.name)
        print(f"[{name}] train -> {train_log}", flush=True)
        rc, train_seconds = run_in_process(train_command(spec, task, config, expdir, overrides, args, seed), train_log, args.cwd)
        if rc != 0:
            raise RuntimeError(f"[{name}] training failed (exit {rc}); see {train_log}")
        done.write_text(json.dumps(settings), encoding="utf-8")
    evaluate_seconds = None
    unseen_parsed: Dict[str, Any] = {}
    if problem:  # trained and tested in one call
        checkpoint = expdir / "train" / "valid_best"
        parsed = parse_problem(expdir, info["split"], info["metric"])
        if unseen is not None:
            unseen_parsed = parse_problem(expdir, "test_unseen", info["metric"])
    else:
        print(f"[{name}] evaluate on {info['split']} -> {evaluate_log}", flush=True)
        checkpoint, evaluate_seconds = evaluate_runner(task, expdir, info["split"], [], evaluate_log, args)
        if task == "asr":
            parsed = parse_asr(expdir, read(evaluate_log), read(train_log), info["split"])
        else:
            parsed = parse_ks(expdir, read(evaluate_log))
        if unseen is not None:  # after the in-domain test: KS appends its test lines to log.log
            print(f"[{name}] evaluate on the unseen voices -> {unseen_log}", flush=True)
            if task == "asr":
                evaluate_runner(task, expdir, "test-other", [], unseen_log, args)
                unseen_parsed = parse_asr(expdir, read(unseen_log), "", "test-other")
            else:
                root = f"config.downstream_expert.datarc.speech_commands_test_root={str(unseen)!r}"
                evaluate_runner(task, expdir, "test", [root], unseen_log, args)
                unseen_parsed = {"value": last_float(r"^test acc: ([0-9.eE+-]+)", read(unseen_log))}
    if parsed["value"] is None:
        raise RuntimeError(f"[{name}] no {info['metric']} on {info['split']} in {expdir}")
    if unseen is not None and unseen_parsed.get("value") is None:
        raise RuntimeError(f"[{name}] no {info['metric']} on the unseen voices ({unseen}) in {expdir}")
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
    if unseen is not None:
        result["unseen"] = {k: v for k, v in unseen_parsed.items() if k != "dev_best"}
    if train_seconds is None and result_path.is_file():  # keep the training time of an earlier call
        result["train_seconds"] = json.loads(result_path.read_text(encoding="utf-8")).get("train_seconds")
    result_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    shown = [format_metric(info["metric"], parsed["value"])]
    if unseen is not None:
        shown.append("unseen voices " + format_metric(info["metric"], unseen_parsed["value"]))
    print(f"[{name}] {info['split']}: {', '.join(shown)} ({checkpoint.name})", flush=True)
    return result


def format_metric(metric: str, value: float) -> str:
    return f"{100 * value:.2f} % accuracy" if metric == "accuracy" else f"{metric.upper()} {value:.2f} %"


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
    parser.add_argument("--seed", type=int, default=1337, help="the first seed; more seeds count up from it")
    parser.add_argument("--seeds", nargs="*", default=[], metavar="TASK=N",
                        help="seeds per task (default 1 each), e.g. ks=3 asr=1 pr=2")
    parser.add_argument("--nj", type=int, default=1, help="worker processes (each gets OMP threads / nj)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # a worker's runs: MODEL/TASK/SEED,...
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()

    models = []
    for item in args.models:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            parser.error(f"--models: expected NAME=MODEL_DIR or NAME=s3prl:UPSTREAM, got {item!r}")
        models.append((name, spec))
    seeds_per_task = {task: 1 for task in args.tasks}
    for item in args.seeds:
        task, sep, count = item.partition("=")
        if not sep or task not in TASKS or not count.isdigit() or int(count) < 1:
            parser.error(f"--seeds: expected TASK=N with TASK one of {sorted(TASKS)} and N >= 1, got {item!r}")
        seeds_per_task[task] = int(count)
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

    # longest runs first (ASR, then PR / IC, then KS): the workers finish closer together
    cost = {"asr": 4, "pr": 3, "ic": 2, "ks": 1}
    specs = dict(models)
    jobs = [(m, specs[m], t, args.seed + k) for t in args.tasks for k in range(seeds_per_task[t]) for m, _ in models]
    jobs.sort(key=lambda job: -cost[job[2]])
    if args.only is not None:
        wanted = set(args.only.split(","))
        run_worker([job for job in jobs if f"{job[0]}/{job[2]}/{job[3]}" in wanted], args)
        return
    run_workers(jobs, cost, args)


def run_worker(jobs: List[Tuple[str, str, str, int]], args: argparse.Namespace) -> None:
    """Run ``jobs`` one after the other in this process; exit 1 if any failed (the others still run)."""
    failures = []
    for job in jobs:
        try:
            evaluate_one(*job, args)
        except Exception as exc:  # one failed run does not stop the others
            failures.append(str(exc))
            print(str(exc), file=sys.stderr, flush=True)
    if failures:
        raise SystemExit(f"{len(failures)} of {len(jobs)} runs failed:\n" + "\n".join(failures))


def run_workers(jobs: List[Tuple[str, str, str, int]], cost: Dict[str, int], args: argparse.Namespace) -> None:
    """Share the runs out between ``--nj`` worker processes (longest first, each to the least
    loaded worker) and wait for them; each worker gets OMP_NUM_THREADS / nj threads."""
    nj = max(1, min(args.nj, len(jobs)))
    env = dict(os.environ)
    threads = int(env.get("OMP_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = str(max(1, threads // nj))
    env.setdefault("PYTHONUNBUFFERED", "1")
    groups: List[List[str]] = [[] for _ in range(nj)]
    loads = [0] * nj
    for model, _, task, seed in jobs:
        k = loads.index(min(loads))
        groups[k].append(f"{model}/{task}/{seed}")
        loads[k] += cost[task]
    runs_per_task = {t: sum(1 for j in jobs if j[2] == t) for t in args.tasks}
    print(f"{len(jobs)} runs ({', '.join(f'{t}: {n}' for t, n in runs_per_task.items())}) on {nj} worker process(es), "
          f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}", flush=True)
    start = time.time()
    argv = [args.python, str(Path(__file__).resolve()), *sys.argv[1:]]
    workers = [subprocess.Popen(argv + ["--only", ",".join(group)], env=env) for group in groups if group]
    codes = [worker.wait() for worker in workers]
    print(f"SUPERB runs: {time.time() - start:.0f} s", flush=True)
    if any(codes):
        raise SystemExit(f"{sum(1 for c in codes if c)} of {len(workers)} workers had failed runs (see above)")


if __name__ == "__main__":
    main()
