"""Preference-based RL: preference queries needed to reach 90% of true-reward PPO, rlxf vs `imitation`.

Both learners get a Boltzmann-rational (beta = 1) synthetic labeler on the hidden env reward and
are evaluated on the same schedule (after every round: 20 episodes of the env's true return). The
target is 90% of the way from a random policy's return to the return of rlxf PPO trained on the true
reward with the same env-step budget (on CartPole that is 450). Reported: queries asked when the
target is first met (a run that never meets it counts as its whole budget, marked ``*``).

`imitation` 1.0.1 pins gymnasium ~0.29 and SB3 ~2.2.1, so it runs in its own virtual environment
(benchmarks/.venv-imitation, made with pip on first use; torch is shared from this project). It
compares fixed-length fragments of whole trajectories, so on CartPole it trains on
``seals/CartPole-v0`` (the fixed-horizon CartPole its authors use; without it, every fragment of a
CartPole-v1 episode has the same return and the comparisons carry nothing) and is evaluated on
CartPole-v1 like rlxf. rlxf compares segments padded past termination with zero-reward steps.

    .venv/bin/python benchmarks/pbrl_vs_imitation.py --seeds 3

Last line: ``query_ratio X`` (median over every env and seed of rlxf queries / imitation queries).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_vs_sb3 import ensure_venv  # noqa: E402

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv-imitation"

IMITATION_RUNNER = r"""
import json, sys
import numpy as np, torch, gymnasium as gym
torch.set_num_threads(1)
from imitation.algorithms import preference_comparisons as pc
from imitation.rewards.reward_nets import BasicRewardNet
from imitation.util.networks import RunningNorm
from imitation.util.util import make_vec_env
from stable_baselines3 import PPO

seed, env_name, budget, timesteps, target = sys.argv[1:6]
seed, budget, timesteps, target = int(seed), int(budget), int(timesteps), float(target)
train_id = {"cartpole": "seals:seals/CartPole-v0", "pendulum": "Pendulum-v1"}[env_name]
eval_id = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1"}[env_name]
rng = np.random.default_rng(seed)
venv = make_vec_env(train_id, rng=rng, n_envs=8)
net = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
if env_name == "cartpole":
    agent = PPO("MlpPolicy", venv, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                learning_rate=1e-3, clip_range=0.2, seed=seed, device="cpu")
else:
    agent = PPO("MlpPolicy", venv, n_steps=256, batch_size=64, gae_lambda=0.95, gamma=0.9, n_epochs=10,
                learning_rate=1e-3, clip_range=0.2, use_sde=True, sde_sample_freq=4, seed=seed, device="cpu")
gen = pc.AgentTrainer(agent, net, venv, rng=rng, exploration_frac=0.05)
trainer = pc.BasicRewardTrainer(pc.PreferenceModel(net), pc.CrossEntropyRewardLoss(), epochs=3, rng=rng)
algo = pc.PreferenceComparisons(gen, net, num_iterations=10, fragmenter=pc.RandomFragmenter(rng=rng, warning_threshold=0),
                                preference_gatherer=pc.SyntheticGatherer(temperature=1.0, rng=rng),
                                reward_trainer=trainer, fragment_length=50, initial_comparison_frac=0.1,
                                initial_epoch_multiplier=4, query_schedule="hyperbolic", allow_variable_horizon=True)

def evaluate(n=20):
    env = gym.vector.SyncVectorEnv([lambda: gym.make(eval_id) for _ in range(n)])
    obs, _ = env.reset(seed=10_000)
    ret, alive = np.zeros(n), np.ones(n, bool)
    while alive.any():
        act, _ = agent.predict(obs, deterministic=True)
        obs, r, term, trunc, _ = env.step(act)
        ret += r * alive
        alive &= ~(term | trunc)
    return float(ret.mean())

class Reached(Exception):
    pass

history = []
def callback(it):
    mean = evaluate()
    history.append({"queries": len(algo.dataset), "eval_return": mean})
    if mean >= target:
        raise Reached

try:
    algo.train(total_timesteps=timesteps, total_comparisons=budget, callback=callback)
    result = {"queries": None}
