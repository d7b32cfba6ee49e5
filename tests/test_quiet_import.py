"""Importing our ESPnet tasks defers what they never use until it is used, and using it works."""
import subprocess
import sys

G2P_PROBE = """
import inspect, sys
import espnet_plugin.tasks.distill_prune  # imports ESPnet's task modules, which import g2p_en
assert "g2p_en.g2p" not in sys.modules, "g2p_en was imported at start-up"
inspect.getmodule(inspect)  # probes __file__ of every module in sys.modules
assert "g2p_en.g2p" not in sys.modules, "a __file__ probe imported g2p_en"
import g2p_en
from espnet2.text.phoneme_tokenizer import G2p_en
assert g2p_en.G2p.__module__ == "g2p_en.g2p" and "g2p_en.g2p" in sys.modules
assert sys.modules["g2p_en"].G2p is g2p_en.G2p
from g2p_en import G2p
assert G2p is g2p_en.G2p
loaded = sys.modules["g2p_en"]
assert not hasattr(g2p_en, "no_such_name")  # a missing name through the stand-in: no second import
assert sys.modules["g2p_en"] is loaded
print("ok")
"""

FORWARDER_PROBE = """
import sys
import espnet_plugin.tasks.distill_prune
import espnet2.tasks.abs_task as abs_task
import espnet2.train.trainer as trainer
for name in ("espnet2.layers.create_adapter_fn", "espnet2.gan_tts.jets"):
    assert name not in sys.modules, name + " was imported at start-up"
forwarder = abs_task.create_adapter
assert forwarder.__name__ == "create_adapter" and forwarder.__module__ == "espnet2.layers.create_adapter"
import torch
try:
    forwarder(torch.nn.Linear(1, 1), "no_such_adapter", {})
except AssertionError as exc:  # ESPnet's check of the adapter's name
    assert "no_such_adapter is not supported" in str(exc), exc
else:
    raise AssertionError("create_adapter accepted an unknown adapter")
assert "espnet2.layers.create_adapter_fn" in sys.modules, "the call did not import the module"
import espnet2.layers.create_adapter as real
assert real.create_adapter is not forwarder and real.create_adapter.__module__ == "espnet2.layers.create_adapter"
assert sys.modules["espnet2.layers.create_adapter"] is real
print("ok")
"""

PREPROCESSOR_PROBE = """
import sys
import numpy as np
import espnet_plugin.tasks.distill_prune
import espnet2.train.collate_fn as collate_fn
for name in ("espnet2.text.build_tokenizer", "espnet2.text.cleaner", "transformers"):
    assert name not in sys.modules, name + " was imported at start-up"
speech = np.concatenate([np.zeros(16000), np.random.default_rng(0).standard_normal(16000)])
mask = collate_fn.detect_non_silence(speech)  # the forwarder: imports the preprocessors, then calls
assert mask.shape == speech.shape and not mask[:4000].any() and mask[-4000:].all()
import espnet2.train.preprocessor as real
from espnet2.train.preprocessor import CommonPreprocessor
assert sys.modules["espnet2.train.preprocessor"] is real and CommonPreprocessor is real.CommonPreprocessor
assert CommonPreprocessor.__module__ == "espnet2.train.preprocessor"
from espnet2.tasks.asr import ASRTask  # ESPnet's own task: imports its preprocessors by name
assert ASRTask.build_preprocess_fn  # and loads
print("ok")
"""


def run_probe(probe: str) -> str:
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_g2p_en_loads_on_first_use_only():
    assert run_probe(G2P_PROBE).endswith("ok")


def test_forwarded_function_imports_its_module_on_first_call():
    assert run_probe(FORWARDER_PROBE).endswith("ok")


def test_preprocessors_load_on_first_use_only():
    assert run_probe(PREPROCESSOR_PROBE).endswith("ok")
