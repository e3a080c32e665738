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

With ``--model smollm2`` both sides train SmolLM2-135M-Instruct (rlxf through its own loader, TRL
from the float copy that loader caches, the same weights) on the first ``--pairs`` capital-city
pairs of ``examples/prefs/train.jsonl`` (chat prompts rendered to text with the model's template),
in float32 on the CPU, once fully fine-tuned and once with LoRA (r 16, alpha 16, dropout 0.05, every
linear layer of the blocks, on both sides through peft), or only one with ``--tuning``. Reference
log-probs are precomputed on both sides from the initial weights (rlxf scores the policy itself
before its first step, as TRL does without a ``ref_model``). TRL's ``padding_free`` is not used:
TRL 1.16 switches it off with a warning since its DPO rewrite; rlxf packs pairs without padding.
Each configuration ends with the line above plus ``flops_fraction F``: rlxf's training FLOP/s
(:func:`sides.training_flops` of the tokens its packed pairs put through the model, each prompt once,
over the timed seconds; the reference pass is not counted) over the FLOP/s of a float32 matmul of
the hidden size measured in the same run.

    .venv/bin/python benchmarks/dpo_vs_trl.py --model smollm2 [--pairs 32] [--batch 8] [--tuning both]
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
SMOLLM2_MAX_LENGTH = 128


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


def smollm2_data(tokenizer, n: int) -> list[dict]:
    """The first ``n`` pairs of the example preference file, the chat prompt rendered to text."""
    rows = sides.read_jsonl(sides.EXAMPLES / "prefs" / "train.jsonl", n)
    return [{"prompt": sides.chat_prompt(tokenizer, r["prompt"]), "chosen": r["chosen"][-1]["content"],
             "rejected": r["rejected"][-1]["content"]} for r in rows]


def max_length_of(args) -> int:
    return SMOLLM2_MAX_LENGTH if args.model else MAX_LENGTH


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
        if args.model:
            import rlxf.policies.loading  # noqa: F401
        return imported()
    torch.set_num_threads(args.threads)
    if args.model:
        policy = sides.smollm2_policy(args.lora)
        data = smollm2_data(policy.tokenizer, args.pairs)
    else:
        tok, model = build()
        policy = LanguagePolicy(model, tok)
        data = make_data(args.pairs)
    max_length = max_length_of(args)
    steps = args.epochs * (args.pairs // args.batch)
    cfg = OptimConfig(steps=steps, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup,
                      max_grad_norm=1.0, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as d:
        run = Run(d, "benchmark = true\n")
        timer = sides.PhaseTimer(policy.model) if args.profile else None
        t0 = time.perf_counter()
        prompts = policy.encode([r["prompt"] for r in data])
        chosen = policy.encode_responses([r["chosen"] for r in data])
        rejected = policy.encode_responses([r["rejected"] for r in data])
        pairs = [(p, c[: max_length - len(p)], r[: max_length - len(p)]) for p, c, r in zip(prompts, chosen, rejected)]
        # with reference log-probs precomputed, the reference is only read before the first step: the real
        # model's side scores the policy itself then (as TRL does), the tiny side a frozen copy
        ref = policy if args.model else policy.reference()
        train_pairs(run, "dpo", policy, ref, pairs, dpo_loss, {"beta": 0.1}, cfg, seed=0, quiet=True)
        seconds = time.perf_counter() - t0
        phases = timer.close(seconds) if timer else None
        losses = [m["loss"] for m in run.metrics("dpo")]
    trained = pairs[: (args.pairs // args.batch) * args.batch]
    # the tokens rlxf's packed pairs put through the model: each prompt once, then both responses
    tokens = args.epochs * sum(len(p) + len(c) + len(r) for p, c, r in trained)
    params = sum(p.numel() for n, p in policy.model.named_parameters() if "lora_" not in n)
    limit = sides.time_matmul(576, args.threads, 4096, 5) if args.model else None  # right after, on the same load
    return {"seconds": seconds, "samples": steps * args.batch, "losses": losses, "tokens": tokens, "params": params,
            "phases": phases, "matmul_flops": limit}


def run_trl(args) -> dict:
    import datasets
    import torch
    from trl import DPOConfig, DPOTrainer

    if args.imports_only:
        if args.model:
            import peft  # noqa: F401
        return imported()
    torch.set_num_threads(args.threads)
    peft_config = None
    if args.model:  # the same float weights rlxf's loader reads; TRL makes no reference copy when precomputing
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, local_files_only=True, dtype=torch.float32)
        ref, data = None, smollm2_data(tok, args.pairs)
        peft_config = sides.peft_lora_config(args.lora) if args.lora else None
    else:
        tok, model = build()
        ref, data = build()[1].eval().requires_grad_(False), make_data(args.pairs)
    steps = args.epochs * (args.pairs // args.batch)
    with tempfile.TemporaryDirectory() as d:
        config = DPOConfig(
            output_dir=d, per_device_train_batch_size=args.batch, max_steps=steps, learning_rate=args.lr,
            warmup_steps=args.warmup, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
            weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], max_length=max_length_of(args),
            precompute_ref_log_probs=True, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
            bf16=False, seed=0, dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch_fused",
        )
        ds = datasets.Dataset.from_list(data)
        t0 = time.perf_counter()
        trainer = DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=ds, processing_class=tok,
                             peft_config=peft_config)
        trainer.train()
        seconds = time.perf_counter() - t0
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "samples": steps * args.batch, "losses": losses}


def side(args) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sides.report_side((run_rlxf if args.side == "rlxf" else run_trl)(args))


def run_side(name: str, args, imports_only: bool = False) -> dict:
    return sides.run_side(__file__, name, args, ("pairs", "batch", "epochs", "lr", "warmup", "threads", "model",
                                                 "model_dir", "lora", "profile"), imports_only)


def compare(args) -> tuple[dict, dict]:
    """Both sides ``args.repeats`` times, alternating: each side's fastest run, and its lowest peak RSS."""
    base = {name: run_side(name, args, imports_only=True)["peak_rss_mb"] for name in ("trl", "rlxf")}
    print("import-only baseline peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in base.items()), flush=True)
    results, peak = sides.alternate(
        lambda name: run_side(name, args), args.repeats,
        lambda r: f"{r['samples'] / r['seconds']:.3g} samples/s, peak RSS {r['peak_rss_mb']:.0f} MB")
    for name, r in results.items():
        tail = r["losses"][-4:]
        print(f"{name:>5}: {r['samples'] / r['seconds']:8.3g} samples/s  ({r['samples']} samples in {r['seconds']:.2f} s)  "
              f"peak RSS {r['peak_rss_mb']:7.1f} MB ({r['peak_rss_mb'] - base[name]:.1f} above imports)  first loss {r['losses'][0]:.4f}  "
              f"final loss (mean of last {len(tail)}) {sum(tail) / len(tail):.4f}")
    for name, r in results.items():
        print(f"{name} loss curve: " + " ".join(f"{x:.3f}" for x in r["losses"]))
    # memory from each side's lowest peak, not its fastest run's: peak RSS varies between runs for other
    # reasons than speed, and picking by speed made the ratio swing (1.60 against 1.23 on one log)
    print("lowest peak RSS: " + ", ".join(f"{k} {v:.1f} MB ({v - base[k]:.1f} above imports)" for k, v in peak.items()))
    return results, {k: (v, base[k]) for k, v in peak.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sides.add_model_options(p, "a fresh tiny GPT-2")
    p.add_argument("--pairs", type=int, help="default 512 (tiny) or 32 (smollm2)")
    p.add_argument("--batch", type=int, help="default 32 (tiny) or 8 (smollm2)")
    p.add_argument("--epochs", type=int, help="default 2 (tiny) or 1 (smollm2)")
    p.add_argument("--lr", type=float, help="default 5e-4 (tiny) or 1e-5 (smollm2)")
    p.add_argument("--warmup", type=int, help="default 2 (tiny) or 1 (smollm2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, help="runs per side, alternating; the fastest counts (default 2 tiny, 1 smollm2)")
    p.add_argument("--side", choices=["rlxf", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    sides.fill_defaults(args, dict(pairs=512, batch=32, epochs=2, lr=5e-4, warmup=2, repeats=2),
                        dict(pairs=32, batch=8, epochs=1, lr=1e-5, warmup=1, repeats=1))
    if args.side:
        side(args)
        return
    if not args.model:
        results, peak = compare(args)
        print(f"speedup {speedup(results):.2f} memory_ratio {memory_ratios(peak)[0]:.2f} "
              f"total_memory_ratio {memory_ratios(peak)[1]:.2f}")
        return
    for _ in sides.configurations(args, f"{args.pairs} pairs, batch {args.batch}, {args.epochs} epoch(s)"):
        results, peak = compare(args)
        r = results["rlxf"]
        limit = r["matmul_flops"]
        achieved = sides.training_flops(r["params"], r["tokens"], bool(args.lora)) / r["seconds"]
        print(f"rlxf: {r['tokens']} trained tokens, {r['params'] / 1e6:.1f} M parameters, "
              f"{achieved / 1e9:.2f} GFLOP/s of training; the matmul right after it: {limit / 1e9:.1f} GFLOP/s")
        if r["phases"]:
            sides.print_phases("rlxf", r["phases"])
        print(f"speedup {speedup(results):.2f} memory_ratio {memory_ratios(peak)[0]:.2f} "
              f"total_memory_ratio {memory_ratios(peak)[1]:.2f} flops_fraction {achieved / limit:.3f}", flush=True)


def speedup(results: dict) -> float:
    """rlxf's samples/s over TRL's."""
    rate = {k: r["samples"] / r["seconds"] for k, r in results.items()}
    return rate["rlxf"] / rate["trl"]


def memory_ratios(peak: dict) -> tuple[float, float]:
    """rlxf over TRL: peak RSS above the import-only baseline, and the whole peak RSS."""
    (r, rb), (t, tb) = peak["rlxf"], peak["trl"]
    return (r - rb) / (t - tb), r / t


if __name__ == "__main__":
    main()
