#!/usr/bin/env python3
"""HuBERT iteration-1 targets: k-means clusters of MFCC (+ deltas) frames, one per 20 ms.

MFCC frames use a 25 ms window and a 20 ms shift with Kaldi's edge snipping, so each
utterance of n samples gets (n - 400) // 320 + 1 labels: exactly the frames of the
standard HuBERT CNN. The clusters are fit on --fit_dir and applied to every --label_dir;
each gets ``<dir>/hubert_labels`` (``utt_id c1 c2 ...``). Also writes the token list
(cluster ids then ``<unk>``, as ESPnet's word tokenizer needs).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF
from sklearn.cluster import MiniBatchKMeans
from tqdm import tqdm

from espnet_plugin.utils.audio import read_audio
from espnet_plugin.utils.kaldi_data import read_scp

FRAME_SHIFT_MS = 20.0
FRAME_LENGTH_MS = 25.0


def mfcc_features(path: str) -> np.ndarray:
    wav = read_audio(path)[None] * 32768.0
    mfcc = kaldi.mfcc(wav, sample_frequency=16000, frame_shift=FRAME_SHIFT_MS, frame_length=FRAME_LENGTH_MS,
                      num_ceps=13, dither=0.0)
    deltas = AF.compute_deltas(mfcc.T)
    feats = torch.cat([mfcc.T, deltas, AF.compute_deltas(deltas)]).T
    return ((feats - feats.mean(0)) / (feats.std(0) + 1e-5)).numpy()


def features_of(data_dir: Path) -> Dict[str, np.ndarray]:
    return {utt: mfcc_features(path) for utt, path in tqdm(list(read_scp(data_dir / "wav.scp")), desc=f"MFCC {data_dir.name}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit_dir", type=Path, required=True)
    parser.add_argument("--label_dir", type=Path, action="append", required=True)
    parser.add_argument("--num_clusters", type=int, default=50)
    parser.add_argument("--token_list", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = features_of(args.fit_dir)
    kmeans = MiniBatchKMeans(n_clusters=args.num_clusters, random_state=args.seed, n_init=3, batch_size=4096)
    kmeans.fit(np.concatenate(list(train.values())))
    for data_dir in args.label_dir:
        feats = train if data_dir == args.fit_dir else features_of(data_dir)
        lines: List[str] = []
        for utt in sorted(feats):
            labels = kmeans.predict(feats[utt])
            lines.append(f"{utt} {' '.join(map(str, labels))}")
        (data_dir / "hubert_labels").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args.token_list.parent.mkdir(parents=True, exist_ok=True)
    args.token_list.write_text("\n".join([*map(str, range(args.num_clusters)), "<unk>"]) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
