"""Score an unlabelled pool (a Kaldi-style data directory) and select from it: what ``asr_select`` runs.

* The pool needs only ``wav.scp`` (``utt_id /path/to/16kHz.wav``); transcripts are never read
  (a ``text`` there is copied for the chosen utterances, nothing more).
* Every file is checked from its header first; one that is missing, unreadable, empty or at
  another sample rate is named in a warning and skipped (``on_bad_audio="skip"``, its row in
  ``scores.tsv`` says why), or stops the run (``"fail"``).
* Scoring is batched (utterances sorted by duration, longest first, so a batch pads little) and
  cached: every finished batch is appended to ``cache/scores.jsonl`` under the output directory,
  so an interrupted run resumes where it stopped. The cache's first line records the method's
  settings and the model file (path, size, modification time); a cache with other settings is
  set aside (renamed ``*.stale``) and scoring starts afresh.

Outputs under ``output_dir``: ``data/`` (the chosen utterances as a Kaldi-style data directory:
the pool's per-utterance files filtered, ``spk2utt`` rebuilt), ``scores.tsv`` (every pool
utterance), ``selection.json`` (settings, totals, throughput, notes).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from espnet_plugin.asr.active_learning.scoring import Scorer, ScoringConfig, UttScore, build_scorer
from espnet_plugin.asr.active_learning.selection import (
    Selection,
    check_budget,
    per_second,
    ranking_scores,
    select_kmeanspp,
    select_top,
)
from espnet_plugin.utils.audio import SAMPLE_RATE, AudioError, read_audio
from espnet_plugin.utils.kaldi_data import read_scp, write_scp

logger = logging.getLogger(__name__)
PathLike = Union[str, Path]

# per-utterance files ("utt_id value") copied, filtered, into the selected data directory
PER_UTTERANCE_FILES = ("wav.scp", "text", "utt2spk", "utt2dur", "utt2num_samples", "speech_shape", "utt2lang", "utt2category")


class PoolError(ValueError):
    """A pool that cannot be scored (no wav.scp, no usable utterance)."""


def check_pool_audio(wav_scp: PathLike, on_bad_audio: str = "skip") -> Tuple[Dict[str, str], Dict[str, float], Dict[str, str]]:
    """``(paths, seconds, skipped)`` of a wav.scp, from the headers; ``skipped[utt]`` is the reason."""
    import soundfile

    if on_bad_audio not in ("skip", "fail"):
        raise ValueError(f"on_bad_audio must be 'skip' or 'fail', got {on_bad_audio!r}")
    wav_scp = Path(wav_scp)
    if not wav_scp.is_file():
        raise PoolError(f"{wav_scp}: no such wav.scp (the pool must be a Kaldi-style data directory)")
    paths, seconds, skipped = {}, {}, {}
    for utt, value in read_scp(wav_scp):
        path = Path(value.strip())
        reason = None
        if not path.is_file():
            reason = f"{path}: no such audio file"
        else:
            try:
                info = soundfile.info(str(path))
            except (RuntimeError, soundfile.LibsndfileError) as exc:
                reason = f"{path}: unreadable or corrupt audio ({exc})"
            else:
                if info.frames == 0:
                    reason = f"{path}: the audio file is empty (0 samples)"
                elif info.samplerate != SAMPLE_RATE:
                    reason = f"{path}: sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz"
        if reason is None:
            paths[utt], seconds[utt] = str(path), info.frames / info.samplerate
        else:
            _bad(utt, reason, on_bad_audio, skipped)
    return paths, seconds, skipped


def _bad(utt: str, reason: str, on_bad_audio: str, skipped: Dict[str, str]) -> None:
    if on_bad_audio == "fail":
        raise AudioError(f"pool utterance {utt}: {reason}")
    logger.warning("pool utterance %s: %s: skipped", utt, reason)
    skipped[utt] = reason


class ScoreCache:
    """Per-utterance scores in a JSON-lines file, appended batch by batch; the first line is the key."""

    def __init__(self, path: Optional[PathLike], key: Dict) -> None:
        self.path = Path(path) if path is not None else None
        self.key = json.loads(json.dumps(key))  # as it reads back

    def load(self) -> Dict[str, UttScore]:
        if self.path is None or not self.path.is_file():
            return {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            head = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            head = {}
        if head.get("key") != self.key:
            stale = self.path.with_suffix(".jsonl.stale")
            logger.warning("%s was written with other settings (%s): moved to %s, scoring afresh", self.path, head.get("key"), stale)
            self.path.replace(stale)
            return {}
        out = {}
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interruption
                continue
            out[row["utt"]] = UttScore(row["utt"], row["seconds"], float(row["score"]), row.get("hyp", ""), row.get("embedding"))
        return out

    def append(self, scores: Iterable[UttScore]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with self.path.open("a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"key": self.key}) + "\n")
            for s in scores:
                row = {"utt": s.utt, "seconds": s.seconds, "score": _json_float(s.score), "hyp": s.hyp}
                if s.embedding is not None:
                    row["embedding"] = s.embedding
                f.write(json.dumps(row) + "\n")
            f.flush()


def _json_float(x: float):
    return x if math.isfinite(x) else str(x)


def score_pool(
    scorer: Scorer,
    paths: Dict[str, str],
    seconds: Dict[str, float],
    batch_size: int = 8,
    cache: Optional[ScoreCache] = None,
    on_bad_audio: str = "skip",
    skipped: Optional[Dict[str, str]] = None,
    progress: bool = True,
    device: str = "cpu",
) -> Tuple[Dict[str, UttScore], Dict[str, str], Dict[str, float]]:
    """Score every utterance of ``paths``; returns ``(scores, skipped, timing)``.

    ``timing``: ``{"utterances": newly scored, "seconds": wall time spent on them}``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    skipped = dict(skipped or {})
    cache = cache or ScoreCache(None, {})
    scores = {u: s for u, s in cache.load().items() if u in paths}
    order = sorted(paths, key=lambda u: (-seconds[u], u))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    todo = [b for b in batches if any(u not in scores for u in b)]
    if scores:
        logger.info("resuming: %d of %d utterances scored before", len(scores), len(paths))
    timing = {"utterances": 0, "seconds": 0.0}
    bar = tqdm(total=len(order), initial=len(order) - sum(len(b) for b in todo), unit="utt",
               desc=f"scoring ({scorer.config.method})", disable=not progress)
    for batch in todo:
        start = time.perf_counter()
        wavs, utts = [], []
        for utt in batch:
            try:
                wavs.append(read_audio(paths[utt]))
                utts.append(utt)
            except AudioError as exc:
                _bad(utt, str(exc), on_bad_audio, skipped)
        if utts:
            lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
            speech = torch.zeros(len(wavs), int(lengths.max()))
            for i, w in enumerate(wavs):
                speech[i, : len(w)] = w
            new = scorer.score_batch(utts, speech.to(device), lengths.to(device), SAMPLE_RATE)
            cache.append(new)
            scores.update({s.utt: s for s in new})
            timing["utterances"] += len(new)
            timing["seconds"] += time.perf_counter() - start
        bar.update(len(batch))
    bar.close()
    return scores, skipped, timing


