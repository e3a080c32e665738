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

With ``--model smollm2`` both sides train SmolLM2-135M-Instruct (rlxf through its own loader, TRL
from the float copy that loader caches, the same weights) on the chat prompts of
``examples/verifier/prompts.jsonl`` (rendered to text with the model's template) with the example
verifier ``examples/verifier/reward.py:correct`` as the reward, once fully fine-tuned and once with
LoRA (r 16, alpha 16, dropout 0.05, every linear layer of the blocks, on both sides through peft), or
only one with ``--tuning``; held-out gold is the verifier on the first ``--eval-prompts`` prompts of
``examples/verifier/eval.jsonl``. TRL's GRPO has no padding-free mode. Each configuration ends with
the line above plus ``flops_fraction F``: rlxf's model FLOP/s over the timed seconds (training
passes at :func:`sides.training_flops`, plus 2 per parameter and token for sampling, each prompt's
tokens counted once) over the FLOP/s of a float32 matmul of the hidden size measured in the same run.

    .venv/bin/python benchmarks/grpo_vs_trl.py --model smollm2 [--steps 3] [--batch 16] [--group 4] [--tuning both]
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


def held_out_gold(model, tok, args) -> list[float]:
    """Gold of one sample per held-out prompt (the first test prompts, fixed sampling seed): the hidden
    preference's gold on the tiny task, the example verifier on SmolLM2."""
    import torch

    from rlxf.policies.language import LanguagePolicy

    was_training = model.training
    policy = LanguagePolicy(model.eval(), tok)
    if args.model:
        rows = smollm2_rows(tok, "eval.jsonl", args.eval_prompts)
        prompts = [r["prompt"] for r in rows]
    else:
        t = task()
        policy.model.float()
        prompts = t.prompts("test")[:256]
    ro = policy.sample(policy.encode(prompts), n=1, max_new_tokens=args.new_tokens if args.model else 16,
                       generator=torch.Generator().manual_seed(5))
    model.train(was_training)
    texts = [policy.decode(r) for r in ro.response_ids]
    if args.model:
        return verifier()(prompts, texts, [r["answer"] for r in rows])
    return [float(t.gold(p, x, f)) for p, x, f in zip(prompts, texts, ro.finished)]


def verifier():
    """The example verifier, ``examples/verifier/reward.py:correct`` (TRL's reward signature)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_reward", sides.EXAMPLES / "verifier" / "reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.correct


def smollm2_rows(tokenizer, name: str, n: int | None = None) -> list[dict]:
    """Prompts of an example verifier file rendered to text, with their answers."""
    path = sides.EXAMPLES / "verifier" / name
    rows = sides.read_jsonl(path, n or 0)
    return [{"prompt": sides.chat_prompt(tokenizer, r["prompt"]), "answer": r["answer"]} for r in rows]


def run_rlxf(args) -> dict:
    from rlxf.algorithms.loop import OptimConfig
    from rlxf.algorithms.online.controller import KLSettings, OnlineConfig, train_online
    from rlxf.core.runs import Run
    from rlxf.policies.language import LanguagePolicy
    from rlxf.rewards.scoring import Scorer, text_reward

    if args.model:
        policy = sides.smollm2_policy(args.lora)
        rows = smollm2_rows(policy.tokenizer, "prompts.jsonl")
        texts = [r["prompt"] for r in rows]
        answer = {tuple(ids): r["answer"] for ids, r in zip(policy.encode(texts), rows)}
        correct = verifier()

        def reward(s) -> list[float]:  # the verifier on the decoded replies, with each prompt's answer
            return correct(None, [policy.decode(r) for r in s.response_ids], [answer[tuple(p)] for p in s.prompt_ids])
    else:
        t = task()
        policy = LanguagePolicy.from_pretrained(args.model_dir)
        texts = t.prompts("train")
        reward = text_reward(policy.decode, lambda p, r, f: t.gold(p, r, f))
    prompts = policy.encode(texts)
    scorer = Scorer({"gold": (reward, 1.0)})
    cfg = OnlineConfig(method="grpo", samples_per_prompt=args.group, max_new_tokens=args.new_tokens,
                       kl=KLSettings(mode="none", coef=0.0, monitor=False),  # TRL at beta 0 has no reference pass
                       optim=OptimConfig(steps=args.steps, batch_size=args.batch // args.group, lr=args.lr,
                                         max_grad_norm=1.0, checkpoint_every=0))
    tokens = {"train": 0, "sampled": 0}

    def count(batch) -> None:
        s = batch.samples
        tokens["train"] += sum(len(p) + len(r) for p, r in zip(s.prompt_ids, s.response_ids))
        tokens["sampled"] += sum(len(p) for p in s.prompt_ids[:: s.k]) + sum(len(r) for r in s.response_ids)

    with tempfile.TemporaryDirectory() as d:
        timer = sides.PhaseTimer(policy.model) if args.profile else None
        t0 = time.perf_counter()
        # at beta 0 nothing reads the reference (no KL, no monitor): the real model's side passes the policy
        # itself rather than building one, as TRL builds none
        ref = policy if args.model else policy.reference()
        train_online(Run(d, "benchmark = true\n"), "grpo", policy, ref, prompts, scorer, cfg, seed=0,
                     quiet=True, on_rollout=count)
        seconds = time.perf_counter() - t0
        phases = timer.close(seconds) if timer else None
    gold = held_out_gold(policy.model, policy.tokenizer, args)
    params = sum(p.numel() for n, p in policy.model.named_parameters() if "lora_" not in n)
    return {"seconds": seconds, "completions": args.steps * args.batch, "gold": sum(gold) / len(gold),
            "gold_per_prompt": gold, "tokens": tokens, "params": params, "phases": phases,
            "matmul_flops": sides.time_matmul(576, args.threads, 4096, 5) if args.model else None}


def run_trl(args) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    peft_config = sides.peft_lora_config(args.lora) if args.lora else None
    if args.model:
        ds = datasets.Dataset.from_list(smollm2_rows(tok, "prompts.jsonl"))
        reward = verifier()
    else:
        t = task()
        ds = datasets.Dataset.from_list([{"prompt": p} for p in t.prompts("train")])

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
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=ds, processing_class=tok,
                              peft_config=peft_config)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        gold = held_out_gold(trainer.model, tok, args)
        return {"seconds": seconds, "completions": args.steps * args.batch, "gold": sum(gold) / len(gold),
                "gold_per_prompt": gold}


def side(args) -> None:
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sides.report_side((run_rlxf if args.side == "rlxf" else run_trl)(args))


def run_side(name: str, args) -> dict:
    return sides.run_side(__file__, name, args, ("steps", "batch", "group", "new_tokens", "lr", "threads", "model",
                                                 "model_dir", "lora", "eval_prompts", "profile"))


def compare(args) -> dict[str, dict]:
    """Both sides ``args.repeats`` times, alternating; each side's fastest run."""
    return sides.alternate(lambda name: run_side(name, args), args.repeats,
                           lambda r: f"{r['completions'] / r['seconds']:.3g} completions/s, peak RSS "
                                     f"{r['peak_rss_mb']:.0f} MB, held-out gold {r['gold']:.3f}")[0]


