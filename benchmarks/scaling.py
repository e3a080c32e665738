"""Samples/s as rlxf scales out on Ray: the data-parallel learner, rollout actors, and an estimate for many nodes.

Three parts, in one run:

1. **Learner.** SFT of a freshly initialised GPT-2 (``--layers`` x ``--width``) on random word strings, the
   same global batch and steps, once as 1 learner worker with 2 torch threads (the loop in this process) and
   once as 2 Ray Train workers with 1 thread each (``run.executor = "ray"``, ``run.learner_workers = 2``),
   and once as 1 worker with 1 thread (what both double), alternating ``--repeats`` times; each
   configuration's fastest run counts. Then the same 2-worker loop in 2 plain processes of a gloo group
   (no Ray), with its collectives timed after a barrier: their share of the loop's time is the
   data-parallel overhead itself, which the machine's load and torch's threads disturb far less than
   the ratio of rates (the time a rank waits at the barrier for the other is printed apart). Samples/s is the steady rate:
   a thread stamps each metrics line as rank 0 writes it, and the rate runs from the end of step
   ``--warmup-steps`` to the last step, so Ray Train's start-up (about 12 s on 2 cores) is not counted.
2. **Rollout actors.** Samples/s of ``executor.sample`` with 1, 2 and 4 rollout actors
   (``run.rollout_workers``, each reserving ``run.rollout_cpus`` of a CPU and running ``--actor-threads``
   torch threads) on the same prompts and seed, after one untimed call that starts the actors and ships
   the weights; the fastest of ``--repeats`` calls counts.
3. **Estimate for several nodes** (printed as an estimate, nothing multi-node is run): the compute seconds
   of one training step of SmolLM2-135M measured here (``--estimate-batch`` sequences of
   ``--estimate-tokens`` tokens per node; a 1B model's step is taken as that time x 1e9 / 135M, training
   FLOPs growing with the parameters at a fixed token count), plus the time of a ring all-reduce of the
   float32 gradients, :func:`ring_allreduce_s`. Every node keeps its own batch (the global batch grows
   with the nodes), and the all-reduce is not overlapped with the backward pass, which is what rlxf's
   learner does (one bucketed all-reduce per optimiser step, after accumulation).

On a CUDA GPU parts 1 and 3 run again on it (part 1 needs 2 GPUs, one per worker); without one they
are skipped with the reason printed. Every timed run prints the machine's load average: on a shared
machine torch's 2-thread kernels slow down far more than two 1-thread processes when the cores are
busy, so the learner ratio is only meaningful on a quiet machine.

    .venv/bin/python benchmarks/scaling.py [--steps 20] [--repeats 2] [--estimate-model smollm2 | none]

The last line reads ``learner_ratio X comm_share C rollout_2_over_1 Y rollout_4_over_1 Z``: samples/s of 2
workers x 1 thread over 1 worker x 2 threads (the goal is X >= 0.9, i.e. at most 10% overhead for data
parallelism), the collectives' share of the 2-worker loop (C <= 0.1 is the same goal, measured
directly), and samples/s of 2 and 4 rollout actors over 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import threading
import time
from pathlib import Path

WORDS = [f"w{i}" for i in range(96)]
BANDWIDTHS_GBIT = (10, 100)
NODES = (1, 2, 4, 8, 16)
LATENCY_S = 100e-6  # one message between two nodes over TCP (stated, not measured)
BUCKET_BYTES = 25 * 2**20  # gradients travel in buckets of this size, each paying the latency term
SMOLLM2_PARAMS = 134_515_008
ONE_B_PARAMS = 1_000_000_000


# -- the estimate -------------------------------------------------------------------------------------

def ring_allreduce_s(grad_bytes: float, nodes: int, gbit_per_s: float, latency_s: float = LATENCY_S,
                     bucket_bytes: float = BUCKET_BYTES) -> float:
    """Seconds of a ring all-reduce of ``grad_bytes`` over ``nodes`` nodes linked at ``gbit_per_s``: each node
    sends and receives 2(N-1)/N of the bytes, and each bucket takes 2(N-1) steps that each pay ``latency_s``.
    0 for one node."""
    if nodes <= 1:
        return 0.0
    buckets = math.ceil(grad_bytes / bucket_bytes)
    return 2 * (nodes - 1) / nodes * grad_bytes / (gbit_per_s * 1e9 / 8) + 2 * (nodes - 1) * buckets * latency_s


def estimated_rate(step_s: float, samples_per_step: int, grad_bytes: float, nodes: int, gbit_per_s: float,
                   latency_s: float = LATENCY_S, bucket_bytes: float = BUCKET_BYTES) -> float:
    """Samples/s of ``nodes`` nodes that each run the measured step (``step_s`` seconds for
    ``samples_per_step`` samples) on their own share, then all-reduce the gradients without overlap."""
    comm = ring_allreduce_s(grad_bytes, nodes, gbit_per_s, latency_s, bucket_bytes)
    return nodes * samples_per_step / (step_s + comm)


def estimate_table(models: dict[str, tuple[float, int]], samples_per_step: int) -> list[str]:
    """Rows of the estimate: for each model (step seconds, parameters), bandwidth and node count, the
    all-reduce seconds, samples/s and the scaling efficiency (samples/s over N x one node's)."""
    rows = [f"{'model':<14}{'Gb/s':>6}{'nodes':>7}{'step s':>9}{'all-reduce s':>14}{'samples/s':>11}{'efficiency':>12}"]
    for name, (step_s, params) in models.items():
        grad_bytes = 4 * params
        one = estimated_rate(step_s, samples_per_step, grad_bytes, 1, BANDWIDTHS_GBIT[0])
        for gbit in BANDWIDTHS_GBIT:
            for n in NODES:
                rate = estimated_rate(step_s, samples_per_step, grad_bytes, n, gbit)
                rows.append(f"{name:<14}{gbit:>6}{n:>7}{step_s:>9.3g}{ring_allreduce_s(grad_bytes, n, gbit):>14.3g}"
                            f"{rate:>11.3g}{rate / (n * one):>12.2f}")
    return rows


def measure_step_s(device: str, batch: int, tokens: int, threads: int) -> float:
    """Seconds of one training step of SmolLM2-135M (forward, backward, AdamW) on ``batch`` random sequences of
    ``tokens`` tokens: the second of two steps (the first warms up)."""
    import torch

    from rlxf.policies.loading import ModelSettings, load_policy

    torch.set_num_threads(threads)
    model = load_policy(ModelSettings(path="smollm2", dtype="float32")).model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    seconds = 0.0
    for _ in range(2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return seconds


def estimate(args, device: str) -> None:
    """Print the multi-node estimate from a step of SmolLM2-135M measured on ``device``."""
    print(f"== estimate for several nodes on {device} (not measured across nodes): SmolLM2-135M step measured "
          f"here, {args.estimate_batch} x {args.estimate_tokens} tokens per node, ring all-reduce of float32 "
          f"gradients at {' and '.join(map(str, BANDWIDTHS_GBIT))} Gb/s, {LATENCY_S * 1e6:.0f} us per message "
          f"and {BUCKET_BYTES // 2**20} MiB buckets, no overlap with the backward pass", flush=True)
    step_s = measure_step_s(device, args.estimate_batch, args.estimate_tokens, args.threads)
    models = {"SmolLM2-135M": (step_s, SMOLLM2_PARAMS), "1B (scaled)": (step_s * ONE_B_PARAMS / SMOLLM2_PARAMS, ONE_B_PARAMS)}
    for row in estimate_table(models, args.estimate_batch):
        print(row)


# -- measuring the learner ----------------------------------------------------------------------------

class StepClock:
    """Stamps each metrics line of a run as it appears (a thread polls the file), so the steady rate can be
    read off without the start-up of the workers."""

    def __init__(self, path: Path, poll_s: float = 0.005):
        self.path, self.poll_s, self.stamps = path, poll_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._read()

    def _read(self) -> None:
        if self.path.exists():
            lines = [ln for ln in self.path.read_text().splitlines() if ln.endswith("}")]
            now = time.perf_counter()
            for line in lines[len(self.stamps):]:
                self.stamps.append((json.loads(line)["step"], now))

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._read()
            time.sleep(self.poll_s)

    def rate(self, warmup_steps: int, batch: int) -> float:
        """Samples/s from the end of step ``warmup_steps`` to the last step."""
        (s0, t0), (s1, t1) = self.stamps[warmup_steps], self.stamps[-1]
        return (s1 - s0) * batch / (t1 - t0)


def sft_data(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))),
             " " + " ".join(rng.choice(WORDS[:48]) for _ in range(rng.randint(8, 24)))) for _ in range(n)]


