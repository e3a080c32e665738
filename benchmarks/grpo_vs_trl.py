"""rlxf GRPO against TRL's GRPOTrainer: same tiny model, prompts, reward, group size and updates.

The parent process fine-tunes a small GPT-2 on the hidden-preference task's corpus for a few
steps and saves it with ``save_pretrained`` (TRL loads its reference by path). Each side then
runs in its own subprocess (so each peak-memory figure is that side's alone) from that
directory: the same train prompts, the task's gold reward as the reward function, group size
``--group``, ``--batch`` completions per update, ``--steps`` updates, ``--new-tokens`` new
tokens at temperature 1, AdamW at the same learning rate with cosine decay to 10%, gradient
clipping at 1.0, no KL term (beta 0) and so no reference pass on either side, the GRPO loss with std-scaled group advantages and one
update per generation. Timed: training only (model loading excluded). Gold after training: the
same evaluation code on both sides (one sample per held-out prompt, fixed seed).

    .venv/bin/python benchmarks/grpo_vs_trl.py [--steps 30] [--batch 32] [--group 8] [--repeats 1]

The last line reads ``speedup X memory_ratio Y gold_delta Z gold_delta_se S``: rlxf's
completions/second over TRL's, rlxf's peak RSS over TRL's, rlxf's held-out gold minus TRL's, and
that difference's standard error (paired over the held-out prompts, which both sides answer; it
covers sampling noise in the evaluation, not the spread between training seeds).
"""

from __future__ import annotations

import argparse
import os
import sides  # benchmarks/sides.py: this directory is on sys.path when a script runs
import sys
import tempfile
import time


def task():
    from rlxf.tasks.hidden_pref import HiddenPreferenceTask

    return HiddenPreferenceTask()


def prepare(path: str, sft_steps: int, threads: int) -> None:
    """A briefly fine-tuned tiny GPT-2 saved at ``path`` (model and tokenizer)."""
    import torch

    from rlxf.algorithms.loop import OptimConfig
    from rlxf.algorithms.sft import train_sft
    from rlxf.core.runs import Run
    from rlxf.policies.language import LanguagePolicy
    from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(threads)
    t = task()
    tok = tiny_tokenizer(t.vocabulary())
    policy = LanguagePolicy(tiny_causal_lm(tok, "gpt2", 2, 64, 4, 64, seed=0), tok)
    corpus = t.corpus(4000, seed=0)
    with tempfile.TemporaryDirectory() as d:
        train_sft(Run(d, "sft = true\n"), "sft", policy, policy.encode([s.prompt for s in corpus]),
                  policy.encode_responses([s.response for s in corpus]),
                  OptimConfig(steps=sft_steps, batch_size=64, lr=3e-3, warmup_steps=10, checkpoint_every=0), 0, True)
    policy.save_pretrained(path)


def held_out_gold(model, tok, n: int = 256) -> list[float]:
    """Gold of one sample per held-out prompt (the first ``n`` test prompts, fixed sampling seed)."""
    import torch

    from rlxf.policies.language import LanguagePolicy

    t = task()
    policy = LanguagePolicy(model.float().eval(), tok)
    prompts = t.prompts("test")[:n]
    ro = policy.sample(policy.encode(prompts), n=1, max_new_tokens=16, generator=torch.Generator().manual_seed(5))
    return [float(t.gold(p, policy.decode(r), f)) for p, r, f in zip(prompts, ro.response_ids, ro.finished)]


