"""A short end-to-end tour on a CPU: reference model -> import -> gate -> prune -> export -> reload.

    python -m espnet_plugin.bin.demo [--output_dir demo_out] [--steps 80] [--target_sparsity 0.5]

1. builds a small transformers HubertModel with random weights (no downloads here) and
   saves it as a Hugging Face directory;
2. imports it with the plugin's importer (the teacher);
3. puts hard-concrete gates on conv channels, heads, attention blocks, FFN units and FFN
   blocks and trains gates + weights briefly by layer-to-layer distillation on espeak-ng
   speech, with the sparsity Lagrangian driving expected params to the target;
4. prunes to a dense model, checks it equals the gated model, exports and reloads it.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

import espnet_plugin
from espnet_plugin.models import GateConfig, with_gates
from espnet_plugin.models.summary import architecture_summary, format_summary
from espnet_plugin.pruning import SparsityLagrangian, prune_model
from espnet_plugin.utils.audio import synthesize
from espnet_plugin.utils.importers import import_model

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "speech models are too big to ship on small devices",
    "structured pruning removes heads and feed forward units",
    "distillation keeps what the teacher knows",
]
VOICES = ["en-us", "en-us+f3", "en-gb", "en-us+m3"]
DISTILLED_LAYERS = (0, 2, 4)


def reference_model(path: Path) -> None:
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
        conv_dim=[128] * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
    )
    HubertModel(config).save_pretrained(path)


def speech_batch() -> torch.Tensor:
    wavs = [synthesize(text, voice) for text, voice in zip(SENTENCES, VOICES)]
    length = min(len(w) for w in wavs)
    return torch.stack([w[:length] for w in wavs])


def distill_and_prune(teacher, wavs: torch.Tensor, steps: int, target: float):
    student = with_gates(teacher, GateConfig.all_on()).train()
    lagrangian = SparsityLagrangian(target, warmup_steps=steps // 2)
    optimizer = torch.optim.AdamW(
        [
            {"params": student.main_parameters(), "lr": 2e-4},
            {"params": student.gate_parameters(), "lr": 0.05, "weight_decay": 0.0},
            lagrangian.optimizer_group(0.02),
        ]
    )
    full = float(teacher.num_params())
    with torch.no_grad():
        targets, _ = teacher(wavs)
    progress = tqdm(range(steps), desc="distill + prune", unit="step")
    for step in progress:
        hidden, _ = student(wavs)
        distill = sum(
            F.l1_loss(hidden[i], targets[i]) - F.cosine_similarity(hidden[i], targets[i], dim=-1).mean()
            for i in DISTILLED_LAYERS
        ) / len(DISTILLED_LAYERS)
        sparsity = 1.0 - student.expected_params() / full
        loss = distill + lagrangian(sparsity, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.set_postfix(distill=f"{distill.item():.3f}", sparsity=f"{sparsity.item():.3f}")
    return student.eval()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_out")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--target_sparsity", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.output_dir)
    torch.manual_seed(0)

    reference_model(out / "reference_hf")
    print(f"[1/5] reference: transformers HubertModel with random weights -> {out / 'reference_hf'}")
    teacher, provenance = import_model(out / "reference_hf")
    espnet_plugin.save_model(teacher, out / "teacher", provenance)
    print(f"[2/5] imported ({provenance['source_format']}) -> {out / 'teacher'}")
    print(format_summary("      teacher", architecture_summary(teacher)))

    wavs = speech_batch()
    print(f"[3/5] distill + prune on {wavs.shape[0]} espeak-ng utterances of {wavs.shape[1] / 16000:.2f} s")
    gated = distill_and_prune(teacher, wavs, args.steps, args.target_sparsity)

    pruned = prune_model(gated)
    with torch.no_grad():
        gap = max((a - b).abs().max().item() for a, b in zip(gated(wavs)[0], pruned(wavs)[0]))
    print(f"[4/5] pruned to a dense model; max |gated - pruned| over all hidden states: {gap:.2e}")

    sparsity = 1.0 - pruned.num_params() / teacher.num_params()
    espnet_plugin.save_model(
        pruned, out / "pruned", {"source": str(out / "teacher"), "sparsity": round(sparsity, 4)}
    )
    reloaded = espnet_plugin.load_model(out / "pruned")
    with torch.no_grad():
        same = all(torch.equal(a, b) for a, b in zip(pruned(wavs)[0], reloaded.extract_hidden_states(wavs)[0]))
    print(f"[5/5] exported and reloaded {out / 'pruned'}: identical outputs = {same}")
    print(format_summary("      pruned", architecture_summary(pruned)))
    print(
        f"      params kept {1 - sparsity:.1%} (target {1 - args.target_sparsity:.1%}), MACs kept "
        f"{pruned.expected_macs().item() / teacher.expected_macs().item():.1%}"
    )
    return 0 if same and gap < 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
