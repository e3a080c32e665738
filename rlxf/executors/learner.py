"""The data-parallel learner: the shared training loop run by N Ray Train workers at once.

Every worker runs the same loop body on the same model and optimiser settings. Each calls the
stage's ``make_batch(step)`` (deterministic in the step), keeps its contiguous :func:`shard` of the
global batch, and sums the stage's ``loss_fn(micro, batch)`` shares (each already a share of the
GLOBAL loss) over its micro-batches. Once per optimiser step :func:`sync_gradients` all-reduces the
gradients with SUM, so every worker holds exactly the gradient one process would have computed
over the whole batch; clipping, the optimiser step and the schedule then run identically on every
rank. Metric shares are summed the same way (:func:`all_reduce_sum`). Rank 0 writes the metrics
lines and checkpoints to the run directory; on resume every rank loads the same checkpoint.

Why not torch's ``DistributedDataParallel`` wrapper: our losses run several forwards per backward
(chosen and rejected rows, policy and value model, a LoRA reference through the same module),
which DDP's hook-based reducer refuses without ``static_graph``/``find_unused_parameters`` tricks
that LoRA and gradient checkpointing then trip over. One bucketed all-reduce per optimiser step is
the communication DDP itself does when it skips syncing (``no_sync``) on all but the last
micro-batch. Ray Train starts the workers and their process group (gloo on CPU, NCCL on GPU).

The driver ships ``(run, model, cfg, make_batch, loss_fn, on_resume, extra_state)`` as ONE
cloudpickle graph, so the stage's closures keep pointing at the model the workers train. Workers
get the run without its trackers; when the fit ends, the driver loads rank 0's final weights and
extra state into its own model and forwards the stage's new metrics lines to the trackers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import threading
import warnings
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from rlxf.core.cluster import ClusterError, connect_ray

BUCKET_BYTES = 25 * 2**20  # gradients all-reduced per call, as DDP's default bucket


class LearnerError(RuntimeError):
    """A data-parallel learner worker failed; the message names the stage, the rank and the error."""


def world() -> tuple[int, int]:
    """``(rank, size)`` of the process group this process is in; ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch: list, rank: int, size: int) -> list:
    """Rank ``rank``'s contiguous part of ``batch``: sizes differ by at most one, earlier ranks
    take the extra items, and a rank may get nothing when the batch is smaller than the world."""
    base, extra = divmod(len(batch), size)
    start = rank * base + min(rank, extra)
    return batch[start:start + base + (rank < extra)]


def _device() -> torch.device:
    """Where tensors for this process group's collectives live (NCCL needs them on the GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _buckets(params: list[torch.Tensor], limit: int) -> Iterable[list[torch.Tensor]]:
    """Consecutive runs of ``params`` with the same device and dtype, each under ``limit`` bytes
    (a parameter larger than ``limit`` is a bucket of its own)."""
    bucket: list[torch.Tensor] = []
    used = 0
    for p in params:
        size = p.numel() * p.element_size()
        if bucket and (used + size > limit or (p.device, p.dtype) != (bucket[0].device, bucket[0].dtype)):
            yield bucket
            bucket, used = [], 0
        bucket.append(p)
        used += size
    if bucket:
        yield bucket


def sync_gradients(params: list[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Replace every parameter's gradient by its SUM over the process group, in buckets.

    A parameter that got no gradient on this rank counts as zeros, so long as some rank gave it
    one; a parameter no rank gave a gradient keeps ``grad = None``, as in one process (the
    optimiser then skips it: no weight decay, no moment update)."""
    if world()[1] == 1:
        return
    params = list(params)
    if not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=_device())
    dist.all_reduce(present)
    live = []
    for p, n in zip(params, present.tolist()):
        if n:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            live.append(p)
    for bucket in _buckets(live, bucket_bytes):
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat)
        offset = 0
        for p in bucket:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()


