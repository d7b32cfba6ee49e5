"""ESPnet ASR with compressed models: importing this package registers the plugin.

* ``encoder: espnet_compress`` (``CompressedEncoder``): a compact model directory as the ASR
  encoder on raw waveforms (``input_size: 1``, ``normalize: null``).
* ``frontend: s3prl`` with ``upstream: espnet_compress_local``: a compact model through
  ESPnet's s3prl front-end (registered by ``s3prl_upstream.register()``).
* ``load_asr_model(config, model_file)``: ``ASRTask.build_model_from_file`` with the plugin
  registered.

Installed, the package registers both names in every Python process by itself (the
start-up hook ``espnet_compress_autoload``), so stock ``python -m espnet2.bin.asr_train``
works too; ``python -m espnet_plugin.bin.asr_train`` additionally tags the plugin's names in
``config.yaml``, so that loading it where the plugin is switched off fails with a message
saying to import it. Importing this package imports ESPnet; s3prl only once something
imports ``s3prl.hub``.

Active learning (choosing which pool utterances to transcribe) is in
:mod:`espnet_plugin.asr.active_learning`.
"""
from espnet_plugin.asr.registration import (
    ENCODER_NAME,
    PLUGIN_TAG,
    S3PRL_UPSTREAM_NAMES,
    PluginName,
    load_asr_model,
    mark_plugin_args,
    register,
)

register()

from espnet_plugin.asr.encoder import CompressedEncoder  # noqa: E402

__all__ = [
    "CompressedEncoder",
    "ENCODER_NAME",
    "PLUGIN_TAG",
    "S3PRL_UPSTREAM_NAMES",
    "PluginName",
    "load_asr_model",
    "mark_plugin_args",
    "register",
]
