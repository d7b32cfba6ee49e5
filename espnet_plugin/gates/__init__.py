"""Hard-concrete gates for structured pruning."""
from espnet_plugin.gates.hard_concrete import ForwardValues, HardConcreteGate, prob_open, sample_gates

__all__ = ["ForwardValues", "HardConcreteGate", "prob_open", "sample_gates"]
