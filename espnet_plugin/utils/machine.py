"""What machine a measurement ran on (for benchmark and recipe reports)."""
from __future__ import annotations

import platform
from pathlib import Path


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def has_bf16_units() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); without, torch emulates it
    and bf16 timings say nothing about a machine that has them."""
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def is_intel_cpu() -> bool:
    """Whether the CPU is Intel's: MKL's GEMM (torch's CPU matmul) is faster than oneDNN's there
    and slower on AMD CPUs (docs/benchmarks.md, the bench_conv_kernels section)."""
    return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in _cpuinfo().splitlines())
