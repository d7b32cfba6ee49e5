"""s3prl's problem API (``s3prl.problem``) with the espnet-compress upstreams registered.

    python -m s3prl_upstream.problem PROBLEM [--config FILE] [--a.b VALUE ...]

runs ``getattr(s3prl.problem, PROBLEM)().main(ARGS)`` unchanged after
``s3prl_upstream.register()`` (compat shims + ``espnet_compress_local`` in ``s3prl.hub``),
which has to happen before ``s3prl.problem`` is imported. PROBLEM is a class name from
``s3prl.problem.__all__``, e.g. ``SuperbPR`` or ``SuperbSF``; ARGS are the problem's own
(``--config``, ``--print_config``, ``--a.b value`` overrides), e.g.

    python -m s3prl_upstream.problem SuperbSF --config s3prl_upstream/configs/sf/superb.yaml \\
        --target_dir result/sf --prepare_data.dataset_root CORPORA/SNIPS \\
        --build_upstream.path_or_url exp/hubert_pruned
"""
from __future__ import annotations

import sys
from typing import List, Optional

USAGE = "usage: python -m s3prl_upstream.problem PROBLEM [--config FILE] [--key.sub VALUE ...]"
HELP = ("PROBLEM: a class of s3prl.problem, e.g. SuperbPR, SuperbSF, SuperbASR, SuperbKS; "
        "'python -m s3prl_upstream.problem PROBLEM --print_config' shows its default config")


def _usage_error(message: str):
    print(f"{USAGE}\n{message}", file=sys.stderr)
    sys.exit(2)


def main(argv: Optional[List[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        _usage_error(HELP)
    if argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n{HELP}")
        return None
    import s3prl_upstream

    s3prl_upstream.register()
    import s3prl.problem

    name, args = argv[0], argv[1:]
    problem = getattr(s3prl.problem, name, None) if name in s3prl.problem.__all__ else None
    if problem is None:
        _usage_error(f"unknown PROBLEM {name!r}; s3prl.problem has: {', '.join(s3prl.problem.__all__)}")
    return problem().main(args)


if __name__ == "__main__":
    main()
