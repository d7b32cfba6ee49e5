"""Structured pruning: from a gated model to the dense model its masks describe."""
from espnet_plugin.pruning.prune import prune_model

__all__ = ["prune_model"]
