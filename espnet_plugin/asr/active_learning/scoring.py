"""Informativeness scores of unlabelled utterances, one small class per method.

Every scorer takes a batch of waveforms and returns one :class:`UttScore` per utterance; a
higher ``score`` means "transcribe this first".

=============  ==================================================================================
method         score
=============  ==================================================================================
random         a uniform draw fixed by (seed, utterance id): the baseline
confidence     minus the length-normalised log-probability of the best hypothesis,
               ``-s_1 / (len(y_1) + 1)`` (``s_1`` its beam-search score, ``+ 1`` for ``<eos>``)
entropy        mean over frames of the CTC posterior entropy ``-sum_v p_t(v) log p_t(v)`` (nats)
egl            ``log EGL(x) = logsumexp_k (log P_hat(y_k | x) + log ||grad L(x, y_k)||^2)`` over the K
               best hypotheses (Huang et al., 2016), accumulated in log space
badge          ``log ||e(x)||^2`` of the gradient embedding ``e(x)`` of the best hypothesis; the
               embedding itself goes to the k-means++ selection (Ash et al., 2020)
=============  ==================================================================================

The loss ``L`` of ``egl`` and ``badge`` (:func:`hypothesis_sq_grad_norms`):

* ``egl_loss="ctc"`` (default, as in the paper): ``L = -log P_CTC(y | x)`` of one utterance, i.e.
  ESPnet's ``CTC`` module loss with a batch of one (the module divides the batch's sum by the
  batch size).
* ``egl_loss="hybrid"``: the hybrid model's objective without label smoothing,
  ``L = w L_CTC + (1 - w) L_att`` with ``w`` the model's ``ctc_weight`` and
  ``L_att = -sum_u log P(y_u | y_<u, x)`` over the tokens and ``<eos>``.

and the parameters ``theta``:

* ``egl_params="output"`` (default): the output layers, by the exact closed form of
  :mod:`.gradients` (CTC's ``ctc_lo``; for ``hybrid`` also the decoder's ``output_layer``:
  ``||grad||^2 = w^2 ||grad_ctc_lo L_CTC||^2 + (1 - w)^2 ||grad_output_layer L_att||^2``), batched
  over utterances and hypotheses.
* ``egl_params="all"``: every trainable parameter (``requires_grad`` and not in the training
  config's ``freeze_param``), by autograd, one backward pass per hypothesis.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_plugin.asr.active_learning.gradients import (
    attention_logit_grads,
    ctc_logit_grads,
    flat_grad_sq_norm,
    gradient_embeddings,
    output_layer_sq_norms,
)
from espnet_plugin.asr.active_learning.hypotheses import Hypothesis, NBestDecoder, renormalised_log_weights

METHODS = ("random", "confidence", "entropy", "egl", "badge")
# scores that grow with the utterance's duration (sums over frames): per-second normalisation applies
EXTENSIVE = frozenset({"egl", "badge"})
EGL_LOSSES = ("ctc", "hybrid")
EGL_PARAMS = ("output", "all")


@dataclass
class ScoringConfig:
    """Settings of a scoring run (all part of the score cache's key)."""

    method: str
    nbest: int = 8
    beam_size: Optional[int] = None
    ctc_weight: Optional[float] = None  # of the beam search; default: the model's
    penalty: float = 0.0
    egl_loss: str = "ctc"
    egl_params: str = "output"
    badge_dim: int = 4096
    seed: int = 0  # random scores only (selection has its own seed)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.egl_loss not in EGL_LOSSES:
            raise ValueError(f"egl_loss must be one of {EGL_LOSSES}, got {self.egl_loss!r}")
        if self.egl_params not in EGL_PARAMS:
            raise ValueError(f"egl_params must be one of {EGL_PARAMS}, got {self.egl_params!r}")
        if self.nbest < 1:
            raise ValueError(f"nbest must be >= 1, got {self.nbest}")

    def cache_key(self) -> Dict:
        key = {"method": self.method}
        if self.method == "random":
            key["seed"] = self.seed
        if self.method in ("confidence", "egl", "badge"):
            key.update(beam_size=self.beam_size, ctc_weight=self.ctc_weight, penalty=self.penalty)
        if self.method == "egl":
            key.update(nbest=self.nbest, egl_loss=self.egl_loss, egl_params=self.egl_params)
        if self.method == "badge":
            key.update(badge_dim=self.badge_dim, egl_loss=self.egl_loss)
        return key


@dataclass
class UttScore:
    utt: str
    seconds: float
    score: float
    hyp: str = ""
    embedding: Optional[List[float]] = field(default=None, repr=False)


def random_score(seed: int, utt: str) -> float:
    """A uniform [0, 1) draw fixed by the seed and the utterance id (independent of order and batching)."""
    return float(np.random.default_rng([seed, zlib.crc32(utt.encode("utf-8"))]).random())


def encode(model: torch.nn.Module, speech: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """ESPnet's ``model.encode`` of each utterance on its own, padded into (B, T, D) and lengths (B,).

    One utterance at a time, as ``espnet2.bin.asr_inference`` decodes: a front-end or encoder
    that sees padding (STFT edges, normalisation over time) would otherwise give a score that
    depends on the batch it was in. The gradient work after this is batched.
    """
    outs = []
    for i in range(speech.shape[0]):
        n = int(lengths[i])
        enc, _ = model.encode(speech[i : i + 1, :n], lengths[i : i + 1])
        if isinstance(enc, tuple):  # intermediate CTC outputs ride along
            enc = enc[0]
        outs.append(enc[0])
    enc_lens = torch.tensor([o.shape[0] for o in outs], dtype=torch.long, device=speech.device)
    return torch.nn.utils.rnn.pad_sequence(outs, batch_first=True), enc_lens


def trainable_parameters(model: torch.nn.Module, train_args=None) -> List[torch.nn.Parameter]:
    """Parameters that training updates: ``requires_grad`` and not under the config's ``freeze_param``."""
    frozen = tuple(getattr(train_args, "freeze_param", None) or [])
    return [
        p for name, p in model.named_parameters()
        if p.requires_grad and not any(name == f or name.startswith(f + ".") for f in frozen)
    ]


def _pad(seqs: Sequence[Sequence[int]], value: int) -> Tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), max(1, int(lengths.max()) if len(seqs) else 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out, lengths


def ctc_output_grads(
    model: torch.nn.Module, hs: torch.Tensor, hs_lens: torch.Tensor, token_ids: Sequence[Sequence[int]]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row CTC logit gradients (N, T, V) at ``ctc_lo`` and the layer inputs (N, T, D) = ``hs``."""
    targets, target_lens = _pad(token_ids, 0)
    logits = model.ctc.ctc_lo(hs)
    grads, _ = ctc_logit_grads(logits, hs_lens, targets, target_lens)
    return grads, hs


def attention_output_grads(
    model: torch.nn.Module, hs: torch.Tensor, hs_lens: torch.Tensor, token_ids: Sequence[Sequence[int]]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder logit gradients (N, U, V) under teacher forcing, the ``output_layer`` inputs, token lengths."""
    decoder = model.decoder
    layer = getattr(decoder, "output_layer", None)
    if not isinstance(layer, torch.nn.Linear):
        raise ValueError(f"{type(decoder).__name__} has no linear output_layer: use egl_loss 'ctc' or egl_params 'all'")
    ys_in, lens = _pad([[model.sos, *ids] for ids in token_ids], model.eos)
    ys_out, _ = _pad([[*ids, model.eos] for ids in token_ids], -1)
    captured = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.__setitem__("h", inputs[0]))
    try:
        logits, _ = decoder(hs, hs_lens, ys_in, lens)
    finally:
        handle.remove()
    grads, _ = attention_logit_grads(logits, ys_out, lens)
    return grads, captured["h"], lens


def hypothesis_sq_grad_norms(
    model: torch.nn.Module,
    enc: torch.Tensor,
    enc_lens: torch.Tensor,
    hyps: Sequence[Sequence[Hypothesis]],
    egl_loss: str = "ctc",
) -> List[torch.Tensor]:
    """``||grad_theta L(x_i, y_ik)||^2`` over the output layer(s), closed form, for all utterances at once.

    Returns one tensor (K_i,) per utterance ``i`` of the batch ``enc`` (B, T, D).
    """
    rows = [i for i, hs in enumerate(hyps) for _ in hs]
    ids = [h.token_ids for hs in hyps for h in hs]
    index = torch.tensor(rows, dtype=torch.long, device=enc.device)
    hs, hs_lens = enc[index], enc_lens[index]
    with torch.no_grad():
        g, h = ctc_output_grads(model, hs, hs_lens, ids)
        sq = output_layer_sq_norms(g, h, hs_lens, bias=model.ctc.ctc_lo.bias is not None)
        if egl_loss == "hybrid":
            if getattr(model, "decoder", None) is None:
                raise ValueError("egl_loss 'hybrid' needs an attention decoder; this model is CTC-only")
            w = float(model.ctc_weight)
            g_att, h_att, lens = attention_output_grads(model, hs, hs_lens, ids)
            sq_att = output_layer_sq_norms(g_att, h_att, lens, bias=model.decoder.output_layer.bias is not None)
            sq = w**2 * sq + (1.0 - w) ** 2 * sq_att
    return list(torch.split(sq.double().cpu(), [len(hs_) for hs_ in hyps]))


def hypothesis_loss(model: torch.nn.Module, enc: torch.Tensor, enc_lens: torch.Tensor, ids: Sequence[int], egl_loss: str) -> torch.Tensor:
    """``L(x, y)`` of one utterance (enc: (1, T, D)) through ESPnet's modules, for autograd."""
    ys, ys_lens = _pad([ids], 0)
    loss = model.ctc(enc, enc_lens, ys.to(enc.device), ys_lens.to(enc.device))  # batch of one: -log P_CTC(y | x)
    if egl_loss == "hybrid":
        ys_in, lens = _pad([[model.sos, *ids]], model.eos)
        ys_out, _ = _pad([[*ids, model.eos]], -1)
        logits, _ = model.decoder(enc, enc_lens, ys_in.to(enc.device), lens.to(enc.device))
        att = torch.nn.functional.cross_entropy(logits[0], ys_out[0].to(enc.device), reduction="sum")
        loss = model.ctc_weight * loss + (1.0 - model.ctc_weight) * att
    return loss


# ---------------------------------------------------------------------------------------- scorers
class Scorer:
    """Base class: ``score_batch(utts, speech, lengths) -> [UttScore]``."""

    needs_model = True

    def __init__(self, config: ScoringConfig, model: Optional[torch.nn.Module] = None, train_args=None) -> None:
        self.config = config
        self.model = model
        self.train_args = train_args

    def score_batch(self, utts: Sequence[str], speech: torch.Tensor, lengths: torch.Tensor, rate: int = 16000) -> List[UttScore]:
        raise NotImplementedError

    @staticmethod
    def seconds(lengths: torch.Tensor, rate: int) -> List[float]:
        return [int(n) / rate for n in lengths]


class RandomScorer(Scorer):
    needs_model = False

    def score_batch(self, utts, speech, lengths, rate=16000):
        return [UttScore(u, s, random_score(self.config.seed, u)) for u, s in zip(utts, self.seconds(lengths, rate))]


class EntropyScorer(Scorer):
    @torch.no_grad()
    def score_batch(self, utts, speech, lengths, rate=16000):
        enc, enc_lens = encode(self.model, speech, lengths)
        logp = self.model.ctc.log_softmax(enc)
        frame_entropy = -(logp.exp() * logp).sum(-1)
        mask = torch.arange(enc.shape[1], device=enc.device)[None] < enc_lens[:, None]
        mean = (frame_entropy * mask).sum(1) / enc_lens.clamp(min=1)
        return [UttScore(u, s, float(m)) for u, s, m in zip(utts, self.seconds(lengths, rate), mean)]


class _HypothesisScorer(Scorer):
    nbest = 1

    def __init__(self, config, model=None, train_args=None):
        super().__init__(config, model, train_args)
        nbest = config.nbest if self.nbest is None else self.nbest
        self.decoder = NBestDecoder(model, train_args, nbest, config.beam_size, config.ctc_weight, config.penalty)

    def decode(self, enc, enc_lens) -> List[List[Hypothesis]]:
        return [self.decoder(enc[i, : int(enc_lens[i])]) for i in range(enc.shape[0])]


class ConfidenceScorer(_HypothesisScorer):
    @torch.no_grad()
    def score_batch(self, utts, speech, lengths, rate=16000):
        enc, enc_lens = encode(self.model, speech, lengths)
        out = []
        for u, s, hyps in zip(utts, self.seconds(lengths, rate), self.decode(enc, enc_lens)):
            best = hyps[0]
            out.append(UttScore(u, s, -best.score / (len(best.token_ids) + 1), best.text))
        return out


class EGLScorer(_HypothesisScorer):
    nbest = None  # config.nbest

    def score_batch(self, utts, speech, lengths, rate=16000):
        with torch.no_grad():
            enc, enc_lens = encode(self.model, speech, lengths)
            hyps = self.decode(enc, enc_lens)
        if self.config.egl_params == "output":
            sq_norms = hypothesis_sq_grad_norms(self.model, enc, enc_lens, hyps, self.config.egl_loss)
        else:
            sq_norms = self._all_parameter_norms(speech, lengths, hyps)
        out = []
        for u, s, hs, sq in zip(utts, self.seconds(lengths, rate), hyps, sq_norms):
            log_w = renormalised_log_weights([h.score for h in hs])
            log_egl = torch.logsumexp(log_w + torch.log(sq), dim=0)
            out.append(UttScore(u, s, float(log_egl), hs[0].text))
        return out

    def _all_parameter_norms(self, speech, lengths, hyps) -> List[torch.Tensor]:
        params = trainable_parameters(self.model, self.train_args)
        if not params:
            raise ValueError("egl_params 'all': the model has no trainable parameter")
        out = []
        for i, hs in enumerate(hyps):
            n = int(lengths[i])
            with torch.enable_grad():
                enc, enc_lens = encode(self.model, speech[i : i + 1, :n], lengths[i : i + 1])
                sq = [
                    flat_grad_sq_norm(hypothesis_loss(self.model, enc, enc_lens, h.token_ids, self.config.egl_loss), params)
                    for h in hs
                ]
            out.append(torch.tensor(sq, dtype=torch.float64))
        return out


class BadgeScorer(_HypothesisScorer):
    """Gradient embedding of the best hypothesis at the CTC output layer (the k-means++ input)."""

    @torch.no_grad()
    def score_batch(self, utts, speech, lengths, rate=16000):
        enc, enc_lens = encode(self.model, speech, lengths)
        hyps = self.decode(enc, enc_lens)
        g, h = ctc_output_grads(self.model, enc, enc_lens, [hs[0].token_ids for hs in hyps])
        emb = gradient_embeddings(g, h, enc_lens, bias=self.model.ctc.ctc_lo.bias is not None, max_dim=self.config.badge_dim)
        out = []
        for u, s, hs, e in zip(utts, self.seconds(lengths, rate), hyps, emb):
            sq = float(e.double().square().sum())
            out.append(UttScore(u, s, math.log(sq) if sq > 0 else float("-inf"), hs[0].text, e.float().tolist()))
        return out


SCORERS = {
    "random": RandomScorer,
    "confidence": ConfidenceScorer,
    "entropy": EntropyScorer,
    "egl": EGLScorer,
    "badge": BadgeScorer,
}


def build_scorer(config: ScoringConfig, model: Optional[torch.nn.Module] = None, train_args=None) -> Scorer:
    cls = SCORERS[config.method]
    if cls.needs_model and model is None:
        raise ValueError(f"method {config.method!r} needs an ASR model")
    return cls(config, model, train_args)


__all__ = [
    "EXTENSIVE",
    "METHODS",
    "Scorer",
    "ScoringConfig",
    "UttScore",
    "build_scorer",
    "encode",
    "hypothesis_loss",
    "hypothesis_sq_grad_norms",
    "random_score",
    "trainable_parameters",
]
