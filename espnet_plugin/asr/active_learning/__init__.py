"""Active learning for ESPnet ASR: score an unlabelled pool, pick what to transcribe.

Methods (:mod:`.scoring`): ``random``, ``confidence``, ``entropy``, ``egl`` (expected gradient
length, Huang et al., "Active learning for speech recognition: the power of gradients", 2016)
and ``badge`` (gradient embeddings + k-means++ seeding, Ash et al., ICLR 2020). Any ESPnet ASR
model with a CTC branch works (CTC-only or hybrid CTC/attention, the plugin's
``espnet_compress`` encoder included).

* :mod:`.hypotheses`: the K best hypotheses from ESPnet's beam search, posteriors renormalised
  over the K.
* :mod:`.gradients`: exact, batched output-layer gradient norms (CTC and attention decoder).
* :mod:`.selection`: budgets in utterances or seconds, per-second normalisation, k-means++.
* :mod:`.pool`: scoring a Kaldi-style pool directory (batched, cached, bad audio skipped) and
  writing the selection; ``python -m espnet_plugin.bin.asr_select`` is its command line.

See ``docs/active_learning.md``.
"""
from espnet_plugin.asr.active_learning.hypotheses import (
    Hypothesis,
    NBestDecoder,
    NoCTCError,
    check_model,
    load_asr_experiment,
    renormalised_log_weights,
)
from espnet_plugin.asr.active_learning.pool import PoolError, check_pool_audio, score_pool, select_from_pool
from espnet_plugin.asr.active_learning.scoring import (
    EXTENSIVE,
    METHODS,
    ScoringConfig,
    UttScore,
    build_scorer,
    hypothesis_sq_grad_norms,
)
from espnet_plugin.asr.active_learning.selection import Selection, per_second, select_kmeanspp, select_top

__all__ = [
    "EXTENSIVE",
    "METHODS",
    "Hypothesis",
    "NBestDecoder",
    "NoCTCError",
    "PoolError",
    "ScoringConfig",
    "Selection",
    "UttScore",
    "build_scorer",
    "check_model",
    "check_pool_audio",
    "hypothesis_sq_grad_norms",
    "load_asr_experiment",
    "per_second",
    "renormalised_log_weights",
    "score_pool",
    "select_from_pool",
    "select_kmeanspp",
    "select_top",
]
