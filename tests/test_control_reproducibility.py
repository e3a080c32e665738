"""A seed gives the same PPO agent in every process, whatever the process did before or how many
intra-op threads torch was given."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# argv: threads, "busy" or "idle". Prints the eval returns and a digest of the final parameters.
TRAIN = """
import hashlib, json, sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
if sys.argv[2] == "busy":  # other work first: global RNGs drawn from, a multi-threaded matmul, a set iterated
    np.random.rand(7); torch.rand(3); torch.randn(300, 300) @ torch.randn(300, 300); sorted({"a", "b"})
from rlxf.algorithms.control.ppo import PPO, PPOConfig
ppo = PPO(PPOConfig(seed=3, total_steps=2048))
init = hashlib.sha256(ppo.flat.param.detach().numpy().tobytes()).hexdigest()
hist = ppo.learn(eval_every=1024, n_eval=5)
print(json.dumps({"init": init, "returns": [r["eval_return"] for r in hist],
                  "final": hashlib.sha256(ppo.flat.param.detach().numpy().tobytes()).hexdigest()}))
"""


def test_ppo_is_bit_identical_in_two_fresh_processes():
    """Two fresh interpreters, different PYTHONHASHSEED, 1 vs 2 torch threads, one idle and one busy
    beforehand: the same seed must give the same initial and final parameters and eval returns.
    (Before networks were built on one thread, the 64x64 orthogonal init differed at 1 vs 2 threads.)"""
    runs = []
    for hash_seed, threads, history in (("1", "1", "idle"), ("2", "2", "busy")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        runs.append(subprocess.Popen([sys.executable, "-c", TRAIN, threads, history], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in runs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    a, b = results
    assert len(a["returns"]) == 2
    assert a["init"] == b["init"]
    assert a["returns"] == b["returns"]
    assert a["final"] == b["final"]


# argv: nothing. Trains a tiny arithmetic prover on 2 threads; prints a digest of its weights.
SFT = """
import hashlib, tempfile, torch
torch.set_num_threads(2)
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.lab.rlvr import train_prover
from rlxf.tasks.arithmetic import ArithmeticTask
run = Run(tempfile.mkdtemp(), "p", fresh=True)
pol = train_prover(run, ArithmeticTask(seed=0), OptimConfig(steps=100, batch_size=32, lr=3e-3, checkpoint_every=10**6),
                   corpus_size=800)
print(torch.are_deterministic_algorithms_enabled(),
      hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in pol.model.parameters())).hexdigest())
"""


def test_language_model_training_is_bit_identical_in_two_fresh_processes():
    """The shared loop trains with torch's deterministic algorithms on CPU (rlxf.algorithms.loop.reproducible):
    without them, two processes training the same tiny prover on 2 threads ended with different weights
    (every one of three runs of 150 steps differed). Two fresh interpreters must now agree bit for bit, and the
    caller's setting (off in a fresh process) is restored afterwards."""
    outs = []
    for _ in range(2):  # one after the other: two 2-thread processes on 2 cores would crawl
        p = subprocess.run([sys.executable, "-c", SFT], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        outs.append(p.stdout.strip().splitlines()[-1])
    assert outs[0] == outs[1] and outs[0].startswith("False ")
