"""Expansions per second of rlxf's batched search core against one ``generate`` call per node.

A tree level of ``--nodes`` nodes (arithmetic problems with 0-2 worked steps already written, so
prefixes differ in length) is expanded into ``--k`` children each, a child being one step that
ends at a newline, at EOS or after ``--step-tokens`` tokens. rlxf expands the whole level in one
sampling call (:class:`rlxf.search.Expander`: each prefix prefilled once, its cache shared by its
``k`` samples); the baseline loops over the nodes with one Hugging Face ``model.generate`` call
each (``num_return_sequences = k``, the same stop tokens and step limit). Both use the same model
and threads, alternating ``--repeats`` times; each side's fastest run counts, in wall-clock seconds
and in CPU seconds of this process (which a busy shared machine disturbs less). A third line runs
rlxf's batching through the model's Hugging Face forward instead of its lean GPT-2 decoder, to
show how much of the ratio is batching alone (GPT-2 models only; others already use that forward).

    .venv/bin/python benchmarks/mcts_throughput.py [--model tiny | smollm2 | DIR] [--nodes 32] [--k 4]

The last line reads ``expansions_per_s X baseline_expansions_per_s Y ratio Z cpu_ratio W``.
"""

from __future__ import annotations

import argparse
import time


def load(spec: str, seed: int, device: str = "cpu"):
    """A LanguagePolicy: ``tiny`` (a 4-layer character GPT-2 over the arithmetic alphabet, random
    weights: speed does not depend on training), ``smollm2``, or a local HF model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlxf.policies.language import LanguagePolicy

    if spec == "tiny":
        from rlxf.lab.rlvr import arithmetic_tokenizer
        from rlxf.policies.tiny import tiny_causal_lm

        tok = arithmetic_tokenizer()
        return LanguagePolicy(tiny_causal_lm(tok, n_layer=4, n_embd=128, n_head=4, max_positions=256, seed=seed), tok,
                              device)
    if spec == "smollm2":
        from rlxf.policies.loading import ModelSettings, load_policy

        return load_policy(ModelSettings(path=spec, dtype="float32", device=device))
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32, local_files_only=True)
    return LanguagePolicy(model.eval(), AutoTokenizer.from_pretrained(spec, local_files_only=True), device)


def level(policy, nodes: int):
    """``nodes`` (tree, node) items: distinct arithmetic problems, node i holding i % 3 canonical steps."""
    from rlxf.search import Tree
    from rlxf.tasks.arithmetic import ArithmeticTask, solve

    items = []
    for i, problem in enumerate(ArithmeticTask(seed=0).prompts(nodes)):
        tree = Tree(problem, policy.encode([problem])[0])
        node = tree.root
        for line in solve(problem).split("\n")[: i % 3]:
            text = line + "\n"
            node = tree.add(node, ids=policy.encode([text])[0], text=text)
        items.append((tree, node))
    return items


def generate_loop(policy, items, k: int, step_tokens: int, stop_ids, seed: int) -> int:
    """One ``generate`` per node; returns the number of children sampled and their tokens (up to the stop)."""
    import torch

    torch.manual_seed(seed)
    eos = [policy.tokenizer.eos_token_id, *stop_ids]
    n = made = 0
    for tree, node in items:
        ids = torch.tensor([tree.prefix_ids(node)], device=policy.device)
        out = policy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                    num_return_sequences=k, max_new_tokens=step_tokens, eos_token_id=eos,
                                    pad_token_id=policy.tokenizer.pad_token_id)
        n += out.shape[0]
        for row in out[:, ids.shape[1]:].tolist():
            stop = next((i for i, t in enumerate(row) if t in eos), len(row) - 1)
            made += stop + 1
    return n, made


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny, smollm2 or a local HF model directory")
    p.add_argument("--nodes", type=int, default=32, help="nodes in the tree level")
    p.add_argument("--k", type=int, default=4, help="children sampled per node")
    p.add_argument("--step-tokens", type=int, default=12, help="most tokens in one step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda untested: no GPU where this was written)")
    args = p.parse_args()
    import torch

    from rlxf.policies.fast_decode import supports
    from rlxf.search import Expander, delimiter_steps

    torch.set_num_threads(args.threads)
    policy = load(args.model, args.seed, args.device)
    policy.model.eval()
    split = delimiter_steps(policy.tokenizer, "\n", args.step_tokens)
    print(f"model {args.model}: {args.nodes} nodes x {args.k} children, steps of at most {args.step_tokens} tokens, "
          f"{args.threads} thread(s)", flush=True)
    sides = {"rlxf": "rlxf batched level", "rlxf_hf": "rlxf batched, HF fwd", "generate": "generate per node"}
    if not supports(policy.model):  # rlxf already samples through the HF forward: no third side
        del sides["rlxf_hf"]

    def run(side: str, rep: int) -> tuple[int, int]:
        """One level expanded by ``side``: (expansions, sampled tokens)."""
        items = level(policy, args.nodes)
        if side == "generate":
            return generate_loop(policy, items, args.k, args.step_tokens, split.stop_ids, args.seed + rep)
        policy.fast_decode = side == "rlxf"  # rlxf_hf: the same batching through the model's HF forward
        Expander(policy, split, k=args.k, seed=args.seed + rep).expand(items)
        assert all(t.compute.sample_calls == 1 for t, _ in items)
        return sum(t.compute.generations for t, _ in items), sum(t.compute.sampled_tokens for t, _ in items)

    wall = {side: float("inf") for side in sides}
    cpu = dict(wall)
    count, tokens = {}, {}
    for rep in range(args.repeats):
        for side, name in sides.items():
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                count[side], tokens[side] = run(side, rep)
            if policy.device.type == "cuda":
                torch.cuda.synchronize()
            w, c = time.perf_counter() - t0, time.process_time() - c0
            wall[side], cpu[side] = min(wall[side], w), min(cpu[side], c)
            print(f"run {rep + 1}/{args.repeats} {name}: {count[side]} expansions ({tokens[side]} tokens) "
                  f"in {w:.2f} s wall, {c:.2f} s CPU", flush=True)
    rate = {side: count[side] / wall[side] for side in sides}
    cpu_rate = {side: count[side] / cpu[side] for side in sides}
    print(f"{'side':<24}{'expansions':>11}{'tokens':>8}{'wall_s':>9}{'cpu_s':>9}{'expansions_per_s':>18}"
          f"{'per_cpu_s':>11}")
    for side, name in sides.items():
        print(f"{name:<24}{count[side]:>11}{tokens[side]:>8}{wall[side]:>9.3f}{cpu[side]:>9.3f}{rate[side]:>18.1f}"
              f"{cpu_rate[side]:>11.1f}")
    if "rlxf_hf" in sides:
        print(f"batching alone (rlxf through the HF forward vs generate per node): "
              f"{rate['rlxf_hf'] / rate['generate']:.2f}x wall, {cpu_rate['rlxf_hf'] / cpu_rate['generate']:.2f}x CPU")
    print(f"expansions_per_s {rate['rlxf']:.1f} baseline_expansions_per_s {rate['generate']:.1f} "
          f"ratio {rate['rlxf'] / rate['generate']:.2f} cpu_ratio {cpu_rate['rlxf'] / cpu_rate['generate']:.2f}")


if __name__ == "__main__":
    main()