except Reached:
    result = {"queries": history[-1]["queries"]}
print(json.dumps({**result, "history": history}))
"""

ENVS = {
    # env: (rlxf PbRL overrides, env-step budget, query budget)
    "cartpole": ("CartPole-v1", 60_000, 500),
    "pendulum": ("Pendulum-v1", 200_000, 1000),
}


def true_reward_target(env_id: str, seed: int, steps: int) -> tuple[float, float]:
    """(random return, rlxf PPO true-reward return) with the same step budget."""
    from rlxf.algorithms.control.ppo import PPO
    from rlxf.algorithms.control.rollout import evaluate

    ppo = PPO(ppo_config(env_id, seed, steps))
    rand = float(evaluate(ppo.policy, env_id, 20, deterministic=False).mean())
    if env_id == "CartPole-v1":
        return rand, 500.0  # PPO reaches the maximum (tests/test_control_envs.py)
    ppo.learn()
    return rand, float(ppo.evaluate().mean())


def ppo_config(env_id: str, seed: int, steps: int):
    from rlxf.algorithms.control.ppo import PPOConfig

    if env_id == "Pendulum-v1":
        return PPOConfig(env=env_id, seed=seed, total_steps=steps, n_envs=8, n_steps=256, minibatch_size=256,
                         epochs=10, gamma=0.9, lam=0.95, lr=1e-3, norm_obs=True)
    return PPOConfig(env=env_id, seed=seed, total_steps=steps)


def run_rlxf(env_id: str, seed: int, steps: int, budget: int, target: float) -> dict:
    from rlxf.algorithms.control.pbrl import PbRL, PbRLConfig

    cfg = PbRLConfig(ppo=ppo_config(env_id, seed, steps), budget=budget, seed=seed,
                     selection="disagreement", queries_per_round=max(10, budget // 12))
    pbrl = PbRL(cfg)
    first, best = None, -float("inf")

    def log(row):
        nonlocal first, best
        best = max(best, row["eval_return"])
        if first is None and row["eval_return"] >= target:
            first = pbrl.queries

    pbrl.train(eval_every=4096, target=target, log=log)
    return {"queries": first, "best": best}


def run_imitation(python: Path, env: str, seed: int, steps: int, budget: int, target: float) -> dict:
    out = subprocess.run([str(python), "-c", IMITATION_RUNNER, str(seed), env, str(budget), str(steps), str(target)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise SystemExit(f"imitation run failed ({env}, seed {seed}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--envs", default="cartpole,pendulum")
    args = ap.parse_args()
    python = ensure_venv(VENV, "imitation==1.0.1 seals==0.2.1", share_site=True)
    ratios, peer_misses = [], 0
    for env in args.envs.split(","):
        env_id, steps, budget = ENVS[env]
        for seed in range(args.seeds):
            rand, best = true_reward_target(env_id, seed, steps)
            target = rand + 0.9 * (best - rand)
            ours = run_rlxf(env_id, seed, steps, budget, target)
            theirs = run_imitation(python, env, seed, steps, budget, target)
            q_ours = ours["queries"] if ours["queries"] is not None else budget
            q_theirs = theirs["queries"] if theirs["queries"] is not None else budget
            ratios.append(q_ours / q_theirs)
            peer_misses += theirs["queries"] is None
            mark = lambda r: "" if r["queries"] is not None else "*"  # noqa: E731
            their_best = max((h["eval_return"] for h in theirs["history"]), default=float("nan"))
            print(f"{env} seed {seed}: target {target:.1f} (random {rand:.1f}, PPO {best:.1f}) | "
                  f"rlxf {q_ours}{mark(ours)} queries (best eval {ours['best']:.1f}) | "
                  f"imitation {q_theirs}{mark(theirs)} queries (best eval {their_best:.1f})", flush=True)
    if peer_misses:
        print(f"imitation missed the target in {peer_misses} of {len(ratios)} runs; a miss counts as its whole "
              f"budget, so the ratio below is an upper bound (imitation would need more queries)")
    print(f"query_ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
