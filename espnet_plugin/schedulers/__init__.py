"""Learning-rate schedulers for ESPnet's ``--scheduler`` option (registered by the plugin's tasks)."""
from espnet_plugin.schedulers.linear_warmup_decay import LinearWarmupDecayLR

__all__ = ["LinearWarmupDecayLR"]
