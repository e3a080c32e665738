"""CriticBench with trained verifiers: does critique accuracy rise with the critic's size, and is it
lowest where the policy is least certain? And does self-check with a trained verifier beat majority
voting?

A weak arithmetic prover (the tests' ``arith_prover`` recipe) samples ``k`` answers per problem;
tiny critic LMs of each size are SFT'd on its samples of train problems labelled by gold verdicts,
then judged on its samples of held-out problems (by difficulty and certainty bucket) and on the
bench's right / subtly wrong answers, and used for self-check. Prints one JSON object.

    python benchmarks/criticbench_verifiers.py --sizes 1x32,2x64
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np

from rlxf.algorithms.critique.criticbench import (accuracy_by_certainty, criticbench, paired_gain, policy_items,
                                                  self_check, train_verifier)
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.critique.bench import arithmetic_items
from rlxf.lab.rlvr import sample_responses, train_prover
from rlxf.tasks.arithmetic import ArithmeticTask


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1x32,2x64", help="critic sizes, LAYERSxWIDTH, comma-separated")
    ap.add_argument("--train-problems", type=int, default=1000)
    ap.add_argument("--test-problems", type=int, default=500)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    task = ArithmeticTask(seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(tmp, "criticbench verifiers", fresh=True)
        prover = train_prover(run, task, OptimConfig(steps=1000, batch_size=32, lr=3e-3, checkpoint_every=10**6),
                              corpus_size=4000, seed=args.seed)
        train_q, test_q = task.prompts(args.train_problems, "train"), task.prompts(args.test_problems, "test")
        train_items = policy_items(train_q, sample_responses(prover, train_q, args.k, args.seed + 1))
        test_samples = sample_responses(prover, test_q, args.k, args.seed)
        test_items, bench = policy_items(test_q, test_samples), arithmetic_items(600, seed=args.seed + 1)
        out = {"train_rows": len(train_items), "train_correct_share": float(np.mean([i.correct for i in train_items])),
               "critics": {}}
        for n_layer, n_embd in sizes:
            cfg = OptimConfig(steps=args.steps, batch_size=32, lr=3e-3, checkpoint_every=10**6)
            critic = train_verifier(run, f"verifier_{n_layer}x{n_embd}", train_items, cfg, n_layer, n_embd, args.seed)
            r = self_check(critic, test_q, test_samples, threshold=1.0)
            out["critics"][f"{n_layer}x{n_embd}"] = {
                "own_samples": criticbench(critic, test_items), "bench": criticbench(critic, bench),
                "self_check": {k: float(np.mean(r[k])) for k in ("self_check", "majority", "single")},
                "gain_vs_majority": paired_gain(r["self_check"], r["majority"]),
                "gain_vs_single": paired_gain(r["self_check"], r["single"]),
                "self_check_by_certainty": accuracy_by_certainty(r, "self_check"),
                "majority_by_certainty": accuracy_by_certainty(r, "majority")}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
