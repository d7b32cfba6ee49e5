"""Make s3prl (espnet-s3prl 2026.5.14) run on the current stack.

s3prl was written for torchaudio < 2.9, huggingface_hub < 1.0 and torch < 2.6. Each shim
below repairs one breakage, is installed only when the real thing is missing (so a stack
that has it keeps it), and touches nothing else:

===================  =========================================================================
shim                 what it does
===================  =========================================================================
``sox_effects``      ``torchaudio.sox_effects`` (removed in torchaudio 2.9; KS/ASV/QbE/MOS
                     datasets load audio through it) -> ``s3prl_upstream.sox_effects``.
``huggingface_hub``  ``huggingface_hub.HfFolder`` / ``Repository`` (removed in 1.0; imported at
                     module level by ``run_downstream.py`` and the runner, used only by
                     ``--hub huggingface`` / ``--push_to_hf_hub``) -> small stand-ins: the token
                     helpers work, ``Repository(...)`` raises a RuntimeError saying why.
``catalyst``         ``catalyst.data.sampler.DistributedSamplerWrapper`` (imported by the KS and
                     SID experts, used for multi-GPU sampling) -> an equivalent class here.
``sed_eval``         ``sed_eval`` and ``dcase_util`` (imported by ``s3prl.problem`` through the
                     HEAR sound-event scores) -> placeholder modules whose classes raise
                     ImportError when a HEAR event score is actually computed.
``tensorboard``      ``torch.utils.tensorboard`` needs the ``tensorboard`` package, which
                     ``s3prl.problem`` imports unconditionally -> the same ``SummaryWriter`` API
                     from ``tensorboardX`` (which the legacy runner needs anyway).
``torch_load``       ``torch.load`` defaults to ``weights_only=True`` since torch 2.6; s3prl's
                     checkpoints pickle ``argparse.Namespace`` (``-e`` / ``-i``) ->
                     ``torch.serialization.add_safe_globals([argparse.Namespace])``.
``asr_dictionary``   the package ships no ``downstream/asr/char.dict`` -> a missing
                     ``char.dict`` path resolves to ``configs/asr/char.dict``.
``sid_cache``        SID caches file lists in site-packages and reuses them for any dataset
                     -> a cache directory per dataset under ~/.cache/espnet_compress.
===================  =========================================================================

``apply()`` installs them all (idempotent) and returns what each did. The runner also needs
``tensorboardX`` and ``pandas``: those are real dependencies, not shimmed;
``check_runner_dependencies()`` raises an ImportError naming the missing ones.

Limitation: the module stand-ins live in ``sys.modules``; processes started with ``fork``
(Linux's default for DataLoader workers and DDP via torchrun's re-exec of our entry point)
have them, a ``spawn``-ed DataLoader worker that unpickles an s3prl dataset does not.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Callable, Dict, Iterator, List

#: shim name -> "installed" | "not needed" (set by apply()).
STATUS: Dict[str, str] = {}

RUNNER_DEPENDENCIES = ("tensorboardX", "pandas")


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package missing, or a stub without __spec__
        return module not in sys.modules


def _stub_module(name: str, doc: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__path__ = []  # a package, so submodule imports resolve through sys.modules
    module.__espnet_compress_stub__ = True
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def _install_modules(modules: Dict[str, types.ModuleType]) -> None:
    """Put stand-in modules in sys.modules and link each to its parent's attribute."""
    for name, module in modules.items():
        sys.modules[name] = module
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent and parent in sys.modules:
            setattr(sys.modules[parent], child, module)


# ------------------------------------------------------------------ torchaudio.sox_effects
def shim_sox_effects() -> str:
    import torchaudio  # noqa: F401  (the parent package must exist)

    if "torchaudio.sox_effects" in sys.modules or not _missing("torchaudio.sox_effects"):
        return "not needed"
    from s3prl_upstream import sox_effects

    _install_modules({"torchaudio.sox_effects": sox_effects})
    return "installed"


# ------------------------------------------------------------------ huggingface_hub
class HfFolder:
    """Stand-in for ``huggingface_hub.HfFolder`` (removed in huggingface_hub 1.0)."""

    @staticmethod
    def get_token():
        import huggingface_hub

        return huggingface_hub.get_token()

    @staticmethod
    def save_token(token: str) -> None:
        from pathlib import Path

        from huggingface_hub import constants

        path = Path(constants.HF_TOKEN_PATH)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(token)

    @staticmethod
    def delete_token() -> None:
        from pathlib import Path

        from huggingface_hub import constants

        Path(constants.HF_TOKEN_PATH).unlink(missing_ok=True)


