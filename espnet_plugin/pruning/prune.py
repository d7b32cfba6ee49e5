"""Cut units out of a gated model: the dense export, and shrinking during training.

Both work the same way: choose the kept units of every gate group (conv channels, heads,
FFN units, whole blocks), build a model of that size and copy each weight's kept rows /
columns. :func:`prune_model` keeps the deterministic masks' units and drops the gates (the
export; it computes the same function as the gated model in eval mode). :func:`shrink_model`
keeps every unit whose gate is still open with probability ``threshold`` or more and keeps the
gates, so training continues on the smaller model (docs/pruning.md, "Shrinking during
training"). :func:`fit_to_budget` moves the deterministic masks onto the budget before an
export (docs/pruning.md, "Export on budget"). Closed blocks disappear; a block whose every unit closed keeps only its output
bias (a constant on the residual stream).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from espnet_plugin.gates import HardConcreteGate
from espnet_plugin.models.components import head_rows
from espnet_plugin.models.config import EncoderConfig, GateConfig
from espnet_plugin.models.counting import COUNT_DTYPE, Structure
from espnet_plugin.models.model import SpeechEncoder

KeepRule = Callable[[Optional[HardConcreteGate], int], torch.Tensor]
# new parameter name -> (old parameter name, [(dim, kept indices along dim), ...])
SlicePlan = Dict[str, Tuple[str, List[Tuple[int, torch.Tensor]]]]


@dataclass
class KeptUnits:
    """Indices of the kept units of every gate group of a model."""

    conv: List[torch.Tensor]
    heads: List[torch.Tensor]  # empty where the attention block goes
    units: List[torch.Tensor]  # empty where the FFN block goes
    attention: List[bool]
    ffn: List[bool]

    def total(self) -> int:
        """Conv channels + heads + FFN units + blocks."""
        return (sum(len(c) for c in self.conv) + sum(len(h) for h in self.heads) + sum(len(u) for u in self.units)
                + sum(self.attention) + sum(self.ffn))


def deterministic_keep(gate: Optional[HardConcreteGate], n: int) -> torch.Tensor:
    """The units of the eval-mode binary mask."""
    if gate is None:
        return torch.arange(n)
    return torch.nonzero(gate.deterministic_mask() > 0.5).flatten()


def open_keep(threshold: float) -> KeepRule:
    """The units whose P(open) is at least ``threshold`` (the gate's ``min_keep`` at least)."""

    def keep(gate: Optional[HardConcreteGate], n: int) -> torch.Tensor:
        if gate is None:
            return torch.arange(n)
        with torch.no_grad():
            kept = torch.nonzero(gate.prob_open() >= threshold).flatten()
            if len(kept) < gate.min_keep:
                kept = torch.topk(gate.log_alpha, gate.min_keep).indices.sort().values
        return kept.cpu()

    return keep


def kept_units(model: SpeechEncoder, rule: KeepRule) -> KeptUnits:
    conv = [rule(layer.gate, layer.conv.out_channels) for layer in model.feature_extractor.conv_layers]
    kept = KeptUnits(conv, [], [], [], [])
    empty = torch.zeros(0, dtype=torch.long)
    for layer in model.layers:
        att, ff = layer.attention, layer.ffn
        attention = att is not None and len(rule(layer.attention_block_gate, 1)) > 0
        ffn = ff is not None and len(rule(layer.ffn_block_gate, 1)) > 0
        kept.attention.append(attention)
        kept.ffn.append(ffn)
        kept.heads.append(rule(att.gate, att.num_heads) if attention else empty)
        kept.units.append(rule(ff.gate, ff.num_units) if ffn else empty)
    return kept


def sliced_config(model: SpeechEncoder, kept: KeptUnits, gates: GateConfig) -> EncoderConfig:
    cfg = copy.deepcopy(model.config)
    cfg.gates = gates
    for spec, keep in zip(cfg.conv_layers, kept.conv):
        spec[0] = len(keep)
    for layer_cfg, attention, heads, ffn, units in zip(cfg.layers, kept.attention, kept.heads, kept.ffn, kept.units):
        layer_cfg.attention = attention
        layer_cfg.num_heads = len(heads)
        if cfg.is_wavlm:
            layer_cfg.head_ids = [layer_cfg.head_ids[i] for i in heads.tolist()]
        layer_cfg.ffn = ffn
        layer_cfg.ffn_dim = len(units)
    return cfg


def slice_plan(model: SpeechEncoder, kept: KeptUnits) -> SlicePlan:
    """Where each weight of the smaller model comes from; weights not named keep all of theirs."""
    plan: SlicePlan = {}

    def rows(prefix: str, names, index, dim: int = 0) -> None:
        for name in names:
            plan[prefix + name] = (prefix + name, [(dim, index)])

    previous = None
    for i, keep in enumerate(kept.conv):
        p = f"feature_extractor.conv_layers.{i}."
        plan[p + "conv.weight"] = (p + "conv.weight", [(0, keep)] + ([] if previous is None else [(1, previous)]))
        rows(p, ("conv.bias", "norm.weight", "norm.bias", "gate.log_alpha"), keep)
        previous = keep
    rows("feature_projection.", ("layer_norm.weight", "layer_norm.bias"), previous)
    rows("feature_projection.", ("projection.weight",), previous, dim=1)

    for i, (layer, heads, units) in enumerate(zip(model.layers, kept.heads, kept.units)):
        a, f = f"layers.{i}.attention.", f"layers.{i}.ffn."
        if len(heads):
            inner = head_rows(heads, layer.attention.head_dim)
            rows(a, ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight",
                     "v_proj.bias"), inner)
            rows(a, ("out_proj.weight",), inner, dim=1)
            rows(a, ("gate.log_alpha",), heads)
            rows(a, ("gru_rel_pos_const",), heads, dim=1)
            rows(a, ("head_ids",), heads)
        elif layer.attention is not None:
            plan[a + "out_bias"] = (a + ("out_bias" if layer.attention.out_bias is not None else "out_proj.bias"), [])
        if len(units):
            rows(f, ("intermediate.weight", "intermediate.bias", "gate.log_alpha"), units)
            rows(f, ("output.weight",), units, dim=1)
        elif layer.ffn is not None:
            plan[f + "out_bias"] = (f + ("out_bias" if layer.ffn.out_bias is not None else "output.bias"), [])
    return plan


