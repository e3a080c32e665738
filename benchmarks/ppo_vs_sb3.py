"""PPO on CartPole-v1: rlxf vs Stable-Baselines3, side by side in one run.

SB3 always trains with its tuned CartPole settings (rl-baselines3-zoo: 8 envs, n_steps 32, batch 256,
20 epochs, gamma 0.98, GAE lambda 0.8, linear lr 1e-3 and clip 0.2). rlxf trains each seed twice
(``--rlxf-settings both``, the default): with its own settings (the same except 4 epochs of 64-row
minibatches) and with exactly SB3's; ``rlxf`` or ``sb3`` runs only one of them. Every settings line is
printed. Both sides are evaluated at the same points: after the PPO update that completes each
``--eval-every`` env steps (20 greedy episodes on the same seeded envs); wall time excludes evaluation.
Reported: env steps and training seconds until the 20-episode mean reaches 475.

Seeds: ``--seeds N`` runs seeds ``--first-seed`` .. ``--first-seed + N - 1`` (default 100-109). rlxf's
own settings were chosen on seeds 0-9 (a sweep of epochs and minibatch sizes) and compared with SB3 on
seeds 0-4, where they looked far better than on fresh seeds (time ratio 0.218 on 0-4, about 0.61 on
10-18); seeds 10-18 were looked at too. So quote the own-settings ratio on seeds from 100 up, which no
tuning or earlier comparison has seen.

SB3 runs in its own virtual environment (benchmarks/.venv-sb3, created on first use with pip; it
shares this project's torch and gymnasium through a .pth file rather than downloading them again).
Both sides use one torch thread; they run one after the other in one process tree, so background load
on the machine hits both.

    taskset -c 1 .venv/bin/python benchmarks/ppo_vs_sb3.py --seeds 10 --pendulum-seeds 0

It first trains rlxf PPO on Pendulum-v1 (``--pendulum-seeds``, ``--pendulum-steps``) and prints the
greedy 20-episode mean return (goal >= -200). Last line: ``time_ratio X steps_ratio Y`` (rlxf median
over SB3 median, rlxf's own settings), followed on the same line, with ``both``, by
``same_settings_time_ratio A same_settings_steps_ratio B`` (rlxf with SB3's settings). With one
settings choice the line is ``time_ratio X steps_ratio Y`` for that choice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv-sb3"

# Greedy evaluation for the peers' runners, which run in their own venvs (so it is source text). No
# autoreset_mode: imitation's venv has gymnasium 0.29; steps after an episode ends are masked anyway.
GREEDY_RETURN = r"""
def greedy_return(make_env, predict, n=20, seed=10_000):
    env = gym.vector.SyncVectorEnv([make_env for _ in range(n)])
    obs, _ = env.reset(seed=seed)
    ret, alive = np.zeros(n), np.ones(n, bool)
    while alive.any():
        obs, r, term, trunc, _ = env.step(predict(obs))
        ret += r * alive
        alive &= ~(term | trunc)
    return float(ret.mean())
"""

SB3_RUNNER = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.callbacks import BaseCallback
import gymnasium as gym

seed, budget, every, target = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))

#@greedy_return

def evaluate(model):
    return greedy_return(lambda: gym.make("CartPole-v1"), lambda obs: model.predict(obs, deterministic=True)[0])

class Eval(BaseCallback):
    # evaluated after the update, as rlxf is: a rollout starts (and training ends) right after train()
    def __init__(self):
        super().__init__()
        self.next, self.eval_s, self.t0, self.result = every, 0.0, time.perf_counter(), None
    def check(self):
        if self.result is None and self.model.num_timesteps >= self.next:  # self.num_timesteps lags here
            self.next += every
            train_s = time.perf_counter() - self.t0 - self.eval_s
            t = time.perf_counter()
            mean = evaluate(self.model)
            self.eval_s += time.perf_counter() - t
            if mean >= target:
                self.result = {"steps": self.model.num_timesteps, "train_s": train_s}
    def _on_rollout_start(self):
        self.check()
    def _on_training_end(self):
        self.check()
    def _on_step(self):
        return self.result is None  # stop on the first env step after the target is met

lin = lambda v: (lambda p: p * v)
env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
            learning_rate=lin(1e-3), clip_range=lin(0.2), seed=seed, device="cpu", verbose=0)
cb = Eval()
model.learn(total_timesteps=budget, callback=cb)
print(json.dumps(cb.result or {"steps": None, "train_s": None}))
"""
SB3_RUNNER = SB3_RUNNER.replace("#@greedy_return\n", GREEDY_RETURN)


