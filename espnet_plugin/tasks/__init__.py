"""ESPnet task classes (they import ESPnet; import them explicitly).

ESPnet prints an import-time notice on stdout (no flash-attention), which would corrupt
``--print_config > config.yaml``: that module is imported first with stdout sent to stderr.
(Only that one: ``AbsTask.print_config`` binds ``sys.stdout`` as a default at import time.)
"""
import contextlib
import sys

with contextlib.redirect_stdout(sys.stderr):
    import espnet.nets.pytorch_backend.transformer.attention  # noqa: F401