def run_rlxf(args) -> dict:
    from rlxf.algorithms.loop import OptimConfig
    from rlxf.algorithms.online.controller import KLSettings, OnlineConfig, train_online
    from rlxf.core.runs import Run
    from rlxf.policies.language import LanguagePolicy
    from rlxf.rewards.scoring import Scorer, text_reward

    t = task()
    policy = LanguagePolicy.from_pretrained(args.model)
    prompts = policy.encode(t.prompts("train"))
    scorer = Scorer({"gold": (text_reward(policy.decode, lambda p, r, f: t.gold(p, r, f)), 1.0)})
    cfg = OnlineConfig(method="grpo", samples_per_prompt=args.group, max_new_tokens=args.new_tokens,
                       kl=KLSettings(mode="none", coef=0.0, monitor=False),  # TRL at beta 0 has no reference pass
                       optim=OptimConfig(steps=args.steps, batch_size=args.batch // args.group, lr=args.lr,
                                         max_grad_norm=1.0, checkpoint_every=0))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        train_online(Run(d, "benchmark = true\n"), "grpo", policy, policy.reference(), prompts, scorer, cfg, seed=0,
                     quiet=True)
        seconds = time.perf_counter() - t0
    gold = held_out_gold(policy.model, policy.tokenizer)
    return {"seconds": seconds, "completions": args.steps * args.batch, "gold": sum(gold) / len(gold),
            "gold_per_prompt": gold}


def run_trl(args) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    t = task()
    tok = AutoTokenizer.from_pretrained(args.model)

    def reward(prompts, completions, **_kw):
        return [t.gold(p.strip(), c.strip(), True) for p, c in zip(prompts, completions)]

    with tempfile.TemporaryDirectory() as d:
        config = GRPOConfig(
            output_dir=d, per_device_train_batch_size=args.batch, num_generations=args.group,
            max_completion_length=args.new_tokens, max_steps=args.steps, learning_rate=args.lr, beta=0.0,
            loss_type="grpo", num_iterations=1, temperature=1.0, top_p=1.0, max_grad_norm=1.0,
            lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0,
            logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=0,
            dataloader_num_workers=0, disable_tqdm=True,
        )
        ds = datasets.Dataset.from_list([{"prompt": p} for p in t.prompts("train")])
        model = AutoModelForCausalLM.from_pretrained(args.model)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=ds, processing_class=tok)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        gold = held_out_gold(trainer.model, tok)
        return {"seconds": seconds, "completions": args.steps * args.batch, "gold": sum(gold) / len(gold),
                "gold_per_prompt": gold}


def side(args) -> None:
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sides.report_side((run_rlxf if args.side == "rlxf" else run_trl)(args))


def run_side(name: str, args) -> dict:
    return sides.run_side(__file__, name, args, ("steps", "batch", "group", "new_tokens", "lr", "threads", "model"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32, help="completions per update")
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sft-steps", type=int, default=150)
    p.add_argument("--repeats", type=int, default=1, help="runs per side, alternating; the fastest counts")
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=["rlxf", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batch % args.group:
        sys.exit(f"--batch ({args.batch}) must be a multiple of --group ({args.group})")
    if args.side:
        side(args)
        return
    with tempfile.TemporaryDirectory() as d:
        args.model = os.path.join(d, "model")
        prepare(args.model, args.sft_steps, args.threads)
        best: dict[str, dict] = {}
        for rep in range(args.repeats):
            for name in ("trl", "rlxf"):
                r = run_side(name, args)
                print(f"run {rep + 1}/{args.repeats} {name}: {r['completions'] / r['seconds']:.1f} completions/s, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB, held-out gold {r['gold']:.3f}", flush=True)
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = r
    rate = {k: v["completions"] / v["seconds"] for k, v in best.items()}
    print(f"rlxf {rate['rlxf']:.1f} completions/s, TRL {rate['trl']:.1f} completions/s")
    from rlxf.algorithms.evaluate import paired_gain

    delta, se = paired_gain(best["rlxf"]["gold_per_prompt"], best["trl"]["gold_per_prompt"])
    print(f"held-out gold: rlxf {best['rlxf']['gold']:.3f}, TRL {best['trl']['gold']:.3f}; paired difference "
          f"{delta:+.3f} +- {se:.3f} (standard error over {len(best['rlxf']['gold_per_prompt'])} prompts, "
          f"one training run per side: seed-to-seed training variance is not in it)")
    print(f"speedup {rate['rlxf'] / rate['trl']:.2f} memory_ratio "
          f"{best['rlxf']['peak_rss_mb'] / best['trl']['peak_rss_mb']:.2f} gold_delta {delta:+.3f} gold_delta_se {se:.3f}")


if __name__ == "__main__":
    main()
