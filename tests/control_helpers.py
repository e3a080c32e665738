"""One PPO CartPole run shared by the control tests that need a trained agent (trained once per session)."""

import functools


@functools.lru_cache(maxsize=None)
def solved_cartpole():
    """``(ppo, start_return, history)``: PPO on CartPole-v1 run until its greedy 20-episode mean reaches 475."""
    from rlxf.algorithms.control.ppo import PPO, PPOConfig

    ppo = PPO(PPOConfig(seed=0, total_steps=60_000))
    start = float(ppo.evaluate().mean())
    return ppo, start, ppo.learn(eval_every=4096, target=475)
