"""Preference-based RL: preference queries needed to reach 90% of true-reward PPO, rlxf vs `imitation`.

Both learners get a Boltzmann-rational (beta = 1) synthetic labeler on the hidden env reward, the same
env-step budget for training (CartPole 60k, Pendulum 200k) and the same query budget (CartPole 500,
Pendulum 1000), and are scored by 20 greedy episodes of the env's true return. The target is 90% of
the way from a random policy's return to the return of rlxf PPO trained on the true reward with the
same env-step budget, measured per seed on both envs (20 greedy episodes after training). Reported:
queries asked when the target is first met (a run that never meets it counts as its whole budget,
marked ``*``), the best return seen, and the env steps each used.

Query schedules (``--schedule``):

- ``shared`` (default): both sides ask on rlxf's ``PbRLConfig`` schedule. rlxf asks 50 comparisons on
  its warm-up experience, then a round of 10 (CartPole) or 20 (Pendulum) every 5 PPO rollouts (1280 or
  10240 env steps). imitation asks the same 50 before its agent first trains, then the same number in
  each of its iterations, each iteration training its agent for the same 1280 or 10240 env steps; once
  the budget is spent its agent keeps training on the learned reward in phases of that length until
  it has rlxf's env steps. Both are evaluated at the same env steps (every 3840 on CartPole, every
  10240 on Pendulum), so neither is scored more often than the other.
- ``own``: each side's default. rlxf as above, evaluated every 4096 env steps; imitation asks 100 up front
  and the rest on its hyperbolic schedule over 10 iterations, 11 equal training phases (about 5.4k env
  steps on CartPole, 18k on Pendulum), evaluated after each phase. A different schedule on each side
  measures the schedules as much as the learners; quote it labelled as such.

`imitation` 1.0.1 pins gymnasium ~0.29 and SB3 ~2.2.1, so it runs in its own virtual environment
(benchmarks/.venv-imitation, made with pip on first use; torch is shared from this project). It
compares fixed-length fragments of whole trajectories, so on CartPole it trains on
``seals/CartPole-v0`` (the fixed-horizon CartPole its authors use: no termination, reward 1 while the
pole is up, 0 after it falls, 500 steps; on CartPole-v1 every fragment has the same return and the
comparisons carry nothing) and is evaluated on CartPole-v1 like rlxf. rlxf compares 50-step segments
of CartPole-v1 episodes padded past termination with zero-reward steps.

How the imitation side is set up, and why (an earlier version never beat a random policy on CartPole:
its agent learned a constant action on every seed). On CartPole it still rarely learns within this
budget: comparing whole seals episodes, of which a random policy spends 93% after the fall, gives a
learned reward that the agent exploits, and unseeded runs of seed 0 under close variants of these
settings peaked anywhere from 9 (a constant action) to 331. So CartPole's ratio is usually an upper bound.

- Fragments are whole 500-step seals episodes. With 50-step fragments drawn uniformly from a 500-step
  episode, a policy that drops the pole within ~20 steps yields fragments that are nearly all after the
  fall; 50-90% of the comparisons were 0-vs-0 ties (random labels), more as the agent got worse.
- The CartPole reward net sees the state only (``use_action=False``); seals' reward is a function of the
  state. With whole-episode fragments a state-action net fitted the spurious action counts of the first
  comparisons (learned reward uncorrelated with the true one, 0.17 higher for one action), and PPO
  collapsed to that action.
- With ``--schedule own``, imitation asks 100 comparisons before its agent first trains
  (``IMITATION_FIRST``: 20% of the CartPole budget instead of imitation's default 10%; Pendulum keeps
  10%). In one unseeded pair of CartPole seed-0 runs, 50 up front never left a constant action and 100
  reached 126 before the learned reward was exploited.
- The learned reward is output-normalised (``NormalizedRewardNet`` with ``RunningNorm``), as imitation's
  own training scripts do by default; the runner used to feed the raw net output to the agent.
- ``PreferenceComparisons.train`` trains the agent ``num_iterations + 1`` times, so with ``--schedule own``
  each phase gets 1/11 of the env-step budget (rounded to whole SB3 rollouts); it used to get 1/10,
  10-12% over budget. With ``shared`` the iterations are as many as rlxf's query rounds.
- Pendulum uses the settings of imitation's preference-comparisons tutorial on Pendulum-v1 (PPO with
  its FeedForward32Policy and normalised features, 100-step fragments), and rlxf's PPO (the true-reward
  reference and the PbRL agent) uses the same PPO hyperparameters (8 x 256 steps, minibatch 64, 10
  epochs, constant lr 2e-3, clip 0.1, gamma 0.97, lambda 0.95, entropy 0.01, normalised observations;
  rlxf keeps its 64-unit MLPs). With rlxf's earlier Pendulum settings (gamma 0.9, minibatch 256,
  annealed lr 1e-3) rlxf PbRL reached only -581 in 200k steps on seed 0 although its learned reward
  correlated 0.97 with the true one, while imitation reached the target in 55k: the ratio measured PPO
  settings, not preference learning.
- CartPole PPO keeps the rl-baselines3-zoo CartPole settings that rlxf PPO uses; with the true seals
  reward (plugged into the same ``AgentTrainer``) it reaches 500 on CartPole-v1 within 60k steps.

imitation draws its fragment pairs from the agent's latest training episodes and tops them up with fresh
rollouts, ``2 x fragment length`` env steps per query in all (about 500k on CartPole, mostly fresh); the
extra steps are printed. rlxf draws its segments from the episodes it trained on and takes no extra
steps.

    .venv/bin/python benchmarks/pbrl_vs_imitation.py --seeds 3
    .venv/bin/python benchmarks/pbrl_vs_imitation.py --seeds 3 --schedule own

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
from ppo_vs_sb3 import GREEDY_RETURN, ensure_venv  # noqa: E402

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv-imitation"

IMITATION_RUNNER = r"""
import json, sys
import numpy as np, torch, gymnasium as gym
torch.set_num_threads(1)
from imitation.algorithms import preference_comparisons as pc
from imitation.policies.base import FeedForward32Policy, NormalizeFeaturesExtractor
from imitation.rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
from imitation.util.networks import RunningNorm
from imitation.util.util import make_vec_env
from stable_baselines3 import PPO

