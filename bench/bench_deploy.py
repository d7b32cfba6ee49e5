"""CPU latency of deployment back-ends: torch fp32 / bf16 autocast, onnxruntime fp32 / int8.

One thread, batch 1 x 10 s of audio, for a dense HuBERT Base ("teacher dense") and the
~27 %-params model ``bench/bench_encoder.py`` prunes from it; random weights (latency does not
depend on them). Writes the ``bench_deploy`` section of docs/benchmarks.md.

    python bench/bench_deploy.py [--output docs/benchmarks.md] [--repeats 5] [--quick]

Most of the time goes to the dense model's bf16 call where the CPU has no bf16 instructions
(about a minute idle, so it is timed once); 7.5 minutes in all on a 2-core machine shared
with other jobs (load 9).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from bench.bench_encoder import CpuShare, Timing, machine_lines, pruned_hubert_base_config, time_interleaved  # noqa: E402
from bench.common import markers, write_section  # noqa: E402
from espnet_plugin.deploy.onnx_export import export_onnx, quantize_int8, run_onnx, session  # noqa: E402
from espnet_plugin.models import SpeechEncoder  # noqa: E402
from espnet_plugin.utils.audio import SAMPLE_RATE  # noqa: E402

MARK = "bench_deploy"
START, END = markers(MARK)
SECONDS = 10.0
THREADS = 1
CALL_BUDGET_S = 30.0  # timed calls of one back-end stop at about this much time
BACKENDS = ("torch fp32", "torch bf16 (autocast)", "onnxruntime fp32", "onnxruntime int8")


def torch_runner(model: SpeechEncoder, wavs: torch.Tensor, lengths: torch.Tensor, bf16: bool) -> Callable[[], List]:
    def run() -> List[torch.Tensor]:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            states, _ = model(wavs, lengths)
        return [s.float() for s in states]

    return run


def onnx_runner(path: Path, wavs: torch.Tensor, lengths: torch.Tensor) -> Callable[[], List]:
    sess = session(path, threads=THREADS)

    def run() -> List[torch.Tensor]:
        outputs = run_onnx(sess, wavs, lengths)
        return [torch.from_numpy(v) for k, v in outputs.items() if k.startswith("hidden_state_")]

    return run


def max_abs_error(states: List[torch.Tensor], reference: List[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(states, reference))


def bench_model(model: SpeechEncoder, workdir: Path, repeats: int, desc: str) -> Dict[str, Dict]:
    """Per back-end: timing, and max abs error vs torch fp32 over all hidden states."""
    wavs = torch.randn(1, int(SECONDS * SAMPLE_RATE), generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([wavs.shape[1]])
    start = time.perf_counter()
    fp32 = export_onnx(model, workdir / f"{desc}.onnx")
    int8 = quantize_int8(fp32)
    prepare = time.perf_counter() - start
    runners = {
        BACKENDS[0]: torch_runner(model, wavs, lengths, bf16=False),
        BACKENDS[1]: torch_runner(model, wavs, lengths, bf16=True),
        BACKENDS[2]: onnx_runner(fp32, wavs, lengths),
        BACKENDS[3]: onnx_runner(int8, wavs, lengths),
    }
    # warm-up pass: one call each, also the outputs compared with torch fp32
    first_ms, outputs = {}, {}
    for name, run in runners.items():
        begin = time.perf_counter()
        outputs[name] = run()
        first_ms[name] = (time.perf_counter() - begin) * 1000.0
    errors = {name: max_abs_error(states, outputs[BACKENDS[0]]) for name, states in outputs.items()}
    scale = max(float(s.abs().max()) for s in outputs[BACKENDS[0]])
    del outputs
    # a back-end gets at most ~CALL_BUDGET_S of timed calls (emulated bf16 takes minutes per call)
    counts = {name: max(1, min(repeats, int(CALL_BUDGET_S * 1000 // ms))) for name, ms in first_ms.items()}
    timings = time_interleaved({n: runners[n] for n in runners if counts[n] == repeats}, 0, repeats, desc)
    for name in runners:
        if counts[name] == repeats:
            continue
        values = [first_ms[name]] if counts[name] == 1 else []  # one call: its warm-up call is the timing
        for _ in range(counts[name] if counts[name] > 1 else 0):
            begin = time.perf_counter()
            runners[name]()
            values.append((time.perf_counter() - begin) * 1000.0)
        timings[name] = Timing(values)
    sizes = {BACKENDS[2]: fp32.stat().st_size, BACKENDS[3]: int8.stat().st_size}
    return {
        "timings": timings,
        "errors": errors,
        "sizes": sizes,
        "params": model.num_params(),
        "prepare": prepare,
        "scale": scale,
    }


def table(results: Dict[str, Dict]) -> List[str]:
    rows = [
        "| model | back-end | median ms (min) | calls | real-time factor | speed-up vs torch fp32 "
        "| max abs error vs torch fp32 | file MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        base: Timing = r["timings"][BACKENDS[0]]
        for name in BACKENDS:
            t: Timing = r["timings"][name]
            size = f"{r['sizes'][name] / 1e6:.1f}" if name in r["sizes"] else "-"
            error = "-" if name == BACKENDS[0] else f"{r['errors'][name]:.2g}"
            rows.append(
                f"| {label} ({r['params'] / 1e6:.1f} M params) | {name} | {t.median:.0f} ({t.minimum:.0f}) | {len(t.values)} "
                f"| {t.median / 1000 / SECONDS:.3f} | {base.median / t.median:.2f}x | {error} | {size} |"
            )
    return rows


def render(machine: List[str], load: Sequence[Sequence[float]], command: str, protocol: str, results) -> str:
    (s1, s5, s15), (e1, e5, e15) = load
    cores = os.cpu_count() or 1
    scales = ", ".join(f"{label} {r['scale']:.1f}" for label, r in results.items())
    return "\n".join(
        [
            START,
            "## Deployment latency: torch vs onnxruntime, fp32 / bf16 / int8 (`bench/bench_deploy.py`)",
            "",
            *machine,
            f"- onnxruntime {__import__('onnxruntime').__version__}",
            f"- load average (1 / 5 / 15 min): {s1:.2f} / {s5:.2f} / {s15:.2f} at the start, "
            f"{e1:.2f} / {e5:.2f} / {e15:.2f} at the end, on {cores} logical cores",
            *(["- **the machine was shared with other jobs during this run**: absolute times are inflated and "
               "noisy; the ratios between back-ends, measured interleaved, are the more reliable figures"]
              if max(s1, e1) > 0.75 * cores else []),
            f"- command: `{command}`",
            f"- protocol: {protocol}",
            "",
            f"Batch 1 x {SECONDS:g} s of audio, {THREADS} thread (torch.set_num_threads({THREADS}); onnxruntime "
            "intra- and inter-op threads 1), all N + 1 hidden states as outputs. Models with random weights: "
            "`hubert_base_config()` (teacher dense) and the ~27 %-params model `bench/bench_encoder.py` "
            "prunes from it (`pruned_hubert_base_config()`). onnxruntime files come from "
            "`espnet_plugin.deploy.onnx_export` (`export_onnx`, `quantize_int8`: dynamic int8). Error: max abs "
            f"difference over every hidden state and frame (largest |value| of the reference: {scales}). "
            "bf16 runs `torch.autocast('cpu', torch.bfloat16)`: on a CPU without bf16 instructions (AVX512-BF16 / "
            "AMX) the convolutions fall back to a slow reference kernel and the matrix products are emulated. "
            "int8 quantises the MatMuls (the CNN stays fp32; see docs/deployment.md).",
            "",
            *table(results),
            END,
        ]
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="3 timed calls per back-end")
    parser.add_argument("--repeats", type=int, help="timed calls per back-end (default 5, 3 with --quick)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    warmup = 1  # the pass that also measures the errors
    torch.set_num_threads(THREADS)
    load_start = os.getloadavg()
    share_start = CpuShare.now()
    models = pruned_hubert_base_config()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_deploy.") as tmp:
        for label, key in (("teacher dense", "dense"), ("compressed", "pruned")):
            results[label] = bench_model(models[key], Path(tmp), repeats, key)
    others = CpuShare.now().others_since(share_start)
    command = "python bench/bench_deploy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    protocol = (
        f"{warmup} warm-up call (also the error measurement) + {repeats} timed calls per back-end, back-ends "
        f"interleaved, median (min) reported; a back-end whose warm-up call is slow gets only ~{CALL_BUDGET_S:g} s "
        "of calls (column `calls`; 1 call: the warm-up call itself); "
        "export + int8 quantisation took " + ", ".join(f"{k} {r['prepare']:.0f} s" for k, r in results.items())
    )
    section = render(machine_lines(THREADS, others), (load_start, os.getloadavg()), command.strip(), protocol, results)
    write_section(args.output, MARK, section)
    print(section)


if __name__ == "__main__":
    main()
