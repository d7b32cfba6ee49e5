#!/usr/bin/env python3
from espnet_plugin.tasks.distill_prune import DistillPruneTask


def get_parser():
    return DistillPruneTask.get_parser()


def main(cmd=None):
    r"""DPHuBERT distillation + structured pruning training.

    Example:
        % python -m espnet_plugin.bin.distill_prune_train --print_config --optim adamw
        % python -m espnet_plugin.bin.distill_prune_train --config conf/tiny_stage1.yaml
    """
    DistillPruneTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
