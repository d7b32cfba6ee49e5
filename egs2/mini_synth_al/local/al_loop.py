#!/usr/bin/env python3
"""Active-learning rounds: train ESPnet ASR on the labelled set, score the pool, select, reveal, retrain.

For every seed, round 0 trains on the seed set (shared by all methods). Then, for every
(method, seed) chain and round r = 1..R: the previous round's model scores the remaining pool
(``espnet_plugin.asr.active_learning.select_from_pool``, what ``asr_select`` runs), a fixed budget
of audio seconds is selected, the :class:`Oracle` reveals the chosen utterances' transcripts
(and only theirs), they move from the pool to the labelled set, a new model is trained from
scratch (``espnet_plugin.bin.asr_train``, i.e. ESPnet's ``asr_train``), and the test set is decoded.

Layout under ``--exp``::

    al/seed<S>/round0/{labelled,pool,asr,result.json}             shared round 0
    al/<method>/seed<S>/round<R>/{select,labelled,pool,asr,result.json}
    al/<method>/seed<S>/revealed.tsv                              every oracle read: round, utterance
    al/rows.json                                                  one row per (method, seed, round)

A round with a ``result.json`` is done and skipped when the script runs again. Test decoding is
greedy CTC (best path, repeats and blanks removed); WER / CER are edit distances over words /
characters (spaces excluded), summed over the test set.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from espnet_plugin.utils.kaldi_data import read_scp, write_scp

LABELLED_FILES = ("wav.scp", "text", "utt2spk", "speech_shape")
POOL_FILES = ("wav.scp", "utt2spk", "speech_shape")
MODEL_FILE = "valid.loss.best.pth"


class Oracle:
    """The pool's transcripts, read utterance by utterance when an utterance has been selected.

    Every read is appended to ``log`` (``round<TAB>utt``); nothing else in the recipe opens the file.
    """

    def __init__(self, path: Path, log: Path) -> None:
        self._path = Path(path)
        self.log = Path(log)

    def reveal(self, utts: Sequence[str], round_: int) -> Dict[str, str]:
        wanted = set(utts)
        texts = {u: t for u, t in read_scp(self._path) if u in wanted}
        missing = wanted - set(texts)
        if missing:
            raise KeyError(f"the oracle has no transcript for {sorted(missing)}")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a", encoding="utf-8") as f:
            f.writelines(f"{round_}\t{u}\n" for u in sorted(wanted))
        return texts


# ------------------------------------------------------------------------------- data dirs
def read_dir(directory: Path, files: Sequence[str]) -> Dict[str, Dict[str, str]]:
    return {name: dict(read_scp(directory / name)) for name in files if (directory / name).is_file()}


def write_dir(directory: Path, content: Dict[str, Dict[str, str]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, entries in content.items():
        write_scp(directory / name, entries)
    return directory


def seconds_of(directory: Path) -> float:
    return sum(int(v) for _, v in read_scp(directory / "speech_shape")) / 16000


def move_selected(prev: Path, selected: Sequence[str], texts: Dict[str, str], out: Path) -> None:
    """``out/labelled`` = previous labelled + selected (with revealed texts); ``out/pool`` = pool - selected."""
    labelled = read_dir(prev / "labelled", LABELLED_FILES)
    pool = read_dir(prev / "pool", POOL_FILES)
    chosen = set(selected)
    if len(chosen) != len(selected):
        raise RuntimeError("an utterance was selected twice in one round")
    if not chosen <= set(pool["wav.scp"]):
        raise RuntimeError(f"selected utterances not in the pool: {sorted(chosen - set(pool['wav.scp']))}")
    if chosen & set(labelled["wav.scp"]):
        raise RuntimeError(f"selected utterances already labelled: {sorted(chosen & set(labelled['wav.scp']))}")
    for name in POOL_FILES:
        labelled[name].update({u: pool[name][u] for u in chosen})
    labelled["text"].update(texts)
    write_dir(out / "labelled", labelled)
    write_dir(out / "pool", {name: {u: v for u, v in entries.items() if u not in chosen} for name, entries in pool.items()})


# ------------------------------------------------------------------------------- ESPnet
def train(rdir: Path, data: Path, conf: Path, compact_model: Optional[Path], seed: int, extra: Sequence[str]) -> Path:
    """ESPnet ASR training (``espnet_plugin.bin.asr_train``, in-process) on ``rdir/labelled``."""
    from espnet_plugin.bin.asr_train import main as asr_train

    out = rdir / "asr"
    config = copy.deepcopy(yaml.safe_load(conf.read_text()))
    if compact_model is not None:  # the frozen upstream of conf/train_asr_compact.yaml
        config["frontend_conf"]["frontend_conf"]["path_or_url"] = str(compact_model)
    out.mkdir(parents=True, exist_ok=True)
    (rdir / "train_asr.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    lab, dev = rdir / "labelled", data / "dev"
    asr_train([
        "--config", str(rdir / "train_asr.yaml"), "--output_dir", str(out), "--token_list", str(data / "tokens.txt"),
        "--ngpu", "0", "--seed", str(seed), "--resume", "true",
        "--train_data_path_and_name_and_type", f"{lab / 'wav.scp'},speech,sound",
        "--train_data_path_and_name_and_type", f"{lab / 'text'},text,text",
        "--train_shape_file", str(lab / "speech_shape"),
        "--valid_data_path_and_name_and_type", f"{dev / 'wav.scp'},speech,sound",
        "--valid_data_path_and_name_and_type", f"{dev / 'text'},text,text",
        "--valid_shape_file", str(dev / "speech_shape"),
        *extra,
    ])
    return out


def evaluate(asr_dir: Path, test: Path) -> Dict[str, float]:
    """Greedy CTC decoding of ``test``: WER and CER (%)."""
    import editdistance
    import torch

    from espnet_plugin.asr.active_learning import load_asr_experiment
    from espnet_plugin.utils.audio import read_audio

    model, args = load_asr_experiment(asr_dir / "config.yaml", asr_dir / MODEL_FILE)
    token_list = list(args.token_list)
    words = chars = word_errors = char_errors = 0
    with torch.no_grad():
        for utt, ref in read_scp(test / "text"):
            wav = read_audio(_wav(test, utt))
            enc, _ = model.encode(wav[None], torch.tensor([len(wav)]))
            best = model.ctc.argmax(enc)[0].tolist()
            ids = [t for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]
            hyp = "".join(" " if token_list[i] == "<space>" else token_list[i] for i in ids if token_list[i] != "<sos/eos>")
            hyp = " ".join(hyp.split())
            word_errors += editdistance.eval(ref.split(), hyp.split())
            words += len(ref.split())
            char_errors += editdistance.eval(ref.replace(" ", ""), hyp.replace(" ", ""))
            chars += len(ref.replace(" ", ""))
    return {"wer": 100.0 * word_errors / max(words, 1), "cer": 100.0 * char_errors / max(chars, 1)}


_WAVS: Dict[str, Dict[str, str]] = {}


def _wav(directory: Path, utt: str) -> str:
    key = str(directory)
    if key not in _WAVS:
        _WAVS[key] = dict(read_scp(directory / "wav.scp"))
    return _WAVS[key][utt]


# ------------------------------------------------------------------------------- rounds
class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        self.exp = args.exp.resolve()
        self.data = args.data.resolve()
        self.conf = args.conf.resolve()
        self.compact_model = args.compact_model.resolve() if args.compact_model else None
        self.rounds = args.rounds
        self.budget_seconds = args.budget_seconds
        self.nbest = args.nbest
        self.batch_size = args.batch_size
        self.train_args = args.train_args.split()


@contextlib.contextmanager
def job_log(path: Path):
    """Route logging to ``path`` while a job runs (ESPnet's trainer logs at INFO); restored after."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for handler in saved:
        root.removeHandler(handler)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)