def all_reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """Each key's SUM over the process group (a key some ranks lack counts as 0 there), in
    sorted key order, so every rank gets the same dict."""
    if world()[1] == 1:
        return dict(values)
    names: list[list[str] | None] = [None] * world()[1]
    dist.all_gather_object(names, sorted(values))
    keys = sorted(set().union(*names))
    total = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(total)
    return dict(zip(keys, total.tolist()))


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """``obj`` as rank ``src`` holds it, on every rank (other ranks' ``obj`` is ignored)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_device())
    return box[0]


def worker_threads(scale, workers: int) -> int:
    """torch threads in each learner worker: ``learner_threads``, else this process's share."""
    return scale.learner_threads or max(1, torch.get_num_threads() // workers)


def check_room(scale, gpu: bool = False, rollout_cpus: float = 0.0) -> None:
    """Raise :class:`ClusterError` when the learner workers (each reserving its torch threads in CPUs,
    on CPU) and ``rollout_cpus`` for rollout actors do not fit in the Ray cluster's CPUs: Ray would
    otherwise wait for room that never comes."""
    ray = connect_ray(scale)
    n = scale.learner_workers
    learner = 0 if gpu else n * worker_threads(scale, n)
    cpus = float(ray.cluster_resources().get("CPU", 0))
    if learner + rollout_cpus > cpus:
        rollout = (f" and {scale.rollout_workers} rollout worker(s) x {scale.rollout_cpus:g} CPU"
                   if rollout_cpus else "")
        raise ClusterError(f"{n} learner worker(s) x {learner // n:g} thread(s){rollout} need "
                           f"{learner + rollout_cpus:g} CPUs, but the Ray cluster has {cpus:g}; lower "
                           "run.learner_threads, run.learner_workers or run.rollout_cpus, or raise run.num_cpus "
                           "(a local instance's logical CPUs may exceed its cores)")


def _worker(config: dict) -> Any:
    """What each Ray Train worker runs: unpack the shipped graph and run the loop body."""
    import cloudpickle
    import ray

    torch.set_num_threads(config["threads"])
    torch.set_rng_state(config["torch_rng"])
    run, stage, model, cfg, make_batch, loss_fn, on_resume, extra_state, body = cloudpickle.loads(
        ray.get(config["payload"]))
    with warnings.catch_warnings(record=True) as caught:  # a worker's stderr does not reach the user
        warnings.simplefilter("default")
        out = body(run, stage, model, cfg, make_batch, loss_fn, on_resume, extra_state)
    if out is None:
        return None
    out["warnings"] = [(w.category, str(w.message)) for w in caught]
    buf = io.BytesIO()  # Ray Train returns no tensors: rank 0's state travels as torch.save bytes
    torch.save(out, buf)
    return buf.getvalue()


class _Follower:
    """Reads the stage's metrics lines as rank 0 appends them, every second: moves the driver's
    progress bar and hands each new line to the run's trackers, which stay in the driver."""

    def __init__(self, run, stage: str, start: int, bar):
        self.run, self.stage, self.next, self.bar, self.offset = run, stage, start, bar, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _new_rows(self) -> list[dict]:
        """The complete lines appended since the last call (all of them after the file was replaced)."""
        try:
            with open(self.run.metrics_path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:
                    self.offset = 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        data = data[: data.rfind(b"\n") + 1]  # the rest may be a line rank 0 is still writing
        self.offset += len(data)
        rows = []
        for line in data.decode().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        return rows

    def pump(self) -> None:
        for r in self._new_rows():
            if r.get("stage") == self.stage and r["step"] >= self.next:
                self.run.trackers.log(self.stage, r["step"], {k: v for k, v in r.items() if k not in ("stage", "step")})
                self.next = r["step"] + 1
        self.bar.n = self.next
        self.bar.refresh()

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            self.pump()

    def __enter__(self) -> "_Follower":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.pump()


DIED = ("WorkerHealthCheckFailedError", "ActorDiedError", "RayActorError", "ActorUnavailableError")
LOST_PEER = ("connection reset", "connection closed", "closed by peer", "read error", "broken pipe",
             "socket closed", "remote process exited", "communicator was aborted")


def _where_it_stands(run, stage: str, checkpoint_every: int) -> str:
    """The sentence that tells a user what is kept and how to go on after a failed fit."""
    step = run.checkpoint_step(stage)
    if step is None:
        return (f"no checkpoint was written yet (optim.checkpoint_every = {checkpoint_every}); run the same "
                "command again to start the stage over")
    return (f"the last checkpoint of step {step} is kept in {run.dir / 'stages' / stage}; run the same command "
            "again to resume from it")


def _failure(run, stage: str, cfg, error: Exception) -> LearnerError:
    """A :class:`LearnerError`: which worker died or what it raised (a rank that only lost its
    connection to a failed peer is summarised, not quoted), then where the run stands."""
    failures = getattr(error, "worker_failures", None) or {}
    died, raised, lost = [], [], []
    for rank, exc in sorted(failures.items()):
        exc = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the worker's own exception
        lines = str(exc).strip().splitlines()
        text = lines[-1] if lines else ""
        if type(exc).__name__ in DIED:
            died.append(f"learner worker {rank} died (its process ended: killed, out of memory or crashed)")
        elif any(m in str(exc).lower() for m in LOST_PEER):
            lost.append(rank)
        else:
            if "timed out" in text.lower():
                text += f" (it waited run.timeout_s = {run.scale.timeout_s:g}s for another learner worker)"
            raised.append(f"learner worker {rank} raised {type(exc).__name__}: {text}")
    parts = died + raised
    if lost:
        ranks = ", ".join(map(str, lost))
        parts.append(f"the other worker(s) ({ranks}) lost their connection to it" if parts else
                     f"learner worker(s) {ranks} lost their connection to another worker (did a worker or node die?)")
    if not failures:
        cause = getattr(error, "controller_failure", error)
        parts.append(f"the data-parallel learner failed: {type(cause).__name__}: {cause}")
    where = _where_it_stands(run, stage, cfg.checkpoint_every)
    return LearnerError(f"{stage}: {'; '.join(parts)}. {where[0].upper()}{where[1:]}")


def fit_data_parallel(run, stage: str, model: torch.nn.Module, cfg, make_batch: Callable[[int], list],
                      loss_fn: Callable, quiet: bool = False, on_resume: Callable[[dict], None] | None = None,
                      extra_state: Callable[[], dict] | None = None, *, body: Callable) -> dict:
    """Run ``body`` (the loop: ``body(run, stage, model, cfg, make_batch, loss_fn, on_resume,
    extra_state)``) in ``run.scale.learner_workers`` Ray Train workers and return what rank 0's
    body returned. The driver shows the progress and passes each metrics line rank 0 writes to the
    run's trackers as it comes. Raises :class:`LearnerError` when a worker fails."""
    import cloudpickle

    scale = run.scale
    ray = connect_ray(scale)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from tqdm.auto import tqdm

    n = scale.learner_workers
    threads = worker_threads(scale, n)
    gpu = next(model.parameters()).device.type == "cuda"
    check_room(scale, gpu)
    payload = ray.put(cloudpickle.dumps((run, stage, model, cfg, make_batch, loss_fn, on_resume, extra_state, body)))
    storage = tempfile.mkdtemp(prefix="rlxf-train-")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"payload": payload, "threads": threads, "torch_rng": torch.get_rng_state()},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo", timeout_s=int(scale.timeout_s)),
        scaling_config=ScalingConfig(num_workers=n, use_gpu=gpu, resources_per_worker={"CPU": 0 if gpu else threads}),
        run_config=RunConfig(name=f"rlxf-{stage}", storage_path=storage, failure_config=FailureConfig(max_failures=0)),
    )
    # where rank 0 will resume; its lines from an interrupted attempt after that step go now, so the
    # trackers get each new line once, as it is written
    last = run.checkpoint_step(stage)
    start = 0 if last is None else last + 1
    run.truncate_metrics(stage, after_step=start - 1)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"{stage} ({n} workers)", disable=quiet, leave=False,
               dynamic_ncols=True)
    try:
        with _Follower(run, stage, start, bar):
            result = trainer.fit()
    except Exception as e:
        from ray.train import TrainingFailedError

        if isinstance(e, TrainingFailedError):
            raise _failure(run, stage, cfg, e) from None
        raise
    finally:
        bar.close()
        shutil.rmtree(storage, ignore_errors=True)
    if result.error is not None:
        raise _failure(run, stage, cfg, result.error)
    out = torch.load(io.BytesIO(result.return_value), map_location="cpu", weights_only=False)
    for category, message in dict.fromkeys(out.pop("warnings", [])):  # rank 0's, once each
        warnings.warn(message, category, stacklevel=3)
    return out