def write_selected_data_dir(pool_dir: PathLike, out_dir: PathLike, utts: Sequence[str]) -> Path:
    """The pool's per-utterance files restricted to ``utts`` (sorted, as Kaldi expects), and ``spk2utt``."""
    pool_dir, out_dir = Path(pool_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = set(utts)
    for name in PER_UTTERANCE_FILES:
        if (pool_dir / name).is_file():
            write_scp(out_dir / name, {u: v for u, v in read_scp(pool_dir / name) if u in keep})
    if (out_dir / "utt2spk").is_file():
        spk2utt: Dict[str, List[str]] = {}
        for utt, spk in read_scp(out_dir / "utt2spk"):
            spk2utt.setdefault(spk, []).append(utt)
        write_scp(out_dir / "spk2utt", {s: " ".join(sorted(us)) for s, us in spk2utt.items()})
    return out_dir


def write_scores_tsv(
    path: PathLike,
    scores: Dict[str, UttScore],
    ranking: Dict[str, float],
    selection: Selection,
    skipped: Dict[str, str],
    pool_seconds: Dict[str, float],
) -> Path:
    """``utt_id seconds score rank_score selected pick hypothesis`` for every pool utterance (tab-separated).

    ``score``: the method's score; ``rank_score``: what was ranked by (per second where
    normalised); ``pick``: the order of selection (1 = first), empty if not selected; skipped
    utterances have ``nan`` scores and the reason as their hypothesis.
    """
    pick = {u: i + 1 for i, u in enumerate(selection.utts)}
    lines = ["utt_id\tseconds\tscore\trank_score\tselected\tpick\thypothesis"]
    for utt in sorted(set(scores) | set(skipped)):
        if utt in scores:
            s = scores[utt]
            lines.append(
                f"{utt}\t{s.seconds:.3f}\t{s.score:.6g}\t{ranking[utt]:.6g}\t{int(utt in pick)}\t{pick.get(utt, '')}\t{s.hyp}"
            )
        else:
            secs = pool_seconds.get(utt, float("nan"))
            lines.append(f"{utt}\t{secs:.3f}\tnan\tnan\t0\t\tskipped: {skipped[utt]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _model_identity(asr_train_config: Optional[PathLike], asr_model_file: Optional[PathLike]) -> Dict:
    out = {}
    for name, p in (("config", asr_train_config), ("model", asr_model_file)):
        if p is not None and Path(p).is_file():
            st = Path(p).stat()
            out[name] = [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]
    return out


def select_from_pool(
    data_dir: PathLike,
    output_dir: PathLike,
    method: str,
    budget_utts: Optional[int] = None,
    budget_seconds: Optional[float] = None,
    asr_train_config: Optional[PathLike] = None,
    asr_model_file: Optional[PathLike] = None,
    model: Optional[torch.nn.Module] = None,
    train_args=None,
    normalize: str = "auto",
    seed: int = 0,
    batch_size: int = 8,
    nbest: int = 8,
    beam_size: Optional[int] = None,
    ctc_weight: Optional[float] = None,
    egl_loss: str = "ctc",
    egl_params: str = "output",
    badge_dim: int = 4096,
    on_bad_audio: str = "skip",
    use_cache: bool = True,
    device: str = "cpu",
    progress: bool = True,
) -> Dict:
    """Score the pool ``data_dir`` with ``method`` and select under the budget; writes the outputs.

    The model is ``model`` (with ``train_args``) or loaded from ``asr_train_config`` /
    ``asr_model_file``; ``random`` needs none. Returns the summary written to ``selection.json``.
    """
    from espnet_plugin.asr.active_learning.hypotheses import load_asr_experiment

    check_budget(budget_utts, budget_seconds)
    config = ScoringConfig(method=method, nbest=nbest, beam_size=beam_size, ctc_weight=ctc_weight,
                           egl_loss=egl_loss, egl_params=egl_params, badge_dim=badge_dim, seed=seed)
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    normalized = per_second(method, normalize, budget_seconds)
    paths, seconds, skipped = check_pool_audio(data_dir / "wav.scp", on_bad_audio)
    if not paths:
        raise PoolError(f"{data_dir}: no usable utterance in the pool ({len(skipped)} skipped)")
    if model is None and method != "random":
        if asr_train_config is None:
            raise ValueError(f"method {method!r} needs an ASR model: give asr_train_config and asr_model_file")
        model, train_args = load_asr_experiment(asr_train_config, asr_model_file, device)
    if model is not None:
        from espnet_plugin.asr.active_learning.hypotheses import check_model

        check_model(model)
        model.eval()
    scorer = build_scorer(config, model, train_args)
    key = {**config.cache_key(), **_model_identity(asr_train_config, asr_model_file)}
    cache_ok = use_cache and (model is None or asr_model_file is not None)
    cache = ScoreCache(output_dir / "cache" / "scores.jsonl" if cache_ok else None, key)
    scores, skipped, timing = score_pool(scorer, paths, seconds, batch_size, cache, on_bad_audio, skipped, progress, device)
    if not scores:
        raise PoolError(f"{data_dir}: every utterance was skipped")
    utts = sorted(scores)
    secs = [scores[u].seconds for u in utts]
    rank = ranking_scores(method, [scores[u].score for u in utts], secs, normalized)
    if method == "badge":
        emb = np.asarray([scores[u].embedding for u in utts], dtype=np.float64)
        selection = select_kmeanspp(utts, emb, secs, budget_utts, budget_seconds, seed, normalized)
    else:
        selection = select_top(utts, rank, secs, budget_utts, budget_seconds)
    for note in selection.notes:
        logger.warning(note)
    if skipped:
        selection.notes.append(f"{len(skipped)} pool utterance(s) skipped for bad audio: {', '.join(sorted(skipped))}")
    write_selected_data_dir(data_dir, output_dir / "data", selection.utts)
    write_scores_tsv(output_dir / "scores.tsv", scores, dict(zip(utts, rank.tolist())), selection, skipped, seconds)
    summary = {
        "method": method,
        "settings": {k: v for k, v in config.__dict__.items()},
        "per_second": normalized,
        "budget_utts": budget_utts,
        "budget_seconds": budget_seconds,
        "pool_utts": len(set(paths) | set(skipped)),
        "scored_utts": len(scores),
        "skipped": skipped,
        "selected_utts": len(selection.utts),
        "selected_seconds": round(selection.seconds, 3),
        "whole_pool": selection.whole_pool,
        "scoring": {**timing, "utts_per_second": timing["utterances"] / timing["seconds"] if timing["seconds"] else None},
        "notes": selection.notes,
        "selected": selection.utts,
    }
    (output_dir / "selection.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


__all__ = [
    "PER_UTTERANCE_FILES",
    "PoolError",
    "ScoreCache",
    "check_pool_audio",
    "score_pool",
    "select_from_pool",
    "write_scores_tsv",
    "write_selected_data_dir",
]
