"""espnet-compress models as s3prl upstreams.

    import s3prl_upstream
    s3prl_upstream.register()          # adds espnet_compress_local / espnet_compress to s3prl.hub
    from s3prl.nn import S3PRLUpstream
    upstream = S3PRLUpstream("espnet_compress_local", path_or_url="exp/hubert_pruned")

With the package installed, ``register()`` is optional: the start-up hook
``espnet_compress_autoload`` calls it as soon as any code imports ``s3prl.hub`` (switch it off
with ``ESPNET_COMPRESS_AUTOLOAD=0``).

SUPERB's legacy runner, unchanged, with the same arguments as s3prl's run_downstream.py:

    python -m s3prl_upstream.run_downstream -m train -u espnet_compress_local -k exp/hubert_pruned \\
        -d speech_commands -c s3prl_upstream/configs/ks/superb.yaml -p exp/ks ...

s3prl has no plugin mechanism: ``s3prl.hub`` is a module of star-imports and
``s3prl.hub.options()`` lists its public callables, so ``register()`` sets the entry
functions as attributes of ``s3prl.hub``. It also applies ``s3prl_upstream.compat`` (the
shims s3prl needs on the current stack). Importing this package is cheap: s3prl (15-20 s to
import) is imported only by ``register()``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

__all__ = ["UPSTREAM_NAMES", "register", "config_path", "CONFIG_DIR"]

#: the names register() adds to s3prl.hub (functions of s3prl_upstream.espnet_compress.hubconf).
UPSTREAM_NAMES = ("espnet_compress_local", "espnet_compress", "espnet_compress_onnx")

#: downstream configs shipped with the package (the pip s3prl has none).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_path(name: str) -> Path:
    """Path of a shipped config, e.g. ``config_path("ks/superb.yaml")``."""
    path = CONFIG_DIR / name
    if not path.is_file():
        shipped = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such shipped config; shipped: {shipped}")
    return path


def register() -> List[str]:
    """Add the espnet-compress upstream names to ``s3prl.hub`` (idempotent); returns them.

    Applies ``s3prl_upstream.compat`` first. Raises RuntimeError if s3prl already has a
    different upstream under one of the names.
    """
    from s3prl_upstream import compat

    compat.apply()
    import s3prl.hub as hub

    from s3prl_upstream.espnet_compress import hubconf

    for name in UPSTREAM_NAMES:
        entry = getattr(hubconf, name)
        existing = getattr(hub, name, None)
        if existing is not None and getattr(existing, "__module__", None) != hubconf.__name__:
            raise RuntimeError(
                f"s3prl.hub already has an upstream named {name!r} ({getattr(existing, '__module__', existing)}); "
                "not replacing it"
            )
        setattr(hub, name, entry)
    return list(UPSTREAM_NAMES)