# -- strategy = "fsdp": torch's own fully_shard ------------------------------------------------------


def _wrap_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules to shard as units: every transformer block a Hugging Face model names in
    ``_no_split_modules``, then each module the stage calls itself (the model, or each member of a
    ``ModuleDict`` such as policy + value model), so every forward is an FSDP root."""
    blocks = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
    inner = [m for m in model.modules() if type(m).__name__ in blocks]
    tops = list(model.values()) if isinstance(model, torch.nn.ModuleDict) else [model]
    return inner + [m for m in tops if any(True for _ in m.parameters())]


def shard_model(model: torch.nn.Module) -> None:
    """Shard ``model`` in place over the process group with FSDP2's ``fully_shard``. Gradients are
    reduce-scattered as SUMS (divide factor 1): every loss here is already a share of the global loss."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for unit in _wrap_units(model):
        fully_shard(unit)
    for m in model.modules():
        if isinstance(m, FSDPModule):  # a plain SUM: gloo has no pre-multiplied sum
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)


def check_fsdp_batches(batch_size: int, micro_batch_size: int, size: int) -> None:
    """FSDP runs collectives inside each forward and backward, so every rank must run the same
    number of micro-batches: the global batch must split evenly over ranks and micro-batches."""
    per_rank, extra = divmod(batch_size, size)
    if extra or (micro_batch_size > 0 and per_rank > micro_batch_size and per_rank % micro_batch_size):
        raise LearnerError(f"run.strategy = \"fsdp\" needs the batch size ({batch_size}) to split evenly over "
                           f"{size} learner workers and then into micro-batches of {micro_batch_size or per_rank}; "
                           "change optim.batch_size or optim.micro_batch_size, or use run.strategy = \"ddp\"")


def fsdp_sync_on(model: torch.nn.Module, last: bool) -> None:
    """Reduce-scatter gradients only in the last micro-batch's backward (FSDP's ``no_sync``)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_requires_gradient_sync(last, recurse=False)


def gather_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every sharded tensor gathered whole, on the CPU: a collective under FSDP, so
    every rank calls it."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu() for k, v in state.items()}


def full_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimiser state of a sharded model as whole CPU tensors keyed by parameter name (every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: torch.nn.Module, opt: torch.optim.Optimizer, weights: dict, optim: dict) -> None:
    """Load :func:`gather_weights` and :func:`full_optimizer_state`'s output into a sharded model and its optimiser (every rank)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, opt, optim, options=options)
