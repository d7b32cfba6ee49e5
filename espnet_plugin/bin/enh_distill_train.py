#!/usr/bin/env python3
from espnet_plugin.tasks.enh_distill import EnhDistillTask


def get_parser():
    return EnhDistillTask.get_parser()


def main(cmd=None):
    r"""Two-step knowledge distillation of ESPnet speech-enhancement models.

    Example:
        % python -m espnet_plugin.bin.enh_distill_train --print_config --stage kd
        % python -m espnet_plugin.bin.enh_distill_train --config conf/kd_sp_time_30k.yaml \
            --teacher_config exp/teacher/config.yaml --teacher_model_file exp/teacher/valid.loss.best.pth
    """
    EnhDistillTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
