"""SUPERB's legacy runner with the espnet-compress upstreams registered.

    python -m s3prl_upstream.run_downstream ARGS

takes exactly the arguments of s3prl's ``run_downstream.py`` (``-m train|evaluate|inference``,
``-u espnet_compress_local -k MODEL_DIR``, ``-d``, ``-c``, ``-o``, ``-p`` / ``-n``, ``-e``, ...),
applies ``s3prl_upstream.compat``, registers the upstreams and hands over to
``s3prl.run_downstream.main()`` unchanged: training, ``-m evaluate -e CKPT``, resuming with
``-e EXPDIR`` and DDP (``torchrun -m s3prl_upstream.run_downstream ...``) behave as in s3prl.

The pip package of s3prl ships no downstream ``config.yaml``: pass ``-c`` (configs shipped here:
``s3prl_upstream/configs/``); without it, s3prl reads ``./downstream/TASK/config.yaml``
relative to the working directory, and this wrapper stops early with a message if that file
does not exist.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def _check_config(argv: Sequence[str]) -> Optional[str]:
    """The message for a new experiment whose default config path does not exist, else None."""
    parser = argparse.ArgumentParser(add_help=False)
    for flags in (("-c", "--config"), ("-d", "--downstream"), ("-e", "--past_exp"), ("-m", "--mode")):
        parser.add_argument(*flags)
    parser.add_argument("-a", "--auto_resume", action="store_true")
    args, _ = parser.parse_known_args(list(argv))
    if args.config or args.past_exp or args.auto_resume or not args.mode or not args.downstream:
        return None
    default = os.path.join(".", "downstream", args.downstream, "config.yaml")
    if os.path.isfile(default):
        return None
    from s3prl_upstream import CONFIG_DIR

    return (
        f"s3prl_upstream.run_downstream: no -c/--config given and {default} does not exist (the pip s3prl "
        f"ships no downstream configs); pass -c, e.g. one of the configs in {CONFIG_DIR}"
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run s3prl's runner; ``argv`` defaults to ``sys.argv[1:]``."""
    if argv is not None:
        sys.argv = [sys.argv[0]] + [str(a) for a in argv]
    argv = sys.argv[1:]
    if not any(a in ("-h", "--help") for a in argv):
        message = _check_config(argv)
        if message:
            raise SystemExit(message)

    from s3prl_upstream import compat, register

    compat.check_runner_dependencies()
    register()
    from s3prl import run_downstream

    run_downstream.main()


if __name__ == "__main__":
    main()
