"""rlxf DPO against TRL's DPOTrainer: same tiny model, data, batch, steps and settings.

Each side runs in its own subprocess (so each peak-memory figure is that side's alone):
a freshly initialised 4-layer, 128-d GPT-2 over a word-level vocabulary, the same
comparisons, batch size, number of optimiser steps, AdamW with the same learning rate,
weight decay 0, gradient clipping at 1.0, warm-up then cosine decay to 10%, bf16 off,
and reference log-probs precomputed once on both sides. Timed: from in-memory text data
to a trained model (tokenisation, reference precompute and training), model building
excluded. Peak memory: the subprocess's maximum resident set size (each side's lowest over its
runs), and that less the peak of an import-only process of the same side (one that imports the
side's libraries and stops), so that the libraries' own resident memory (torch, transformers, and
TRL's datasets and accelerate) does not dominate the comparison of what training itself holds.

    .venv/bin/python benchmarks/dpo_vs_trl.py [--pairs 512] [--batch 32] [--epochs 2] [--repeats 2]

On a shared machine the sides run alternately ``--repeats`` times and each side's fastest
run is reported, which is the fairest figure when other work comes and goes.

The last line reads ``speedup X memory_ratio Y total_memory_ratio Z`` (rlxf over TRL: X > 1
means rlxf is faster; Y is the ratio of peak RSS above each side's import-only baseline and Z of
the whole peak RSS, < 1 meaning rlxf used less memory).
"""

from __future__ import annotations

import argparse
import os
import random
import sides  # benchmarks/sides.py: this directory is on sys.path when a script runs
import tempfile
import time

WORDS = [f"w{i}" for i in range(96)]
MAX_LENGTH = 32


def make_data(n: int, seed: int = 0) -> list[dict]:
    """Comparisons of random word strings; the chosen one uses more low-numbered words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        good = " ".join(rng.choice(WORDS[:48]) for _ in range(rng.randint(4, 18)))
        bad = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 18)))
        rows.append({"prompt": prompt, "chosen": " " + good, "rejected": " " + bad})
    return rows


def build(seed: int = 0):
    import torch

    from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

    torch.manual_seed(seed)
    tok = tiny_tokenizer(WORDS)
    model = tiny_causal_lm(tok, "gpt2", n_layer=4, n_embd=128, n_head=4, max_positions=64, seed=seed)
    return tok, model


def imported() -> dict:
    """The import-only baseline's result: a side's libraries are loaded (and ``build``'s), nothing runs."""
    import rlxf.policies.tiny  # noqa: F401

    return {}


def run_rlxf(args) -> dict:
    import torch

    from rlxf.algorithms.loop import OptimConfig
    from rlxf.algorithms.offline_preference import train_pairs
    from rlxf.core.runs import Run
    from rlxf.objectives.preference import dpo_loss
    from rlxf.policies.language import LanguagePolicy

    if args.imports_only:
        return imported()
    torch.set_num_threads(args.threads)
    tok, model = build()
    data = make_data(args.pairs)
    steps = args.epochs * (args.pairs // args.batch)
    cfg = OptimConfig(steps=steps, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup,
                      max_grad_norm=1.0, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as d:
        run = Run(d, "benchmark = true\n")
        t0 = time.perf_counter()
        policy = LanguagePolicy(model, tok)
        prompts = policy.encode([r["prompt"] for r in data])
        chosen = policy.encode_responses([r["chosen"] for r in data])
        rejected = policy.encode_responses([r["rejected"] for r in data])
        pairs = [(p, c[: MAX_LENGTH - len(p)], r[: MAX_LENGTH - len(p)]) for p, c, r in zip(prompts, chosen, rejected)]
        train_pairs(run, "dpo", policy, policy.reference(), pairs, dpo_loss, {"beta": 0.1}, cfg, seed=0, quiet=True)
        seconds = time.perf_counter() - t0
        losses = [m["loss"] for m in run.metrics("dpo")]
    return {"seconds": seconds, "samples": steps * args.batch, "losses": losses}


def run_trl(args) -> dict:
    import datasets
    import torch
    from trl import DPOConfig, DPOTrainer

    if args.imports_only:
        return imported()
    torch.set_num_threads(args.threads)
    tok, model = build()
    ref = build()[1].eval().requires_grad_(False)
    steps = args.epochs * (args.pairs // args.batch)
    with tempfile.TemporaryDirectory() as d:
        config = DPOConfig(
            output_dir=d, per_device_train_batch_size=args.batch, max_steps=steps, learning_rate=args.lr,
            warmup_steps=args.warmup, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
            weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], max_length=MAX_LENGTH,
            precompute_ref_log_probs=True, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
            bf16=False, seed=0, dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch_fused",
        )
        ds = datasets.Dataset.from_list(make_data(args.pairs))
        t0 = time.perf_counter()
        trainer = DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=ds, processing_class=tok)
        trainer.train()
        seconds = time.perf_counter() - t0
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "samples": steps * args.batch, "losses": losses}


def side(args) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sides.report_side((run_rlxf if args.side == "rlxf" else run_trl)(args))


def run_side(name: str, args, imports_only: bool = False) -> dict:
    return sides.run_side(__file__, name, args, ("pairs", "batch", "epochs", "lr", "warmup", "threads"), imports_only)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="runs per side, alternating; the fastest counts")
    p.add_argument("--side", choices=["rlxf", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        side(args)
        return
    base = {name: run_side(name, args, imports_only=True)["peak_rss_mb"] for name in ("trl", "rlxf")}
    print("import-only baseline peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in base.items()), flush=True)
    results: dict[str, dict] = {}
    peak = {name: float("inf") for name in base}  # each side's lowest peak RSS over its runs
    for rep in range(args.repeats):  # alternate the sides; keep each side's fastest run
        for name in ("trl", "rlxf"):
            r = run_side(name, args)
            print(f"run {rep + 1}/{args.repeats} {name}: {r['samples'] / r['seconds']:.1f} samples/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['peak_rss_mb'] - base[name]:.0f} MB above imports)", flush=True)
            if name not in results or r["seconds"] < results[name]["seconds"]:
                results[name] = r
            peak[name] = min(peak[name], r["peak_rss_mb"])
    for name, r in results.items():
        tail = r["losses"][-4:]
        print(f"{name:>5}: {r['samples'] / r['seconds']:8.1f} samples/s  ({r['samples']} samples in {r['seconds']:.2f} s)  "
              f"peak RSS {r['peak_rss_mb']:7.1f} MB ({r['peak_rss_mb'] - base[name]:.1f} above imports)  first loss {r['losses'][0]:.4f}  "
              f"final loss (mean of last {len(tail)}) {sum(tail) / len(tail):.4f}")
    for name, r in results.items():
        print(f"{name} loss curve: " + " ".join(f"{x:.3f}" for x in r["losses"]))
    speed = (results["rlxf"]["samples"] / results["rlxf"]["seconds"]) / (results["trl"]["samples"] / results["trl"]["seconds"])
    # memory from each side's lowest peak, not its fastest run's: peak RSS varies between runs for other
    # reasons than speed, and picking by speed made the ratio swing (1.60 against 1.23 on one log)
    print("lowest peak RSS: " + ", ".join(f"{k} {v:.1f} MB ({v - base[k]:.1f} above imports)" for k, v in peak.items()))
    total = peak["rlxf"] / peak["trl"]
    memory = (peak["rlxf"] - base["rlxf"]) / (peak["trl"] - base["trl"])
    print(f"speedup {speed:.2f} memory_ratio {memory:.2f} total_memory_ratio {total:.2f}")


if __name__ == "__main__":
    main()