class Repository:
    """Stand-in for ``huggingface_hub.Repository`` (git-based, removed in huggingface_hub 1.0)."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            "huggingface_hub.Repository was removed in huggingface_hub 1.0, so s3prl's --push_to_hf_hub "
            "cannot run on this stack; upload the experiment directory with "
            "huggingface_hub.HfApi().upload_folder(folder_path=EXPDIR, repo_id=...) instead"
        )


def shim_huggingface_hub() -> str:
    import huggingface_hub

    done = []
    for name, stand_in in (("HfFolder", HfFolder), ("Repository", Repository)):
        try:
            getattr(huggingface_hub, name)
        except AttributeError:
            setattr(huggingface_hub, name, stand_in)
            done.append(name)
    return "installed" if done else "not needed"


# ------------------------------------------------------------------ catalyst
class _SamplerAsDataset:
    """Indexable view of one pass of a sampler (its length is the sampler's)."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)


def _distributed_sampler_wrapper():
    from torch.utils.data import DistributedSampler

    class DistributedSamplerWrapper(DistributedSampler):
        """Shard any sampler across processes (catalyst's semantics).

        Each epoch draws the wrapped sampler once (e.g. a WeightedRandomSampler) and this
        rank keeps its DistributedSampler share of the draws, so the ranks see disjoint
        positions of one shared draw when the wrapped sampler is seeded alike.
        """

        def __init__(self, sampler, num_replicas=None, rank=None, shuffle: bool = True) -> None:
            super().__init__(_SamplerAsDataset(sampler), num_replicas=num_replicas, rank=rank, shuffle=shuffle)
            self.sampler = sampler

        def __iter__(self) -> Iterator:
            drawn = list(self.sampler)
            return iter([drawn[position] for position in super().__iter__()])

    return DistributedSamplerWrapper


def shim_catalyst() -> str:
    if not _missing("catalyst"):
        return "not needed"
    doc = "Stand-in for catalyst (installed by s3prl_upstream.compat): only data.sampler.DistributedSamplerWrapper."
    sampler = _stub_module("catalyst.data.sampler", doc, DistributedSamplerWrapper=_distributed_sampler_wrapper())
    data = _stub_module("catalyst.data", doc, sampler=sampler)
    _install_modules({"catalyst": _stub_module("catalyst", doc, data=data), "catalyst.data": data,
                      "catalyst.data.sampler": sampler})
    return "installed"


# ------------------------------------------------------------------ sed_eval / dcase_util
def _unavailable(qualname: str, package: str) -> type:
    def __init__(self, *args, **kwargs):
        raise ImportError(
            f"{qualname} is a placeholder installed by s3prl_upstream.compat: HEAR sound-event scores "
            f"need the real package (pip install {package})"
        )

    return type(qualname.rsplit(".", 1)[-1], (), {"__init__": __init__, "__doc__": f"Placeholder for {qualname}."})


def shim_sed_eval() -> str:
    installed = {}
    if _missing("sed_eval"):
        doc = "Placeholder for sed_eval (s3prl_upstream.compat): s3prl.problem imports it for HEAR event scores."
        names = ("SoundEventMetrics", "SegmentBasedMetrics", "EventBasedMetrics")
        sound_event = _stub_module(
            "sed_eval.sound_event", doc, **{n: _unavailable(f"sed_eval.sound_event.{n}", "sed_eval") for n in names}
        )
        installed.update({"sed_eval": _stub_module("sed_eval", doc, sound_event=sound_event),
                          "sed_eval.sound_event": sound_event})
    if _missing("dcase_util"):
        doc = "Placeholder for dcase_util (s3prl_upstream.compat): s3prl.problem imports it for HEAR event scores."
        containers = _stub_module(
            "dcase_util.containers", doc,
            MetaDataContainer=_unavailable("dcase_util.containers.MetaDataContainer", "dcase_util"),
        )
        installed.update({"dcase_util": _stub_module("dcase_util", doc, containers=containers),
                          "dcase_util.containers": containers})
    _install_modules(installed)
    return "installed" if installed else "not needed"


# ------------------------------------------------------------------ torch.utils.tensorboard
def shim_tensorboard() -> str:
    if not _missing("tensorboard") or _missing("tensorboardX"):
        return "not needed"  # the real one works, or there is nothing to alias (see check_runner_dependencies)
    if "torch.utils.tensorboard" in sys.modules and not getattr(
        sys.modules["torch.utils.tensorboard"], "__espnet_compress_stub__", False
    ):
        return "not needed"
    from tensorboardX import SummaryWriter

    doc = "torch.utils.tensorboard stand-in (s3prl_upstream.compat): tensorboardX's SummaryWriter, same API."
    writer = _stub_module("torch.utils.tensorboard.writer", doc, SummaryWriter=SummaryWriter)
    package = _stub_module("torch.utils.tensorboard", doc, SummaryWriter=SummaryWriter, writer=writer)
    _install_modules({"torch.utils.tensorboard": package, "torch.utils.tensorboard.writer": writer})
    return "installed"


# ------------------------------------------------------------------ torch.load
def shim_torch_load() -> str:
    import argparse

    import torch.serialization

    if argparse.Namespace in torch.serialization.get_safe_globals():
        return "not needed"
    torch.serialization.add_safe_globals([argparse.Namespace])
    return "installed"


# ------------------------------------------------------------------ ASR char.dict
def shim_asr_dictionary() -> str:
    """The pip package lacks ``downstream/asr/char.dict``; our ASR configs name the shipped
    copy by a repository-relative path. A missing path ending in ``char.dict`` falls back to
    ``s3prl_upstream/configs/asr/char.dict``, wherever the run starts or the package lives."""
    import os

    from s3prl.downstream.asr.dictionary import Dictionary

    if getattr(Dictionary.load, "_espnet_compress", False):
        return "installed"
    original = Dictionary.load.__func__

    def load(cls, f):
        if isinstance(f, (str, os.PathLike)) and not os.path.exists(f) and os.path.basename(str(f)) == "char.dict":
            from s3prl_upstream import CONFIG_DIR

            f = str(CONFIG_DIR / "asr" / "char.dict")
        return original(cls, f)

    load._espnet_compress = True
    Dictionary.load = classmethod(load)
    return "installed"


# ------------------------------------------------------------------ SID file-list cache
def shim_sid_cache() -> str:
    """SID caches its file lists in ``site-packages/.../voxceleb1/.cache/{mode}.pkl`` and reuses
    them for any other dataset. Each dataset gets its own cache directory instead, keyed on its
    root, its split file and the split file's modification time, under ~/.cache."""
    import hashlib
    import os
    from pathlib import Path

    from s3prl.downstream.voxceleb1 import dataset as module

    cls = module.SpeakerClassifiDataset
    if getattr(cls.__init__, "_espnet_compress", False):
        return "installed"
    original = cls.__init__

    def __init__(self, mode, file_path, meta_data, max_timestep=None):
        mtime = os.path.getmtime(meta_data) if os.path.exists(meta_data) else 0
        key = hashlib.sha1(f"{os.path.abspath(file_path)}|{os.path.abspath(meta_data)}|{mtime}".encode()).hexdigest()
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        module.CACHE_PATH = str(root / "espnet_compress" / "s3prl_sid" / key[:16]) + "/"
        original(self, mode, file_path, meta_data, max_timestep)

    __init__._espnet_compress = True
    cls.__init__ = __init__
    return "installed"


SHIMS: Dict[str, Callable[[], str]] = {
    "sox_effects": shim_sox_effects,
    "huggingface_hub": shim_huggingface_hub,
    "catalyst": shim_catalyst,
    "sed_eval": shim_sed_eval,
    "tensorboard": shim_tensorboard,
    "torch_load": shim_torch_load,
    "asr_dictionary": shim_asr_dictionary,
    "sid_cache": shim_sid_cache,
}


def apply() -> Dict[str, str]:
    """Install every shim that this stack needs (idempotent); returns name -> what happened."""
    for name, shim in SHIMS.items():
        result = shim()
        if STATUS.get(name) != "installed":
            STATUS[name] = result
    return dict(STATUS)


def missing_runner_dependencies() -> List[str]:
    return [name for name in RUNNER_DEPENDENCIES if _missing(name)]


def check_runner_dependencies() -> None:
    """s3prl's legacy runner imports tensorboardX and (for several tasks) pandas."""
    missing = missing_runner_dependencies()
    if missing:
        raise ImportError(
            f"s3prl's downstream runner needs {' and '.join(missing)}, not installed here: "
            f"pip install {' '.join(missing)} (espnet-compress lists them in install_requires)"
        )
