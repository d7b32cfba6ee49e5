"""Shared test helpers. Tiny model configs come from ``espnet_plugin.models.tiny_config``:
the standard CNN layout (stride 320, 400-sample receptive field) with small widths, so every
test runs in seconds on a CPU."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from espnet_plugin.models import tiny_config  # noqa: F401  (re-exported for the test modules)
from espnet_plugin.models.config import tiny_conv_layers

TINY_CONV = tiny_conv_layers()
REPO = Path(__file__).resolve().parents[1]


def load_recipe_local(recipe: str, name: str) -> ModuleType:
    """``egs2/<recipe>/local/<name>.py`` as a module (recipes' scripts are not a package);
    registered in sys.modules, where dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(f"{recipe}_{name}", REPO / "egs2" / recipe / "local" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Random values for every weight (norms included) so equivalence tests are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("log_alpha"):
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if name.endswith("norm.weight") else 0.0))
    return model


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module's tests (tiny models gain nothing from more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def wavs():
    gen = torch.Generator().manual_seed(123)
    return torch.randn(2, 4000, generator=gen) * 0.5
