"""Hard-concrete gates for structured pruning."""
from espnet_plugin.gates.hard_concrete import HardConcreteGate

__all__ = ["HardConcreteGate"]
