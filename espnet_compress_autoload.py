"""Start-up hook: stock ESPnet and stock s3prl find the espnet-compress plugin by themselves.

Neither ESPnet nor s3prl has plugin entry points, so the package installs
``espnet_compress_autoload.pth`` next to itself in site-packages. Python's ``site`` module
runs its one line, ``import espnet_compress_autoload``, at every interpreter start (spawned
DDP workers and DataLoader workers included). This module imports only ``os`` and ``sys``
(both already loaded at start-up) and puts a small finder first on ``sys.meta_path``. The
finder does nothing for every other module; when one of the watched modules is imported, it
lets the normal import run to the end and then registers the plugin there:

==========================  =========================================================================
module imported             then
==========================  =========================================================================
``s3prl.hub``               ``s3prl_upstream.register()``: the upstreams ``espnet_compress_local`` /
                            ``espnet_compress`` (``S3PRLUpstream``, ESPnet's ``S3prlFrontend``,
                            s3prl's ``run_downstream.py``) and s3prl's compatibility shims
``espnet2.tasks.asr``       ``espnet_plugin.asr.registration.register_encoder()``: the ASR encoder
                            ``espnet_compress`` and the YAML tag of configs written by
                            ``python -m espnet_plugin.bin.asr_train``
==========================  =========================================================================

Nothing of this project, ESPnet, s3prl or torch is imported before that. Each watched module
fires once; the finder leaves ``sys.meta_path`` when all have.

Offline switch (``ESPNET_COMPRESS_OFFLINE=1``, set by every recipe of this repository): ESPnet's
task modules import ``g2p_en``, which calls ``nltk.download("cmudict")`` and a POS tagger's
download at import time when that data is missing (so do ``s3prl.hub`` and every SUPERB run,
through s3prl's ESPnet upstreams). With the switch on, the hook also watches ``nltk`` and, once
it is imported, replaces ``nltk.download`` by a function that downloads nothing and returns
False (as nltk's own does on failure): nothing is fetched, nothing is printed. Nothing in this
repository uses NLTK data (phonemes come from espeak-ng); g2p_en itself would fail only when
called, with NLTK's own "resource not found" message. The switch is independent of
``ESPNET_COMPRESS_AUTOLOAD``.

Environment variables:

* ``ESPNET_COMPRESS_OFFLINE=1`` (or ``true`` / ``yes`` / ``on``): the offline switch above.
* ``ESPNET_COMPRESS_AUTOLOAD=0`` (or ``false`` / ``no`` / ``off``): do nothing; the plugin is
  then registered only explicitly (``import espnet_plugin.asr``, ``s3prl_upstream.register()``,
  ``python -m espnet_plugin.bin.asr_train``, ``python -m s3prl_upstream.run_downstream``).
* ``ESPNET_COMPRESS_AUTOLOAD_DEBUG=1``: report on stderr what was registered, and why a
  registration failed.

The hook never breaks the process that imports ESPnet or s3prl. It first checks that the
imported module has what the registration needs (``s3prl.hub.options``,
``espnet2.tasks.asr.encoder_choices``) and otherwise imports nothing of this project; any
failure after that (ESPnet or s3prl of another version, a broken install of this project) is
caught too. Either way the process goes on silently, as if the plugin were not installed.
"""
import os
import sys

ENV_SWITCH = "ESPNET_COMPRESS_AUTOLOAD"
ENV_DEBUG = "ESPNET_COMPRESS_AUTOLOAD_DEBUG"
ENV_OFFLINE = "ESPNET_COMPRESS_OFFLINE"
_OFF = ("0", "false", "no", "off")


def _register_s3prl():
    hub = sys.modules.get("s3prl.hub")
    if not callable(getattr(hub, "options", None)):  # checked first: nothing of ours is imported
        raise RuntimeError("s3prl.hub has no options(): an s3prl this plugin does not know")
    import s3prl_upstream

    return "upstreams " + ", ".join(s3prl_upstream.register())


def _register_espnet():
    choices = getattr(sys.modules.get("espnet2.tasks.asr"), "encoder_choices", None)
    if not isinstance(getattr(choices, "classes", None), dict):
        raise RuntimeError("espnet2.tasks.asr has no encoder_choices table: an ESPnet this plugin does not know")
    from espnet_plugin.asr.registration import register_encoder

    return "encoder " + register_encoder()


