"""RL with verifiable rewards (the RLVR stage of Tulu 3).

Lambert et al., "Tulu 3: Pushing Frontiers in Open Language Model Post-Training" (2024): the
reward is ``alpha`` when a deterministic verifier accepts the final answer and 0 otherwise,
optimised with any controller method from the starting policy. Here the verifier is
:func:`rlxf.tasks.arithmetic.check_answer`; the demonstration (an SFT prover before and after
RLVR) is :mod:`rlxf.lab.rlvr`.
"""

from __future__ import annotations

from rlxf.algorithms.online.controller import OnlineConfig, train_online
from rlxf.core.runs import Run
from rlxf.policies.language import LanguagePolicy
from rlxf.rewards.scoring import Scorer, verifier_reward
from rlxf.tasks.arithmetic import ArithmeticTask, check_answer


def train_rlvr(run: Run, stage: str, policy: LanguagePolicy, task: ArithmeticTask, cfg: OnlineConfig,
               n_prompts: int = 2000, alpha: float = 1.0, seed: int = 0, quiet: bool = True, executor=None):
    """Optimise the verifiable reward ``alpha * [answer correct]`` with ``cfg.method`` from ``policy``."""
    ref = policy.reference()
    scorer = Scorer({"verifier": (verifier_reward(policy.decode, check_answer, alpha), 1.0)})
    prompts = policy.encode(task.prompts(n_prompts, "train"))
    return train_online(run, stage, policy, ref, prompts, scorer, cfg, seed, executor=executor, quiet=quiet)
