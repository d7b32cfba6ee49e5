"""Exact per-hypothesis gradient norms of an output layer, without a per-sample autograd loop.

For a linear output layer ``z_t = W h_t + b`` applied frame by frame (or token by token) and a
loss ``L`` that depends on the layer only through the logits, ``dL/dW = sum_t g_t h_t^T`` and
``dL/db = sum_t g_t`` with ``g_t = dL/dz_t``. So

    ||dL/dW||^2 = sum_{t,t'} (g_t . g_t') (h_t . h_t') = ||G^T H||_F^2,   ||dL/db||^2 = ||sum_t g_t||^2

with ``G`` (T x V) the logit gradients and ``H`` (T x D) the layer's inputs. Two batched routes
give the same number: ``G^T H`` (cost T V D per sequence) or the Gram form (cost T^2 (V + D));
:func:`output_layer_sq_norms` takes the cheaper one.

The logit gradients are closed forms too:

* CTC (:func:`ctc_logit_grads`), ``L = -log P_CTC(y | x)`` of one utterance (ESPnet's ``CTC``
  module with a batch of one; it divides the batch's sum by the batch size):
  ``g_t = softmax(z_t) - gamma_t``, ``gamma_t`` the CTC occupation posteriors. They come from one
  backward pass of ``torch.nn.functional.ctc_loss`` (reduction ``sum``) through a batch of
  (utterance, hypothesis) pairs: each pair's loss depends only on its own logits, so the
  batch's logit gradient holds every pair's ``g`` exactly.
* attention decoder (:func:`attention_logit_grads`), ``L = -sum_u log P(y_u | y_<u, x)`` over the
  hypothesis tokens and ``<eos>`` (teacher forcing, no label smoothing):
  ``g_u = softmax(z_u) - onehot(y_u)``.

Everything here is in float64 on request (the tests do) and float32 otherwise.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def ctc_logit_grads(
    logits: torch.Tensor, logit_lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor, blank: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pair CTC logit gradients ``dL_i/dz_i`` and losses ``L_i = -log P_CTC(y_i | x_i)``.

    Args:
        logits: (N, T, V) output-layer logits (pre-softmax), one row per (utterance, hypothesis).
        logit_lengths: (N,) valid frames.
        targets: (N, S) padded token ids (no blanks); target_lengths: (N,).
    Returns:
        grads (N, T, V), zero beyond each length; losses (N,). A pair whose hypothesis cannot be
        aligned (longer than the frames allow) has an infinite loss and zero gradient.
    """
    z = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        log_probs = z.log_softmax(-1).transpose(0, 1)  # (T, N, V)
        losses = F.ctc_loss(
            log_probs, targets, logit_lengths, target_lengths, blank=blank, reduction="none", zero_infinity=False
        )
        finite = torch.isfinite(losses)
        (grad,) = torch.autograd.grad(losses[finite].sum(), z) if bool(finite.any()) else (torch.zeros_like(z),)
    mask = _frame_mask(logit_lengths, z.shape[1], z.dtype)
    return grad * mask[..., None], losses.detach()


def attention_logit_grads(
    logits: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention-decoder logit gradients ``softmax(z_u) - onehot(y_u)`` and losses ``-sum_u log p(y_u)``.

    Args:
        logits: (N, U, V) decoder output-layer logits under teacher forcing.
        targets: (N, U) the tokens the decoder should emit (hypothesis + ``<eos>``), padded.
        target_lengths: (N,) valid tokens.
    """
    probs = logits.softmax(-1)
    mask = _frame_mask(target_lengths, logits.shape[1], logits.dtype)
    onehot = F.one_hot(targets.clamp(min=0).long(), logits.shape[-1]).to(logits.dtype)
    grads = (probs - onehot) * mask[..., None]
    token_nll = -(logits.log_softmax(-1) * onehot).sum(-1)
    return grads, (token_nll * mask).sum(-1)


def output_layer_sq_norms(
    grads: torch.Tensor, inputs: torch.Tensor, lengths: torch.Tensor, bias: bool = True, route: str = "auto"
) -> torch.Tensor:
    """``||dL_i/dW||^2 (+ ||dL_i/db||^2)`` for every row ``i``, exactly.

    Args:
        grads: (N, T, V) logit gradients ``g`` (zero beyond each length).
        inputs: (N, T, D) the layer's inputs ``h`` (any value beyond each length: masked here).
        lengths: (N,) valid steps.
        bias: add the bias term ``||sum_t g_t||^2`` (layers with a bias).
        route: ``"gram"``, ``"direct"`` or ``"auto"`` (the cheaper of the two).
    """
    n, t, v = grads.shape
    d = inputs.shape[-1]
    mask = _frame_mask(lengths, t, grads.dtype)[..., None]
    g = grads * mask
    h = inputs.to(grads.dtype) * mask
    gram = t * (v + d) < v * d if route == "auto" else route == "gram"
    if gram:  # Gram form: sum((G G^T) * (H H^T))
        sq = (torch.bmm(g, g.transpose(1, 2)) * torch.bmm(h, h.transpose(1, 2))).sum((1, 2))
    else:  # ||G^T H||_F^2
        sq = torch.bmm(g.transpose(1, 2), h).square().sum((1, 2))
    if bias:
        sq = sq + g.sum(1).square().sum(-1)
    return sq


def gradient_embeddings(
    grads: torch.Tensor,
    inputs: torch.Tensor,
    lengths: torch.Tensor,
    bias: bool = True,
    max_dim: int = 16384,
    seed: int = 0,
) -> torch.Tensor:
    """BADGE's gradient embedding of each row: ``vec(dL/dW)`` (and ``dL/db``), (N, V * (D + bias)).

    When ``V * (D + 1)`` exceeds ``max_dim`` the embedding is sketched with a Kronecker random
    projection ``A (G^T H) B`` (``A``: a x V, ``B``: D x b Gaussian, fixed by ``seed``, with
    ``a * b <= max_dim``); squared distances are then preserved in expectation.
    """
    n, t, v = grads.shape
    d = inputs.shape[-1]
    mask = _frame_mask(lengths, t, grads.dtype)[..., None]
    g = grads * mask
    h = inputs.to(grads.dtype) * mask
    if bias:
        h = torch.cat([h, mask], dim=-1)  # a constant input 1 carries the bias gradient
        d += 1
    if v * d > max_dim:
        gen = torch.Generator().manual_seed(seed)
        a = max(1, min(v, int(round((max_dim * v / d) ** 0.5))))
        b = max(1, min(d, max_dim // a))
        proj_v = torch.randn(v, a, generator=gen, dtype=torch.float64).to(g.dtype) / a**0.5
        proj_d = torch.randn(d, b, generator=gen, dtype=torch.float64).to(g.dtype) / b**0.5
        g, h = g @ proj_v, h @ proj_d
    return torch.bmm(g.transpose(1, 2), h).flatten(1)


def _frame_mask(lengths: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    return (torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]).to(dtype)


def flat_grad_sq_norm(loss: torch.Tensor, params, retain_graph: bool = True) -> float:
    """``||d loss / d params||^2`` by autograd (the "all trainable parameters" option)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return float(sum(g.double().square().sum() for g in grads if g is not None))


__all__ = [
    "attention_logit_grads",
    "ctc_logit_grads",
    "flat_grad_sq_norm",
    "gradient_embeddings",
    "output_layer_sq_norms",
]