def _nltk_offline():
    nltk = sys.modules.get("nltk")
    if not callable(getattr(nltk, "download", None)):
        raise RuntimeError("nltk has no download(): an NLTK this hook does not know")

    def download(info_or_id=None, *args, **kwargs):
        _debug(f"nltk.download({info_or_id!r}) skipped: {ENV_OFFLINE} is set, nothing is downloaded")
        return False

    download.__doc__ = f"nltk.download switched off by {__name__} ({ENV_OFFLINE}): downloads nothing, returns False."
    nltk.download = download
    return "nltk.download off"


#: watched module -> its registration (run once, right after the module has been executed)
WATCHED = {"s3prl.hub": _register_s3prl, "espnet2.tasks.asr": _register_espnet}
#: watched as well when ESPNET_COMPRESS_OFFLINE is on
OFFLINE_WATCHED = {"nltk": _nltk_offline}

#: what happened, per watched module: "registered ..." or "failed: ..." (for debugging and tests)
STATUS = {}


def _debugging():
    return os.environ.get(ENV_DEBUG, "").strip().lower() not in ("",) + _OFF


def _debug(message):
    if _debugging():
        try:
            sys.stderr.write(f"[espnet_compress_autoload] {message}\n")
        except Exception:
            pass


def _run(name, register):
    from time import perf_counter

    start = perf_counter()
    try:
        result = register()
        if isinstance(result, (list, tuple)):
            result = ", ".join(map(str, result))
        STATUS[name] = "registered" + (f" {result}" if result else "")
    except BaseException as exc:  # noqa: B902  (never break the importing process)
        if isinstance(exc, KeyboardInterrupt):
            raise
        STATUS[name] = f"failed: {type(exc).__name__}: {exc}"
        if _debugging():
            import traceback

            _debug(f"{name}: registration failed, the plugin stays unregistered there:\n" + traceback.format_exc())
        return
    _debug(f"{name}: {STATUS[name]} ({1000 * (perf_counter() - start):.1f} ms)")


class AutoloadFinder:
    """A ``sys.meta_path`` finder that answers for no module: for a watched module it asks the
    finders after it, and wraps the found loader's ``exec_module`` so that the registration
    runs once the module has been executed."""

    def __init__(self):
        self.pending = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:
            return None
        try:
            return self._watch(fullname, path, target)
        except Exception:
            return None  # let the normal machinery import it, unwatched

    def _watch(self, fullname, path, target):
        spec = None
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec  # not found (the caller raises ModuleNotFoundError), or a loader we cannot wrap
        finder = self

        def exec_and_register(module):
            if getattr(module, "__name__", None) != fullname:  # a loader shared by several modules
                return exec_module(module)
            try:
                exec_module(module)  # the module itself: its exceptions propagate as usual
            finally:
                try:
                    del loader.exec_module  # back to the loader's own method
                except AttributeError:
                    pass
            registrations = finder.pending.pop(fullname, ())
            if not finder.pending:
                finder.uninstall()
            for register in registrations:
                _run(fullname, register)

        loader.exec_module = exec_and_register  # on this loader instance only
        return spec

    def uninstall(self):
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


def _finder():
    for finder in sys.meta_path:
        if type(finder).__name__ == AutoloadFinder.__name__ and hasattr(finder, "pending"):
            return finder
    return None


def _imported(name):
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def when_imported(name, register):
    """Run ``register()`` right after module ``name`` has been imported (now, if it already
    has been), once; failures are silent (see ``ESPNET_COMPRESS_AUTOLOAD_DEBUG``). Also used by
    the explicit ``espnet_plugin.asr.register()``, whatever ``ESPNET_COMPRESS_AUTOLOAD`` says."""
    if _imported(name):
        _run(name, register)
        return
    finder = _finder()
    if finder is None:
        finder = AutoloadFinder()
        sys.meta_path.insert(0, finder)
    registrations = finder.pending.setdefault(name, [])
    if register not in registrations:
        registrations.append(register)


def install():
    """Watch the modules of ``WATCHED`` unless switched off by ``ESPNET_COMPRESS_AUTOLOAD``, and
    those of ``OFFLINE_WATCHED`` when ``ESPNET_COMPRESS_OFFLINE`` is on."""
    if os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("",) + _OFF:
        for name, register in OFFLINE_WATCHED.items():
            when_imported(name, register)
    if os.environ.get(ENV_SWITCH, "").strip().lower() in _OFF:
        return
    for name, register in WATCHED.items():
        when_imported(name, register)


try:
    install()
except Exception:  # never break interpreter start-up
    pass
