"""egs2/librispeech: data preparation on a tiny fake LibriSpeech tree, and the run script's
first stages (the paper configs themselves pass --dry_run in test_distill_prune_task.py)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "librispeech"
SUBSETS = ["train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "test-clean"]


def fake_librispeech(root: Path) -> None:
    rng = np.random.default_rng(0)
    for s, subset in enumerate(SUBSETS):
        for speaker in (100 + s, 200 + s):
            chapter = root / subset / str(speaker) / "7"
            chapter.mkdir(parents=True)
            lines = []
            for n in range(2):
                utt = f"{speaker}-7-{n:04d}"
                soundfile.write(chapter / f"{utt}.flac", (rng.standard_normal(8000 + 1600 * n) * 0.1).astype("float32"), 16000)
                lines.append(f"{utt} HELLO WORLD {n}")
            (chapter / f"{speaker}-7.trans.txt").write_text("\n".join(lines) + "\n")


def run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_run_sh_prepares_data_and_imports_the_teacher(tmp_path):
    from espnet_plugin.compact import save_model
    from espnet_plugin.models import SpeechEncoder
    from tests.conftest import tiny_config

    fake_librispeech(tmp_path / "LibriSpeech")
    save_model(SpeechEncoder(tiny_config()), tmp_path / "teacher_src")
    exp = tmp_path / "exp"
    run(["bash", str(RECIPE / "run.sh"), "--stage", "1", "--stop_stage", "2", "--exp", str(exp),
         "--librispeech_root", str(tmp_path / "LibriSpeech"), "--teacher", str(tmp_path / "teacher_src")], RECIPE)
    train = exp / "data" / "train_960"
    utts = [line.split()[0] for line in (train / "wav.scp").read_text().splitlines()]
    assert len(utts) == 12 and utts == sorted(utts)
    assert (train / "text").read_text().splitlines()[0] == "100-7-0000 HELLO WORLD 0"
    shapes = dict(line.split() for line in (train / "speech_shape").read_text().splitlines())
    assert shapes["100-7-0001"] == "9600"
    assert (train / "spk2utt").read_text().splitlines()[0] == "100 100-7-0000 100-7-0001"
    assert (exp / "data" / "dev_clean" / "wav.scp").is_file() and (exp / "data" / "test_clean" / "wav.scp").is_file()
    bucket = (exp / "len_for_bucket" / "test-clean.csv").read_text().splitlines()
    assert bucket[0] == "file_path,length" and bucket[1].startswith("test-clean/") and bucket[1].endswith(",9600")
    assert (exp / "teacher" / "config.yaml").is_file()


def test_missing_audio_is_named(tmp_path):
    fake_librispeech(tmp_path / "LibriSpeech")
    missing = tmp_path / "LibriSpeech" / "dev-clean" / "103" / "7" / "103-7-0001.flac"
    missing.unlink()
    result = subprocess.run([sys.executable, str(RECIPE / "local" / "data_prep.py"), "--librispeech_root",
                             str(tmp_path / "LibriSpeech"), "--subsets", "dev-clean", "--out", str(tmp_path / "data")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "103-7-0001.flac is listed but missing" in result.stderr


def test_stage_without_its_input_says_what_is_missing(tmp_path):
    result = subprocess.run(["bash", str(RECIPE / "run.sh"), "--stage", "1", "--stop_stage", "1", "--exp", str(tmp_path)],
                            cwd=RECIPE, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 2 and "--librispeech_root is required for stage 1" in result.stderr


@pytest.mark.parametrize("subset", ["dev-other"])
def test_unknown_subset_is_named(tmp_path, subset):
    fake_librispeech(tmp_path / "LibriSpeech")
    result = subprocess.run([sys.executable, str(RECIPE / "local" / "data_prep.py"), "--librispeech_root",
                             str(tmp_path / "LibriSpeech"), "--subsets", subset], capture_output=True, text=True)
    assert result.returncode != 0 and f"{subset}: no such LibriSpeech subset" in result.stderr
