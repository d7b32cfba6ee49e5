#!/usr/bin/env python3
# The top-level import registers the plugin (encoder, s3prl upstream, config tag): spawned DDP
# workers re-import this module's top level, so they get the registration too.
import espnet_plugin.asr  # noqa: F401
from espnet2.tasks.asr import ASRTask

from espnet_plugin.asr import mark_plugin_args


def get_parser():
    return ASRTask.get_parser()


def main(cmd=None):
    r"""ESPnet ASR training with compressed models (encoder espnet_compress, s3prl upstream
    espnet_compress_local).

    Example:
        % python -m espnet_plugin.bin.asr_train --print_config --optim adadelta
        % python -m espnet_plugin.bin.asr_train --config conf/train_asr.yaml
    """
    ASRTask.main(args=mark_plugin_args(get_parser().parse_args(cmd)))


if __name__ == "__main__":
    main()
