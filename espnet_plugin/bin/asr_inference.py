#!/usr/bin/env python3
"""ESPnet's ASR inference with the plugin registered (compressed-model encoders / upstreams)."""
import espnet_plugin.asr  # noqa: F401  (registers; must stay a top-level import for DDP workers)
from espnet2.bin.asr_inference import main

if __name__ == "__main__":
    main()
