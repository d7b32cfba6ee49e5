"""Active learning for ESPnet ASR (espnet_plugin.asr.active_learning, bin/asr_select): exact
output-layer gradient norms, hypothesis weights, budgets, determinism, bad input.

Tiny ESPnet ASR models (fbank -> 1-block transformer, CTC-only and hybrid) are built in-process
with ASRTask and random weights; the pool is short noise clips, so beam search stays quick."""
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from tests.conftest import load_recipe_local

TOKENS = ["<blank>", "<unk>", "<space>", *"abcdefgh", "<sos/eos>"]
SECONDS = [0.30, 0.45, 0.25, 0.60, 0.35, 0.50, 0.40, 0.28]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the beam search: small ops, fastest on one thread (and the machine is shared)
    yield
    torch.set_num_threads(threads)


def build_experiment(root: Path, name: str, ctc_weight: float, decoder: bool, seed: int = 0):
    """An ESPnet ASR experiment directory (config.yaml + model.pth) with random weights."""
    from espnet2.tasks.asr import ASRTask
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    (root / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
    argv = [
        "--token_list", str(root / "tokens.txt"), "--token_type", "char",
        "--frontend", "default", "--frontend_conf", '{"n_fft": 128, "hop_length": 64, "n_mels": 8}',
        "--normalize", "none", "--specaug", "none",
        "--encoder", "transformer",
        "--encoder_conf", '{"output_size": 16, "attention_heads": 2, "linear_units": 16, "num_blocks": 1, "input_layer": "conv2d"}',
        "--model_conf", json.dumps({"ctc_weight": ctc_weight}),
    ]
    if decoder:
        argv += ["--decoder", "transformer", "--decoder_conf", '{"attention_heads": 2, "linear_units": 16, "num_blocks": 1}']
    args = ASRTask.get_parser().parse_args(argv)
    torch.manual_seed(seed)
    model = ASRTask.build_model(args)
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml_no_alias_safe_dump(vars(args), indent=4, sort_keys=False))
    torch.save(model.state_dict(), out / "model.pth")
    return out


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    root = tmp_path_factory.mktemp("al_models")
    return {
        "ctc": build_experiment(root, "ctc", 1.0, decoder=False),
        "hybrid": build_experiment(root, "hybrid", 0.3, decoder=True),
        "no_ctc": build_experiment(root, "no_ctc", 0.0, decoder=True),
    }


def write_pool(root: Path, bad: bool = True) -> Path:
    rng = np.random.default_rng(0)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    wav, spk, text = {}, {}, {}
    for i, sec in enumerate(SECONDS):
        path = root / "wav" / f"u{i}.wav"
        soundfile.write(path, (rng.standard_normal(int(sec * 16000)) * 0.1).astype(np.float32), 16000)
        wav[f"u{i}"], spk[f"u{i}"], text[f"u{i}"] = str(path), f"s{i % 3}", "abc"
    if bad:
        wav["x_missing"] = str(root / "wav" / "gone.wav")
        (root / "wav" / "corrupt.wav").write_bytes(b"RIFF not really a wave file")
        wav["x_corrupt"] = str(root / "wav" / "corrupt.wav")
        spk["x_missing"] = spk["x_corrupt"] = "s0"
    from espnet_plugin.utils.kaldi_data import write_scp

    write_scp(root / "wav.scp", wav)
    write_scp(root / "utt2spk", spk)
    write_scp(root / "text", text)
    return root


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return write_pool(tmp_path_factory.mktemp("al_pool"))


def load(experiment: Path):
    from espnet_plugin.asr.active_learning import load_asr_experiment

    model, args = load_asr_experiment(experiment / "config.yaml", experiment / "model.pth")
    return model.double(), args