cfg = json.loads(sys.argv[1])
seed, env_name, target, first = cfg["seed"], cfg["env"], cfg["target"], cfg["first"]
train_id = {"cartpole": "seals:seals/CartPole-v0", "pendulum": "Pendulum-v1"}[env_name]
eval_id = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1"}[env_name]
if cfg["schedule"] == "hyperbolic":  # imitation's own: the rest of the budget over phases - 1 iterations
    iterations, query_schedule, total = cfg["phases"] - 1, "hyperbolic", cfg["budget"]
else:  # queries per iteration, given; imitation normalises these weights back into exactly these counts
    counts = cfg["schedule"]
    iterations, total = len(counts), first + sum(counts)
    query_schedule = lambda p: counts[round(p * (len(counts) - 1))]

class CountSteps(gym.Wrapper):  # every env step the learner takes: training and fragment sampling
    n = 0
    def step(self, action):
        CountSteps.n += 1
        return self.env.step(action)

rng = np.random.default_rng(seed)
torch.manual_seed(seed)  # the reward net is built before SB3 seeds torch; unseeded, reruns of a seed differ
venv = make_vec_env(train_id, rng=rng, n_envs=8, post_wrappers=[lambda env, _: CountSteps(env)])
if env_name == "cartpole":
    # seals' reward is a function of the state; with whole-episode fragments a state-action net
    # fits the spurious action counts of the first comparisons and the agent collapses to one action
    base = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm,
                          use_action=False)
    agent = PPO("MlpPolicy", venv, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                learning_rate=1e-3, clip_range=0.2, seed=seed, device="cpu")
    fragment_length = 500  # the whole fixed-horizon episode (see the module docstring)
else:  # the settings of imitation's preference-comparisons tutorial on Pendulum-v1
    base = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
    agent = PPO(FeedForward32Policy, venv, policy_kwargs=dict(features_extractor_class=NormalizeFeaturesExtractor,
                features_extractor_kwargs=dict(normalize_class=RunningNorm)), n_steps=2048 // venv.num_envs,
                batch_size=64, ent_coef=0.01, learning_rate=2e-3, clip_range=0.1, gae_lambda=0.95, gamma=0.97,
                n_epochs=10, seed=seed, device="cpu")
    fragment_length = 100
net = NormalizedRewardNet(base, RunningNorm)  # imitation's scripts normalise the learned reward for the agent
gen = pc.AgentTrainer(agent, net, venv, rng=rng, exploration_frac=0.05)
trainer = pc.BasicRewardTrainer(pc.PreferenceModel(net), pc.CrossEntropyRewardLoss(), epochs=3, rng=rng)
algo = pc.PreferenceComparisons(gen, net, num_iterations=iterations,
                                fragmenter=pc.RandomFragmenter(rng=rng, warning_threshold=0),
                                preference_gatherer=pc.SyntheticGatherer(temperature=1.0, rng=rng),
                                reward_trainer=trainer, fragment_length=fragment_length,
                                initial_comparison_frac=(first + 0.5) / total,  # int() of it is first
                                initial_epoch_multiplier=4, query_schedule=query_schedule)

#@greedy_return

def evaluate():
    return greedy_return(lambda: gym.make(eval_id), lambda obs: agent.predict(obs, deterministic=True)[0])