def tiny_policy(args, seed: int = 0, device: str = "cpu"):
    from rlxf.policies.language import LanguagePolicy
    from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer(WORDS)
    model = tiny_causal_lm(tok, "gpt2", n_layer=args.layers, n_embd=args.width, n_head=4, max_positions=64, seed=seed)
    return LanguagePolicy(model, tok, device=device)


def learner_run(args, scale, threads: int, device: str = "cpu") -> float:
    """Steady samples/s of one SFT run under ``scale`` (this process on ``threads`` threads when it is local)."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        return sft_run(args, d, scale, device).rate(args.warmup_steps, args.batch)


def sft_run(args, directory: str, scale, device: str = "cpu") -> StepClock:
    """The benchmark's SFT run in ``directory`` under ``scale``; its metrics lines' clock."""
    from rlxf.algorithms.loop import OptimConfig
    from rlxf.algorithms.sft import train_sft
    from rlxf.core.runs import Run

    policy = tiny_policy(args, device=device)
    data = sft_data(args.batch * args.steps)
    prompts = policy.encode([p for p, _ in data])
    responses = policy.encode_responses([r for _, r in data])
    cfg = OptimConfig(steps=args.steps, batch_size=args.batch, micro_batch_size=args.micro_batch, lr=1e-3,
                      checkpoint_every=0)
    run = Run(directory, "benchmark = true\n", scale=scale)
    with StepClock(run.metrics_path) as clock:
        train_sft(run, "sft", policy, prompts, responses, cfg, seed=0, quiet=True)
    return clock


def learner(args, device: str = "cpu") -> dict[str, float]:
    """1 worker x 2 threads against 2 workers x 1 thread (and 1 worker x 1 thread, the unit both double),
    alternating; each one's fastest samples/s. On ``cuda`` each worker has a GPU of its own (Ray Train
    places them) and threads matter little."""
    from rlxf.core.cluster import ScaleSettings

    configs = {
        "1 worker x 1 thread": (ScaleSettings(), 1),
        "1 worker x 2 threads": (ScaleSettings(), 2),
        "2 workers x 1 thread": (ScaleSettings(executor="ray", learner_workers=2, learner_threads=1,
                                               num_cpus=args.num_cpus), 1),
    }
    best: dict[str, float] = {}
    for rep in range(args.repeats):
        for name, (scale, threads) in configs.items():
            rate = learner_run(args, scale, threads, device)
            print(f"run {rep + 1}/{args.repeats} learner {name}: {rate:.1f} samples/s{load()}", flush=True)
            best[name] = max(best.get(name, 0.0), rate)
    return best


def _comm_rank(rank: int, size: int, init: str, args, out: str) -> None:
    """One rank of a gloo group running the SFT loop with its collectives timed (see :func:`comm_share`)."""
    import torch
    import torch.distributed as dist

    import rlxf.algorithms.loop as loop

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=size)
    seconds = {"wait": 0.0, "collectives": 0.0, "loop": 0.0}

    def timed(fn, key, wait: bool = False):
        def wrapper(*a, **kw):
            if wait:  # the time one rank waits for the other's backward pass is not communication
                t0 = time.perf_counter()
                dist.barrier()
                seconds["wait"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                seconds[key] += time.perf_counter() - t0
        return wrapper

    loop.sync_gradients = timed(loop.sync_gradients, "collectives", wait=True)
    loop.all_reduce_sum = timed(loop.all_reduce_sum, "collectives")
    loop.optimise = timed(loop.optimise, "loop")
    try:
        with tempfile.TemporaryDirectory() as d:
            sft_run(args, d, None)
        Path(out, f"{rank}.json").write_text(json.dumps(seconds))
    finally:
        dist.destroy_process_group()


def comm_share(args) -> tuple[float, float]:
    """Shares of a 2-worker SFT loop's time, timed inside 2 processes of a gloo group on this machine (no Ray),
    the larger of the two ranks: in its collectives (the gradient all-reduce and the metric sums), the
    data-parallel overhead itself; and waiting at a barrier before the all-reduce for the other rank to
    finish its backward pass (uneven compute, which a busy machine makes large)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_comm_rank, args=(2, str(Path(d) / "init"), args, d), nprocs=2)
        ranks = [json.loads(Path(d, f"{r}.json").read_text()) for r in range(2)]
    return max(r["collectives"] / r["loop"] for r in ranks), max(r["wait"] / r["loop"] for r in ranks)


