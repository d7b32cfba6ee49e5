"""What machine a measurement ran on (for benchmark and recipe reports)."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def has_bf16_units() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); without, torch emulates it
    and bf16 timings say nothing about a machine that has them."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