def take(tensor: torch.Tensor, slices: List[Tuple[int, torch.Tensor]]) -> torch.Tensor:
    for dim, index in slices:
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor


def keeps_all(tensor: torch.Tensor, slices: List[Tuple[int, torch.Tensor]]) -> bool:
    """Whether ``take(tensor, slices)`` is all of ``tensor`` (kept indices are sorted and
    distinct, so keeping as many as there are keeps each one)."""
    return all(len(index) == tensor.shape[dim] for dim, index in slices)


@torch.no_grad()
def sliced_model(
    model: SpeechEncoder, kept: KeptUnits, gates: GateConfig, move_unchanged: bool = False,
) -> Tuple[SpeechEncoder, SlicePlan]:
    """The model of ``kept``'s size with ``gates``, every weight and buffer copied from ``model``.

    Built on the meta device: every tensor is overwritten, so its random initialisation would
    be wasted (at HuBERT Base size it costs more than the copying, and shrinking during
    training pays it at every shrink). With ``move_unchanged`` a tensor that keeps all of its
    entries under its old name is not copied: the new model takes ``model``'s tensor itself
    (the same ``nn.Parameter``), so shrinking copies only what changes. ``model`` must not be
    used afterwards then."""
    parameter = next(model.parameters())
    with torch.device("meta"):
        smaller = SpeechEncoder(sliced_config(model, kept, gates))
    smaller = smaller.to_empty(device=parameter.device).to(dtype=parameter.dtype)
    plan = slice_plan(model, kept)
    parameters, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    full_plan: SlicePlan = {}
    for name, dst in [*smaller.named_parameters(), *smaller.named_buffers()]:
        old_name, slices = plan.get(name, (name, []))
        full_plan[name] = (old_name, slices)
        src = parameters[old_name] if old_name in parameters else buffers[old_name]
        if move_unchanged and old_name == name and keeps_all(src, slices) and src.dtype == dst.dtype:
            owner, _, leaf = name.rpartition(".")
            registry = smaller.get_submodule(owner)._parameters if name in parameters else \
                smaller.get_submodule(owner)._buffers
            registry[leaf] = src
        else:
            dst.copy_(take(src, slices))
    return smaller.train(model.training), full_plan


def prune_model(model: SpeechEncoder, keep: KeepRule = deterministic_keep) -> SpeechEncoder:
    """The dense, gate-free model of the units ``keep`` chooses; by default the deterministic
    masks' units, so that it equals ``model`` in eval mode."""
    pruned, _ = sliced_model(model, kept_units(model, keep), GateConfig())
    return pruned.eval()


@dataclass
class BudgetFit:
    """What :func:`fit_to_budget` changed: the cost before and after, and how many units."""

    target: float
    deterministic: float
    fitted: float
    units_changed: int

    def as_dict(self) -> Dict[str, float]:
        return {"target": round(self.target), "deterministic_masks": round(self.deterministic),
                "exported": round(self.fitted), "units_changed": self.units_changed}


