"""KS accuracy of each deployed format: the mini_synth probe, re-evaluated on every export.

For every model of a finished ``egs2/mini_synth`` experiment and every seed of its KS probe
(s3prl's speech_commands downstream, trained by the recipe on the torch fp32 upstream), the
same dev-best checkpoint is evaluated on the test split with the upstream swapped for each
deployment format, through s3prl's runner (``-m evaluate -o args.upstream=...``):

    torch fp32         espnet_compress_local, the compact model directory (the recipe's number)
    torch bf16         the same under torch.autocast(bfloat16) (``-g`` YAML ``precision: bf16``)
    onnxruntime fp32   espnet_compress_onnx, ``export_onnx`` of the model
    onnxruntime int8   espnet_compress_onnx, ``quantize_int8`` of that file

and the accuracy (mean ± sd over seeds) and the number of test utterances whose predicted
class differs from torch fp32 go into the ``bench_export_accuracy`` section of
docs/benchmarks.md. The recipe's files are left as they are: each evaluation writes into
``--work`` (``args.expdir`` overridden).

    python bench/bench_export_accuracy.py --exp egs2/mini_synth/exp [--models teacher compressed compressed_macs]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# nothing is downloaded (as in the recipe): no import-time NLTK downloads, Hugging Face offline
for _name in ("ESPNET_COMPRESS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, installed or not
sys.path.insert(0, str(REPO / "egs2" / "mini_synth" / "local"))

from bench.bench_encoder import machine_lines  # noqa: E402
from bench.common import markers, write_section  # noqa: E402

MARK = "bench_export_accuracy"
BACKENDS = ("torch fp32", "torch bf16", "onnxruntime fp32", "onnxruntime int8")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", type=Path, required=True, help="a finished egs2/mini_synth experiment directory")
    parser.add_argument("--models", nargs="+", default=["teacher", "compressed", "compressed_macs"])
    parser.add_argument("--work", type=Path, default=None, help="where exports and evaluations go (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    return parser.parse_args(argv)


def probe_runs(exp: Path, model: str) -> List[Path]:
    runs = [run for run in (exp / "superb").glob(f"{model}_ks_seed*") if run.is_dir()]
    runs.sort(key=lambda p: int(p.name.rsplit("seed", 1)[1]))
    if not runs:
        raise SystemExit(f"error: {exp / 'superb'}: no KS probe of {model} ({model}_ks_seed*); run the recipe first")
    return runs


def upstream_overrides(backend: str, files: Dict[str, Path]) -> List[str]:
    if backend == "torch fp32":
        return []
    if backend == "torch bf16":
        return [f"args.upstream_model_config={files['bf16_config']}"]
    key = "onnx_fp32" if backend == "onnxruntime fp32" else "onnx_int8"
    return ["args.upstream=espnet_compress_onnx", f"args.upstream_ckpt={files[key]}"]


def read_predictions(path: Path) -> Dict[str, str]:
    pairs = (line.split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {name: label.strip() for name, label in pairs}


def export_files(model_dir: Path, work: Path) -> Dict[str, Path]:
    import espnet_plugin
    from espnet_plugin.deploy.onnx_export import export_onnx, quantize_int8

    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(espnet_plugin.load_model(model_dir), work / "model.onnx")
    bf16_config = work / "bf16.yaml"
    bf16_config.write_text("precision: bf16\n", encoding="utf-8")
    return {"onnx_fp32": fp32, "onnx_int8": quantize_int8(fp32), "bf16_config": bf16_config}


def evaluate(run: Path, backend: str, files: Dict[str, Path], out: Path) -> Dict[str, object]:
    from evaluate_superb import TASKS, run_in_process, runner_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = runner_checkpoint(run, TASKS["ks"]["best"])
    overrides = [f"args.expdir={out}"] + upstream_overrides(backend, files)
    cmd = [sys.executable, "-m", "s3prl_upstream.run_downstream", "-m", "evaluate", "-t", "test",
           "-e", str(checkpoint), "--device", "cpu", "-o", ",,".join(overrides)]
    log = out / "evaluate.log"
    rc, seconds = run_in_process(cmd, log, out)
    text = log.read_text(encoding="utf-8", errors="replace")
    found = re.findall(r"^test acc: ([0-9.eE+-]+)", text, flags=re.MULTILINE)
    if rc != 0 or not found:
        raise RuntimeError(f"{run.name} / {backend}: evaluation failed (exit {rc}); see {log}")
    return {"accuracy": 100.0 * float(found[-1]), "predictions": read_predictions(out / "test_predict.txt"),
            "seconds": seconds}


def mean_sd(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    import espnet_plugin
    import s3prl_upstream

    s3prl_upstream.register()
    work = args.work or Path(tempfile.mkdtemp(prefix="export_accuracy_"))
    start = time.time()
    rows = []
    for model in args.models:
        runs = probe_runs(args.exp, model)
        files = export_files(args.exp / model, work / model)
        params = espnet_plugin.load_model(args.exp / model).num_params()
        accuracy = {backend: [] for backend in BACKENDS}
        changed = {backend: 0 for backend in BACKENDS}
        total = 0
        for run in runs:
            reference = None
            for backend in BACKENDS:
                result = evaluate(run, backend, files, work / model / run.name / backend.replace(" ", "_"))
                accuracy[backend].append(result["accuracy"])
                if reference is None:
                    reference = result["predictions"]
                    total += len(reference)
                changed[backend] += sum(reference[k] != v for k, v in result["predictions"].items())
                print(f"{run.name} {backend}: {result['accuracy']:.2f} % ({result['seconds']:.0f} s)", flush=True)
        sizes = {key: files[key].stat().st_size / 1e6 for key in ("onnx_fp32", "onnx_int8")}
        rows.append((model, params, len(runs), total, accuracy, changed, sizes))

    import torch

    lines = [
        markers(MARK)[0],
        f"## KS accuracy of each deployed format: the mini_synth probe (`bench/{Path(__file__).name}`)",
        "",
        *machine_lines(torch.get_num_threads(), None),
        f"- experiment: `{args.exp}` (egs2/mini_synth); {time.time() - start:.0f} s in all",
        f"- command: `python bench/{Path(__file__).name} --exp {args.exp}`",
        "",
        "Each seed's KS probe (s3prl's speech_commands downstream, trained by the recipe on the torch fp32",
        "upstream; its dev-best checkpoint) evaluated on the test split with the upstream swapped for each",
        "format: torch fp32 (the recipe's number), torch bf16 autocast, onnxruntime fp32 (`export_onnx`) and",
        "onnxruntime int8 (`quantize_int8`: dynamic int8 MatMuls), through s3prl's runner (upstreams",
        "`espnet_compress_local` / `espnet_compress_onnx`). Accuracy in %, mean ± sd over seeds; *changed*:",
        "test predictions (all seeds) whose class differs from torch fp32's.",
        "",
        "| model | params | seeds | " + " | ".join(f"{b} acc" for b in BACKENDS)
        + " | changed: " + " / ".join(BACKENDS[1:]) + " | ONNX MB fp32 / int8 |",
        "|---|---:|---:|" + "---:|" * len(BACKENDS) + "---:|---:|",
    ]
    for model, params, seeds, total, accuracy, changed, sizes in rows:
        cells = [mean_sd(accuracy[b]) for b in BACKENDS]
        moved = " / ".join(f"{changed[b]} of {total}" for b in BACKENDS[1:])
        lines.append(f"| {model} | {params:,} | {seeds} | " + " | ".join(cells)
                     + f" | {moved} | {sizes['onnx_fp32']:.2f} / {sizes['onnx_int8']:.2f} |")
    section = "\n".join(lines + [markers(MARK)[1]])
    write_section(args.output, MARK, section)
    print(section)


if __name__ == "__main__":
    main()
