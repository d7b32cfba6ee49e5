"""A frozen teacher's forward with its linear weights packed once for oneDNN, against F.linear.

    python bench/bench_frozen_teacher.py --output docs/benchmarks.md [--quick]

The distillation teacher runs under ``no_grad`` with weights that never change;
``SpeechEncoder.freeze`` (``espnet_plugin/models/packed_linear.py``) packs each linear weight
once instead of at every call and runs the FFN's GELU inside the same kernel. Timed: the
HuBERT Base teacher's whole forward on batches of 4 utterances of 1 s (the speed benchmarks'
batches) and 12 s (about a LibriSpeech utterance), and one transformer layer's linear layers
on the 1 s batch. Medians of interleaved repeats; the two teachers' hidden states are compared
before anything is timed. Writes its own section of the benchmarks file (between
``<!-- bench_frozen_teacher:start/end -->``).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import kernel_bench_args, run_lines, interleaved_ms, markers, write_section  # noqa: E402
from espnet_plugin.models import SpeechEncoder, hubert_base_config, tiny_config  # noqa: E402
from espnet_plugin.models.packed_linear import linear  # noqa: E402

MARK = "bench_frozen_teacher"


def layer_rows(plain: SpeechEncoder, frozen: SpeechEncoder, frames: int, repeats: int) -> List[str]:
    """One transformer layer's linear layers, ``F.linear`` (+ GELU) against the packed path."""
    rows = []
    for name, get, gelu in (("q / k / v / out projection", lambda m: m.layers[0].attention.q_proj, False),
                            ("FFN intermediate + GELU", lambda m: m.layers[0].ffn.intermediate, True),
                            ("FFN output", lambda m: m.layers[0].ffn.output, False)):
        a, b = get(plain), get(frozen)
        h = torch.randn(4, frames, a.in_features)

        def reference(layer=a, h=h, gelu=gelu):
            y = F.linear(h, layer.weight, layer.bias)
            return F.gelu(y) if gelu else y

        t = interleaved_ms({"F.linear": reference, "packed": lambda layer=b, h=h, gelu=gelu: linear(h, layer, gelu)},
                        repeats)
        shape = f"{4 * frames} x {a.in_features} -> {a.out_features}"
        rows.append(f"| {name} | {shape} | {t['F.linear']:.2f} | {t['packed']:.2f} | "
                    f"{t['F.linear'] / t['packed']:.2f}x |")
    return rows


def main() -> int:
    args = kernel_bench_args(__doc__, "a tiny teacher: checks the script, times nothing")
    torch.set_grad_enabled(False)  # every forward here is a frozen teacher's (the packed path needs no_grad)
    plain = SpeechEncoder(tiny_config() if args.quick else hubert_base_config()).eval().requires_grad_(False)
    frozen = copy.deepcopy(plain).freeze()
    seconds_list = (1, 2) if args.quick else (1, 12)
    rows = []
    for seconds in seconds_list:
        wavs, lengths = torch.randn(4, 16000 * seconds) * 0.1, torch.full((4,), 16000 * seconds)
        gap = max((a - b).abs().max().item() for a, b in zip(plain(wavs, lengths)[0], frozen(wavs, lengths)[0]))
        if gap > 1e-3:
            raise RuntimeError(f"the packed teacher's hidden states differ from the plain one's by {gap}")
        t = interleaved_ms({"plain": lambda: plain(wavs, lengths), "frozen": lambda: frozen(wavs, lengths)},
                        max(args.repeats // seconds, 3))
        rows.append(f"| 4 x {seconds} s | {t['plain']:.1f} | {t['frozen']:.1f} | {t['plain'] / t['frozen']:.2f}x "
                    f"| {gap:.1e} |")
    frames = int(plain.frame_lengths(torch.tensor([16000]))[0])
    text = "\n".join([
        markers(MARK)[0],
        "## The frozen teacher: linear weights packed once (`bench/bench_frozen_teacher.py`)",
        "",
        *run_lines(),
        f"- command: `python bench/bench_frozen_teacher.py{' --quick' if args.quick else ''}`",
        f"- teacher: {'tiny' if args.quick else 'HuBERT Base'}, random weights, forward under no_grad; plain: "
        "`eval().requires_grad_(False)` (torch's `F.linear`); frozen: `SpeechEncoder.freeze()` (oneDNN inner "
        f"products on weights packed once, GELU fused into the FFN's first one); median of {args.repeats} "
        "interleaved repeats (fewer for long batches)",
        "",
        "| batch | plain ms | frozen ms | speed-up | largest hidden-state difference |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"One transformer layer's linear layers on the 4 x 1 s batch ({4 * frames} frames):",
        "",
        "| layer | rows x in -> out | F.linear ms | packed ms | speed-up |",
        "|---|---|---:|---:|---:|",
        *layer_rows(plain, frozen, frames, args.repeats),
        markers(MARK)[1],
    ])
    print(text)
    if not args.quick:
        write_section(args.output, MARK, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
