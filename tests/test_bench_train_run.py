"""bench_train_run times each checkout's own code: a baseline run imports the baseline's
espnet_plugin even though the script starts it from this checkout's root (``python -m`` puts
the working directory first on ``sys.path``)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_train_run import REPO, checkout_env, trains_bf16_on_cpu, warm_up  # noqa: E402


def fake_checkout(root: Path) -> Path:
    tasks = root / "espnet_plugin" / "tasks"
    tasks.mkdir(parents=True)
    (root / "espnet_plugin" / "__init__.py").write_text("")
    (tasks / "__init__.py").write_text("")
    (tasks / "distill_prune.py").write_text("")
    return root


def test_a_baseline_run_imports_the_baseline_code(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # where the script is started from
    checkout = fake_checkout(tmp_path / "baseline")
    env, cwd = checkout_env(checkout)
    assert cwd == checkout.resolve() and env["PYTHONPATH"] == str(checkout.resolve())
    warm_up(checkout)  # raises if the run would import another espnet_plugin


def test_a_checkout_without_the_package_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="imports"):
        warm_up(tmp_path / "empty")  # would fall back to the installed espnet_plugin


def test_bf16_baselines_only_from_code_that_trains_bf16_on_a_cpu(tmp_path):
    """``--use_amp --baseline`` needs a baseline whose trainer turns --use_amp into CPU autocast."""
    assert trains_bf16_on_cpu(REPO)
    old = fake_checkout(tmp_path / "old")
    assert not trains_bf16_on_cpu(old)
    (old / "espnet_plugin" / "tasks" / "trainer.py").write_text("def cpu_autocast(enabled=True):\n    pass\n")
    assert trains_bf16_on_cpu(old)
