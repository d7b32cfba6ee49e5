"""Hard-concrete gates for structured pruning."""
from espnet_plugin.gates.hard_concrete import HardConcreteGate, open_probabilities, sample_gates

__all__ = ["HardConcreteGate", "open_probabilities", "sample_gates"]