def random_pairs(model, num_utts=3, hyps_per_utt=3, seed=0):
    """Encoder outputs of different lengths and random hypotheses (one empty) per utterance."""
    from espnet_plugin.asr.active_learning import Hypothesis

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([11, 7, 9][:num_utts])
    enc = torch.randn(num_utts, int(lengths.max()), 16, generator=gen, dtype=torch.float64)
    vocab = len(TOKENS) - 1
    hyps = [
        [Hypothesis([] if k == 0 else torch.randint(1, vocab, (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen).tolist(), -float(k), "")
         for k in range(hyps_per_utt)]
        for _ in range(num_utts)
    ]
    return enc, lengths, hyps


def rel_err(a, b):
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-30)


# ------------------------------------------------------------------ exact gradient norms
def test_ctc_output_layer_closed_form_equals_autograd(experiments):
    from espnet_plugin.asr.active_learning.gradients import ctc_logit_grads, output_layer_sq_norms
    from espnet_plugin.asr.active_learning.scoring import _pad, hypothesis_sq_grad_norms

    model, _ = load(experiments["ctc"])
    enc, lengths, hyps = random_pairs(model)
    closed = hypothesis_sq_grad_norms(model, enc, lengths, hyps, "ctc")
    layer = model.ctc.ctc_lo
    for i, hs in enumerate(hyps):
        n = int(lengths[i])
        for k, h in enumerate(hs):
            ys, ys_lens = _pad([h.token_ids], 0)
            # ESPnet's CTC module, batch of one: loss = sum / batch size = -log P_CTC(y | x)
            loss = model.ctc(enc[i : i + 1, :n], lengths[i : i + 1], ys, ys_lens)
            gw, gb = torch.autograd.grad(loss, [layer.weight, layer.bias])
            auto = gw.square().sum() + gb.square().sum()
            assert rel_err(closed[i][k], auto) < 1e-5, (i, k, float(closed[i][k]), float(auto))
    # both routes of the closed form (G^T H and the Gram form) give the same numbers
    g, _ = ctc_logit_grads(layer(enc), lengths, *_pad([h.token_ids for h in hyps[0]][:1] * 3, 0))
    direct = output_layer_sq_norms(g, enc, lengths, route="direct")
    gram = output_layer_sq_norms(g, enc, lengths, route="gram")
    torch.testing.assert_close(direct, gram, rtol=1e-10, atol=0)


def test_attention_output_layer_closed_form_equals_autograd(experiments):
    from espnet_plugin.asr.active_learning.gradients import flat_grad_sq_norm, output_layer_sq_norms
    from espnet_plugin.asr.active_learning.scoring import (
        _pad,
        attention_output_grads,
        hypothesis_loss,
        hypothesis_sq_grad_norms,
    )

    model, _ = load(experiments["hybrid"])
    enc, lengths, hyps = random_pairs(model, seed=1)
    ids = [h.token_ids for hs in hyps for h in hs]
    rows = torch.tensor([i for i, hs in enumerate(hyps) for _ in hs])
    with torch.no_grad():
        g, h, lens = attention_output_grads(model, enc[rows], lengths[rows], ids)
        closed_att = output_layer_sq_norms(g, h, lens)
    out = model.decoder.output_layer
    for row, (i, y) in enumerate(zip(rows.tolist(), ids)):
        n = int(lengths[i])
        ys_in, ys_in_lens = _pad([[model.sos, *y]], model.eos)
        logits, _ = model.decoder(enc[i : i + 1, :n], lengths[i : i + 1], ys_in, ys_in_lens)
        target = torch.tensor([*y, model.eos])
        loss = torch.nn.functional.cross_entropy(logits[0], target, reduction="sum")  # -sum_u log P(y_u | y_<u, x)
        gw, gb = torch.autograd.grad(loss, [out.weight, out.bias])
        assert rel_err(closed_att[row], gw.square().sum() + gb.square().sum()) < 1e-5, row
    # the hybrid objective over both output layers: w^2 ||CTC part||^2 + (1 - w)^2 ||attention part||^2
    closed = hypothesis_sq_grad_norms(model, enc, lengths, hyps, "hybrid")
    params = [model.ctc.ctc_lo.weight, model.ctc.ctc_lo.bias, out.weight, out.bias]
    for i, hs in enumerate(hyps):
        n = int(lengths[i])
        for k, hyp in enumerate(hs):
            auto = flat_grad_sq_norm(hypothesis_loss(model, enc[i : i + 1, :n], lengths[i : i + 1], hyp.token_ids, "hybrid"), params)
            assert rel_err(closed[i][k], auto) < 1e-5, (i, k)


