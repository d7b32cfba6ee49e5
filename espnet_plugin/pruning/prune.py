"""Turn a gated model into the dense model its deterministic masks describe.

The result has no gates and computes the same function as the gated model in eval mode:
closed conv channels, heads and FFN units are removed, closed blocks disappear, and a block
whose every unit closed keeps only its output bias (a constant on the residual stream).
"""
from __future__ import annotations

import copy
from typing import List, Optional

import torch
from torch import nn

from espnet_plugin.gates import HardConcreteGate
from espnet_plugin.models.components import FeedForward, SelfAttention
from espnet_plugin.models.config import GateConfig
from espnet_plugin.models.model import SpeechEncoder


def _keep(gate: Optional[HardConcreteGate], n: int) -> torch.Tensor:
    if gate is None:
        return torch.arange(n)
    return torch.nonzero(gate.deterministic_mask() > 0.5).flatten()


def _block_kept(gate: Optional[HardConcreteGate]) -> bool:
    return gate is None or bool(gate.deterministic_mask()[0] > 0.5)


def _copy(dst: nn.Parameter, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src)


def _copy_linear(dst: nn.Linear, src: nn.Linear, rows=None, cols=None) -> None:
    w = src.weight
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    _copy(dst.weight, w)
    _copy(dst.bias, src.bias if rows is None else src.bias[rows])


def _copy_norm(dst: Optional[nn.Module], src: Optional[nn.Module], index=None) -> None:
    if dst is None:
        return
    _copy(dst.weight, src.weight if index is None else src.weight[index])
    _copy(dst.bias, src.bias if index is None else src.bias[index])


def _output_bias(module, output: str) -> torch.Tensor:
    """The constant a block adds once all its units are gone: its output layer's bias."""
    return module.out_bias if module.out_bias is not None else getattr(module, output).bias


@torch.no_grad()
def prune_model(model: SpeechEncoder) -> SpeechEncoder:
    """The dense, gate-free model equal to ``model`` at its deterministic masks."""
    cfg = copy.deepcopy(model.config)
    cfg.gates = GateConfig()
    conv_keep = [_keep(layer.gate, layer.conv.out_channels) for layer in model.feature_extractor.conv_layers]
    for spec, keep in zip(cfg.conv_layers, conv_keep):
        spec[0] = len(keep)

    head_keep: List[torch.Tensor] = []
    unit_keep: List[torch.Tensor] = []
    for layer, layer_cfg in zip(model.layers, cfg.layers):
        att, ff = layer.attention, layer.ffn
        layer_cfg.attention = att is not None and _block_kept(layer.attention_block_gate)
        heads = _keep(att.gate, att.num_heads) if layer_cfg.attention else torch.zeros(0, dtype=torch.long)
        layer_cfg.num_heads = len(heads)
        if cfg.is_wavlm:
            layer_cfg.head_ids = [layer_cfg.head_ids[i] for i in heads.tolist()]
        head_keep.append(heads)
        layer_cfg.ffn = ff is not None and _block_kept(layer.ffn_block_gate)
        units = _keep(ff.gate, ff.num_units) if layer_cfg.ffn else torch.zeros(0, dtype=torch.long)
        layer_cfg.ffn_dim = len(units)
        unit_keep.append(units)

    pruned = SpeechEncoder(cfg)
    src_ext, dst_ext = model.feature_extractor, pruned.feature_extractor
    previous = None
    for keep, src, dst in zip(conv_keep, src_ext.conv_layers, dst_ext.conv_layers):
        w = src.conv.weight[keep]
        _copy(dst.conv.weight, w if previous is None else w[:, previous])
        if src.conv.bias is not None:
            _copy(dst.conv.bias, src.conv.bias[keep])
        _copy_norm(dst.norm, src.norm, keep)
        previous = keep
    _copy_norm(pruned.feature_projection.layer_norm, model.feature_projection.layer_norm, previous)
    _copy_linear(pruned.feature_projection.projection, model.feature_projection.projection, cols=previous)
    pruned.pos_conv.load_state_dict(model.pos_conv.state_dict())
    _copy_norm(pruned.encoder_norm, model.encoder_norm)
    if model.rel_attn_embed is not None:
        _copy(pruned.rel_attn_embed.weight, model.rel_attn_embed.weight)

    for src, dst, heads, units in zip(model.layers, pruned.layers, head_keep, unit_keep):
        _copy_norm(dst.attention_norm, src.attention_norm)
        _copy_norm(dst.ffn_norm, src.ffn_norm)
        if dst.attention is not None:
            _copy_attention(dst.attention, src.attention, heads)
        if dst.ffn is not None:
            _copy_ffn(dst.ffn, src.ffn, units)
    return pruned.eval()


def _copy_attention(dst: SelfAttention, src: SelfAttention, heads: torch.Tensor) -> None:
    if dst.out_bias is not None:
        _copy(dst.out_bias, _output_bias(src, "out_proj"))
        return
    dh = src.head_dim
    rows = (heads[:, None] * dh + torch.arange(dh)[None]).flatten()
    for name in ("q_proj", "k_proj", "v_proj"):
        _copy_linear(getattr(dst, name), getattr(src, name), rows=rows)
    _copy_linear(dst.out_proj, src.out_proj, cols=rows)
    if dst.head_ids is not None:
        _copy_linear(dst.gru_rel_pos_linear, src.gru_rel_pos_linear)
        _copy(dst.gru_rel_pos_const, src.gru_rel_pos_const[:, heads])


def _copy_ffn(dst: FeedForward, src: FeedForward, units: torch.Tensor) -> None:
    if dst.out_bias is not None:
        _copy(dst.out_bias, _output_bias(src, "output"))
        return
    _copy_linear(dst.intermediate, src.intermediate, rows=units)
    _copy_linear(dst.output, src.output, cols=units)
