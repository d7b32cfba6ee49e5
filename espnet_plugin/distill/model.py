"""The ESPnet model of DPHuBERT: a (gated) student distilled from a frozen teacher.

The teacher is held outside the module tree (it is never trained, never wrapped by DDP and
never written into the student's checkpoints); it follows the student's device. With gates
on, the sparsity Lagrangian adds ``lambda1 (s - t) + lambda2 (s - t)^2`` where ``s`` is the
expected sparsity of parameters or of MACs relative to the teacher and ``t`` is the target,
ramped linearly over ``sparsity_warmup_steps`` training forward passes. The step counter is
a buffer, so a resumed run continues the same schedule.

With ``shrink_threshold`` set, every ``shrink_interval`` training steps the units whose gate is
open with probability below the threshold are cut out of the student (``shrink_model``): the
remaining steps run on the smaller model. The optimizer keeps the state of the kept units
(``attach_optimizer``), and every checkpoint records the student's current configuration, so
loading one (resume, export) first shrinks the student to it.

With ``skip_closed_units`` set (a share of a gate group, e.g. 0.5), a training step leaves out
the units whose gate was sampled exactly 0 wherever at least that share of a group was: they
contribute exactly 0 to the loss and to every gradient, so the step computes the same thing
on fewer units (``SpeechEncoder.skip_closed_units``). Shrinking removes the units that stay
closed; skipping saves on the ones still closing.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_plugin.losses import build_distill_loss
from espnet_plugin.models import SpeechEncoder
from espnet_plugin.models.components import frame_key_mask
from espnet_plugin.models.config import EncoderConfig
from espnet_plugin.models.counting import Structure
from espnet_plugin.pruning import SparsityLagrangian
from espnet_plugin.pruning.prune import carry_optimizer_state, count_units, shrink_model
from espnet_plugin.utils.nonfinite import NonFiniteGuard

SPARSITY_METRICS = ("params", "macs")
ARCHITECTURE_KEY = "student_architecture._extra_state"


class StudentArchitecture(nn.Module):
    """Writes the student's configuration into every checkpoint (``get_extra_state``), so that
    a checkpoint of a shrunk student can be loaded into a model built from the config file."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config.to_dict()

    def get_extra_state(self) -> Dict[str, Any]:
        return {"student_config": self.config}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.config = state["student_config"]


