"""s3prl hub entries for espnet-compress models, one small function per upstream name.

s3prl calls an entry as ``entry(ckpt=..., model_config=..., refresh=...)`` (legacy runner:
``-k``, ``-g``, ``-r``) or ``entry(ckpt=path_or_url, refresh=..., **extra_conf)``
(``S3PRLUpstream``). ``s3prl_upstream.register()`` adds these functions to ``s3prl.hub``.

- ``ckpt``: for ``espnet_compress_onnx``, an ``.onnx`` file of ``espnet_plugin.bin.export_onnx``;
  otherwise a compact model directory (config.yaml + model.safetensors; its config.yaml or
  model.safetensors path also works) or any checkpoint ``espnet_plugin``'s importer reads
  (Hugging Face directory, fairseq / WavLM / torchaudio .pt, ESPnet HuBERT experiment).
- ``model_config``: optional YAML file (or dict) of options: ``num_heads`` for bare state
  dicts whose width is not a multiple of 64; ``precision: bf16`` to run the model under bf16
  autocast. Usually left out. (``espnet_compress_onnx``: ``threads``.)
- ``refresh``: accepted for s3prl's calling convention and ignored (local files, no download).
"""
from __future__ import annotations


def _expert(ckpt, model_config, **kwargs):
    from s3prl_upstream.espnet_compress.expert import UpstreamExpert

    return UpstreamExpert(ckpt, model_config=model_config, **kwargs)


def espnet_compress_local(ckpt: str = None, model_config: str = None, refresh: bool = False, **kwargs):
    """An espnet-compress model from a local path: ``-u espnet_compress_local -k PATH``."""
    return _expert(ckpt, model_config, **kwargs)


def espnet_compress(ckpt: str = None, model_config: str = None, refresh: bool = False, **kwargs):
    """Alias of ``espnet_compress_local`` (there is no registered download: ``ckpt`` is required)."""
    return _expert(ckpt, model_config, **kwargs)


def espnet_compress_onnx(ckpt: str = None, model_config: str = None, refresh: bool = False, **kwargs):
    """An ONNX file of ``espnet_plugin.bin.export_onnx`` (fp32 or int8) run by onnxruntime:
    ``-u espnet_compress_onnx -k model.onnx``."""
    from s3prl_upstream.espnet_compress.expert import OnnxUpstreamExpert

    return OnnxUpstreamExpert(ckpt, model_config=model_config, **kwargs)
