"""The one optimisation loop every training stage runs: batches in, a checkpointed model out.

A stage supplies ``make_batch(step)`` (deterministic in the step, so a resumed run sees
the same data) and ``loss_fn(micro_batch, batch)``, which returns the micro-batch's share
of the global-batch loss: per-example (or per-token) terms summed and divided by the
global count. Summing those shares over micro-batches gives the same gradient however
the batch is split, which is what makes gradient accumulation exact.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from rlxf.core.runs import Run
from rlxf.executors import learner
from rlxf.executors.learner import all_reduce_sum, fit_data_parallel, shard, sync_gradients, world


@dataclass
class OptimConfig:
    """Optimiser settings shared by every training stage."""

    steps: int = 100
    batch_size: int = 32
    micro_batch_size: int = 0  # 0: no gradient accumulation
    lr: float = 1e-3
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50
    mixed_precision: bool = False  # bf16 autocast on CUDA; ignored on CPU


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine decay to 10% at ``total``."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def split_micro(batch: list, micro: int) -> list[list]:
    if micro <= 0 or micro >= len(batch):
        return [batch]
    return [batch[i : i + micro] for i in range(0, len(batch), micro)]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint must keep of ``model``: the parameters that train and every buffer. Frozen
    weights (a LoRA model's base) are left out: they come back with the model, not the checkpoint."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`trainable_state`; anything else missing from it is an error."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in frozen]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def single_learner(run: Run, stage: str, why: str) -> None:
    """Refuse ``run.learner_workers > 1`` for a stage whose loss is not a plain sum over its batch
    (``why`` says what breaks); nothing has run yet when this raises."""
    if run.scale.distributed:
        from rlxf.core.config import ConfigError

        raise ConfigError(f"run.learner_workers = {run.scale.learner_workers}: stage {stage} runs in one learner "
                          f"process only ({why}); set run.learner_workers = 1")


@contextlib.contextmanager
def reproducible(model: torch.nn.Module):
    """On CPU, run the block with torch's deterministic algorithms (restoring the caller's setting).
    Multi-threaded CPU training is otherwise not bit-reproducible from one process to the next: the
    same seed and thread count gave a tiny prover whose weights differed by up to 2e-3 after 1000
    steps, enough to move a claim test's figure by two standard errors. The cost measured here is
    about 5% of a tiny model's training time. CUDA runs are left alone (the mode needs a cuBLAS
    workspace setting there and slows some kernels); set it yourself for bitwise GPU runs."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    before, warn_before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if on_cpu and not before:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        if on_cpu and not before:
            torch.use_deterministic_algorithms(before, warn_only=warn_before)


def train(run: Run, stage: str, model: torch.nn.Module, cfg: OptimConfig,
          make_batch: Callable[[int], list], loss_fn: Callable[[list, list], tuple[torch.Tensor, dict]],
          quiet: bool = False, on_resume: Callable[[dict], None] | None = None,
          extra_state: Callable[[], dict] | None = None) -> None:
    """Run ``cfg.steps`` optimiser steps, logging one metrics line per step and resuming
    from the stage's last checkpoint if there is one. ``extra_state``/``on_resume`` let a
    stage save and restore state of its own (e.g. an adaptive KL coefficient).

    With ``run.scale.distributed`` the steps run in data-parallel Ray Train workers
    (:mod:`rlxf.executors.learner`); ``model`` and ``on_resume`` then receive the final state."""
    if run.scale.distributed and world()[1] == 1:
        out = fit_data_parallel(run, stage, model, cfg, make_batch, loss_fn, quiet, on_resume, extra_state,
                                body=worker_body)
        load_trainable_state(model, out["model"])
        torch.set_rng_state(out["torch_rng"])
        if on_resume is not None:
            on_resume(out["extra"])
        model.eval()
        return
    optimise(run, stage, model, cfg, make_batch, loss_fn, quiet, on_resume, extra_state)


