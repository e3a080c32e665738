"""The one optimisation loop every training stage runs: batches in, a checkpointed model out.

A stage supplies ``make_batch(step)`` (deterministic in the step, so a resumed run sees
the same data) and ``loss_fn(micro_batch, batch)``, which returns the micro-batch's share
of the global-batch loss: per-example (or per-token) terms summed and divided by the
global count. Summing those shares over micro-batches gives the same gradient however
the batch is split, which is what makes gradient accumulation exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
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
    # the learning-rate multiplier over the steps: "cosine" (warm-up, cosine to 10%), "linear" (warm-up,
    # linear to 0) or "refined" (from a first run's gradient norms: refined_schedule; no separate warm-up)
    schedule: Literal["cosine", "linear", "refined"] = "cosine"
    refine_from: str = ""  # "refined": the run directory whose metrics of this stage hold the first run's norms
    refine_sigma: float = 0.1  # "refined": median-filter width as a fraction of the steps


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine decay to 10% at ``total``."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def linear_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up from 0 over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))

    return f


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Running median of odd ``width`` over ``x``, the ends padded by reflection (numpy's "reflect":
    the edge value itself is not repeated, so [a, b, c] pads to [.., c, b, a, b, c, b, a, ..])."""
    if width % 2 != 1:
        raise ValueError(f"median filter width must be odd, got {width}")
    half = width // 2
    padded = np.pad(np.asarray(x, dtype=np.float64), half, mode="reflect") if half and len(x) > 1 else \
        np.pad(np.asarray(x, dtype=np.float64), half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width), axis=1)


def refined_schedule(grad_norms, sigma: float) -> np.ndarray:
    """The learning-rate multipliers refined from a first run's per-step gradient norms g_1..g_T
    (Defazio et al., "When, Why and How Much?"): smooth g with a median filter of width
    2*floor(sigma*T/2)+1, set w_t = g_t^-2 and eta_t = w_t * sum_{p>t} w_p (so eta_T = 0), and
    scale so the largest multiplier is 1: the peak learning rate is the configured base rate.
    Constant norms give linear decay to 0 exactly."""
    g = np.asarray(grad_norms, dtype=np.float64)
    if g.ndim != 1 or len(g) < 2:
        raise ValueError(f"refined_schedule needs at least 2 gradient norms, got shape {g.shape}")
    if not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError("refined_schedule: gradient norms must be finite and positive")
    if sigma < 0:
        raise ValueError(f"refined_schedule: sigma must be >= 0, got {sigma}")
    w = median_filter(g, 2 * math.floor(sigma * len(g) / 2) + 1) ** -2.0
    after = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # sum_{p>t} w_p
    eta = w * after
    return eta / eta.max()


def first_run_norms(run_dir: str | Path, stage: str) -> list[float]:
    """The per-step ``grad_norm`` the loop logged for ``stage`` in the run directory ``run_dir``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        from rlxf.core.config import ConfigError

        raise ConfigError(f"refine_from: {path} does not exist (expected the metrics of a finished first run)")
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("stage") == stage and "grad_norm" in row:
                rows[row["step"]] = row["grad_norm"]
    return [rows[k] for k in sorted(rows)]


def check_schedules(cfg: Any, prefix: str = "") -> None:
    """Check the schedule settings of every :class:`OptimConfig` inside the config dataclass ``cfg``
    (before any stage runs); the error names the setting, e.g. ``sft.optim.refine_from``."""
    from rlxf.core.config import ConfigError

    if isinstance(cfg, OptimConfig):
        if cfg.schedule not in ("cosine", "linear", "refined"):
            raise ConfigError(f"{prefix}schedule: expected 'cosine', 'linear' or 'refined', got {cfg.schedule!r}")
        if cfg.refine_sigma < 0:
            raise ConfigError(f"{prefix}refine_sigma must be >= 0, got {cfg.refine_sigma}")
        if cfg.schedule == "refined" and not cfg.refine_from:
            raise ConfigError(f"{prefix}schedule = 'refined' needs {prefix}refine_from: the run directory of a "
                              f"first run of this stage, whose logged gradient norms it refines")
        if cfg.schedule == "refined" and not (Path(cfg.refine_from) / "metrics.jsonl").is_file():
            raise ConfigError(f"{prefix}refine_from: {cfg.refine_from} holds no metrics.jsonl (expected the run "
                              f"directory of a first run of this stage)")
        if cfg.schedule == "refined":  # absolute: data-parallel learner workers read it from another directory
            cfg.refine_from = str(Path(cfg.refine_from).resolve())
        return
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        for f in dataclasses.fields(cfg):
            check_schedules(getattr(cfg, f.name), f"{prefix}{f.name}.")


def schedule_lambda(cfg: OptimConfig, stage: str) -> Callable[[int], float]:
    """The learning-rate multiplier per step that ``cfg.schedule`` names ("cosine" is :func:`lr_lambda`)."""
    from rlxf.core.config import ConfigError

    check_schedules(cfg, f"stage {stage}: optim.")
    if cfg.schedule == "cosine":
        return lr_lambda(cfg.warmup_steps, cfg.steps)
    if cfg.schedule == "linear":
        return linear_lambda(cfg.warmup_steps, cfg.steps)
    norms = first_run_norms(cfg.refine_from, stage)
    if len(norms) != cfg.steps:
        raise ConfigError(f"optim.refine_from: {cfg.refine_from}/metrics.jsonl has {len(norms)} gradient norms "
                          f"of stage {stage}, but the refined run has optim.steps = {cfg.steps}; they must match")
    eta = refined_schedule(norms, cfg.refine_sigma)
    return lambda step: float(eta[min(step, len(eta) - 1)])


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
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_lambda(cfg, stage))
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
