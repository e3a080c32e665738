"""The Ray executor: rollout workers and a reward worker as Ray actors, the learner where it runs.

``run.rollout_workers`` rollout actors each reserve ``run.rollout_cpus`` of a CPU (fractions, so
several share a core) and generate with ``run.backend`` ("hf" samples on the actor's CPUs; a
backend that needs a GPU, vLLM, reserves one per actor). Weights travel once per version, by
``run.weight_sync``: "object_store" ``ray.put``s the state dict once and every actor loads that one
object (one node); "collective" broadcasts it as one flat buffer in a process group of the learner
and the actors (gloo; NCCL when both hold GPUs, so GPU weights skip the object store's host copies),
the way multi-node RLHF systems sync their engines; "auto" picks the object store on one node and
the collective otherwise. Only gloo between CPU processes is tested here.

An actor that dies is restarted by Ray; the executor sends it the current version's weights
again and re-runs its shard with the same seed, so the rollout is the one an uninterrupted run
samples. Shards, seeds and torch thread counts match :class:`~rlxf.executors.local.LocalExecutor`,
so the same seed gives the same rollouts, rewards and metrics as the local backend (CPU kernels
are deterministic at a fixed thread count). Ray is optional: ``pip install 'rlxf[ray]'``.
"""

from __future__ import annotations

from datetime import timedelta

import torch

from rlxf.core.cluster import ScaleSettings, connect_ray
from rlxf.executors.generation import GenerationBackend, backend_class
from rlxf.executors.local import merge_rollouts, score_samples, shard_seeds, split_prompts, weights_of
from rlxf.rewards.scoring import RewardError

RETRIES = 3  # times one call to a lost actor is re-run before the run stops


class WorkerLost(RuntimeError):
    """A rollout or reward actor died (Ray restarts it; the call can be re-run)."""


