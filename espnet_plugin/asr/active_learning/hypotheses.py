"""N-best hypotheses from ESPnet's own beam search, and their posteriors renormalised over the N.

The model comes from ``ASRTask.build_model_from_file`` (through ``load_asr_model``, so models
with the plugin's encoder load too); the search is built the way
``espnet2.bin.asr_inference.Speech2Text`` builds it (``espnet.nets.batch_beam_search.BatchBeamSearch``
with the CTC prefix scorer and, for hybrid models, the attention decoder). Encoding is batched
by the caller; the beam search runs on each utterance's encoder output, as in ``Speech2Text``.

A hypothesis' log-probability is its beam-search score: ``ctc_weight * log P_CTC(y | x) +
(1 - ctc_weight) * log P_att(y | x)`` (for a CTC-only model, ``log P_CTC(y | x)``, the CTC prefix
score of the complete sequence). Over the K best,

    P_hat(y_k | x) = exp(s_k) / sum_j exp(s_j)

(:func:`renormalised_log_weights`, computed with ``logsumexp``, so it never under- or overflows).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch

logger = logging.getLogger(__name__)


@dataclass
class Hypothesis:
    """One decoded hypothesis: token ids (no ``<sos>``/``<eos>``/blank), its score, its text."""

    token_ids: List[int]
    score: float
    text: str


class NoCTCError(ValueError):
    """The model has no CTC branch (e.g. trained with ``ctc_weight: 0.0``)."""


def check_model(model: torch.nn.Module, source: str = "the model") -> None:
    """Clear errors for ASR models the active-learning scores cannot use."""
    if getattr(model, "use_transducer_decoder", False):
        raise ValueError(f"{source} is a transducer model: active-learning scoring supports CTC and hybrid CTC/attention models")
    if getattr(model, "ctc", None) is None or not hasattr(model.ctc, "ctc_lo"):
        raise NoCTCError(
            f"{source} has no CTC branch (trained with ctc_weight 0.0?): the confidence, entropy, egl and badge "
            "scores need its CTC output layer; retrain with ctc_weight > 0, or use --method random"
        )


def renormalised_log_weights(scores: Sequence[float]) -> torch.Tensor:
    """``log P_hat(y_k | x)``: the hypotheses' log scores renormalised over the K (log-softmax)."""
    s = torch.as_tensor(list(scores), dtype=torch.float64)
    if s.numel() == 0:
        raise ValueError("no hypotheses to weight")
    return s - torch.logsumexp(s, dim=0)


class NBestDecoder:
    """ESPnet's beam search with ``nbest = K``: the K best hypotheses of an encoder output.

    Built as ``espnet2.bin.asr_inference.Speech2Text`` builds its search (``BatchBeamSearch`` with
    the ``CTCPrefixScorer``, the attention decoder for hybrid models, ``LengthBonus``), from an
    already loaded model (:func:`load_nbest_decoder` loads one from an experiment).

    Args:
        model: an ``ESPnetASRModel`` (put in eval mode here).
        train_args: its training arguments (token type, bpemodel, ``model_conf.ctc_weight``).
        nbest: K.
        beam_size: the beam (at least K; default K).
        ctc_weight: CTC weight of the search; default: the model's training ``ctc_weight``
            (1.0 for a CTC-only model).
        penalty: ESPnet's length bonus.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_args=None,
        nbest: int = 1,
        beam_size: Optional[int] = None,
        ctc_weight: Optional[float] = None,
        penalty: float = 0.0,
    ) -> None:
        from espnet.nets.batch_beam_search import BatchBeamSearch
        from espnet.nets.scorers.ctc import CTCPrefixScorer
        from espnet.nets.scorers.length_bonus import LengthBonus
        from espnet2.text.build_tokenizer import build_tokenizer
        from espnet2.text.token_id_converter import TokenIDConverter

        if nbest < 1:
            raise ValueError(f"nbest must be >= 1, got {nbest}")
        check_model(model)
        model.eval()
        decoder = getattr(model, "decoder", None)
        if decoder is None:
            ctc_weight = 1.0
        elif ctc_weight is None:
            ctc_weight = float((getattr(train_args, "model_conf", None) or {}).get("ctc_weight", 0.5))
        if not 0.0 < ctc_weight <= 1.0:
            raise ValueError(f"the beam search's ctc_weight must be in (0, 1], got {ctc_weight}")
        beam_size = max(nbest, beam_size or nbest)
        token_list = list(model.token_list)
        scorers = dict(decoder=decoder, ctc=CTCPrefixScorer(ctc=model.ctc, eos=model.eos), length_bonus=LengthBonus(len(token_list)))
        weights = dict(decoder=1.0 - ctc_weight, ctc=ctc_weight, length_bonus=penalty)
        self.beam_search = BatchBeamSearch(
            beam_size=beam_size,
            weights=weights,
            scorers=scorers,
            sos=model.sos,
            eos=model.eos,
            vocab_size=len(token_list),
            token_list=token_list,
            pre_beam_score_key=None if ctc_weight == 1.0 else "full",
        ).eval()
        token_type = getattr(train_args, "token_type", None)
        bpemodel = getattr(train_args, "bpemodel", None)
        self.tokenizer = None
        if token_type is not None and (token_type != "bpe" or bpemodel is not None):
            self.tokenizer = build_tokenizer(token_type=token_type, bpemodel=bpemodel)
        self.converter = TokenIDConverter(token_list=token_list)
        self.model = model
        self.train_args = train_args
        self.nbest = nbest
        self.beam_size = beam_size
        self.ctc_weight = ctc_weight

    @torch.no_grad()
    def __call__(self, encoder_out: torch.Tensor) -> List[Hypothesis]:
        """The K best hypotheses of one utterance's encoder output (T, D), best first."""
        hyps = self.beam_search(x=encoder_out, maxlenratio=0.0, minlenratio=0.0)
        out = []
        for hyp in hyps[: self.nbest]:
            ids = hyp.yseq[1:-1].tolist() if torch.is_tensor(hyp.yseq) else list(hyp.yseq[1:-1])
            ids = [int(i) for i in ids if int(i) != 0]  # blank id 0, as Speech2Text
            tokens = self.converter.ids2tokens(ids)
            text = self.tokenizer.tokens2text(tokens) if self.tokenizer is not None else " ".join(tokens)
            out.append(Hypothesis(ids, float(hyp.score), text))
        if not out:
            raise RuntimeError("ESPnet's beam search returned no hypothesis")
        return out


def load_asr_experiment(asr_train_config: Union[str, Path], asr_model_file: Optional[Union[str, Path]] = None, device: str = "cpu"):
    """``(model, train_args)`` of an ESPnet ASR experiment (plugin registered), checked for a CTC branch."""
    from espnet_plugin.asr.registration import load_asr_model

    model, args = load_asr_model(asr_train_config, asr_model_file, device)
    check_model(model, str(asr_model_file or asr_train_config))
    return model.eval(), args


__all__ = ["load_asr_experiment", "Hypothesis", "NBestDecoder", "NoCTCError", "check_model", "renormalised_log_weights"]
