"""The Ray executor: rollout workers and a reward worker as Ray actors, the learner in the driver.

Weights travel once per version: the driver ``ray.put``s the policy's state dict when the
controller asks for a rollout with a new version and every rollout worker loads that one object.
Shards, seeds and torch thread counts match :class:`~rlxf.executors.local.LocalExecutor`, so the
same seed gives the same rollouts, rewards and metrics as the local backend (CPU kernels are
deterministic at a fixed thread count). Ray is optional: ``pip install rlxf[ray]``.
"""

from __future__ import annotations

import torch

from rlxf.executors.local import merge_rollouts, sample_shard, score_samples, shard_seeds, split_prompts
from rlxf.rewards.scoring import RewardError


class RolloutWorker:
    """Holds a policy copy; loads shipped weights, samples a shard."""

    def __init__(self, policy, threads: int):
        torch.set_num_threads(threads)
        self.policy = policy

    def set_weights(self, state: dict) -> None:
        self.policy.model.load_state_dict(state)

    def sample(self, *args):
        return sample_shard(self.policy, *args)


class RewardWorker:
    """Holds the reference policy and the scorer; returns reference log-probs and rewards."""

    def __init__(self, ref, scorer, threads: int):
        torch.set_num_threads(threads)
        self.ref, self.scorer = ref, scorer

    def score(self, samples, step: int):
        return score_samples(self.ref, self.scorer, samples, step)


class RayExecutor:
    """``shards`` rollout actors and one reward actor on a Ray instance (started locally with
    ``num_cpus`` if none is running). ``timeout_s`` bounds every wait, with a clear error."""

    def __init__(self, shards: int = 1, num_cpus: int = 2, timeout_s: float = 300.0, threads: int | None = None):
        try:
            import ray
        except ImportError:
            raise ImportError("executor = 'ray' needs Ray: pip install 'rlxf[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        self.shards, self.timeout_s = shards, timeout_s
        self.threads = threads or torch.get_num_threads()
        self._rollout, self._reward, self._version = None, None, None
        self.weight_puts = 0  # how many state dicts were shipped (one per version)

    def _get(self, refs, what: str, step):
        from ray.exceptions import GetTimeoutError, RayTaskError

        try:
            return self.ray.get(refs, timeout=self.timeout_s)
        except GetTimeoutError:
            raise RewardError(f"{what} timed out after {self.timeout_s}s at step {step}") from None
        except RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else None
            if isinstance(cause, RewardError):
                raise RewardError(str(cause)) from None
            raise RuntimeError(f"{what} failed at step {step}: {cause or e}") from None

    def sample(self, policy, version, prompts, n, max_new_tokens, temperature, top_p, seed):
        ray = self.ray
        if self._rollout is None:
            actor = ray.remote(num_cpus=0)(RolloutWorker)
            skeleton = ray.put(policy.copy())
            self._rollout = [actor.remote(skeleton, self.threads) for _ in range(self.shards)]
        if version != self._version:
            state = ray.put({k: v.detach().cpu() for k, v in policy.model.state_dict().items()})
            self.weight_puts += 1
            self._get([w.set_weights.remote(state) for w in self._rollout], "rollout worker set_weights", version)
            self._version = version
        parts = split_prompts(prompts, self.shards)
        refs = [w.sample.remote(part, n, max_new_tokens, temperature, top_p, s)
                for w, part, s in zip(self._rollout, parts, shard_seeds(seed, self.shards)) if part]
        return merge_rollouts(self._get(refs, "rollout worker", version))

    def score(self, ref, scorer, samples, step):
        if self._reward is None:
            actor = self.ray.remote(num_cpus=0)(RewardWorker)
            self._reward = actor.remote(self.ray.put(ref), self.ray.put(scorer), self.threads)
        return self._get(self._reward.score.remote(samples, step), "reward worker", step)

    def close(self) -> None:
        for a in (self._rollout or []) + ([self._reward] if self._reward else []):
            self.ray.kill(a)
        self._rollout, self._reward, self._version = None, None, None