def test_egl_all_parameters_option(experiments, tmp_path):
    """egl_params 'all' with only the CTC output layer trainable equals the closed form."""
    from espnet_plugin.asr.active_learning import ScoringConfig, build_scorer

    model, args = load(experiments["ctc"])
    model.float()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("ctc.ctc_lo"))
    speech = torch.randn(2, 6000, generator=torch.Generator().manual_seed(3)) * 0.1
    lengths = torch.tensor([6000, 4500])
    scores = {}
    for params in ("output", "all"):
        scorer = build_scorer(ScoringConfig("egl", nbest=3, egl_params=params), model, args)
        scores[params] = [s.score for s in scorer.score_batch(["a", "b"], speech, lengths)]
    np.testing.assert_allclose(scores["all"], scores["output"], rtol=1e-4)


# ------------------------------------------------------------------ hypotheses and their weights
def test_hypothesis_weights_are_a_distribution(experiments):
    from espnet_plugin.asr.active_learning import NBestDecoder, renormalised_log_weights

    for scores in ([-3.0, -3.5, -10.0], [-1e4, -1e4 - 2, -2e4], [0.0]):
        w = renormalised_log_weights(scores).exp()
        assert torch.all(w >= 0) and torch.isfinite(w).all() and abs(float(w.sum()) - 1) < 1e-12
        assert torch.all(w[:-1] >= w[1:])  # ordered as the scores
    with pytest.raises(ValueError, match="no hypotheses"):
        renormalised_log_weights([])
    for name in ("ctc", "hybrid"):
        model, args = load(experiments[name])
        model.float()
        decoder = NBestDecoder(model, args, nbest=4)
        with torch.no_grad():
            enc, lens = model.encode(torch.randn(1, 5000) * 0.1, torch.tensor([5000]))
        hyps = decoder(enc[0, : int(lens[0])])
        assert 1 <= len(hyps) <= 4
        assert all(a.score >= b.score for a, b in zip(hyps, hyps[1:]))
        assert all(0 not in h.token_ids and model.eos not in h.token_ids for h in hyps)
        w = renormalised_log_weights([h.score for h in hyps]).exp()
        assert abs(float(w.sum()) - 1) < 1e-9 and torch.all(w > 0)


# ------------------------------------------------------------------ selection under budgets
def test_budget_is_respected_exactly():
    from espnet_plugin.asr.active_learning import select_kmeanspp, select_top

    rng = np.random.default_rng(0)
    utts = [f"u{i:03d}" for i in range(60)]
    secs = rng.uniform(0.5, 9.0, 60).round(2).tolist()
    scores = rng.standard_normal(60).tolist()
    emb = rng.standard_normal((60, 5))
    for budget in (0.0, 3.0, 17.5, 60.0, 123.4):
        for sel in (select_top(utts, scores, secs, budget_seconds=budget),
                    select_kmeanspp(utts, emb, secs, budget_seconds=budget, seed=1)):
            assert sel.seconds <= budget + 1e-9 and len(set(sel.utts)) == len(sel.utts)
            left = budget - sel.seconds
            assert all(s > left + 1e-9 for u, s in zip(utts, secs) if u not in sel.utts)  # nothing else fits
    for n in (0, 1, 7, 59):
        assert len(select_top(utts, scores, secs, budget_utts=n).utts) == n
        assert len(select_kmeanspp(utts, emb, secs, budget_utts=n, seed=2).utts) == n
    top = select_top(utts, scores, secs, budget_utts=5).utts
    assert top == [utts[i] for i in np.argsort(scores)[::-1][:5]]
    # a budget covering the pool: all of it, and a note saying so
    for sel in (select_top(utts, scores, secs, budget_utts=60), select_top(utts, scores, secs, budget_seconds=1e6),
                select_kmeanspp(utts, emb, secs, budget_utts=100)):
        assert sel.whole_pool and sorted(sel.utts) == utts and "whole pool" in sel.notes[0]
    with pytest.raises(ValueError, match="exactly one budget"):
        select_top(utts, scores, secs, budget_utts=3, budget_seconds=3.0)


