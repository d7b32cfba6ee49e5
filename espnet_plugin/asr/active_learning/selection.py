"""Selection under a labelling budget: top-scored first, or k-means++ seeding on gradient embeddings.

Budgets are in utterances or in seconds of audio, never both, and are never exceeded: under a
seconds budget, an utterance that no longer fits is passed over and the next one in the
ranking is tried (the greedy knapsack rule), so the chosen total is <= the budget. A budget at
least as large as the pool selects the whole pool (the result says so).

Per-second normalisation (``normalize``): transcription cost grows with duration, and the
gradient-based scores (``egl``, ``badge``) are sums over frames, so they grow with duration
too; ranked raw under a seconds budget they would spend it on the longest utterances. So the
default (``"auto"``) ranks them by score per second when the budget is in seconds (value per
unit of cost) and raw when it is in utterances (each costs one). ``confidence`` and ``entropy``
are already per-token / per-frame averages, and ``random`` is random: they are never normalised.
``"seconds"`` / ``"none"`` force the choice. For ``egl`` (a log score), per second means
``log EGL - log seconds``; for ``badge``, k-means++ draws with probability proportional to
``D^2 / seconds`` instead of ``D^2``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from espnet_plugin.asr.active_learning.scoring import EXTENSIVE

NORMALIZE = ("auto", "seconds", "none")


@dataclass
class Selection:
    """The chosen utterances in the order they were picked, their total duration, and notes."""

    utts: List[str]
    seconds: float
    whole_pool: bool = False
    notes: List[str] = field(default_factory=list)


def check_budget(budget_utts: Optional[int], budget_seconds: Optional[float]) -> None:
    if (budget_utts is None) == (budget_seconds is None):
        raise ValueError("give exactly one budget: a number of utterances or a number of seconds")
    if budget_utts is not None and budget_utts < 0:
        raise ValueError(f"budget of utterances must be >= 0, got {budget_utts}")
    if budget_seconds is not None and not budget_seconds >= 0:
        raise ValueError(f"budget of seconds must be >= 0, got {budget_seconds}")


def per_second(method: str, normalize: str, budget_seconds: Optional[float]) -> bool:
    """Whether ``method``'s scores are ranked per second of audio (see the module notes)."""
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if method not in EXTENSIVE:
        return False
    return normalize == "seconds" or (normalize == "auto" and budget_seconds is not None)


def ranking_scores(method: str, scores: Sequence[float], seconds: Sequence[float], normalize: bool) -> np.ndarray:
    """The values ranked by: the scores, or per second for the extensive (log-space) scores."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    if normalize:
        s = s - np.log(np.maximum(np.asarray(seconds, dtype=np.float64), 1e-6))
    return s


def _whole_pool(utts, seconds, budget_utts, budget_seconds) -> Optional[Selection]:
    total = float(sum(seconds))
    if (budget_utts is not None and budget_utts >= len(utts)) or (budget_seconds is not None and budget_seconds >= total):
        budget = f"{budget_utts} utterances" if budget_utts is not None else f"{budget_seconds:g} s"
        note = f"the budget ({budget}) covers the whole pool ({len(utts)} utterances, {total:.1f} s): selecting all of it"
        return Selection(list(utts), total, True, [note])
    return None


def select_top(
    utts: Sequence[str],
    scores: Sequence[float],
    seconds: Sequence[float],
    budget_utts: Optional[int] = None,
    budget_seconds: Optional[float] = None,
) -> Selection:
    """Highest score first (ties: utterance id), until the budget is spent."""
    check_budget(budget_utts, budget_seconds)
    whole = _whole_pool(utts, seconds, budget_utts, budget_seconds)
    if whole is not None:
        return whole
    s = np.asarray(scores, dtype=np.float64)
    order = sorted(range(len(utts)), key=lambda i: (-s[i] if not math.isnan(s[i]) else math.inf, utts[i]))
    chosen, used = [], 0.0
    for i in order:
        if budget_utts is not None:
            if len(chosen) == budget_utts:
                break
        elif used + seconds[i] > budget_seconds:
            continue  # does not fit: try the next (shorter ones may)
        chosen.append(i)
        used += seconds[i]
    return Selection([utts[i] for i in chosen], float(sum(seconds[i] for i in chosen)))


def select_kmeanspp(
    utts: Sequence[str],
    embeddings: np.ndarray,
    seconds: Sequence[float],
    budget_utts: Optional[int] = None,
    budget_seconds: Optional[float] = None,
    seed: int = 0,
    normalize: bool = False,
) -> Selection:
    """BADGE's selection: k-means++ seeding (D^2 sampling) on the gradient embeddings.

    The first pick is drawn with probability proportional to ``||e||^2`` (the squared distance to
    the origin, i.e. to "no gradient"), each next one proportional to the squared distance to the
    nearest pick so far: large gradients and diversity at once. Only utterances that still fit
    the budget are drawn; with ``normalize`` the probabilities are divided by the durations. The
    same seed gives the same selection.
    """
    check_budget(budget_utts, budget_seconds)
    whole = _whole_pool(utts, seconds, budget_utts, budget_seconds)
    if whole is not None:
        return whole
    x = np.asarray(embeddings, dtype=np.float64)
    secs = np.asarray(seconds, dtype=np.float64)
    rng = np.random.default_rng(seed)
    d2 = np.square(x).sum(1)
    available = np.ones(len(utts), dtype=bool)
    chosen, used = [], 0.0
    while True:
        if budget_utts is not None and len(chosen) == budget_utts:
            break
        if budget_seconds is not None:
            available &= used + secs <= budget_seconds
        if not available.any():
            break
        weights = np.where(available, d2, 0.0)
        if normalize:
            weights = weights / np.maximum(secs, 1e-6)
        total = weights.sum()
        if not np.isfinite(total) or total <= 0:  # all remaining points coincide with a pick: draw uniformly
            weights = available.astype(np.float64)
            total = weights.sum()
        i = int(rng.choice(len(utts), p=weights / total))
        chosen.append(i)
        used += secs[i]
        available[i] = False
        d2 = np.minimum(d2, np.square(x - x[i]).sum(1))
    return Selection([utts[i] for i in chosen], float(sum(secs[i] for i in chosen)))


__all__ = ["NORMALIZE", "Selection", "check_budget", "per_second", "ranking_scores", "select_kmeanspp", "select_top"]
