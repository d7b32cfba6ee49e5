"""Keep ESPnet's import-time notice off stdout.

ESPnet prints a notice on stdout when its transformer attention module is first imported (no
flash-attention installed). ``--print_config > config.yaml`` would then not be valid YAML.
``AbsTask.print_config`` binds ``sys.stdout`` as a default argument at import time, so the
redirect must cover only that one import, not the task modules.
"""
import contextlib
import sys


def import_espnet_quietly() -> None:
    """Import the module that prints the notice with stdout sent to stderr (idempotent, cheap
    after the first call). Call it before importing ESPnet's task modules."""
    if "espnet.nets.pytorch_backend.transformer.attention" in sys.modules:
        return
    with contextlib.redirect_stdout(sys.stderr):
        import espnet.nets.pytorch_backend.transformer.attention  # noqa: F401