def _unit_gates(model: SpeechEncoder) -> List[Tuple[HardConcreteGate, Optional[HardConcreteGate]]]:
    """Every gate of conv channels, heads or FFN units, with the gate of its block (if any)."""
    pairs = [(layer.gate, None) for layer in model.feature_extractor.conv_layers if layer.gate is not None]
    for layer in model.layers:
        if layer.attention is not None and layer.attention.gate is not None:
            pairs.append((layer.attention.gate, layer.attention_block_gate))
        if layer.ffn is not None and layer.ffn.gate is not None:
            pairs.append((layer.ffn.gate, layer.ffn_block_gate))
    return pairs


@torch.no_grad()
def fit_to_budget(
    model: SpeechEncoder, cost: Callable[[Structure], torch.Tensor], target: float, tolerance: float = 0.005,
) -> Tuple[KeepRule, BudgetFit]:
    """The deterministic masks, moved until ``cost`` of the kept units is within ``tolerance``
    (relative) of ``target``.

    Each group's deterministic mask keeps round(expected open count) units, so the exported
    cost misses the budget by the rounding of every group and by E[a b] != E[a] E[b] of the
    cost's products; a budget that has not settled adds its own gap. Under the target, closed
    units are opened in order of decreasing ``log_alpha`` (across all groups); over it, open
    units are closed in order of increasing ``log_alpha`` (never below a gate's ``min_keep``).
    A unit that would cross the band is skipped, so the smallest units fine-tune the end.
    Blocks keep their deterministic masks, and no unit of a closed block is opened.
    """
    gates = model.gates()
    masks = [gate.deterministic_mask().to(COUNT_DTYPE).cpu() for gate in gates]

    def total() -> float:
        return float(cost(Structure.of_gate_values(model, masks)))

    start = current = total()
    index = {id(gate): i for i, gate in enumerate(gates)}
    opening = current < target
    candidates = []
    for gate, block in _unit_gates(model):
        if block is not None and masks[index[id(block)]][0] < 0.5:
            continue
        g = index[id(gate)]
        scores = gate.log_alpha.detach().cpu().tolist()
        candidates += [(score, g, i) for i, score in enumerate(scores) if (masks[g][i] < 0.5) == opening]
    candidates.sort(reverse=opening)
    changed = 0
    for _, g, i in candidates:
        if abs(current - target) <= tolerance * target:
            break
        if not opening and int(masks[g].sum()) <= gates[g].min_keep:
            continue
        masks[g][i] = 1.0 if opening else 0.0
        after = total()
        if (after > target * (1 + tolerance)) if opening else (after < target * (1 - tolerance)):
            masks[g][i] = 0.0 if opening else 1.0  # would cross the band: try a smaller unit
            continue
        current, changed = after, changed + 1
    kept = {id(gate): torch.nonzero(mask > 0.5).flatten() for gate, mask in zip(gates, masks)}

    def keep(gate: Optional[HardConcreteGate], n: int) -> torch.Tensor:
        return torch.arange(n) if gate is None else kept[id(gate)]

    return keep, BudgetFit(target, start, current, changed)


def shrink_model(model: SpeechEncoder, threshold: float) -> Optional[Tuple[SpeechEncoder, SlicePlan]]:
    """The gated model without its (almost surely) closed units: P(open) < ``threshold``.

    Returns the smaller model and, per weight, where it came from (to carry optimizer state
    over with :func:`carry_optimizer_state`); None when no unit is that closed. Weights that
    lose nothing move to the smaller model uncopied (``model`` is spent).
    """
    kept = kept_units(model, open_keep(threshold))
    if kept.total() == count_units(model):
        return None
    return sliced_model(model, kept, model.config.gates, move_unchanged=True)


def count_units(model: SpeechEncoder) -> int:
    """Conv channels + heads + FFN units + blocks: what shrinking can remove."""
    return kept_units(model, lambda gate, n: torch.arange(n)).total()


@torch.no_grad()
def carry_optimizer_state(
    optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module, plan: SlicePlan,
) -> Dict[nn.Parameter, nn.Parameter]:
    """Move ``old``'s per-parameter optimizer state (e.g. Adam's moments) to ``new``'s weights,
    sliced like the weights; pending gradients too. Returns {old parameter: new parameter}.
    Group membership is the caller's to update."""
    source = dict(old.named_parameters())
    moved: Dict[nn.Parameter, nn.Parameter] = {}
    for name, dst in new.named_parameters():
        old_name, slices = plan[name]
        src = source[old_name]
        moved[src] = dst
        if dst is src:  # moved uncopied (``sliced_model(move_unchanged=True)``): state and all
            continue
        if src.grad is not None:
            dst.grad = take(src.grad, slices)
        state = optimizer.state.get(src)
        if state:
            optimizer.state[dst] = {
                key: take(value, slices) if torch.is_tensor(value) and value.shape == src.shape else value
                for key, value in state.items()
            }
    for src in source.values():
        if moved.get(src) is not src:
            optimizer.state.pop(src, None)
    return moved
