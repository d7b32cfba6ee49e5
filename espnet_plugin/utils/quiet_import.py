"""Importing ESPnet quietly, and without paying for what our tasks never use.

- ESPnet prints a notice on stdout when its transformer attention module is first imported (no
  flash-attention installed). ``--print_config > config.yaml`` would then not be valid YAML.
  ``AbsTask.print_config`` binds ``sys.stdout`` as a default argument at import time, so the
  redirect must cover only that one import, not the task modules.
- ESPnet's task and trainer modules import modules for features our tasks do not use, about
  5.5 s of every start on a 2-core machine (``python -X importtime``):
  - ESPnet's preprocessors (``espnet2.train.preprocessor``, ~4 s: typeguard instruments its
    classes at import, and it imports every tokenizer, transformers' among them), which
    ``espnet2.train.collate_fn`` imports for one function;
  - ``g2p_en`` (and with it ``nltk``, which also tries to download its data) for the English
    phoneme tokenizer;
  - adapters (``espnet2.layers.create_adapter``, which imports transformers' wav2vec 2.0 model);
  - the attention plots of validation (``espnet2.main_funcs.calculate_all_attentions``, which
    imports ESPnet's TTS models).

  A stand-in takes each one's place in ``sys.modules`` and imports it on first use, so nothing
  changes for a run that uses them (ESPnet's ASR and enhancement tasks import the preprocessors
  when they are imported). ``inflect``, which ESPnet's text cleaner calls when the preprocessors
  load, is pinned below 6 in setup.py: version 7 instruments its functions with typeguard when
  imported, 1.7-3 s.
"""
import contextlib
import importlib
import importlib.util
import sys
import types
from typing import Callable, Dict, Tuple

#: module -> the functions that ESPnet imports from it by name (``from module import f``);
#: each of those gets a forwarder that imports the module on its first call.
DEFERRED_MODULES: Dict[str, Tuple[str, ...]] = {
    "espnet2.train.preprocessor": ("detect_non_silence",),
    "g2p_en": (),
    "espnet2.layers.create_adapter": ("create_adapter",),
    "espnet2.main_funcs.calculate_all_attentions": ("calculate_all_attentions",),
}


class _DeferredModule(types.ModuleType):
    """Stands in for a module until code uses one of its attributes, then imports it.

    Dunder lookups that the stand-in cannot answer (``inspect.getmodule`` and torch's op
    registration probe every module in ``sys.modules``) fail without importing. A name in
    ``forwarded`` is answered with a function that calls the module's function of that name,
    so ``from module import name`` does not import the module either."""

    def __init__(self, name: str, forwarded: Tuple[str, ...] = ()) -> None:
        super().__init__(name)
        self._forwarded = forwarded

    def _load(self) -> types.ModuleType:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        module = importlib.import_module(self.__name__)  # once: later calls find it in sys.modules
        self.__dict__.update(module.__dict__)  # later lookups through this object skip __getattr__
        return module

    def __getattr__(self, attribute: str):
        if attribute.startswith("__") and attribute.endswith("__"):
            raise AttributeError(attribute)
        if attribute in self._forwarded:
            forwarder = _forwarder(self, attribute)
            setattr(self, attribute, forwarder)  # the same forwarder for every lookup until the import
            return forwarder
        return getattr(self._load(), attribute)


def _forwarder(stand_in: _DeferredModule, name: str) -> Callable:
    def forward(*args, **kwargs):
        module = sys.modules.get(stand_in.__name__)
        if module is None or module is stand_in:
            module = stand_in._load()
        return getattr(module, name)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = name
    forward.__module__ = stand_in.__name__
    forward.__doc__ = f"Imports {stand_in.__name__} on first call and calls its {name}."
    return forward


def defer_unused_imports() -> None:
    """Put stand-ins for :data:`DEFERRED_MODULES` in ``sys.modules`` (installed modules only,
    and only if nothing imported them yet)."""
    for name, forwarded in DEFERRED_MODULES.items():
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        module = _DeferredModule(name, forwarded)
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