def ensure_venv(path: Path, requirement: str, share_site: bool = True) -> Path:
    """A virtual environment at ``path`` with ``requirement`` installed; its python. Raises SystemExit
    with the reason if it cannot be made (for example, no network for pip)."""
    python = path / "bin" / "python"
    marker = path / ".rlxf-ready"
    if marker.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    if share_site:  # reuse this project's torch / gymnasium / numpy instead of downloading them
        site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                            text=True).strip())
        (site / "rlxf-shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirement.split()], capture_output=True, text=True)
    if pip.returncode != 0:
        raise SystemExit(f"could not install {requirement} into {path} (pip said: {pip.stderr.strip()[-400:]}); "
                         f"the peer cannot run here")
    marker.write_text(requirement)
    return python


# rlxf's CartPole settings. "sb3": PPOConfig's defaults, which are SB3's tuned rl-zoo settings (what
# SB3 always runs with here). "rlxf" (its own): the same but 4 epochs of 64-row minibatches (16 gradient
# steps per 256-step rollout instead of 20 full-batch ones); picked from a sweep on seeds 0-9, where it
# reached 475 in a median 9216 env steps against 19456 for 10 epochs of 256 (so seeds 0-9 are not held out).
RLXF_SETTINGS = {
    "rlxf": {"epochs": 4, "minibatch_size": 64},
    "sb3": {},
}
SB3_SETTINGS = ("rl-zoo CartPole-v1: 8 envs x 32 steps, batch 256, 20 epochs, gamma 0.98, lambda 0.8, "
                "lr 1e-3 and clip 0.2 linearly annealed, ent 0")


def describe_rlxf(settings: dict) -> str:
    from dataclasses import asdict

    from rlxf.algorithms.control.ppo import PPOConfig

    c = asdict(PPOConfig(**settings))
    return (f"{c['n_envs']} envs x {c['n_steps']} steps, minibatch {c['minibatch_size']}, {c['epochs']} epochs, "
            f"gamma {c['gamma']}, lambda {c['lam']}, lr {c['lr']:g} and clip {c['clip']}"
            f"{' linearly annealed' if c['anneal'] else ''}, ent {c['ent_coef']:g}")


def run_rlxf(seed: int, budget: int, every: int, target: float, settings: dict) -> dict:
    import torch

    from rlxf.algorithms.control.ppo import PPO, PPOConfig

    torch.set_num_threads(1)
    ppo = PPO(PPOConfig(seed=seed, total_steps=budget, **settings))
    hist = ppo.learn(eval_every=every, target=target)
    hit = [h for h in hist if h["eval_return"] >= target]
    return {"steps": hit[0]["steps"], "train_s": hit[0]["train_s"]} if hit else {"steps": None, "train_s": None}


def pendulum_config(seed: int, steps: int):
    """rlxf PPO settings for Pendulum-v1 (gamma 0.9, 8 x 256-step rollouts, normalised obs and reward)."""
    from rlxf.algorithms.control.ppo import PPOConfig

    return PPOConfig(env="Pendulum-v1", seed=seed, total_steps=steps, n_envs=8, n_steps=256, minibatch_size=256,
                     epochs=10, gamma=0.9, lam=0.95, lr=1e-3, norm_obs=True, norm_reward=True)


def run_pendulum(seed: int, steps: int) -> float:
    """Greedy 20-episode mean return of rlxf PPO on Pendulum-v1 after ``steps`` env steps."""
    import torch

    from rlxf.algorithms.control.ppo import PPO

    torch.set_num_threads(1)
    ppo = PPO(pendulum_config(seed, steps))
    ppo.learn()
    return float(ppo.evaluate().mean())


def run_sb3(python: Path, seed: int, budget: int, every: int, target: float) -> dict:
    out = subprocess.run([str(python), "-c", SB3_RUNNER, str(seed), str(budget), str(every), str(target)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise SystemExit(f"SB3 run failed for seed {seed}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(values: list) -> float:
    real = [v for v in values if v is not None]
    return statistics.median(real) if len(real) == len(values) else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=100,
                    help="first CartPole seed; seeds 0-18 were used for tuning or seen before (see the docstring)")
    ap.add_argument("--budget", type=int, default=100_000, help="env steps before a run counts as unsolved")
    ap.add_argument("--eval-every", type=int, default=2048)
    ap.add_argument("--target", type=float, default=475.0)
    ap.add_argument("--pendulum-seeds", type=int, default=3, help="rlxf PPO runs on Pendulum-v1 (0 to skip)")
    ap.add_argument("--pendulum-steps", type=int, default=300_000)
    ap.add_argument("--rlxf-settings", choices=[*sorted(RLXF_SETTINGS), "both"], default="both",
                    help="rlxf's CartPole PPO settings: its own, exactly SB3's tuned ones, or both (default)")
    args = ap.parse_args()
    pendulum = []
    for seed in range(args.pendulum_seeds):
        pendulum.append(run_pendulum(seed, args.pendulum_steps))
        print(f"pendulum seed {seed}: rlxf PPO return after {args.pendulum_steps} steps {pendulum[-1]:.1f} "
              f"(goal >= -200)", flush=True)
    if pendulum:
        print(f"pendulum: {sum(r >= -200 for r in pendulum)}/{len(pendulum)} seeds reach -200, "
              f"median {statistics.median(pendulum):.1f}", flush=True)
    if args.seeds < 1:
        return
    python = ensure_venv(VENV, "stable-baselines3==2.9.2")
    names = list(RLXF_SETTINGS) if args.rlxf_settings == "both" else [args.rlxf_settings]
    for name in names:
        print(f"rlxf settings ({name}): {describe_rlxf(RLXF_SETTINGS[name])}", flush=True)
    print(f"sb3 settings: {SB3_SETTINGS}", flush=True)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"CartPole seeds {seeds.start}-{seeds.stop - 1}", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in [*names, "peer"]}
    label = {"rlxf": "rlxf own settings", "sb3": "rlxf same settings", "peer": "sb3"}
    for seed in seeds:
        for name in names:
            runs[name].append(run_rlxf(seed, args.budget, args.eval_every, args.target, RLXF_SETTINGS[name]))
        runs["peer"].append(run_sb3(python, seed, args.budget, args.eval_every, args.target))
        print(f"seed {seed}: " + " | ".join(
            f"{label[name]} steps {r[-1]['steps']} train_s "
            f"{r[-1]['train_s'] and round(r[-1]['train_s'], 2)}" for name, r in runs.items()), flush=True)
    med = {name: (median([r["steps"] for r in rs]), median([r["train_s"] for r in rs])) for name, rs in runs.items()}
    print("median: " + " | ".join(f"{label[name]} {steps} steps {secs:.2f} s"
                                  for name, (steps, secs) in med.items()))

    def ratios(name: str, prefix: str) -> str:
        return (f"{prefix}time_ratio {med[name][1] / med['peer'][1]:.3f} "
                f"{prefix}steps_ratio {med[name][0] / med['peer'][0]:.3f}")

    # the first settings (own, with both) keep the plain names the last line always had
    print(" ".join(ratios(name, "same_settings_" if name == "sb3" and i else "") for i, name in enumerate(names)))


if __name__ == "__main__":
    main()