class Reached(Exception):
    pass

history, next_eval = [], cfg["eval_every"]
def callback(_it):  # after each training phase; evaluates every eval_every agent steps (every phase if 0)
    global next_eval
    if agent.num_timesteps < next_eval:
        return
    next_eval += cfg["eval_every"]
    mean = evaluate()
    history.append({"queries": len(algo.dataset), "eval_return": mean, "train_steps": agent.num_timesteps,
                    "env_steps": CountSteps.n})
    if mean >= target:
        raise Reached

try:
    # train() trains the agent once after the initial comparisons and once per iteration, phase_steps
    # (whole SB3 rollouts) each; phases after the last query iteration train on the learned reward alone
    algo.train(total_timesteps=cfg["phase_steps"] * iterations, total_comparisons=total, callback=callback)
    for _ in range(cfg["phases"] - iterations - 1):
        gen.buffering_wrapper.pop_finished_trajectories()  # train() refuses while sampled steps are buffered
        gen.train(steps=cfg["phase_steps"])
        callback(None)
    result = {"queries": None}
except Reached:
    result = {"queries": history[-1]["queries"]}
print(json.dumps({**result, "history": history}))
"""
IMITATION_RUNNER = IMITATION_RUNNER.replace("#@greedy_return\n", GREEDY_RETURN)

ENVS = {
    # env: (env id, env-step budget, query budget, rlxf queries per round)
    # Pendulum's PPO iterations are 8x longer (2048 env steps against 256), so a round there asks 20
    "cartpole": ("CartPole-v1", 60_000, 500, 10),
    "pendulum": ("Pendulum-v1", 200_000, 1000, 20),
}


def true_reward_target(env_id: str, seed: int, steps: int) -> tuple[float, float]:
    """(random return, rlxf PPO true-reward return) with the same step budget."""
    from rlxf.algorithms.control.ppo import PPO
    from rlxf.algorithms.control.rollout import evaluate

    ppo = PPO(ppo_config(env_id, seed, steps))
    rand = float(evaluate(ppo.policy, env_id, 20, deterministic=False).mean())
    ppo.learn()
    return rand, float(ppo.evaluate().mean())


def ppo_config(env_id: str, seed: int, steps: int):
    from rlxf.algorithms.control.ppo import PPOConfig

    if env_id == "Pendulum-v1":  # the PPO settings of imitation's Pendulum tutorial, as its runner uses them
        return PPOConfig(env=env_id, seed=seed, total_steps=steps, n_envs=8, n_steps=256, minibatch_size=64,
                         epochs=10, gamma=0.97, lam=0.95, lr=2e-3, anneal=False, clip=0.1, ent_coef=0.01, norm_obs=True)
    return PPOConfig(env=env_id, seed=seed, total_steps=steps)


def rlxf_config(env_id: str, seed: int, steps: int, budget: int, per_round: int):
    from rlxf.algorithms.control.pbrl import PbRLConfig

    return PbRLConfig(ppo=ppo_config(env_id, seed, steps), budget=budget, seed=seed, selection="disagreement",
                      queries_per_round=per_round)


def shared_schedule(cfg) -> dict:
    """rlxf's query schedule as imitation's runner takes it: ``first`` up front, then one iteration per
    rlxf query round (``query_every`` PPO rollouts of training) asking ``queries_per_round`` until the
    budget is spent, then training phases without queries, as many as cover rlxf's env steps.
    Both sides are evaluated every ``eval_every`` env steps, a whole number of phases near 4096."""
    ppo = cfg.ppo
    rollout = ppo.n_envs * ppo.n_steps
    phase = cfg.query_every * rollout
    phases = -(-(-(-ppo.total_steps // rollout) * rollout) // phase)  # rlxf's steps in whole rollouts, then phases
    counts, left = [], cfg.budget - cfg.first_queries
    while left > 0 and len(counts) < phases - 1:
        counts.append(min(cfg.queries_per_round, left))
        left -= counts[-1]
    return {"first": cfg.first_queries, "schedule": counts, "phase_steps": phase, "phases": phases,
            "eval_every": phase * max(1, round(4096 / phase))}


def own_schedule(cfg) -> dict:
    """imitation's own schedule as its runner used to run: ``IMITATION_FIRST`` up front, the rest of the
    budget over 10 iterations with imitation's hyperbolic schedule, 11 equal training phases of whole
    SB3 rollouts covering the env-step budget (its PPO's rollout is rlxf's here), evaluated after each."""
    rollout = cfg.ppo.n_envs * cfg.ppo.n_steps
    per_phase = max(1, round(cfg.ppo.total_steps / IMITATION_PHASES / rollout)) * rollout
    return {"first": IMITATION_FIRST, "schedule": "hyperbolic", "phase_steps": per_phase, "phases": IMITATION_PHASES,
            "eval_every": 0}


def schedule_line(env: str, mode: str, cfg, plan: dict) -> str:
    """Both sides' query schedules and evaluation points, in words."""
    every = cfg.query_every * cfg.ppo.n_envs * cfg.ppo.n_steps
    rlxf = f"rlxf asks {cfg.first_queries} up front, then {cfg.queries_per_round} every {every} env steps"
    if mode == "shared":
        peer = (f"imitation the same ({plan['first']} up front, then {plan['schedule'][0]} in each of "
                f"{len(plan['schedule'])} {plan['phase_steps']}-step phases, {plan['phases']} phases in all); "
                f"both evaluated every {plan['eval_every']} env steps")
    else:
        peer = (f"imitation {plan['first']} up front, then the rest over 10 iterations on its hyperbolic schedule "
                f"({plan['phases']} phases of {plan['phase_steps']} env steps); rlxf evaluated every 4096 env "
                f"steps, imitation after each phase")
    return f"{env}, {mode} schedule: {rlxf}; {peer}"


