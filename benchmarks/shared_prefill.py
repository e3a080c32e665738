"""Sampling time on a real model with and without a shared prefill, in one process.

Samples ``--samples-per-prompt`` responses of ``--new-tokens`` tokens for each of ``--prompts``
chat-rendered questions, first the old way (every sample prefills its own copy of the prompt, and the
prefill computes logits at every prompt position), then with one prefill per distinct prompt whose
key/value cache is copied to the prompt's samples, alternating ``--repeats`` times; each way's fastest
run counts. With the same seed both ways draw the same tokens, which the script checks.

    .venv/bin/python benchmarks/shared_prefill.py [--model smollm2 | DIR] [--prompts 24] [--samples-per-prompt 4]

The last line reads ``before_s B after_s A speedup X``.
"""

from __future__ import annotations

import argparse
import time

COUNTRIES = ["Kenya", "Peru", "Norway", "Vietnam", "Chile", "Poland", "Egypt", "Canada", "Japan", "Ghana",
             "Spain", "Nepal", "Cuba", "Iran", "Mali", "Fiji", "Laos", "Oman", "Chad", "Iraq", "Togo", "Qatar",
             "Sweden", "Greece", "Ireland", "Jordan", "Morocco", "Austria", "Bolivia", "Senegal", "Finland", "Uganda"]


def load(spec: str):
    """A LanguagePolicy of SmolLM2 (``smollm2``, through rlxf's loader) or of a local HF directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlxf.policies.language import LanguagePolicy

    if spec == "smollm2":
        from rlxf.policies.loading import ModelSettings, load_policy

        return load_policy(ModelSettings(path=spec, dtype="float32"))
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32, local_files_only=True)
    return LanguagePolicy(model.eval(), AutoTokenizer.from_pretrained(spec, local_files_only=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="smollm2 or a local HF model directory")
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    policy = load(args.model)
    tok = policy.tokenizer
    questions = [f"What is the capital of {c}?" for c in COUNTRIES[: args.prompts]]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
               for q in questions]
    ids = policy.encode(prompts)
    print(f"{len(ids)} prompts of {min(map(len, ids))}-{max(map(len, ids))} tokens, "
          f"{args.samples_per_prompt} samples each, {args.new_tokens} new tokens", flush=True)
    keep_last = policy._keeps_logits
    best: dict[str, float] = {}
    tokens: dict[str, list] = {}
    for rep in range(args.repeats):
        for way in ("before", "after"):
            policy.share_prefill = way == "after"
            policy._keeps_logits = keep_last and way == "after"
            t0 = time.perf_counter()
            ro = policy.sample(ids, n=args.samples_per_prompt, max_new_tokens=args.new_tokens,
                               generator=torch.Generator().manual_seed(args.seed))
            seconds = time.perf_counter() - t0
            tokens[way] = ro.response_ids
            best[way] = min(best.get(way, float("inf")), seconds)
            print(f"run {rep + 1}/{args.repeats} {way}: {len(ro.response_ids)} samples in {seconds:.1f} s", flush=True)
    same = sum(a == b for a, b in zip(tokens["before"], tokens["after"]))
    print(f"same tokens both ways: {same}/{len(tokens['after'])} samples")
    print(f"example: {questions[0]!r} -> {policy.decode(tokens['after'][0])!r}")
    print(f"before_s {best['before']:.1f} after_s {best['after']:.1f} speedup {best['before'] / best['after']:.2f}")


if __name__ == "__main__":
    main()