def worker_body(run: Run, stage: str, model: torch.nn.Module, cfg: OptimConfig, make_batch, loss_fn,
                on_resume, extra_state) -> dict | None:
    """What each data-parallel worker runs: the loop, then (rank 0) the final state for the driver."""
    optimise(run, stage, model, cfg, make_batch, loss_fn, True, on_resume, extra_state)
    weights = learner.gather_weights(trainable_state(model))  # every rank: a collective under FSDP
    if world()[0] != 0:
        return None
    return {"model": weights, "extra": extra_state() if extra_state else {}, "torch_rng": torch.get_rng_state()}


def optimise(run: Run, stage: str, model: torch.nn.Module, cfg: OptimConfig, make_batch, loss_fn,
             quiet: bool = False, on_resume=None, extra_state=None) -> int:
    """The loop itself, in this process; in a process group each rank takes its shard of every batch,
    gradients and metrics are summed over ranks, and only rank 0 writes. Returns the first step run."""
    with reproducible(model):
        return _optimise(run, stage, model, cfg, make_batch, loss_fn, quiet, on_resume, extra_state)


def _optimise(run, stage, model, cfg, make_batch, loss_fn, quiet, on_resume, extra_state) -> int:
    rank, size = world()
    fsdp = size > 1 and run.scale.strategy == "fsdp"
    if fsdp:  # torch's fully_shard: weights, gradients and optimiser state split over the ranks
        learner.check_fsdp_batches(cfg.batch_size, cfg.micro_batch_size, size)
        learner.shard_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=not fsdp)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps))
    start = 0
    ckpt = run.load_checkpoint(stage, truncate=rank == 0)
    if ckpt is not None:
        last, state = ckpt
        written = "fsdp" if "optimizer_full" in state else "ddp or one process"
        if fsdp != (written == "fsdp"):
            raise learner.LearnerError(f"{run.dir}: the checkpoint of stage {stage} was written with {written}; "
                                       f"resume it with the same run.strategy (now {run.scale.strategy!r})")
        if fsdp:
            learner.load_full_state(model, opt, state["model"], state["optimizer_full"])
        else:
            load_trainable_state(model, state["model"])
            opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if on_resume is not None:
            on_resume(state.get("extra", {}))
        start = last + 1
    device_type = next(model.parameters()).device.type
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.mixed_precision and device_type == "cuda"
                else contextlib.nullcontext())
    model.train()
    bar = tqdm(total=cfg.steps, initial=start, desc=stage, disable=quiet, leave=False, dynamic_ncols=True,
               mininterval=0.5)
    for step in range(start, cfg.steps):
        batch = make_batch(step)
        opt.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        mine = shard(batch, rank, size)
        micros = split_micro(mine, cfg.micro_batch_size) if len(mine) else []
        for i, micro in enumerate(micros):
            if fsdp:  # reduce-scatter once, in the last micro-batch's backward
                learner.fsdp_sync_on(model, i == len(micros) - 1)
            with autocast:
                loss, metrics = loss_fn(micro, batch)
            loss.backward()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        if size > 1:
            if not fsdp:
                sync_gradients(params)
            totals = all_reduce_sum(totals)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        opt.step()
        totals["lr"] = sched.get_last_lr()[0]
        sched.step()
        totals["grad_norm"] = float(grad_norm)
        if rank == 0:
            run.log(stage, step, **{k: round(v, 6) for k, v in totals.items()})
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in list(totals.items())[:3]})
        done = step + 1 == cfg.steps
        if not done and cfg.checkpoint_every > 0 and (step + 1) % cfg.checkpoint_every == 0:
            if fsdp:  # gathering the shards is a collective: every rank takes part, rank 0 writes
                kept = {"model": learner.gather_weights(trainable_state(model)),
                        "optimizer_full": learner.full_optimizer_state(model, opt)}
            elif rank == 0:
                kept = {"model": trainable_state(model), "optimizer": opt.state_dict()}
            if rank == 0:
                state: dict[str, Any] = {**kept, "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                                         "extra": extra_state() if extra_state else {}}
                run.save_checkpoint(stage, step, state)
    bar.close()
    model.eval()
    return start
