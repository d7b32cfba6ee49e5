#!/usr/bin/env python3
"""Pick which utterances of an unlabelled pool to transcribe next (active learning for ESPnet ASR).

Scores every utterance of a Kaldi-style pool directory with an ESPnet ASR model (trained by
``espnet2.bin.asr_train`` or ``espnet_plugin.bin.asr_train``; CTC-only or hybrid CTC/attention)
and selects under a budget of utterances or seconds. Writes ``OUTPUT_DIR/data/`` (the chosen
utterances, Kaldi-style), ``OUTPUT_DIR/scores.tsv`` (every pool utterance) and
``OUTPUT_DIR/selection.json``; scores are cached in ``OUTPUT_DIR/cache/`` so a re-run resumes.

Example:
    % python -m espnet_plugin.bin.asr_select --asr_train_config exp/asr/config.yaml \\
        --asr_model_file exp/asr/valid.loss.best.pth --data_dir data/pool --method egl \\
        --nbest 8 --budget_seconds 600 --output_dir exp/select_round1
"""
import argparse
import logging
import sys

from espnet_plugin.asr.active_learning.scoring import EGL_LOSSES, EGL_PARAMS, METHODS
from espnet_plugin.asr.active_learning.selection import NORMALIZE


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asr_train_config", help="the ASR experiment's config.yaml (not needed by --method random)")
    parser.add_argument("--asr_model_file", help="its model file (*.pth)")
    parser.add_argument("--data_dir", required=True, help="the unlabelled pool: a Kaldi-style data directory with wav.scp")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--method", choices=METHODS, default="egl")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget_utts", type=int, help="select this many utterances")
    budget.add_argument("--budget_seconds", type=float, help="select at most this many seconds of audio")
    parser.add_argument("--normalize", choices=NORMALIZE, default="auto",
                        help="rank egl / badge per second of audio: auto = with a seconds budget only (default)")
    parser.add_argument("--nbest", type=int, default=8, help="K hypotheses for egl")
    parser.add_argument("--beam_size", type=int, default=None, help="beam size (default: nbest for egl, 4 otherwise)")
    parser.add_argument("--ctc_weight", type=float, default=None,
                        help="CTC weight of the beam search (default: the model's; 1.0 for CTC-only models)")
    parser.add_argument("--egl_loss", choices=EGL_LOSSES, default="ctc",
                        help="the loss whose gradient egl measures: ctc (the paper's), or hybrid (CTC + attention)")
    parser.add_argument("--egl_params", choices=EGL_PARAMS, default="output",
                        help="output: output layer(s), exact closed form, batched; all: every trainable parameter (autograd)")
    parser.add_argument("--badge_dim", type=int, default=4096, help="largest badge embedding (larger ones are sketched)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random and badge selection")
    parser.add_argument("--batch_size", type=int, default=8, help="utterances encoded at a time")
    parser.add_argument("--on_bad_audio", choices=("skip", "fail"), default="skip",
                        help="missing / corrupt audio: skip it with a warning (default) or stop")
    parser.add_argument("--no_cache", action="store_true", help="do not read or write cached scores")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num_threads", type=int, default=1,
                        help="torch threads (default 1: the beam search is a chain of small operations, fastest on one)")
    parser.add_argument("--log_level", default="WARNING", choices=("ERROR", "WARNING", "INFO", "DEBUG"))
    return parser


def main(cmd=None) -> dict:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=args.log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    # the library imports ESPnet (slow): after argparse, so --help is quick
    import torch

    from espnet_plugin.asr.active_learning.pool import select_from_pool

    torch.set_num_threads(args.num_threads)

    beam_size = args.beam_size if args.beam_size is not None else (None if args.method == "egl" else 4)
    summary = select_from_pool(
        data_dir=args.data_dir,
        output_dir=args.output_dir,
        method=args.method,
        budget_utts=args.budget_utts,
        budget_seconds=args.budget_seconds,
        asr_train_config=args.asr_train_config,
        asr_model_file=args.asr_model_file,
        normalize=args.normalize,
        seed=args.seed,
        batch_size=args.batch_size,
        nbest=args.nbest,
        beam_size=beam_size,
        ctc_weight=args.ctc_weight,
        egl_loss=args.egl_loss,
        egl_params=args.egl_params,
        badge_dim=args.badge_dim,
        on_bad_audio=args.on_bad_audio,
        use_cache=not args.no_cache,
        device=args.device,
    )
    rate = summary["scoring"]["utts_per_second"]
    print(
        f"{args.method}: selected {summary['selected_utts']} of {summary['scored_utts']} scored utterances "
        f"({summary['selected_seconds']:.1f} s) -> {args.output_dir}/data"
        + (f"; scoring {rate:.2f} utt/s" if rate else ""),
        file=sys.stderr,
    )
    return summary


if __name__ == "__main__":
    main()
