"""s3prl hub entries for espnet-compress models, one small function per upstream name.

s3prl calls an entry as ``entry(ckpt=..., model_config=..., refresh=...)`` (legacy runner:
``-k``, ``-g``, ``-r``) or ``entry(ckpt=path_or_url, refresh=..., **extra_conf)``
(``S3PRLUpstream``). ``s3prl_upstream.register()`` adds these functions to ``s3prl.hub``.

- ``ckpt``: a compact model directory (config.yaml + model.safetensors; its config.yaml or
  model.safetensors path also works) or any checkpoint ``espnet_plugin``'s importer reads
  (Hugging Face directory, fairseq / WavLM / torchaudio .pt, ESPnet HuBERT experiment).
- ``model_config``: optional YAML file (or dict) of import options: ``num_heads`` for bare
  state dicts whose width is not a multiple of 64. Usually left out.
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