# -- measuring rollout actors -------------------------------------------------------------------------

def rollouts(args) -> dict[str, float]:
    """Samples/s of 1, 2 and 4 rollout actors on the same prompts and seed; each one's fastest call."""
    from rlxf.core.cluster import ScaleSettings
    from rlxf.executors import make_executor

    policy = tiny_policy(args)
    rng = random.Random(1)
    prompts = policy.encode([" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
                             for _ in range(args.prompts)])
    best: dict[str, float] = {}
    for actors in (1, 2, 4):
        scale = ScaleSettings(executor="ray", rollout_workers=actors, rollout_cpus=args.rollout_cpus,
                              num_cpus=args.num_cpus)
        executor = make_executor(scale, threads=args.actor_threads)
        name = f"{actors} rollout actor" + "s" * (actors > 1)
        try:
            for call in range(args.repeats + 1):  # the first call starts the actors and ships the weights
                t0 = time.perf_counter()
                ro = executor.sample(policy, 0, prompts, args.samples_per_prompt, args.new_tokens, 1.0, 1.0, 0)
                seconds = time.perf_counter() - t0
                if call:
                    rate = len(ro.response_ids) / seconds
                    print(f"run {call}/{args.repeats} {name}: {rate:.1f} samples/s{load()}", flush=True)
                    best[name] = max(best.get(name, 0.0), rate)
        finally:
            executor.close()
    return best


