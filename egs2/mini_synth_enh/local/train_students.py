#!/usr/bin/env python3
"""Train every student of the comparison: methods x sizes x seeds, with EnhDistillTask.

Each run is ``python -m espnet_plugin.bin.enh_distill_train`` with a config merged from
``conf/train_student.yaml`` (training options), ``conf/student_<size>.yaml`` (architecture)
and ``conf/methods/<file>.yaml`` (stage and losses), except that the runs execute in
``--nj`` long-lived worker processes (``EnhDistillTask.main(cmd)``), because importing ESPnet
costs 20-50 s per process and there are dozens of short runs.

=====================  ==================================================================
method                 runs
=====================  ==================================================================
supervised             supervised.yaml, ``kd_epochs + sup_epochs`` epochs
one_step_kd            one_step_kd.yaml, ``kd_epochs + sup_epochs`` epochs
output_kd              output_kd.yaml, ``kd_epochs + sup_epochs`` epochs
two_step_sp_time       step1: kd_sp_time.yaml (noisy speech only), ``kd_epochs``; step2: step2.yaml, ``sup_epochs``
two_step_sp_batch      the same with kd_sp_batch.yaml
two_step_gdd           the same with kd_gdd.yaml
two_step_mgd           the same with kd_mgd.yaml
=====================  ==================================================================

Every method gets the same number of updates. Layout: ``EXP/students/<method>/<size>/seed<S>/``
with ``train/`` (one-stage) or ``step1/`` + ``step2/`` (ESPnet output dirs, each with its
``train.log``) and ``export/`` (the final student for enh_inference). A finished run leaves
``done`` in its directory and is skipped; an unfinished one resumes (``--resume true``).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

METHODS: Dict[str, List[Tuple[str, str]]] = {
    # method -> [(run name, method config)], run in order
    "supervised": [("train", "supervised")],
    "one_step_kd": [("train", "one_step_kd")],
    "output_kd": [("train", "output_kd")],
    "two_step_sp_time": [("step1", "kd_sp_time"), ("step2", "step2")],
    "two_step_sp_batch": [("step1", "kd_sp_batch"), ("step2", "step2")],
    "two_step_gdd": [("step1", "kd_gdd"), ("step2", "step2")],
    "two_step_mgd": [("step1", "kd_mgd"), ("step2", "step2")],
}
SIZES = ("30k", "60k")
BEST = "valid.loss.best.pth"


def merged_config(conf_dir: Path, size: str, method_conf: str, max_epoch: int) -> dict:
    config: dict = {}
    for path in (conf_dir / "train_student.yaml", conf_dir / f"student_{size}.yaml",
                 conf_dir / "methods" / f"{method_conf}.yaml"):
        config.update(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    config["max_epoch"] = max_epoch
    return config


def data_options(data: Path, split: str, train_dir: str, valid_dir: str, with_reference: bool) -> List[str]:
    options = []
    for role, name in (("train", train_dir), ("valid", valid_dir)):
        directory = data / name
        options += [f"--{role}_data_path_and_name_and_type", f"{directory / 'wav.scp'},speech_mix,sound",
                    f"--{role}_shape_file", str(directory / "speech_mix_shape")]
        if with_reference:
            options += [f"--{role}_data_path_and_name_and_type", f"{directory / 'spk1.scp'},speech_ref1,sound"]
    return options


def chain_commands(args: argparse.Namespace, method: str, size: str, seed: int) -> List[Tuple[Path, dict, List[str]]]:
    """``[(output_dir, config, command-line options)]`` of one method x size x seed, in order."""
    root = args.exp / "students" / method / size / f"seed{seed}"
    runs = METHODS[method]
    out = []
    for name, method_conf in runs:
        epochs = (args.kd_epochs if name == "step1" else args.sup_epochs if name == "step2"
                  else args.kd_epochs + args.sup_epochs)
        config = merged_config(args.conf, size, method_conf, epochs)
        stage = config.get("stage", "kd")
        if stage == "kd":  # step 1: the noisy recordings alone
            data = data_options(args.data, "train", "train_noisy_only", "valid_noisy_only", False)
        else:
            data = data_options(args.data, "train", "train", "valid", True)
        options = ["--output_dir", str(root / name), "--ngpu", "0", "--seed", str(seed), "--resume", "true",
                   *data]
        uses_teacher = stage != "supervised" or float(config.get("kd_weight", 0.0)) > 0
        if uses_teacher:
            options += ["--teacher_config", str(args.teacher / "config.yaml"),
                        "--teacher_model_file", str(args.teacher / BEST)]
        if name == "step2":
            options += ["--init_param", f"{root / 'step1' / BEST}:student:student"]
        options += args.extra
        out.append((root / name, config, options))
    return out


def run_one(output_dir: Path, config: dict, options: List[str]) -> None:
    """One ESPnet training run in this process, logged to ``output_dir/train.log``."""
    from espnet_plugin.tasks.enh_distill import EnhDistillTask

    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / "config_in.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    root = logging.getLogger()
    with open(output_dir / "train.log", "a", encoding="utf-8", buffering=1) as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"))
        root.addHandler(handler)
        try:
            with contextlib.redirect_stderr(log), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp deprecations in ESPnet's trainer
                EnhDistillTask.main(cmd=["--config", str(config_path), *options])
        finally:
            root.removeHandler(handler)


def run_chain(job: Tuple[argparse.Namespace, str, str, int]) -> Tuple[str, Optional[str], float]:
    """Train one method x size x seed (skipping finished runs) and export its student."""
    import torch

    from espnet_plugin.enh.export import export_student

    args, method, size, seed = job
    torch.set_num_threads(args.threads)
    key = f"{method}/{size}/seed{seed}"
    start = time.time()
    try:
        commands = chain_commands(args, method, size, seed)
        for output_dir, config, options in commands:
            if (output_dir / "done").exists():
                continue
            run_one(output_dir, config, options)
            (output_dir / "done").touch()
        final = commands[-1][0]
        export_dir = final.parent / "export"
        if not (export_dir / "done").exists():
            export_student(final / "config.yaml", final / BEST, export_dir)
            (export_dir / "done").touch()
    except BaseException:  # report and let the other runs go on
        return key, traceback.format_exc(), time.time() - start
    return key, None, time.time() - start


def quiet_root_logger() -> None:
    """A handler on the root logger makes ESPnet's ``logging.basicConfig`` a no-op, so its
    messages go to each run's train.log, not to the terminal."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def worker_init() -> None:
    quiet_root_logger()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the data/ directory of local/prepare_data.py")
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's enh_train output directory")
    parser.add_argument("--conf", type=Path, default=Path(__file__).resolve().parents[1] / "conf")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--kd_epochs", type=int, default=2, help="epochs of step 1")
    parser.add_argument("--sup_epochs", type=int, default=2, help="epochs of step 2")
    parser.add_argument("--nj", type=int, default=2, help="runs at a time (worker processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--extra", default="", help="extra ESPnet options for every run, e.g. '--num_iters_per_epoch 5'")
    args = parser.parse_args(argv)
    args.extra = args.extra.split()
    for size in args.sizes:
        if not (args.conf / f"student_{size}.yaml").is_file():
            parser.error(f"no {args.conf / f'student_{size}.yaml'} for size {size}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # two-step chains first (they are the longest), then sizes, seeds
    jobs = [(args, m, s, seed) for m in sorted(args.methods, key=lambda m: -len(METHODS[m]))
            for s in args.sizes for seed in args.seeds]
    failures = []
    context = multiprocessing.get_context("forkserver")
    # the server imports ESPnet once; every worker is forked from it with the import done
    context.set_forkserver_preload(["__main__", "espnet_plugin.tasks.enh_distill", "espnet_plugin.enh.export"])
    from tqdm import tqdm

    with context.Pool(args.nj, initializer=worker_init, maxtasksperchild=None) as pool:
        progress = tqdm(pool.imap_unordered(run_chain, jobs), total=len(jobs), desc="students", unit="run")
        for key, error, seconds in progress:
            if error:
                failures.append((key, error))
                progress.write(f"FAILED {key} after {seconds:.0f} s:\n{error}")
            else:
                progress.write(f"done {key} ({seconds:.0f} s)")
    if failures:
        print(f"{len(failures)} of {len(jobs)} runs failed: {', '.join(k for k, _ in failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