def run_rlxf(cfg, target: float, eval_every: int) -> dict:
    from rlxf.algorithms.control.pbrl import PbRL

    pbrl = PbRL(cfg)
    first, best = None, -float("inf")

    def log(row):
        nonlocal first, best
        best = max(best, row["eval_return"])
        if first is None and row["eval_return"] >= target:
            first = pbrl.queries

    pbrl.train(eval_every=eval_every, target=target, log=log)
    return {"queries": first, "best": best, "steps": pbrl.ppo.steps_done}


IMITATION_FIRST = 100  # comparisons imitation asks before its agent first trains (see the module docstring)
IMITATION_PHASES = 11  # its train() runs 10 query iterations, plus the phase after the first comparisons


def run_imitation(python: Path, env: str, seed: int, budget: int, target: float, schedule: dict) -> dict:
    cfg = {"seed": seed, "env": env, "budget": budget, "target": target, **schedule}
    out = subprocess.run([str(python), "-c", IMITATION_RUNNER, json.dumps(cfg)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise SystemExit(f"imitation run failed ({env}, seed {seed}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--envs", default="cartpole,pendulum")
    ap.add_argument("--schedule", choices=["shared", "own"], default="shared",
                    help="shared: imitation asks on rlxf's query schedule and both are evaluated at the same env "
                         "steps; own: each side its own default schedule (see the docstring)")
    args = ap.parse_args()
    python = ensure_venv(VENV, "imitation==1.0.1 seals==0.2.1", share_site=True)
    ratios, peer_misses, our_misses = [], 0, 0
    for env in args.envs.split(","):
        env_id, steps, budget, per_round = ENVS[env]
        for seed in range(args.seeds):
            rand, best = true_reward_target(env_id, seed, steps)
            target = rand + 0.9 * (best - rand)
            cfg = rlxf_config(env_id, seed, steps, budget, per_round)
            plan = shared_schedule(cfg) if args.schedule == "shared" else own_schedule(cfg)
            if seed == 0:
                print(schedule_line(env, args.schedule, cfg, plan), flush=True)
            ours = run_rlxf(cfg, target, plan["eval_every"] or 4096)
            theirs = run_imitation(python, env, seed, budget, target, plan)
            q_ours = ours["queries"] if ours["queries"] is not None else budget
            q_theirs = theirs["queries"] if theirs["queries"] is not None else budget
            ratios.append(q_ours / q_theirs)
            peer_misses += theirs["queries"] is None
            our_misses += ours["queries"] is None
            mark = lambda r: "" if r["queries"] is not None else "*"  # noqa: E731
            their_best = max((h["eval_return"] for h in theirs["history"]), default=float("nan"))
            last = theirs["history"][-1] if theirs["history"] else {"train_steps": 0, "env_steps": 0}
            print(f"{env} seed {seed}: target {target:.1f} (random {rand:.1f}, PPO {best:.1f}) | "
                  f"rlxf {q_ours}{mark(ours)} queries (best eval {ours['best']:.1f}, {ours['steps']} env steps) | "
                  f"imitation {q_theirs}{mark(theirs)} queries (best eval {their_best:.1f}, {last['train_steps']} "
                  f"training + {last['env_steps'] - last['train_steps']} fragment-sampling env steps)", flush=True)
    if peer_misses:
        print(f"imitation missed the target in {peer_misses} of {len(ratios)} runs; a miss counts as its whole "
              f"budget, so the ratio below is an upper bound (imitation would need more queries)")
    if our_misses:
        print(f"rlxf missed the target in {our_misses} of {len(ratios)} runs (counted as its whole budget)")
    print(f"query_ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