# -- the run ------------------------------------------------------------------------------------------

def load() -> str:
    """The machine's 1-minute load average: on a shared machine it says how far to trust a figure
    (torch's multi-threaded kernels slow down far more than single-threaded ones when cores are busy)."""
    return f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"


def table(title: str, rates: dict[str, float]) -> None:
    base = next(iter(rates.values()))
    print(f"{title:<26}{'samples/s':>11}{'vs first':>10}")
    for name, rate in rates.items():
        print(f"{name:<26}{rate:>11.1f}{rate / base:>10.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=32, help="global batch of the learner")
    p.add_argument("--micro-batch", type=int, default=8, help="micro-batch (gradient accumulation) per worker")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the learner's rate")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--rollout-cpus", type=float, default=0.5)
    p.add_argument("--actor-threads", type=int, default=1, help="torch threads in each rollout actor")
    p.add_argument("--num-cpus", type=int, default=0, help="logical CPUs of the local Ray instance (0: every core)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the estimate's step")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--estimate-model", choices=["smollm2", "none"], default="smollm2")
    p.add_argument("--estimate-batch", type=int, default=8, help="sequences per node in the estimate's step")
    p.add_argument("--estimate-tokens", type=int, default=128)
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    print(f"== learner: SFT, GPT-2 {args.layers} x {args.width}, global batch {args.batch} (micro {args.micro_batch}), "
          f"{args.steps} steps, rate from step {args.warmup_steps}, CPU", flush=True)
    learn = learner(args)
    share, wait = comm_share(args)
    print(f"2-worker loop (2 processes x 1 thread, gloo, no Ray): {100 * share:.1f}% of its time in collectives, "
          f"{100 * wait:.1f}% waiting for the other rank{load()}", flush=True)
    print(f"== rollout actors: {args.prompts} prompts x {args.samples_per_prompt} samples of {args.new_tokens} "
          f"tokens, {args.rollout_cpus} CPU and {args.actor_threads} thread(s) each", flush=True)
    roll = rollouts(args)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus >= 2:
        print("== learner on GPUs", flush=True)
        table("learner (GPU)", learner(args, "cuda"))
    else:
        print(f"learner on GPUs: skipped, {'no CUDA GPU' if not gpus else 'one CUDA GPU'} here (2 workers need 2 GPUs)")
    if args.estimate_model != "none":
        estimate(args, "cpu")
        if gpus:
            estimate(args, "cuda")
        else:
            print("estimate on a GPU: skipped, no CUDA GPU here")
    table("learner (CPU)", learn)
    table("rollouts (CPU)", roll)
    rates = list(roll.values())
    print(f"learner_ratio {learn['2 workers x 1 thread'] / learn['1 worker x 2 threads']:.2f} "
          f"comm_share {share:.3f} rollout_2_over_1 {rates[1] / rates[0]:.2f} rollout_4_over_1 {rates[2] / rates[0]:.2f}")


if __name__ == "__main__":
    main()
