#!/usr/bin/env python3
"""The active-learning splits of the mini_synth corpus: labelled seed set, unlabelled pool, dev, test.

The corpus is egs2/mini_synth's (``local/synth_corpus.py``, imported and called here, not
copied): espeak-ng speakers reading sentences from a word inventory, speakers disjoint between
its train / dev / test. Its ``train`` speakers give the seed set and the pool (disjoint,
drawn with ``--seed``), its dev and test speakers a fixed dev and test set. Under ``--out``:

    seed/{wav.scp,text,utt2spk,speech_shape}   labelled from the start
    pool/{wav.scp,utt2spk,speech_shape}        unlabelled: no transcripts here
    oracle/pool_text                            the pool's transcripts, read only by
                                                local/al_loop.py's Oracle, utterance by
                                                utterance, once an utterance is selected
    dev/, test/                                 labelled, fixed
    tokens.txt                                  characters of the alphabet (fixed a priori:
                                                nothing learnt from the pool's transcripts)
"""
from __future__ import annotations

import argparse
import random
import string
import sys
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "mini_synth" / "local"))

from synth_corpus import synthesise  # noqa: E402  (egs2/mini_synth/local/synth_corpus.py)

from espnet_plugin.utils.kaldi_data import read_scp, write_scp  # noqa: E402

FILES = ("wav.scp", "text", "utt2spk", "speech_shape")


def read_dir(directory: Path) -> Dict[str, Dict[str, str]]:
    return {name: dict(read_scp(directory / name)) for name in FILES}


def write_subset(src: Dict[str, Dict[str, str]], utts: List[str], out: Path, with_text: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if name == "text" and not with_text:
            continue
        write_scp(out / name, {u: src[name][u] for u in utts})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="corpus directory (synthesised here if missing)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num_speakers", type=int, default=32)
    parser.add_argument("--utts_per_speaker", type=int, default=40)
    parser.add_argument("--seed_utts", type=int, default=40, help="labelled seed set")
    parser.add_argument("--pool_utts", type=int, default=120, help="unlabelled pool")
    parser.add_argument("--dev_utts", type=int, default=40)
    parser.add_argument("--test_utts", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = args.corpus / "data"
    if not (data / "train" / "wav.scp").is_file():
        # sentences only: the keyword / command parts and the held-out voices of mini_synth's
        # corpus are not used here
        synthesise(args.corpus, args.num_speakers, args.utts_per_speaker, keyword_reps=0,
                   commands_per_speaker=0, seed=args.seed, num_unseen_speakers=0)
    train = read_dir(data / "train")
    utts = sorted(train["wav.scp"])
    if args.seed_utts + args.pool_utts > len(utts):
        raise SystemExit(f"seed ({args.seed_utts}) + pool ({args.pool_utts}) > {len(utts)} training utterances")
    rng = random.Random(args.seed)
    rng.shuffle(utts)
    seed, pool = sorted(utts[: args.seed_utts]), sorted(utts[args.seed_utts : args.seed_utts + args.pool_utts])
    write_subset(train, seed, args.out / "seed")
    write_subset(train, pool, args.out / "pool", with_text=False)
    write_scp(args.out / "oracle" / "pool_text", {u: train["text"][u] for u in pool})
    for split, count in (("dev", args.dev_utts), ("test", args.test_utts)):
        src = read_dir(data / split)
        chosen = sorted(random.Random(f"{args.seed}-{split}").sample(sorted(src["wav.scp"]), min(count, len(src["wav.scp"]))))
        write_subset(src, chosen, args.out / split)
    tokens = ["<blank>", "<unk>", "<space>", *string.ascii_lowercase, "'", "<sos/eos>"]
    (args.out / "tokens.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    shapes = {name: [int(v) for _, v in read_scp(args.out / name / "speech_shape")] for name in ("seed", "pool", "dev", "test")}
    print("splits (utterances / minutes): " + ", ".join(f"{k} {len(v)} / {sum(v) / 16000 / 60:.1f}" for k, v in shapes.items()))


if __name__ == "__main__":
    main()
