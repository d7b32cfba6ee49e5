"""Importing ESPnet quietly, and without paying for what our tasks never use.

- ESPnet prints a notice on stdout when its transformer attention module is first imported (no
  flash-attention installed). ``--print_config > config.yaml`` would then not be valid YAML.
  ``AbsTask.print_config`` binds ``sys.stdout`` as a default argument at import time, so the
  redirect must cover only that one import, not the task modules.
- ESPnet's task modules import ``g2p_en`` (and with it ``nltk``, which also tries to download
  its data) for the English phoneme tokenizer: about 1 s of every start on a 2-core machine,
  for a tokenizer only a recipe with ``g2p: g2p_en`` builds. A stand-in takes its place and
  imports it on first use, so nothing changes for a recipe that uses it. (``inflect``, another
  2 s, stays: ESPnet's text cleaner calls it at import time.)
"""
import contextlib
import importlib
import importlib.util
import sys
import types

DEFERRED_MODULES = ("g2p_en",)


class _DeferredModule(types.ModuleType):
    """Stands in for a module until code uses one of its attributes, then imports it.

    Dunder lookups that the stand-in cannot answer (``inspect.getmodule`` and torch's op
    registration probe every module in ``sys.modules``) fail without importing."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__") and attribute.endswith("__"):
            raise AttributeError(attribute)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        module = importlib.import_module(self.__name__)  # once: later calls find it in sys.modules
        self.__dict__.update(module.__dict__)  # later lookups through this object skip __getattr__
        return getattr(module, attribute)


def defer_unused_imports() -> None:
    """Put stand-ins for :data:`DEFERRED_MODULES` in ``sys.modules`` (installed modules only,
    and only if nothing imported them yet)."""
    for name in DEFERRED_MODULES:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        module = _DeferredModule(name)
        module.__file__, module.__spec__ = spec.origin, spec
        sys.modules[name] = module


def import_espnet_quietly() -> None:
    """Import the module that prints the notice with stdout sent to stderr, after deferring the
    unused imports (idempotent, cheap after the first call). Call it before importing ESPnet's
    task modules."""
    if "espnet.nets.pytorch_backend.transformer.attention" in sys.modules:
        return
    defer_unused_imports()
    with contextlib.redirect_stdout(sys.stderr):
        import espnet.nets.pytorch_backend.transformer.attention  # noqa: F401
