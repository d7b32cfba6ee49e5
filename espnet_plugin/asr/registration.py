"""Registration of the plugin with ESPnet's ASR task and s3prl, and the config marker.

ESPnet has no plugin hook: its ``ClassChoices`` tables are module-level dicts, filled at
import time, and a trained experiment's ``config.yaml`` names classes by those keys. So:

* ``register()`` adds ``CompressedEncoder`` to ``espnet2.tasks.asr.encoder_choices`` as
  ``espnet_compress`` and the s3prl upstreams ``espnet_compress_local`` / ``espnet_compress``
  (via ``s3prl_upstream.register()``, as soon as ``s3prl.hub`` is imported). It is idempotent
  and runs when ``espnet_plugin.asr`` is imported. Installed, the package also does this in
  every Python process by itself, with no import of this project (the start-up hook
  ``espnet_compress_autoload``: ``register_encoder()`` when ``espnet2.tasks.asr`` is imported,
  ``s3prl_upstream.register()`` when ``s3prl.hub`` is).
* ``mark_plugin_args(args)`` (called by ``espnet_plugin.bin.asr_train``) turns the values
  that name plugin classes into ``PluginName`` strings; ESPnet writes them into
  ``config.yaml`` with the YAML tag ``PLUGIN_TAG``. Where the plugin is imported, the tag
  loads as the plain name; where it is not, ESPnet's loader (``yaml.safe_load``) stops with

      ConstructorError: could not determine a constructor for the tag 'this ESPnet config
      needs the espnet-compress plugin: import espnet_plugin.asr before loading it (or use
      espnet_plugin.asr.load_asr_model; train and resume with python -m espnet_plugin.bin.asr_train)'
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import yaml
from s3prl_upstream import UPSTREAM_NAMES as S3PRL_UPSTREAM_NAMES  # cheap: s3prl is imported by register()

from espnet_plugin.utils.quiet_import import import_espnet_quietly

ENCODER_NAME = "espnet_compress"
PLUGIN_TAG = (
    "this ESPnet config needs the espnet-compress plugin: import espnet_plugin.asr before loading it "
    "(or use espnet_plugin.asr.load_asr_model; train and resume with python -m espnet_plugin.bin.asr_train)"
)


class PluginName(str):
    """A config value naming a plugin class; written to YAML with ``PLUGIN_TAG``."""


def _represent(dumper, value):
    return dumper.represent_scalar(PLUGIN_TAG, str(value))


def _construct(loader, node):
    return PluginName(loader.construct_scalar(node))


def _register_yaml() -> None:
    from espnet2.utils.yaml_no_alias_safe_dump import NoAliasSafeDumper

    for dumper in (yaml.SafeDumper, yaml.Dumper, NoAliasSafeDumper):
        yaml.add_representer(PluginName, _represent, Dumper=dumper)
    for name in ("SafeLoader", "FullLoader", "Loader", "UnsafeLoader", "CSafeLoader", "CFullLoader", "CLoader"):
        loader = getattr(yaml, name, None)
        if loader is not None:
            yaml.add_constructor(PLUGIN_TAG, _construct, Loader=loader)


_encoder_registered = False


def register_encoder() -> str:
    """Add ``CompressedEncoder`` to ``espnet2.tasks.asr.encoder_choices`` as ``espnet_compress``
    and let YAML load the ``PLUGIN_TAG`` of configs written by ``espnet_plugin.bin.asr_train``
    (idempotent; imports no s3prl). Returns the encoder's name. The start-up hook
    (``espnet_compress_autoload``) calls it when ``espnet2.tasks.asr`` has been imported."""
    global _encoder_registered
    if not _encoder_registered:
        from espnet2.tasks.asr import encoder_choices

        from espnet_plugin.asr.encoder import CompressedEncoder

        encoder_choices.classes[ENCODER_NAME] = CompressedEncoder
        _register_yaml()
        _encoder_registered = True
    return ENCODER_NAME


def _register_s3prl_upstream() -> None:
    """``s3prl_upstream.register()`` now if ``s3prl.hub`` is imported, else right after it is
    (importing s3prl takes 15-20 s: an ASR run without the s3prl front-end never pays it)."""
    import sys

    import s3prl_upstream

    hub = sys.modules.get("s3prl.hub")
    if hub is not None and not getattr(getattr(hub, "__spec__", None), "_initializing", False):
        s3prl_upstream.register()  # imported already: register now, errors raise
        return
    try:
        from espnet_compress_autoload import when_imported
    except ImportError:  # the hook module missing (a partial install): register eagerly
        s3prl_upstream.register()
        return
    when_imported("s3prl.hub", s3prl_upstream.register)  # later, silently (as the start-up hook)


def register() -> None:
    """Make the plugin's classes known to ESPnet's ASR task and to s3prl (idempotent).

    The encoder now (``register_encoder()``), the s3prl upstreams when ``s3prl.hub`` is
    imported (now, if it already is). Works whatever ``ESPNET_COMPRESS_AUTOLOAD`` says.
    """
    import_espnet_quietly()  # keeps ESPnet's import-time notice off stdout
    register_encoder()
    _register_s3prl_upstream()


def _mark(value):
    return PluginName(value) if isinstance(value, str) and not isinstance(value, PluginName) else value


def mark_plugin_args(args: argparse.Namespace) -> argparse.Namespace:
    """Mark the values naming plugin classes so that ``config.yaml`` records the plugin.

    Also checks the settings the raw-waveform encoder needs. Returns ``args`` (modified).
    """
    if getattr(args, "print_config", False):  # ESPnet prints its defaults, not these args
        return args
    encoder = getattr(args, "encoder", None)
    if isinstance(encoder, str) and encoder.lower() == ENCODER_NAME:
        args.encoder = _mark(encoder)
        wrong = [
            f"{key}: {getattr(args, key)!r} (needs {want})"
            for key, want, ok in (
                ("input_size", "1: raw waveforms, no ESPnet front-end", getattr(args, "input_size", None) == 1),
                ("normalize", "null", getattr(args, "normalize", None) is None),
                ("specaug", "null", getattr(args, "specaug", None) is None),
            )
            if not ok
        ]
        if wrong:
            raise ValueError(
                f"encoder {ENCODER_NAME} reads raw 16 kHz waveforms; fix these ASR settings: " + "; ".join(wrong)
            )
    frontend_conf = getattr(args, "frontend_conf", None)
    if getattr(args, "frontend", None) == "s3prl" and isinstance(frontend_conf, dict):
        inner = frontend_conf.get("frontend_conf")
        if isinstance(inner, dict) and inner.get("upstream") in S3PRL_UPSTREAM_NAMES:
            inner["upstream"] = _mark(inner["upstream"])
    return args


def load_asr_model(
    config: Union[str, Path],
    model_file: Optional[Union[str, Path]] = None,
    device: str = "cpu",
) -> Tuple[torch.nn.Module, argparse.Namespace]:
    """``ASRTask.build_model_from_file`` with the plugin registered: returns (model, args)."""
    register()
    from espnet2.tasks.asr import ASRTask

    return ASRTask.build_model_from_file(config, model_file, device)