def test_selection_is_deterministic_for_a_seed():
    from espnet_plugin.asr.active_learning import select_kmeanspp
    from espnet_plugin.asr.active_learning.scoring import random_score

    rng = np.random.default_rng(1)
    utts = [f"u{i}" for i in range(40)]
    emb, secs = rng.standard_normal((40, 8)), rng.uniform(1, 3, 40).tolist()
    runs = [select_kmeanspp(utts, emb, secs, budget_seconds=20, seed=s, normalize=True).utts for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert random_score(3, "u1") == random_score(3, "u1") != random_score(4, "u1")


def test_per_second_normalisation_default():
    from espnet_plugin.asr.active_learning import per_second
    from espnet_plugin.asr.active_learning.selection import ranking_scores

    assert per_second("egl", "auto", 600.0) and not per_second("egl", "auto", None)
    assert per_second("badge", "seconds", None) and not per_second("egl", "none", 600.0)
    assert not any(per_second(m, "seconds", 600.0) for m in ("random", "confidence", "entropy"))
    np.testing.assert_allclose(ranking_scores("egl", [math.log(8.0)], [4.0], True), [math.log(2.0)])


# ------------------------------------------------------------------ the command line, end to end
def read_tsv(path):
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    return {row.split("\t")[0]: dict(zip(header, row.split("\t"))) for row in lines[1:]}


def test_cli_egl_outputs_bad_audio_and_resume(experiments, pool, tmp_path, caplog):
    from espnet_plugin.bin.asr_select import main

    exp = experiments["ctc"]
    out = tmp_path / "sel"
    argv = ["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(exp / "model.pth"),
            "--data_dir", str(pool), "--method", "egl", "--nbest", "3", "--budget_seconds", "1.2",
            "--output_dir", str(out), "--batch_size", "3"]
    with caplog.at_level(logging.WARNING):
        summary = main(argv)
    warned = caplog.text
    assert "x_missing" in warned and "gone.wav: no such audio file" in warned
    assert "x_corrupt" in warned and "corrupt" in warned
    assert summary["scored_utts"] == len(SECONDS) and set(summary["skipped"]) == {"x_missing", "x_corrupt"}
    assert summary["per_second"] is True and summary["selected_seconds"] <= 1.2
    rows = read_tsv(out / "scores.tsv")
    assert set(rows) == {f"u{i}" for i in range(len(SECONDS))} | {"x_missing", "x_corrupt"}
    assert rows["x_missing"]["score"] == "nan" and rows["x_missing"]["hypothesis"].startswith("skipped:")
    chosen = sorted(u for u, r in rows.items() if r["selected"] == "1")
    assert chosen == sorted(summary["selected"])
    from espnet_plugin.utils.kaldi_data import read_scp

    assert sorted(u for u, _ in read_scp(out / "data" / "wav.scp")) == chosen
    assert sorted(u for u, _ in read_scp(out / "data" / "text")) == chosen
    assert (out / "data" / "spk2utt").is_file()
    # per second: the ranked value is log EGL - log seconds
    for u in chosen:
        r = rows[u]
        assert abs(float(r["rank_score"]) - (float(r["score"]) - math.log(float(r["seconds"])))) < 1e-3
    # a re-run resumes from the cache: nothing scored again, the same selection
    again = main(argv)
    assert again["scoring"]["utterances"] == 0 and again["selected"] == summary["selected"]
    # changed settings: the cache is set aside, everything is scored again
    changed = main(argv[:-2] + ["--batch_size", "3", "--nbest", "2"])
    assert changed["scoring"]["utterances"] == len(SECONDS)
    # bad audio stops the run when asked, naming the utterance
    from espnet_plugin.utils.audio import AudioError

    with pytest.raises(AudioError, match="x_corrupt|x_missing"):
        main(argv + ["--on_bad_audio", "fail", "--no_cache"])


@pytest.mark.parametrize("method", ["random", "confidence", "entropy", "badge"])
def test_cli_other_methods_and_whole_pool(experiments, pool, tmp_path, method, caplog):
    from espnet_plugin.bin.asr_select import main

    exp = experiments["hybrid"]
    common = ["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(exp / "model.pth"),
              "--data_dir", str(pool), "--method", method, "--seed", "5", "--beam_size", "2"]
    first = main(common + ["--budget_utts", "3", "--output_dir", str(tmp_path / "a")])
    second = main(common + ["--budget_utts", "3", "--output_dir", str(tmp_path / "b"), "--no_cache"])
    assert first["selected_utts"] == 3 and first["selected"] == second["selected"]  # deterministic
    with caplog.at_level(logging.WARNING):
        whole = main(common + ["--budget_seconds", "1000", "--output_dir", str(tmp_path / "c")])
    assert whole["whole_pool"] and whole["selected_utts"] == len(SECONDS)
    assert "covers the whole pool" in caplog.text and "selecting all of it" in whole["notes"][0]


def test_model_without_ctc_is_a_clear_error(experiments, pool, tmp_path):
    from espnet_plugin.asr.active_learning import NoCTCError
    from espnet_plugin.bin.asr_select import main

    exp = experiments["no_ctc"]
    with pytest.raises(NoCTCError, match="has no CTC branch.*ctc_weight"):
        main(["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(exp / "model.pth"),
              "--data_dir", str(pool), "--method", "entropy", "--budget_utts", "2", "--output_dir", str(tmp_path / "x")])


# ------------------------------------------------------------------ the recipe egs2/mini_synth_al, tiny
REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "mini_synth_al"


def load_recipe_module(name):
    return load_recipe_local("mini_synth_al", name)


def test_oracle_and_move_selected(tmp_path):
    from espnet_plugin.utils.kaldi_data import write_scp

    al_loop = load_recipe_module("al_loop")
    write_scp(tmp_path / "oracle", {"p1": "one", "p2": "two", "p3": "three"})
    oracle = al_loop.Oracle(tmp_path / "oracle", tmp_path / "revealed.tsv")
    assert oracle.reveal(["p2"], 1) == {"p2": "two"}
    assert (tmp_path / "revealed.tsv").read_text() == "1\tp2\n"
    prev = tmp_path / "round0"
    al_loop.write_dir(prev / "labelled", {"wav.scp": {"s1": "a"}, "text": {"s1": "x"}, "utt2spk": {"s1": "k"}, "speech_shape": {"s1": "16000"}})
    al_loop.write_dir(prev / "pool", {"wav.scp": {p: p for p in ("p1", "p2", "p3")}, "utt2spk": {p: "k" for p in ("p1", "p2", "p3")},
                                      "speech_shape": {p: "8000" for p in ("p1", "p2", "p3")}})
    al_loop.move_selected(prev, ["p2"], {"p2": "two"}, tmp_path / "round1")
    assert sorted(al_loop.read_dir(tmp_path / "round1" / "labelled", ["wav.scp"])["wav.scp"]) == ["p2", "s1"]
    assert sorted(al_loop.read_dir(tmp_path / "round1" / "pool", ["wav.scp"])["wav.scp"]) == ["p1", "p3"]
    assert not (tmp_path / "round1" / "pool" / "text").exists()
    for bad in (["p2", "p2"], ["s1"], ["nope"]):
        with pytest.raises(RuntimeError):
            al_loop.move_selected(prev if bad != ["s1"] else tmp_path / "round1", bad, {}, tmp_path / "bad")


def test_recipe_rounds_tiny(tmp_path):
    """Stage 1 (corpus + splits), stage 3 (2 rounds of random and egl, one seed), stage 4 (report), tiny."""
    import subprocess
    import sys

    from espnet_plugin.compact import save_model
    from espnet_plugin.models import SpeechEncoder
    from espnet_plugin.utils.kaldi_data import read_scp
    from tests.conftest import randomize_, tiny_config

    torch.manual_seed(0)
    compact = save_model(randomize_(SpeechEncoder(tiny_config(num_layers=2)), std=0.1), tmp_path / "compact")
    exp, data = tmp_path / "exp", tmp_path / "exp" / "data"
    result = subprocess.run(
        [sys.executable, str(RECIPE / "local" / "prepare_data.py"), "--corpus", str(exp / "corpus"), "--out", str(data),
         "--num_speakers", "8", "--utts_per_speaker", "5", "--seed_utts", "4", "--pool_utts", "10",
         "--dev_utts", "2", "--test_utts", "3"],
        capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (data / "pool" / "text").exists()
    pool_utts = {u for u, _ in read_scp(data / "pool" / "wav.scp")}
    seed_utts = {u for u, _ in read_scp(data / "seed" / "wav.scp")}
    assert len(pool_utts) == 10 and len(seed_utts) == 4 and not pool_utts & seed_utts

    al_loop = load_recipe_module("al_loop")
    budget = 4.0
    rows = al_loop.main([
        "--exp", str(exp), "--data", str(data), "--conf", str(RECIPE / "conf" / "train_asr_compact.yaml"),
        "--compact_model", str(compact), "--methods", "random", "egl", "--seeds", "0", "--rounds", "2",
        "--budget_seconds", str(budget), "--nbest", "2", "--nj", "1",
        "--train_args", "--max_epoch 1 --num_iters_per_epoch 1 --batch_size 2",
    ])
    assert len(rows) == 2 * 3
    for method in ("random", "egl"):
        chain = exp / "al" / method / "seed0"
        revealed = [line.split("\t") for line in (chain / "revealed.tsv").read_text().splitlines()]
        selected_by_round = {r: json.loads((chain / f"round{r}" / "select" / "selection.json").read_text())["selected"] for r in (1, 2)}
        all_selected = selected_by_round[1] + selected_by_round[2]
        assert len(all_selected) == len(set(all_selected)), "an utterance was selected twice"
        assert set(all_selected) <= pool_utts
        # the oracle was read for exactly the selected utterances, in the round they were selected
        assert sorted(revealed) == sorted([str(r), u] for r, us in selected_by_round.items() for u in us)
        prev_pool = pool_utts
        prev_seconds = sum(int(v) for _, v in read_scp(data / "seed" / "speech_shape")) / 16000
        for r in (1, 2):
            rdir = chain / f"round{r}"
            assert not (rdir / "pool" / "text").exists() and not (rdir / "select" / "data" / "text").exists()
            pool_now = {u for u, _ in read_scp(rdir / "pool" / "wav.scp")}
            labelled = {u for u, _ in read_scp(rdir / "labelled" / "wav.scp")}
            assert pool_now == prev_pool - set(selected_by_round[r]) and labelled == seed_utts | (pool_utts - pool_now)
            assert {u for u, _ in read_scp(rdir / "labelled" / "text")} == labelled
            result_row = json.loads((rdir / "result.json").read_text())
            assert 0 < result_row["labelled_seconds"] - prev_seconds <= budget + 1e-6
            prev_pool, prev_seconds = pool_now, result_row["labelled_seconds"]

    report = load_recipe_module("report")
    text = report.report(exp)
    results = json.loads((exp / "results.json").read_text())
    assert {tuple(sorted(r)) for r in results} == {tuple(sorted(report.ROW_KEYS))}
    assert sorted((r["method"], r["round"]) for r in results) == sorted((m, r) for m in ("random", "egl") for r in (0, 1, 2))
    assert "relative to random at equal labels" in text and "random's final error rate" in text
    assert (exp / "figures" / "learning_curves.png").is_file() and (exp / "RESULTS.md").is_file()
