"""Structured pruning: the sparsity Lagrangian, and from a gated model to a dense one."""
from espnet_plugin.pruning.lagrangian import SparsityLagrangian
from espnet_plugin.pruning.prune import prune_model

__all__ = ["SparsityLagrangian", "prune_model"]