def finish_round(s: Settings, rdir: Path, row: Dict, started: float) -> Dict:
    row.update(evaluate(rdir / "asr", s.data / "test"))
    row["labelled_seconds"] = round(seconds_of(rdir / "labelled"), 3)
    row["num_utts"] = len(list(read_scp(rdir / "labelled" / "wav.scp")))
    row["wall_seconds"] = round(time.time() - started, 1)
    (rdir / "result.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


def round_zero(s: Settings, seed: int) -> Dict:
    rdir = s.exp / "al" / f"seed{seed}" / "round0"
    if (rdir / "result.json").is_file():
        return json.loads((rdir / "result.json").read_text())
    with job_log(rdir / "log.txt"):
        started = time.time()
        write_dir(rdir / "labelled", read_dir(s.data / "seed", LABELLED_FILES))
        write_dir(rdir / "pool", read_dir(s.data / "pool", POOL_FILES))
        train(rdir, s.data, s.conf, s.compact_model, seed, s.train_args)
        return finish_round(s, rdir, {"method": "seed", "seed": seed, "round": 0}, started)


def chain(s: Settings, method: str, seed: int) -> List[Dict]:
    from espnet_plugin.asr.active_learning import select_from_pool

    cdir = s.exp / "al" / method / f"seed{seed}"
    oracle = Oracle(s.data / "oracle" / "pool_text", cdir / "revealed.tsv")
    with job_log(cdir / "log.txt"):
        rows = []
        prev = s.exp / "al" / f"seed{seed}" / "round0"
        for r in range(1, s.rounds + 1):
            rdir = cdir / f"round{r}"
            if (rdir / "result.json").is_file():
                rows.append(json.loads((rdir / "result.json").read_text()))
                prev = rdir
                continue
            started = time.time()
            summary = select_from_pool(
                prev / "pool", rdir / "select", method=method, budget_seconds=s.budget_seconds,
                asr_train_config=prev / "asr" / "config.yaml", asr_model_file=prev / "asr" / MODEL_FILE,
                seed=seed, nbest=s.nbest, beam_size=None if method == "egl" else 4, batch_size=s.batch_size,
                progress=False,
            )
            texts = oracle.reveal(summary["selected"], r)
            move_selected(prev, summary["selected"], texts, rdir)
            train(rdir, s.data, s.conf, s.compact_model, seed, s.train_args)
            row = {"method": method, "seed": seed, "round": r,
                   "scoring_utts": summary["scoring"]["utterances"], "scoring_seconds": round(summary["scoring"]["seconds"], 2)}
            rows.append(finish_round(s, rdir, row, started))
            prev = rdir
        return rows


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _round_zero(job):
    s, seed = job
    return round_zero(s, seed)


def _chain(job):
    s, method, seed = job
    return chain(s, method, seed)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="local/prepare_data.py's output")
    parser.add_argument("--conf", type=Path, required=True, help="ESPnet ASR training config")
    parser.add_argument("--compact_model", type=Path, default=None,
                        help="compact model directory: the frozen upstream of conf/train_asr_compact.yaml")
    parser.add_argument("--methods", nargs="+", default=["random", "egl", "entropy", "confidence", "badge"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget_seconds", type=float, default=60.0, help="audio selected per round")
    parser.add_argument("--nbest", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8, help="utterances scored at a time")
    parser.add_argument("--nj", type=int, default=2, help="chains run at a time (one thread each)")
    parser.add_argument("--train_args", default="", help="extra ESPnet training options")
    args = parser.parse_args(argv)
    s = Settings(args)

    import espnet_plugin.asr  # noqa: F401  (ESPnet, s3prl and the plugin imported once, before forking)

    rows: List[Dict] = []
    round_zero_jobs = [(s, seed) for seed in args.seeds]
    # method by method (in the order given), each over all seeds: a run stopped early still has
    # whole methods to compare
    chain_jobs = [(s, m, seed) for m in args.methods for seed in args.seeds]
    if args.nj <= 1:  # in this process
        _init_worker()
        zero_results, chain_results = map(_round_zero, round_zero_jobs), None
    else:  # forked workers inherit the imports; one job per worker process
        pool = multiprocessing.get_context("fork").Pool(args.nj, initializer=_init_worker, maxtasksperchild=1)
        zero_results = pool.imap_unordered(_round_zero, round_zero_jobs)
    for row in zero_results:
        print(f"round 0, seed {row['seed']}: WER {row['wer']:.1f} CER {row['cer']:.1f} ({row['wall_seconds']} s)", flush=True)
        rows.extend({**row, "method": m} for m in args.methods)
    chain_results = map(_chain, chain_jobs) if args.nj <= 1 else pool.imap_unordered(_chain, chain_jobs)
    for chain_rows in chain_results:
        for row in chain_rows:
            print(f"{row['method']} seed {row['seed']} round {row['round']}: {row['labelled_seconds'] / 60:.1f} min, "
                  f"WER {row['wer']:.1f} CER {row['cer']:.1f} ({row['wall_seconds']} s)", flush=True)
        rows.extend(chain_rows)
    if args.nj > 1:
        pool.close()
        pool.join()
    rows.sort(key=lambda r: (r["method"], r["seed"], r["round"]))
    (s.exp / "al").mkdir(parents=True, exist_ok=True)
    (s.exp / "al" / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(0 if main() else 1)
