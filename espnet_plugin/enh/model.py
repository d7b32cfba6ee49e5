"""``EnhDistillModel``: an ESPnet enh student distilled from a frozen ESPnet enh teacher.

Stages (Nathoo, Kegler, Stamenovic, ICASSP 2024, two-step knowledge distillation):

============  =====================================================  ==========================
stage         loss                                                   reads
============  =====================================================  ==========================
``kd``        ``L_kd`` (step 1: distillation only)                   ``speech_mix`` only
``supervised``  ``L_sup + kd_weight * L_kd`` (step 2, from step 1)    ``speech_mix``, ``speech_ref1``
``one_step``  ``alpha * L_kd + (1 - alpha) * L_sup`` (the baseline)  ``speech_mix``, ``speech_ref1``
============  =====================================================  ==========================

``L_sup`` is the student's own ESPnet loss (its ``criterions``, computed by
``ESPnetEnhancementModel.forward``). ``L_kd = sum_pairs weight * loss(student feature,
teacher feature) + output_kd.weight * output loss``: every feature pair names a module of each
model (read with forward hooks, :mod:`espnet_plugin.enh.features`) and a loss of the registry
``espnet_plugin.losses.LOSSES`` (one layer pair, ``layer_map [[0, 0]]``), with padded frames
masked. In the ``kd`` stage the student runs ``forward_enhance`` only: no reference is read.

The teacher is held outside the module tree (a list): never trained, never in ``state_dict``
(so never in a checkpoint), always in eval mode; it follows the student's device. The losses'
trainable parts (alignments, generators) are under ``kd_losses``: a step-2 run takes the
student alone with ``--init_param STEP1.pth:student:student``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from espnet2.enh.espnet_model import ESPnetEnhancementModel
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel
from torch import Tensor, nn

from espnet_plugin.enh.features import LAYOUTS, FeatureError, FeatureRecorder, FeatureSource, feature_and_mask
from espnet_plugin.enh.output_distill import OutputDistillLoss
from espnet_plugin.losses import LOSSES, build_distill_loss
from espnet_plugin.utils.nonfinite import NonFiniteGuard

STAGES = ("kd", "supervised", "one_step")
PAIR_KEYS = ("teacher", "student", "loss", "conf", "weight", "teacher_layout", "student_layout")
OUTPUT_KD_KEYS = ("weight", "criterion")
ENCODER = FeatureSource("encoder")
DECODER = FeatureSource("decoder")


@dataclass(frozen=True)
class FeaturePair:
    key: str
    teacher: FeatureSource
    student: FeatureSource
    loss: str
    conf: Mapping[str, Any]
    weight: float
    teacher_layout: Optional[str]
    student_layout: Optional[str]


def parse_feature_pairs(pairs: Optional[Sequence[Mapping[str, Any]]]) -> List[FeaturePair]:
    """Validated pairs from the YAML list ``[{teacher, student, loss, conf, weight}, ...]``."""
    parsed = []
    for index, pair in enumerate(pairs or []):
        if not isinstance(pair, Mapping):
            raise ValueError(f"feature_pairs[{index}] must be a mapping, got {pair!r}")
        unknown = sorted(set(pair) - set(PAIR_KEYS))
        missing = [key for key in ("teacher", "student", "loss") if key not in pair]
        if unknown or missing:
            raise ValueError(
                f"feature_pairs[{index}]: needs teacher, student, loss and accepts only {', '.join(PAIR_KEYS)}; "
                f"got {sorted(pair)}"
            )
        if pair["loss"] not in LOSSES:
            raise ValueError(f"feature_pairs[{index}]: unknown loss {pair['loss']!r}; accepted: {', '.join(LOSSES)}")
        conf = dict(pair.get("conf") or {})
        if "layer_map" in conf:
            raise ValueError(f"feature_pairs[{index}]: conf must not set layer_map (a pair is one layer each)")
        for role in ("teacher", "student"):
            layout = pair.get(f"{role}_layout")
            if layout is not None and layout not in LAYOUTS:
                raise ValueError(f"feature_pairs[{index}]: {role}_layout must be one of {LAYOUTS}, got {layout!r}")
        parsed.append(
            FeaturePair(
                key=f"kd{index}_{pair['loss']}",
                teacher=FeatureSource.parse(pair["teacher"]),
                student=FeatureSource.parse(pair["student"]),
                loss=pair["loss"],
                conf=conf,
                weight=float(pair.get("weight", 1.0)),
                teacher_layout=pair.get("teacher_layout"),
                student_layout=pair.get("student_layout"),
            )
        )
    return parsed


def enhance(model: ESPnetEnhancementModel, speech: Tensor, lengths: Tensor) -> None:
    """``model``'s enhancement forward (what its hooks see), with the variance normalisation its
    own ``forward`` would apply; no loss, no reference."""
    speech = speech[:, : int(lengths.max())]
    if model.normalize_variance or model.normalize_variance_per_ch:
        speech = speech / torch.std(speech, dim=1, keepdim=True)
    model.forward_enhance(speech, lengths, {})


class EnhDistillModel(AbsESPnetModel):
    def __init__(
        self,
        student: ESPnetEnhancementModel,
        teacher: Optional[ESPnetEnhancementModel] = None,
        stage: str = "kd",
        feature_pairs: Optional[Sequence[Mapping[str, Any]]] = None,
        alpha: float = 0.5,
        kd_weight: float = 0.0,
        output_kd: Optional[Mapping[str, Any]] = None,
        probe_samples: int = 16000,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if kd_weight < 0:
            raise ValueError(f"kd_weight must be >= 0, got {kd_weight}")
        output_kd = dict(output_kd or {})
        unknown = sorted(set(output_kd) - set(OUTPUT_KD_KEYS))
        if unknown:
            raise ValueError(f"output_kd accepts only {', '.join(OUTPUT_KD_KEYS)}; got {sorted(output_kd)}")
        self.student = student
        self.stage, self.alpha, self.kd_weight = stage, float(alpha), float(kd_weight)
        self.nonfinite_guard = NonFiniteGuard()  # the task sets max_steps from --max_nonfinite_steps
        self.uses_kd = stage != "supervised" or kd_weight > 0
        self.uses_reference = stage != "kd"
        self.pairs = parse_feature_pairs(feature_pairs) if self.uses_kd else []
        self._layouts: Dict[str, Dict[str, str]] = {}  # per pair: the layouts detected at the probe
        self.output_kd_weight = float(output_kd.get("weight", 1.0)) if output_kd and self.uses_kd else 0.0
        self.output_loss = OutputDistillLoss(output_kd.get("criterion", "si_snr")) if self.output_kd_weight else None
        self.kd_losses = nn.ModuleDict()
        self._teacher: List[ESPnetEnhancementModel] = []  # a list hides it from the module tree
        self._recorders: Dict[str, FeatureRecorder] = {}
        if not self.uses_kd:
            return
        if not self.pairs and self.output_loss is None:
            raise ValueError(f"stage {stage!r} distils: configure feature_pairs and/or output_kd")
        if teacher is None:
            raise ValueError(f"stage {stage!r} distils: it needs a teacher (--teacher_config, --teacher_model_file)")
        self._teacher.append(teacher.eval().requires_grad_(False))
        extra = [DECODER] if self.output_loss is not None else []
        self._recorders = {
            "student": FeatureRecorder(student, [ENCODER, *[p.student for p in self.pairs], *extra], "student"),
            "teacher": FeatureRecorder(teacher, [ENCODER, *[p.teacher for p in self.pairs], *extra], "teacher"),
        }
        for pair, (s_dim, t_dim) in zip(self.pairs, self._probe_widths(probe_samples)):
            spec = {"name": pair.loss, "conf": {**pair.conf, "layer_map": [[0, 0]]}}
            self.kd_losses[pair.key] = build_distill_loss([spec], s_dim, t_dim)

    @property
    def teacher(self) -> Optional[ESPnetEnhancementModel]:
        return self._teacher[0] if self._teacher else None

    def _probe_widths(self, num_samples: int) -> List[Tuple[int, int]]:
        """Each pair's (student, teacher) channels, from one forward of a second of noise; the
        pairs' paths, layouts and frame counts are checked on the way."""
        was_training = self.student.training
        self.student.eval()
        speech = 0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0))
        lengths = torch.tensor([num_samples])
        try:
            with torch.no_grad():
                feats = self._features(speech, lengths)
        finally:
            self.student.train(was_training)
            for recorder in self._recorders.values():
                recorder.clear()
        return [(s.shape[-1], t.shape[-1]) for s, t, _ in feats]

    def _run_teacher(self, speech: Tensor, lengths: Tensor) -> None:
        teacher = self.teacher
        if next(teacher.parameters()).device != speech.device:
            teacher.to(speech.device)
        recorder = self._recorders["teacher"]
        recorder.clear()
        with torch.no_grad():
            enhance(teacher, speech, lengths)

    def _features(self, speech: Tensor, lengths: Tensor) -> List[Tuple[Tensor, Tensor, Tensor]]:
        """Teacher and student forwards (student without a loss); ``(student, teacher, mask)`` per pair."""
        self._run_teacher(speech, lengths)
        self._recorders["student"].clear()
        enhance(self.student, speech, lengths)
        return self._pair_features()

    def _pair_features(self) -> List[Tuple[Tensor, Tensor, Tensor]]:
        out = []
        frames = {role: recorder.values.get(ENCODER) for role, recorder in self._recorders.items()}
        for role, value in frames.items():
            if value is None:
                raise FeatureError(f"the {role}'s encoder was not called: is it an ESPnet enh model?")
        for pair in self.pairs:
            feats = []
            for role, source, layout in (("student", pair.student, pair.student_layout),
                                         ("teacher", pair.teacher, pair.teacher_layout)):
                encoded, frame_lengths = frames[role][0], frames[role][1]
                layout = layout or self._layouts.get(pair.key, {}).get(role)
                feats.append(feature_and_mask(self._recorders[role].get(source), layout, frame_lengths,
                                              encoded.shape[1], f"{role} {source}"))
            (s, s_mask, s_layout), (t, t_mask, t_layout) = feats
            # the layouts found at the first forward (the probe) hold for every batch: a batch
            # whose frame count equals a channel count would be ambiguous
            self._layouts[pair.key] = {"student": s_layout, "teacher": t_layout}
            if s.shape[:2] != t.shape[:2] or not torch.equal(s_mask, t_mask):
                raise FeatureError(
                    f"{pair.key}: student {pair.student} has {s.shape[1]} frames and teacher {pair.teacher} "
                    f"{t.shape[1]} (batch {s.shape[0]} / {t.shape[0]}): pair features at one frame rate "
                    f"(the same encoder hop)"
                )
            out.append((s, t, s_mask))
        return out

    def _kd_loss(self, lengths: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        total, stats = 0.0, {}
        for pair, (s, t, mask) in zip(self.pairs, self._pair_features()):
            value, _ = self.kd_losses[pair.key]([s], [t], mask)
            total = total + pair.weight * value
            stats[pair.key] = value.detach()
        if self.output_loss is not None:
            s_wav = self._recorders["student"].get(DECODER)
            t_wav = self._recorders["teacher"].get(DECODER)
            value, _ = self.output_loss(s_wav, t_wav, lengths)
            total = total + self.output_kd_weight * value
            stats[f"output_kd_{self.output_loss.criterion}"] = value.detach()
        return total, stats

    def forward(
        self, speech_mix: Tensor, speech_mix_lengths: Optional[Tensor] = None, **kwargs
    ) -> Tuple[Tensor, Dict[str, Tensor], Tensor]:
        if speech_mix_lengths is None:  # ESPnet's chunk iterator gives no lengths
            speech_mix_lengths = torch.full((speech_mix.shape[0],), speech_mix.shape[1], device=speech_mix.device)
        stats: Dict[str, Optional[Tensor]] = {}
        if self.uses_kd:
            self._run_teacher(speech_mix, speech_mix_lengths)
            self._recorders["student"].clear()
        if self.uses_reference:
            if "speech_ref1" not in kwargs:
                raise ValueError(
                    f"stage {self.stage!r} needs the clean reference speech_ref1 (spk1.scp) in the data; "
                    f"only the kd stage trains on noisy speech alone"
                )
            sup, sup_stats, _ = self.student(speech_mix, speech_mix_lengths, **kwargs)
            stats.update({k: v for k, v in sup_stats.items() if k != "loss"})
            stats["sup"] = sup.detach()
        else:
            enhance(self.student, speech_mix, speech_mix_lengths)
        if self.uses_kd:
            kd, kd_stats = self._kd_loss(speech_mix_lengths)
            for recorder in self._recorders.values():
                recorder.clear()  # free the activations before backward
            stats.update(kd_stats)
            stats["kd"] = kd.detach()
        if self.stage == "kd":
            loss = kd
        elif self.stage == "one_step":
            loss = self.alpha * kd + (1.0 - self.alpha) * sup
        else:
            loss = sup + self.kd_weight * kd if self.uses_kd else sup
        if self.training:
            self.nonfinite_guard.check(loss, kwargs.get("utt_id"))
        stats["loss"] = loss.detach()
        batch_size = torch.tensor(speech_mix.shape[0], device=loss.device)
        return force_gatherable((loss, stats, batch_size), loss.device)

    def collect_feats(self, speech_mix: Tensor, speech_mix_lengths: Optional[Tensor] = None, **kwargs) -> Dict[str, Tensor]:
        if speech_mix_lengths is None:
            speech_mix_lengths = torch.full((speech_mix.shape[0],), speech_mix.shape[1], device=speech_mix.device)
        return {"feats": speech_mix, "feats_lengths": speech_mix_lengths}
