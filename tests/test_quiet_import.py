"""Importing our ESPnet tasks defers g2p_en until it is used, and using it still works."""
import subprocess
import sys

PROBE = """
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


def test_g2p_en_loads_on_first_use_only():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