def summary(best: dict[str, dict]) -> str:
    """The closing figures, and the last line's fields (without a newline)."""
    from rlxf.algorithms.evaluate import paired_gain

    rate = {k: v["completions"] / v["seconds"] for k, v in best.items()}
    print(f"rlxf {rate['rlxf']:.3g} completions/s, TRL {rate['trl']:.3g} completions/s")
    delta, se = paired_gain(best["rlxf"]["gold_per_prompt"], best["trl"]["gold_per_prompt"])
    print(f"held-out gold: rlxf {best['rlxf']['gold']:.3f}, TRL {best['trl']['gold']:.3f}; paired difference "
          f"{delta:+.3f} +- {se:.3f} (standard error over {len(best['rlxf']['gold_per_prompt'])} prompts, "
          f"one training run per side: seed-to-seed training variance is not in it)")
    return (f"speedup {rate['rlxf'] / rate['trl']:.2f} memory_ratio "
            f"{best['rlxf']['peak_rss_mb'] / best['trl']['peak_rss_mb']:.2f} gold_delta {delta:+.3f} gold_delta_se {se:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sides.add_model_options(p, "a briefly fine-tuned tiny GPT-2")
    p.add_argument("--steps", type=int, help="default 30 (tiny) or 3 (smollm2)")
    p.add_argument("--batch", type=int, help="completions per update; default 32 (tiny) or 16 (smollm2)")
    p.add_argument("--group", type=int, help="default 8 (tiny) or 4 (smollm2)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--lr", type=float, help="default 5e-4 (tiny) or 1e-6 (smollm2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sft-steps", type=int, default=150, help="the tiny model's fine-tuning before the runs")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts with --model smollm2")
    p.add_argument("--repeats", type=int, default=1, help="runs per side, alternating; the fastest counts")
    p.add_argument("--side", choices=["rlxf", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()
    sides.fill_defaults(args, dict(steps=30, batch=32, group=8, lr=5e-4), dict(steps=3, batch=16, group=4, lr=1e-6))
    if args.batch % args.group:
        sys.exit(f"--batch ({args.batch}) must be a multiple of --group ({args.group})")
    if args.side:
        side(args)
        return
    if not args.model:
        with tempfile.TemporaryDirectory() as d:
            args.model_dir = os.path.join(d, "model")
            prepare(args.model_dir, args.sft_steps, args.threads)
            print(summary(compare(args)))
        return
    for _ in sides.configurations(args, f"{args.steps} steps of {args.batch} completions (groups of "
                                             f"{args.group}, {args.new_tokens} new tokens)"):
        best = compare(args)
        r = best["rlxf"]
        limit = r["matmul_flops"]
        flops = (sides.training_flops(r["params"], r["tokens"]["train"], bool(args.lora))
                 + 2 * r["params"] * r["tokens"]["sampled"])
        print(f"rlxf: {r['tokens']['train']} trained tokens, {r['tokens']['sampled']} sampled (prompts once), "
              f"{r['params'] / 1e6:.1f} M parameters, {flops / r['seconds'] / 1e9:.2f} GFLOP/s; the matmul right after "
              f"it: {limit / 1e9:.1f} GFLOP/s")
        if r["phases"]:
            sides.print_phases("rlxf", r["phases"])
        print(f"{summary(best)} flops_fraction {flops / r['seconds'] / limit:.3f}", flush=True)


if __name__ == "__main__":
    main()
