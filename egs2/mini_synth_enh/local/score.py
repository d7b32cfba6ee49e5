#!/usr/bin/env python3
"""Enhance the test set with every model and score it with ESPnet's own tools.

Per model: ``espnet2.bin.enh_inference`` (``--train_config --model_file``) writes the
enhanced test set, ``espnet2.bin.enh_scoring`` (``--use_pesq true``) scores it against the
clean references: per-utterance SDR, SI-SNR, STOI, ESTOI and wide-band PESQ (the ``pesq``
and ``pystoi`` packages). The noisy input is scored as it is (``noisy``). Both entry points
run in ``--nj`` worker processes that import ESPnet once (``main(cmd)``), not one process per
model.

Models: ``teacher`` (``EXP/teacher``: config.yaml + valid.loss.best.pth) and every exported
student ``EXP/students/<method>/<size>/seed<S>/export``. Output:
``EXP/scores/<key>/{enhanced/spk1.scp, scoring/<METRIC>_spk1, done}`` with ``key`` ``noisy``,
``teacher`` or ``<method>/<size>/seed<S>``; finished models are skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import shutil
import sys
import traceback
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

FS = 16000


def find_models(exp: Path) -> List[Tuple[str, Optional[Path], Optional[Path]]]:
    """``[(key, train_config, model_file)]``: noisy (no model), the teacher, the exported students."""
    models: List[Tuple[str, Optional[Path], Optional[Path]]] = [("noisy", None, None)]
    teacher = exp / "teacher"
    if (teacher / "valid.loss.best.pth").exists():
        models.append(("teacher", teacher / "config.yaml", teacher / "valid.loss.best.pth"))
    for export in sorted((exp / "students").glob("*/*/seed*/export")):
        if (export / "done").exists():
            key = "/".join(export.parent.relative_to(exp / "students").parts)
            models.append((key, export / "config.yaml", export / "model.pth"))
    return models


def score_model(job: Tuple[Path, Path, str, Optional[Path], Optional[Path], int]) -> Tuple[str, Optional[str]]:
    import torch
    from espnet2.bin import enh_inference, enh_scoring

    exp, test, key, config, model_file, threads = job
    torch.set_num_threads(threads)
    out = exp / "scores" / key
    if (out / "done").exists():
        return key, None
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "score.log", "w", encoding="utf-8", buffering=1) as log, \
                contextlib.redirect_stderr(log), contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handler = logging.StreamHandler(log)
            logging.getLogger().addHandler(handler)
            try:
                inferred = test / "wav.scp"
                if config is not None:
                    shutil.rmtree(out / "enhanced", ignore_errors=True)
                    enh_inference.main([
                        "--train_config", str(config), "--model_file", str(model_file),
                        "--data_path_and_name_and_type", f"{test / 'wav.scp'},speech_mix,sound",
                        "--key_file", str(test / "wav.scp"), "--output_dir", str(out / "enhanced"),
                        "--ngpu", "0", "--fs", str(FS), "--normalize_output_wav", "false", "--num_workers", "0",
                    ])
                    inferred = out / "enhanced" / "spk1.scp"
                enh_scoring.main([
                    "--ref_scp", str(test / "spk1.scp"), "--inf_scp", str(inferred),
                    "--key_file", str(test / "wav.scp"), "--output_dir", str(out / "scoring"),
                    "--use_pesq", "true",
                ])
            finally:
                logging.getLogger().removeHandler(handler)
        (out / "done").touch()
    except BaseException:
        return key, traceback.format_exc()
    return key, None


def worker_init() -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not root.handlers:  # makes ESPnet's logging.basicConfig a no-op: messages go to score.log
        root.addHandler(logging.NullHandler())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True, help="the test data directory (wav.scp, spk1.scp)")
    parser.add_argument("--nj", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args(argv)
    jobs = [(args.exp, args.test, key, config, model, args.threads) for key, config, model in find_models(args.exp)]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", "espnet2.bin.enh_inference", "espnet2.bin.enh_scoring"])
    from tqdm import tqdm

    failures = []
    with context.Pool(args.nj, initializer=worker_init) as pool:
        progress = tqdm(pool.imap_unordered(score_model, jobs), total=len(jobs), desc="scoring", unit="model")
        for key, error in progress:
            if error:
                failures.append(key)
                progress.write(f"FAILED {key}:\n{error}")
    if failures:
        print(f"scoring failed for {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
