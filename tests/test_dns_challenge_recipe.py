"""egs2/dns_challenge: its data preparation on a tiny fake DNS Challenge tree (pairing by file id,
SNRs from the names, shapes, the valid split, the SNR-grid re-mix, errors that name the file)
and run.sh's options, stage 1 and what it hands to mini_synth_enh's run.sh (with a stand-in
python, so nothing is trained). The recipe itself needs the DNS data and a GPU; it is not run here.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_plugin.utils.kaldi_data import read_scp
from tests.conftest import load_recipe_local

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "dns_challenge"
RATE = 16000


def load_local(name: str):
    return load_recipe_local("dns_challenge", name)


prepare_dns = load_local("prepare_dns")


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples.astype(np.float32), rate, subtype="PCM_16")
    return path


def fake_dns(directory: Path, snrs, first_id: int = 0, amplitude: float = 0.3) -> None:
    """``noisy/`` + ``clean/`` as noisyspeech_synthesizer writes them: 0.5 s (+ 10 ms per file) sines."""
    rng = np.random.default_rng(first_id)
    for k, snr in enumerate(snrs):
        fileid = first_id + k
        t = np.arange(RATE // 2 + 160 * k) / RATE
        clean = amplitude * np.sin(2 * np.pi * (200 + 20 * k) * t)
        write_wav(directory / "clean" / f"clean_fileid_{fileid}.wav", clean)
        write_wav(directory / "noisy" / f"book_{fileid:05d}_chp_0001_reader_0002_0_door{k}_snr{snr}_tl-25_fileid_{fileid}.wav",
                  clean + 0.05 * rng.standard_normal(len(t)))


@pytest.fixture
def dns(tmp_path) -> Path:
    fake_dns(tmp_path / "training", [3, -2, 17, 0, 8, 12, 5, -5, 1, 9])
    fake_dns(tmp_path / "test", [-5, 0, 12], first_id=100)
    write_wav(tmp_path / "real" / "ms_realrec_headset_cafe.wav", 0.1 * np.random.default_rng(7).standard_normal(RATE // 4))
    noise = np.random.default_rng(8)
    write_wav(tmp_path / "noise" / "babble.wav", 0.2 * noise.standard_normal(RATE))
    write_wav(tmp_path / "noise" / "short_click.wav", 0.5 * noise.standard_normal(RATE // 10))  # looped
    return tmp_path


def fileid(path: str) -> int:
    return int(re.search(r"fileid_(\d+)\.wav$", path).group(1))


def table(path: Path) -> dict:
    return dict(read_scp(path))


def prepare(dns: Path, out: Path, **options) -> Path:
    prepare_dns.prepare(out, dns / "training", **{"test_dir": dns / "test", "noisy_only_dir": dns / "real",
                                                  "valid_fraction": 0.2, **options})
    return out


# ----------------------------------------------------------------------------- layout
def test_layout_pairs_shapes_and_snrs(dns):
    data = prepare(dns, dns / "data")
    expected = {"train": ["speech_mix_shape", "spk1.scp", "wav.scp"], "valid": ["speech_mix_shape", "spk1.scp", "wav.scp"],
                "train_noisy_only": ["speech_mix_shape", "wav.scp"], "valid_noisy_only": ["speech_mix_shape", "wav.scp"],
                "test": ["spk1.scp", "utt2snr", "wav.scp"]}
    assert sorted(p.name for p in data.iterdir()) == sorted(expected)
    for split, files in expected.items():
        assert sorted(p.name for p in (data / split).iterdir()) == files, split
        lines = (data / split / "wav.scp").read_text().splitlines()
        assert [line.split()[0] for line in lines] == sorted(line.split()[0] for line in lines)
    for split in ("train", "valid", "test"):
        noisy, clean = table(data / split / "wav.scp"), table(data / split / "spk1.scp")
        assert noisy.keys() == clean.keys() and noisy
        for utt in noisy:
            assert Path(noisy[utt]).is_absolute() and "/noisy/" in noisy[utt] and "/clean/" in clean[utt]
            assert utt == f"dns_fileid_{fileid(noisy[utt])}" and fileid(noisy[utt]) == fileid(clean[utt])
    for split in ("train", "valid", "train_noisy_only", "valid_noisy_only"):
        wavs = table(data / split / "wav.scp")
        assert {u: int(n) for u, n in read_scp(data / split / "speech_mix_shape")} == \
            {u: soundfile.info(p).frames for u, p in wavs.items()}
    assert table(data / "test" / "utt2snr") == {"dns_fileid_100": "-5", "dns_fileid_101": "0", "dns_fileid_102": "12"}
    train_only = table(data / "train_noisy_only" / "wav.scp")
    assert train_only == {**table(data / "train" / "wav.scp"),
                          "dns_noisy_only_ms_realrec_headset_cafe": str(dns / "real" / "ms_realrec_headset_cafe.wav")}
    assert table(data / "valid_noisy_only" / "wav.scp") == table(data / "valid" / "wav.scp")


def test_valid_split_is_deterministic_and_disjoint_from_train(dns):
    first, again = prepare(dns, dns / "first"), prepare(dns, dns / "again")
    train, valid = (set(table(first / s / "wav.scp")) for s in ("train", "valid"))
    assert len(valid) == 2 and len(train) == 8 and not train & valid
    for split in ("train", "valid"):
        assert table(again / split / "wav.scp") == table(first / split / "wav.scp")
    ids = list(range(200))
    assert prepare_dns.split_valid(ids, 0.1, 0) == prepare_dns.split_valid(ids[::-1], 0.1, 0)
    assert prepare_dns.split_valid(ids, 0.1, 0) != prepare_dns.split_valid(ids, 0.1, 1)


def test_snr_grid_remix_hits_each_snr_and_is_deterministic(dns):
    fake_dns(dns / "loud", [0], first_id=300, amplitude=0.95)  # would clip at -5 dB
    options = dict(test_dir=None, test_clean_dir=dns / "test" / "clean", test_noise_dir=dns / "noise")
    data = prepare(dns, dns / "remix" / "data", **options)
    snrs = {u: float(v) for u, v in read_scp(data / "test" / "utt2snr")}
    assert len(snrs) == 3 * 5 and sorted(set(snrs.values())) == [-5.0, 0.0, 5.0, 10.0, 15.0]
    assert "dns_fileid_101_snr-5" in snrs and "dns_fileid_101_snr+15" in snrs
    noisy, clean = table(data / "test" / "wav.scp"), table(data / "test" / "spk1.scp")
    assert all(Path(p).parent == dns / "remix" / "wav" / "test" / "noisy" for p in noisy.values())
    for utt, snr in snrs.items():
        x, _ = soundfile.read(noisy[utt])
        s, _ = soundfile.read(clean[utt])
        assert abs(10 * np.log10(np.mean(s**2) / np.mean((x - s) ** 2)) - snr) < 0.1, utt
    loud = prepare(dns, dns / "loud_remix" / "data", **{**options, "test_clean_dir": dns / "loud" / "clean"})
    for utt, snr in read_scp(loud / "test" / "utt2snr"):
        x, _ = soundfile.read(table(loud / "test" / "wav.scp")[utt])
        s, _ = soundfile.read(table(loud / "test" / "spk1.scp")[utt])
        assert np.abs(x).max() <= prepare_dns.PEAK + 1e-4
        assert abs(10 * np.log10(np.mean(s**2) / np.mean((x - s) ** 2)) - float(snr)) < 0.1, utt
    again = prepare(dns, dns / "again" / "data", **options)
    for utt, path in table(again / "test" / "wav.scp").items():
        assert Path(path).read_bytes() == Path(noisy[utt]).read_bytes()


# ----------------------------------------------------------------------------- bad input
def drop_clean(dns: Path) -> str:
    (dns / "training" / "clean" / "clean_fileid_3.wav").unlink()
    return next((dns / "training" / "noisy").glob("*_fileid_3.wav")).name


def drop_noisy(dns: Path) -> str:
    next((dns / "training" / "noisy").glob("*_fileid_4.wav")).unlink()
    return "clean_fileid_4.wav"


def wrong_rate(dns: Path) -> str:
    write_wav(dns / "training" / "clean" / "clean_fileid_2.wav", np.zeros(4000), rate=8000)
    return "clean_fileid_2.wav: sample rate 8000 Hz"


def stereo(dns: Path) -> str:
    path = next((dns / "training" / "noisy").glob("*_fileid_5.wav"))
    write_wav(path, np.zeros((RATE // 2 + 800, 2)))
    return f"{path.name}: 2 channels"


def empty_dir(dns: Path) -> str:
    for path in (dns / "training" / "noisy").iterdir():
        path.unlink()
    return "noisy: no .wav files"


def no_fileid(dns: Path) -> str:
    write_wav(dns / "training" / "noisy" / "book_00001_snr5.wav", np.zeros(RATE // 2))
    return "book_00001_snr5.wav: cannot parse the file id"


def no_snr(dns: Path) -> str:
    path = next((dns / "test" / "noisy").glob("*_fileid_101.wav"))
    path.rename(path.with_name("noisy_fileid_101.wav"))
    return "noisy_fileid_101.wav: cannot parse the input SNR"


def other_length(dns: Path) -> str:
    write_wav(dns / "training" / "clean" / "clean_fileid_1.wav", np.zeros(100))
    return "its clean partner " + str(dns / "training" / "clean" / "clean_fileid_1.wav") + " has 100"


@pytest.mark.parametrize("damage", [drop_clean, drop_noisy, wrong_rate, stereo, empty_dir, no_fileid, no_snr, other_length],
                         ids=lambda f: f.__name__)
def test_bad_input_is_named(dns, damage):
    message = damage(dns)
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare(dns, dns / "data")


def test_unpaired_files_are_counted_and_the_first_named(dns):
    for k in (6, 8):
        (dns / "training" / "clean" / f"clean_fileid_{k}.wav").unlink()
    first = next((dns / "training" / "noisy").glob("*_fileid_6.wav"))
    with pytest.raises(ValueError, match=re.escape(f"2 noisy file(s) have no partner with the same fileid_N in "
                                                   f"{dns / 'training' / 'clean'}; the first: {first}")):
        prepare(dns, dns / "data")


def test_cli_exits_with_the_message_and_no_traceback(dns, capsys):
    drop_clean(dns)
    with pytest.raises(SystemExit, match=r"^prepare_dns.py: 1 noisy file\(s\) have no partner"):
        prepare_dns.main(["--train_dir", str(dns / "training"), "--test_dir", str(dns / "test"), "--out", str(dns / "d")])
    with pytest.raises(ValueError, match="either as --test_dir or as --test_clean_dir with --test_noise_dir"):
        prepare(dns, dns / "data", test_dir=None, test_clean_dir=dns / "test" / "clean")


# ----------------------------------------------------------------------------- run.sh
def run_sh(*args: str, cwd: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=python, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(RECIPE / "run.sh"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_run_sh_parses_and_rejects_unknown_options(tmp_path):
    assert subprocess.run(["bash", "-n", str(RECIPE / "run.sh")]).returncode == 0
    wrong = run_sh("--exp", str(tmp_path / "exp"), "--stages", "3", cwd=tmp_path)
    assert wrong.returncode == 2 and "unknown option: --stages" in wrong.stderr


def test_run_sh_stage_1_then_hands_stages_2_to_5_to_mini_synth_enh(dns):
    exp = dns / "exp"
    first = run_sh("--exp", str(exp), "--stop_stage", "1", "--train_dir", "training", "--test_dir", "test",
                   "--valid_fraction", "0.2", cwd=dns)  # data paths relative to where run.sh is called
    assert first.returncode == 0, first.stderr[-3000:]
    assert (exp / "stamps" / "1.done").is_file() and len(table(exp / "corpus" / "data" / "valid" / "wav.scp")) == 2
    # a stand-in python records what mini_synth_enh's stages would run
    fake = dns / "fake_python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {dns / "calls.txt"}\n')
    fake.chmod(0o755)
    rest = run_sh("--exp", str(exp), "--ngpu", "2", "--seeds", "0", "--sizes", "60k", "--kd_epochs", "3",
                  "--student_args", "--batch_size 4", cwd=dns, python=str(fake))
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "stage 1 (DNS Challenge data directories (local/prepare_dns.py)): done before, skipped" in rest.stdout
    teacher, students, scoring, report = (dns / "calls.txt").read_text().splitlines()
    data = exp / "corpus" / "data"
    assert teacher.startswith("-m espnet2.bin.enh_train --config conf/teacher.yaml")
    assert f"{data}/train/wav.scp,speech_mix,sound" in teacher
    assert teacher.endswith("--max_epoch 100 --num_iters_per_epoch 2000 --batch_size 16 --ngpu 2")
    assert f"--data {data} --teacher {exp}/teacher" in students and "--seeds 0 " in students
    assert "--sizes 60k " in students and "--kd_epochs 3 --sup_epochs 25 --nj 4" in students
    assert students.endswith("--extra --batch_size 4 --ngpu 2")
    assert f"--test {data}/test" in scoring and f"--test {data}/test" in report
    assert sorted(p.name for p in (exp / "stamps").iterdir()) == ["1.done", "2.done"]