def pack(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every tensor of a state dict as the bytes of one flat buffer (one broadcast per version)."""
    return torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in state.values()])


def unpack(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict packed in ``flat``, with the names, dtypes and shapes of ``like``."""
    out, at = {}, 0
    for k, t in like.items():
        n = t.numel() * t.element_size()
        out[k] = flat[at: at + n].clone().view(t.dtype).view(t.shape)  # clone: an aligned start
        at += n
    return out


def weight_group(store, rank: int, size: int, timeout_s: float, cuda: bool):
    """A process group of its own (not torch's default one, which a Ray Train worker already uses)
    over ``store``, the learner's TCP store."""
    import torch.distributed as dist

    if cuda:
        return dist.ProcessGroupNCCL(store, rank, size)
    return dist.ProcessGroupGloo(store, rank, size, timedelta(seconds=timeout_s))


def broadcast(group, flat: torch.Tensor) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([flat], opts).wait()


class Pingable:
    """An actor the executor can ping: a call that returns once the actor is up (again)."""

    def ready(self) -> bool:
        return True


class RolloutWorker(Pingable):
    """Holds a generation engine on its own policy copy; loads each version's weights, samples a shard."""

    def __init__(self, policy, backend: type[GenerationBackend], threads: int):
        torch.set_num_threads(threads)
        self.engine = backend(policy)
        self.version, self.group, self.cuda = None, None, False

    def set_weights(self, state: dict, version) -> None:
        self.engine.load_weights(state)
        self.version = version

    def join_group(self, host: str, port: int, rank: int, size: int, timeout_s: float, cuda: bool) -> None:
        import torch.distributed as dist

        store = dist.TCPStore(host, port, size, is_master=False, timeout=timedelta(seconds=timeout_s))
        self.group, self.cuda = weight_group(store, rank, size, timeout_s, cuda), cuda

    def receive_weights(self, version) -> None:
        like = weights_of(self.engine.policy)
        flat = torch.empty(sum(t.numel() * t.element_size() for t in like.values()), dtype=torch.uint8,
                           device="cuda" if self.cuda else "cpu")
        broadcast(self.group, flat)
        self.set_weights(unpack(flat.cpu(), like), version)

    def sample(self, version, *args):
        """A shard's rollout, or None when this worker holds other weights (it restarted since they came)."""
        return self.engine.generate(*args) if version == self.version else None


class RewardWorker(Pingable):
    """Holds the reference policy and the scorer; returns reference log-probs and rewards."""

    def __init__(self, ref, scorer, threads: int):
        torch.set_num_threads(threads)
        self.ref, self.scorer = ref, scorer

    def score(self, samples, step: int):
        return score_samples(self.ref, self.scorer, samples, step)


class RayExecutor:
    """Rollout actors and one reward actor on the Ray instance :func:`connect_ray` gives for
    ``scale``. ``scale.timeout_s`` bounds every wait, with a clear error. ``backend`` overrides
    ``scale.backend`` with a :class:`GenerationBackend` class; ``threads``: torch threads in each
    actor (default: the driver's, which keeps rollouts equal to the local executor's)."""

    def __init__(self, scale: ScaleSettings, backend: type[GenerationBackend] | None = None,
                 threads: int | None = None):
        self.ray = connect_ray(scale)
        self.scale, self.timeout_s = scale, scale.timeout_s
        self.backend = backend or backend_class(scale.backend)
        self.exact_logprobs = self.backend.exact_logprobs
        self.threads = threads or torch.get_num_threads()
        self.weight_sync = scale.weight_sync
        if self.weight_sync == "auto":
            nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
            self.weight_sync = "collective" if nodes > 1 else "object_store"
        self._rollout, self._reward, self._version, self._state_ref, self._group = None, None, None, None, None
        self._push_error = ""
        self.weight_puts = 0  # state dicts put in the object store (one per version)
        self.broadcasts = 0  # state dicts broadcast in the collective group (one per version)
        self.restarts = 0  # actor calls re-run after the actor was lost

    def _get(self, refs, what: str, step):
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            return self.ray.get(refs, timeout=self.timeout_s)
        except GetTimeoutError:
            raise RewardError(f"{what} timed out after {self.timeout_s}s at step {step} (run.timeout_s); if it "
                              f"never started, the cluster may lack the CPUs it asks for (run.rollout_workers = "
                              f"{self.scale.rollout_workers} x run.rollout_cpus = {self.scale.rollout_cpus})") from None
        except RayActorError as e:
            raise WorkerLost(f"{what} died at step {step} ({type(e).__name__})") from None
        except RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else None
            if isinstance(cause, RewardError):
                raise RewardError(str(cause)) from None
            raise RuntimeError(f"{what} failed at step {step}: {cause or e}") from None

    def _result(self, ref, what: str, step, resubmit):
        """The result of ``ref``; when its actor died (Ray restarts it), ``resubmit()`` gives a new
        ref, up to :data:`RETRIES` times."""
        why = ""
        for attempt in range(RETRIES + 1):
            try:
                out = self._get(ref if attempt == 0 else resubmit(), what, step)
                if out is not None:
                    return out
                why = f"{what} restarted without the weights of version {step}"
            except WorkerLost as e:
                why = str(e)
            self.restarts += attempt < RETRIES
        why += f"; last weight push: {self._push_error}" if self._push_error else ""
        raise RuntimeError(f"{what} was lost {RETRIES + 1} times, giving up: {why}")

    def _alive(self, actor, what: str) -> None:
        """Wait, up to ``timeout_s``, until ``actor`` answers (Ray may still be restarting it)."""
        import time

        from ray.exceptions import GetTimeoutError, RayActorError

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self.ray.get(actor.ready.remote(), timeout=self.timeout_s)
                return
            except (RayActorError, GetTimeoutError) as e:
                if time.monotonic() > deadline:
                    raise WorkerLost(f"{what} did not come back within {self.timeout_s}s ({type(e).__name__})") from None
                time.sleep(0.5)

    # -- weights ---------------------------------------------------------------------------
    def _start(self, policy) -> None:
        actor = self.ray.remote(num_cpus=self.scale.rollout_cpus, num_gpus=int(self.backend.needs_gpu),
                                max_restarts=-1, max_task_retries=0)
        skeleton = policy.copy()  # on the CPU: an actor without a GPU cannot unpickle CUDA tensors
        skeleton.model.to("cpu")
        skeleton.device = torch.device("cpu")
        self._skeleton = self.ray.put(skeleton)  # kept in scope: Ray rebuilds a restarted actor from it
        self._rollout = [actor(RolloutWorker).remote(self._skeleton, self.backend, self.threads)
                         for _ in range(self.scale.rollout_workers)]

    def _push(self, workers: list[int], rejoin: bool = False) -> None:
        """Send the current version's weights to ``workers`` (the collective path reaches all of them,
        in a new group when ``rejoin``: a restarted actor is in none).
        A worker lost on the way keeps other weights, so its sample comes back empty and is re-run
        after another push (:meth:`_result`); the error is kept for the message if that never works."""
        self._push_error = ""
        try:
            if self.weight_sync == "object_store":
                refs = [self._rollout[i].set_weights.remote(self._state_ref, self._version) for i in workers]
                self._get(refs, "rollout worker set_weights", self._version)
                return
            if self._group is None or rejoin:
                self._join()
            refs = [w.receive_weights.remote(self._version) for w in self._rollout]
            broadcast(self._group, self._flat)
            self._get(refs, "rollout worker receive_weights", self._version)
        except (WorkerLost, RuntimeError) as e:  # RuntimeError: a peer of the weight group went away
            self._push_error, self._group = str(e), None

    def _join(self) -> None:
        """A new weight group of the learner (rank 0) and every rollout actor. Each actor answers a
        ping first: a call sent to an actor that just died fails at once, a rendezvous only at its timeout."""
        import torch.distributed as dist

        for i, w in enumerate(self._rollout):
            self._alive(w, f"rollout worker {i}")
        host, size = self.ray.util.get_node_ip_address(), len(self._rollout) + 1
        timeout = timedelta(seconds=self.timeout_s)
        store = dist.TCPStore(host, 0, size, is_master=True, timeout=timeout, wait_for_workers=False)
        cuda = self._flat.is_cuda  # NCCL when the learner and the actors both hold GPUs
        refs = [w.join_group.remote(host, store.port, i + 1, size, self.timeout_s, cuda)
                for i, w in enumerate(self._rollout)]
        self._group = weight_group(store, 0, size, self.timeout_s, cuda)
        self._get(refs, "rollout worker join_group", self._version)

    def _new_version(self, policy, version) -> None:
        self._version = version
        state = weights_of(policy)
        if self.weight_sync == "object_store":
            self._state_ref = self.ray.put(state)
            self.weight_puts += 1
        else:
            gpus = self.backend.needs_gpu and policy.device.type == "cuda"
            self._flat = pack(state).to(policy.device if gpus else "cpu")
            self.broadcasts += 1
        self._push(list(range(len(self._rollout))))

    # -- the executor's calls --------------------------------------------------------------
    def sample(self, policy, version, prompts, n, max_new_tokens, temperature, top_p, seed):
        if self._rollout is None:
            self._start(policy)
        if version != self._version:
            self._new_version(policy, version)
        jobs = {i: (part, n, max_new_tokens, temperature, top_p, s) for i, (part, s) in
                enumerate(zip(split_prompts(prompts, len(self._rollout)), shard_seeds(seed, len(self._rollout))))
                if part}
        refs = {i: self._rollout[i].sample.remote(version, *job) for i, job in jobs.items()}

        def rerun(i):
            self._alive(self._rollout[i], f"rollout worker {i}")
            self._push([i], rejoin=True)
            return self._rollout[i].sample.remote(version, *jobs[i])

        return merge_rollouts([self._result(refs[i], f"rollout worker {i}", version, lambda i=i: rerun(i))
                               for i in jobs])

    def score(self, ref, scorer, samples, step):
        if self._reward is None:
            actor = self.ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(RewardWorker)
            self._reward_args = (self.ray.put(ref), self.ray.put(scorer))  # in scope for a restart
            self._reward = actor.remote(*self._reward_args, self.threads)

        def rerun():
            self._alive(self._reward, "reward worker")
            return self._reward.score.remote(samples, step)

        return self._result(self._reward.score.remote(samples, step), "reward worker", step, rerun)

    def close(self) -> None:
        for a in (self._rollout or []) + ([self._reward] if self._reward else []):
            self.ray.kill(a)
        self._rollout, self._reward, self._version, self._group = None, None, None, None
