"""espnet-compress: distillation and structured pruning of speech SSL models for ESPnet.

Importing this package is cheap: it does not import ESPnet or s3prl.
"""
from espnet_plugin.compact import load_model, save_model

__version__ = "0.1.0"
__all__ = ["load_model", "save_model", "__version__"]