class DistillPruneModel(AbsESPnetModel):
    def __init__(
        self,
        student: SpeechEncoder,
        teacher: SpeechEncoder,
        distill_losses: Optional[List[Dict[str, Any]]] = None,
        target_sparsity: Optional[float] = None,
        sparsity_metric: str = "params",
        sparsity_warmup_steps: int = 0,
        crop_to_shortest: bool = False,
        cost_seconds: Optional[float] = None,
        shrink_threshold: Optional[float] = None,
        shrink_interval: int = 100,
        macs_target_sparsity: Optional[float] = None,
        quadratic_penalty: Optional[float] = None,
        macs_quadratic_penalty: Optional[float] = None,
        skip_closed_units: float = 0.0,
    ) -> None:
        super().__init__()
        if sparsity_metric not in SPARSITY_METRICS:
            raise ValueError(f"sparsity_metric must be one of {SPARSITY_METRICS}, got {sparsity_metric!r}")
        self.student = student
        self._teacher = [teacher.freeze()]  # a list hides it from the module tree
        specs = distill_losses or [{"name": "layer_to_layer"}]
        self.distill_loss = build_distill_loss(specs, student.config.embed_dim, teacher.config.embed_dim)
        self.sparsity_metric = sparsity_metric
        self.lagrangian: Optional[SparsityLagrangian] = None
        if target_sparsity is not None:
            if not student.config.gates.any:
                raise ValueError("target_sparsity needs gates: switch some on in the student's gates config")
            self.lagrangian = SparsityLagrangian(target_sparsity, sparsity_warmup_steps, quadratic_penalty)
        if cost_seconds is not None and cost_seconds <= 0:
            raise ValueError(f"cost_seconds must be positive, got {cost_seconds}")
        # the utterance length the MAC count assumes (attention grows with its square)
        self.cost_seconds = float(cost_seconds or 1.0)
        reference = (teacher.num_params() if sparsity_metric == "params"
                     else teacher.expected_macs(seconds=self.cost_seconds).item())
        # a Python float (float64), not a buffer: ESPnet's cast to train_dtype would round it
        self.reference_cost = float(reference)
        # a second budget on MACs beside the params budget (docs/pruning.md, "Joint budget")
        self.macs_lagrangian: Optional[SparsityLagrangian] = None
        if macs_target_sparsity is not None:
            if self.lagrangian is None or sparsity_metric != "params":
                raise ValueError(
                    "macs_target_sparsity is a second budget beside a params budget: set target_sparsity and "
                    "sparsity_metric: params (for a MAC budget alone use sparsity_metric: macs)"
                )
            self.macs_lagrangian = SparsityLagrangian(
                macs_target_sparsity, sparsity_warmup_steps,
                macs_quadratic_penalty if macs_quadratic_penalty is not None else quadratic_penalty,
            )
            self.macs_reference = float(teacher.expected_macs(seconds=self.cost_seconds).item())
        self.crop_to_shortest = crop_to_shortest
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        self.nonfinite_guard = NonFiniteGuard()
        if shrink_threshold is not None:
            if not student.config.gates.any:
                raise ValueError("shrink_threshold needs gates: switch some on in the student's gates config")
            if not 0.0 < shrink_threshold < 0.5:
                raise ValueError(f"shrink_threshold is a small probability in (0, 0.5), got {shrink_threshold}")
            if shrink_interval < 1:
                raise ValueError(f"shrink_interval must be a positive number of steps, got {shrink_interval}")
            self.student_architecture = StudentArchitecture(student.config)
        self.shrink_threshold = shrink_threshold
        self.shrink_interval = shrink_interval
        if skip_closed_units and not student.config.gates.any:
            raise ValueError("skip_closed_units needs gates: switch some on in the student's gates config")
        self.skip_closed = skip_closed_units
        student.skip_closed_units(skip_closed_units)
        self._optimizer: List[torch.optim.Optimizer] = []  # a list: not part of the module

    @property
    def teacher(self) -> SpeechEncoder:
        return self._teacher[0]

    def budget_cost(self, structure: Structure) -> torch.Tensor:
        """What the budget counts for ``structure`` of the student: params, or MACs at
        ``cost_seconds`` (training's expected cost and the export's fit both use it)."""
        return self.student.cost(self.sparsity_metric, self.cost_seconds)(structure)

    def expected_sparsity(self, deterministic: bool = False, structure: Optional[Structure] = None) -> torch.Tensor:
        """Sparsity of the budget's metric for ``structure`` (default: the student's now)."""
        structure = structure if structure is not None else self.student.structure(deterministic)
        return 1.0 - self.budget_cost(structure) / self.reference_cost

    def expected_macs_sparsity(
        self, deterministic: bool = False, structure: Optional[Structure] = None
    ) -> torch.Tensor:
        """MAC sparsity against the teacher, for the joint budget's second term."""
        structure = structure if structure is not None else self.student.structure(deterministic)
        return 1.0 - self.student.cost("macs", self.cost_seconds)(structure) / self.macs_reference

    def multipliers(self) -> List[nn.Parameter]:
        """Every Lagrange multiplier (of the budget and, if set, of the MAC budget beside it)."""
        lagrangians = [lagrangian for lagrangian in (self.lagrangian, self.macs_lagrangian) if lagrangian is not None]
        return [p for lagrangian in lagrangians for p in lagrangian.multipliers()]

    def forward(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor, **kwargs
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        if self.crop_to_shortest:
            speech, speech_lengths = crop_batch_to_shortest(speech, speech_lengths, random_offset=self.training)
        if self.training and self.shrink_threshold is not None and int(self.num_steps) > 0 \
                and int(self.num_steps) % self.shrink_interval == 0:
            self.shrink_student()
        teacher = self.teacher
        if next(teacher.parameters()).device != speech.device:
            teacher.to(speech.device)
        with torch.no_grad():
            targets, _ = teacher(speech, speech_lengths)
        hidden, frame_lengths = self.student(speech, speech_lengths)
        mask = frame_key_mask(frame_lengths, hidden[0].shape[1])
        distill, stats = self.distill_loss(hidden, targets, mask)
        loss = distill
        stats = {**stats, "distill": distill.detach()}
        if self.lagrangian is not None:
            step = int(self.num_steps)
            # in training, from the logits the forward sampled from (one concatenation for both)
            structure = self.student.sampled_structure() if self.training else self.student.structure()
            sparsity = self.expected_sparsity(structure=structure).float()  # counts in float64, the loss in float32
            penalty = self.lagrangian(sparsity, step)
            stats.update(
                expected_sparsity=sparsity.detach(),
                target_sparsity=torch.tensor(self.lagrangian.target_at(step)),
                lambda1=self.lagrangian.lambda1.detach(),
                lambda2=self.lagrangian.lambda2.detach(),
            )
            if self.macs_lagrangian is not None:
                macs_sparsity = self.expected_macs_sparsity(structure=structure).float()
                penalty = penalty + self.macs_lagrangian(macs_sparsity, step)
                stats.update(
                    macs_expected_sparsity=macs_sparsity.detach(),
                    macs_target_sparsity=torch.tensor(self.macs_lagrangian.target_at(step)),
                    macs_lambda1=self.macs_lagrangian.lambda1.detach(),
                    macs_lambda2=self.macs_lagrangian.lambda2.detach(),
                )
            loss = loss + penalty
            stats["lagrangian"] = penalty.detach()
            if self.training:
                self.num_steps += 1
        if self.training:
            self.nonfinite_guard.check(loss, kwargs.get("utt_id"))
        stats["loss"] = loss.detach()
        batch_size = torch.tensor(speech.shape[0], device=loss.device)
        # 1-dim weight and tensors on one device: what ESPnet's DDP / DataParallel averaging expects
        return force_gatherable((loss, stats, batch_size), loss.device)

    def collect_feats(self, speech: torch.Tensor, speech_lengths: torch.Tensor, **kwargs) -> Dict[str, torch.Tensor]:
        return {"feats": speech, "feats_lengths": speech_lengths}

    def group_members(self) -> List[List[nn.Parameter]]:
        """The parameters of each optimizer group, in a fixed order: main weights, gate logits
        (if any), Lagrange multipliers (if any)."""
        gates = self.student.gate_parameters()
        gate_ids = {id(p) for p in gates}
        lambdas = self.multipliers()
        lambda_ids = {id(p) for p in lambdas}
        main = [p for p in self.parameters() if id(p) not in gate_ids | lambda_ids and p.requires_grad]
        return [main] + ([gates] if gates else []) + ([lambdas] if lambdas else [])

    def parameter_groups(self, lr: float, gate_lr: float, lambda_lr: float) -> List[Dict[str, Any]]:
        """Main weights, gate logits and Lagrange multipliers (ascent), each with its own lr."""
        members = self.group_members()
        groups: List[Dict[str, Any]] = [{"params": members[0], "lr": lr}]
        if self.student.gate_parameters():
            groups.append({"params": members[1], "lr": gate_lr, "weight_decay": 0.0})
        if self.multipliers():
            groups.append({**self.lagrangian.optimizer_group(lambda_lr), "params": members[-1]})
        return groups

    # ------------------------------------------------------------ shrinking
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer whose groups and state follow the student when it shrinks."""
        self._optimizer = [optimizer]

    @torch.no_grad()
    def shrink_student(self, threshold: Optional[float] = None) -> int:
        """Cut the units with P(open) < threshold out of the student; returns how many went."""
        old = self.student
        shrunk = shrink_model(old, threshold if threshold is not None else self.shrink_threshold)
        if shrunk is None:
            return 0
        new, plan = shrunk
        removed = count_units(old) - count_units(new)
        self._replace_student(old, new, plan)
        logging.info(
            "step %d: %d closed units removed from the student, %.3f M params left (%.3f M expected)",
            int(self.num_steps), removed, new.num_params() / 1e6, float(new.expected_params()) / 1e6,
        )
        return removed

    def _replace_student(self, old: SpeechEncoder, new: SpeechEncoder, plan=None) -> None:
        """Swap in ``new``; the optimizer's state moves with ``plan`` (or is dropped without one)
        and its groups list the new parameters."""
        optimizer = self._optimizer[0] if self._optimizer else None
        if optimizer is not None:
            if plan is not None:
                carry_optimizer_state(optimizer, old, new, plan)
            else:
                for param in old.parameters():
                    optimizer.state.pop(param, None)
        new.skip_closed_units(self.skip_closed)
        self.student = new
        self.student_architecture.config = new.config.to_dict()
        if optimizer is not None:
            for group, members in zip(optimizer.param_groups, self.group_members()):
                group["params"] = members

    def adopt_architecture(self, state_dict: Mapping[str, Any]) -> None:
        """Shrink the student to the configuration a checkpoint recorded (its weights are then
        loaded over it, and so is the optimizer state on resume)."""
        record = state_dict.get(ARCHITECTURE_KEY)
        if record is None or self.shrink_threshold is None:
            return
        config = EncoderConfig.from_dict(record["student_config"], where=ARCHITECTURE_KEY)
        if config.to_dict() == self.student.config.to_dict():
            return
        old = self.student
        parameter = next(old.parameters())
        new = SpeechEncoder(config).to(device=parameter.device, dtype=parameter.dtype).train(old.training)
        self._replace_student(old, new)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        self.adopt_architecture(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def crop_batch_to_shortest(
    speech: torch.Tensor, lengths: torch.Tensor, random_offset: bool = True
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every utterance cut to the batch's shortest length, at a random offset (or the start).

    The group-norm CNN of Base models normalises each channel over the whole padded waveform,
    so padding changes an utterance's features (teacher targets included). A batch with no
    padding has none of that; DPHuBERT's recipe crops the same way.
    """
    shortest = int(lengths.min())
    if random_offset:
        offsets = (torch.rand(lengths.shape, device=speech.device) * (lengths - shortest + 1)).long()
    else:
        offsets = torch.zeros_like(lengths)
    index = offsets[:, None] + torch.arange(shortest, device=speech.device)
    return speech.gather(1, index), torch.full_like(lengths, shortest)
