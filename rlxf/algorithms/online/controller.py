"""The one rollout -> score -> update controller every online method runs on.

Each rollout samples ``samples_per_prompt`` responses for ``optim.batch_size`` prompts from the
current policy (the sampler's per-token log-probs become the behaviour log-probs, ``old_logps``),
scores them with the reference and the :class:`~rlxf.rewards.scoring.Scorer`, folds
the KL to the reference into the reward (``kl.mode = "reward"``) or leaves it for the loss
(``"loss"``), and hands the batch to a method, which turns it into advantages (``prepare``) and
into a loss (``loss``). One rollout feeds ``updates_per_rollout`` optimiser steps of the shared
loop (:func:`rlxf.algorithms.loop.train`), so checkpoints, resume and micro-batching come for free.
Sampling and scoring go through an executor (in-process or Ray actors).

A sample that no reward component scored (every one returned None) is left out of the loss: its
mask rows are zeroed, and its reward is set to the mean of its group's scored samples (0 when
none was) so group baselines are not skewed. When every group's samples got the same reward for
:data:`NO_SIGNAL_ROLLOUTS` rollouts in a row, there is nothing to learn from, and the run warns
(:class:`NoSignalWarning`), once until the signal returns.
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from rlxf.algorithms.batching import step_rng
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.core.steps import Steps
from rlxf.executors.learner import broadcast_object, check_room, world
from rlxf.objectives.policy_gradient import (
    KL_ESTIMATORS,
    REWARD_ONLY,
    adaptive_kl_beta,
    kl_estimate,
    kl_penalized_rewards,
    ppo_clip_loss,
)
from rlxf.policies.language import LanguagePolicy, Rollout
from rlxf.rewards.scoring import Samples, Scorer

METHODS: dict[str, str] = {
    "rloo": "rlxf.algorithms.online.rloo:RLOO",
    "grpo": "rlxf.algorithms.online.grpo:GRPO",
    "dr_grpo": "rlxf.algorithms.online.grpo:DrGRPO",
    "reinforce_pp": "rlxf.algorithms.online.reinforce_pp:ReinforcePP",
    "ppo": "rlxf.algorithms.online.ppo:PPO",
    "online_dpo": "rlxf.algorithms.online.online_dpo:OnlineDPO",
    "dno": "rlxf.algorithms.online.online_dpo:DNO",
    "inpo": "rlxf.algorithms.online.online_dpo:INPO",
    "nash_md": "rlxf.algorithms.online.nash_md:NashMD",
    "constrained": "rlxf.algorithms.online.constrained:ConstrainedRLOO",
    "cost_constrained": "rlxf.algorithms.online.constrained:CostConstrainedRLOO",
    "sharpening": "rlxf.algorithms.online.sharpening:SFTSharpening",
    "spo": "rlxf.algorithms.online.spo:SPO",
    "p3o": "rlxf.algorithms.online.p3o:P3O",
    "fdpg": "rlxf.algorithms.online.fdpg:FDPG",
    "score": "rlxf.algorithms.online.score:SCoRe",
    "ppo_pp": "rlxf.algorithms.online.rlgf:PPOPlusPlus",
    "aggrevated": "rlxf.algorithms.online.rlgf:AggreVaTeD",
    "d2lols": "rlxf.algorithms.online.rlgf:D2LOLS",
}
REDUCTIONS = ("token", "sequence", "sum", "constant")
NO_SIGNAL_ROLLOUTS = 10  # identical rewards in every group for this many rollouts in a row -> warn


class NoSignalWarning(UserWarning):
    """Every group's samples got the same reward for many rollouts: the advantages are all zero."""


class OnlineError(ValueError):
    """A config the controller cannot run with; raised before any sampling."""


@dataclass
class KLSettings:
    """KL(pi || pi_ref): ``mode`` "reward" (token-level penalty in the reward), "loss" (a loss
    term) or "none"; estimator k1/k2/k3, or (reward mode) the occupancy chi^2 penalties
    ``chi2_occupancy`` / ``sqrt_chi2_occupancy``; ``target > 0`` turns on the adaptive controller."""

    mode: str = "reward"
    monitor: bool = True  # with mode "none", False skips the reference pass (no KL is logged)
    estimator: str = "k1"
    coef: float = 0.05
    target: float = 0.0
    horizon: float = 10000.0


@dataclass
class OnlineConfig:
    """``optim.steps`` optimiser steps; ``optim.batch_size`` prompts per rollout."""

    method: str = "rloo"
    method_args: dict[str, Any] = field(default_factory=dict)  # numbers, strings, tables (e.g. thresholds)
    samples_per_prompt: int = 4
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    updates_per_rollout: int = 1
    minibatches: int = 1
    reward_norm: bool = False  # running mean/std normalisation of the learner's reward (PPO-max)
    reward_clip: float = 0.0  # > 0: clip the (normalised) reward to [-c, c]
    loss_reduction: str = ""  # "" = the method's default; token | sequence | sum | constant
    kl: KLSettings = field(default_factory=KLSettings)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=60, batch_size=16, lr=5e-4,
                                                                   checkpoint_every=20))


@dataclass
class Batch:
    """One scored rollout. ``steps`` holds the behaviour log-probs as both ``logps`` and
    ``old_logps``, plus ``ref_logps`` and the mask, ``[B, T]``. ``token_rewards`` carry the
    learner's score on each last token and, in ``kl.mode = "reward"``, the KL penalty."""

    samples: Samples
    steps: Steps
    scores: Tensor  # [B] learner reward after normalisation/clipping, before KL
    parts: dict[str, Tensor]  # raw component and monitor values, [B] each
    token_rewards: Tensor  # [B, T]
    stats: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)  # whatever the method's prepare() adds

    @property
    def k(self) -> int:
        return self.samples.k

    def rows(self, groups: list[int]) -> list[int]:
        return [g * self.k + j for g in groups for j in range(self.k)]

    def policy_steps(self, policy: LanguagePolicy, rows: list[int]) -> Steps:
        """The current policy's per-token log-probs (with gradient) for ``rows``, with the
        rollout's old and reference log-probs attached, cut to the rows' width."""
        s = self.samples
        cur = policy.steps([s.prompt_ids[i] for i in rows], [s.response_ids[i] for i in rows])
        T = cur.num_steps
        # the rollout's mask: rows without any reward (see the module docstring) are zeroed there
        return cur.replace(old_logps=self.steps.old_logps[rows, :T], ref_logps=self.steps.ref_logps[rows, :T],
                           mask=cur.mask * self.steps.mask[rows, :T].to(cur.mask))


class Reducer:
    """Turns per-step loss terms of a micro-batch into its share of the global batch loss.

    token: sum / tokens in batch; sequence: mean over each sequence, summed / sequences; sum:
    sum per sequence / sequences; constant: sum / (sequences * max_new_tokens) (Dr. GRPO).
    """

    def __init__(self, kind: str, n_rows: int, n_tokens: float, max_len: int):
        self.kind, self.n_rows, self.n_tokens, self.max_len = kind, n_rows, n_tokens, max_len

    def __call__(self, per_step: Tensor, mask: Tensor) -> Tensor:
        x = torch.where(mask > 0, per_step, torch.zeros((), dtype=per_step.dtype))
        if self.kind == "token":
            return x.sum() / self.n_tokens
        if self.kind == "sequence":
            return (x.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / self.n_rows
        if self.kind == "sum":
            return x.sum() / self.n_rows
        return x.sum() / (self.n_rows * self.max_len)


@dataclass
class Context:
    """What a method sees besides the batch: the config, the policy, and the current KL coefficient."""

    cfg: OnlineConfig
    policy: LanguagePolicy
    ref: LanguagePolicy
    kl_coef: float
    reduction: str


def method_class(name: str):
    if name not in METHODS:
        raise OnlineError(f"method: unknown online method {name!r}; known: {', '.join(sorted(METHODS))}")
    module, attr = METHODS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def unknown_method_args(method: str, args) -> list[str]:
    """The names in ``args`` that ``method``'s constructor does not take, sorted."""
    return sorted(set(args) - set(inspect.signature(method_class(method)).parameters))


def build_method(cfg: OnlineConfig, **objects):
    """Instantiate ``cfg.method`` with ``cfg.method_args`` (unknown names are errors) and any
    ``objects`` (e.g. ``critic=``) its constructor takes."""
    cls = method_class(cfg.method)
    params = inspect.signature(cls).parameters
    unknown = unknown_method_args(cfg.method, cfg.method_args)
    if unknown:
        raise OnlineError(f"method_args: {cfg.method} has no parameter {', '.join(unknown)} "
                          f"(it takes: {', '.join(p for p in params if p not in objects)})")
    given = {k: v for k, v in objects.items() if k in params}
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty
               and v.kind is v.POSITIONAL_OR_KEYWORD and p not in cfg.method_args and p not in given]
    if missing:  # e.g. RLGF's guide policy, which a config cannot name
        raise OnlineError(f"method: {cfg.method} needs {', '.join(missing)}, which this caller does not pass")
    return cls(**cfg.method_args, **given)


def validate(cfg: OnlineConfig, method) -> None:
    if cfg.samples_per_prompt < getattr(method, "min_samples", 1):
        raise OnlineError(f"samples_per_prompt: {cfg.method} needs at least {method.min_samples}, "
                          f"got {cfg.samples_per_prompt}")
    if cfg.kl.mode not in ("reward", "loss", "none"):
        raise OnlineError(f"kl.mode must be 'reward', 'loss' or 'none', got {cfg.kl.mode!r}")
    if cfg.kl.estimator not in KL_ESTIMATORS:
        raise OnlineError(f"kl.estimator must be one of {', '.join(KL_ESTIMATORS)}, got {cfg.kl.estimator!r}")
    if not cfg.kl.monitor and cfg.kl.mode != "none":
        raise OnlineError(f"kl.monitor = false skips the reference pass, which kl.mode = {cfg.kl.mode!r} needs")
    if not cfg.kl.monitor and getattr(method, "uses_reference", True):
        raise OnlineError(f"kl.monitor = false: {cfg.method} reads the reference log-probs itself, so the "
                          "reference pass cannot be skipped")
    if cfg.kl.estimator in REWARD_ONLY and cfg.kl.mode == "loss":
        raise OnlineError(f"kl.estimator {cfg.kl.estimator} is a reward penalty; use it with kl.mode = 'reward'")
    if cfg.loss_reduction and cfg.loss_reduction not in REDUCTIONS:
        raise OnlineError(f"loss_reduction must be one of {', '.join(REDUCTIONS)}, got {cfg.loss_reduction!r}")
    if cfg.updates_per_rollout < 1 or not 1 <= cfg.minibatches <= cfg.optim.batch_size:
        raise OnlineError("updates_per_rollout must be >= 1 and minibatches in 1..optim.batch_size")
    per_rollout = cfg.updates_per_rollout * cfg.minibatches
    if cfg.optim.checkpoint_every % per_rollout:
        # a resume inside a rollout would re-sample it with updated weights
        raise OnlineError(f"optim.checkpoint_every ({cfg.optim.checkpoint_every}) must be a multiple of "
                          f"updates_per_rollout * minibatches ({per_rollout}) so a resumed run restarts at a rollout")


def check_config(cfg: OnlineConfig) -> None:
    """The checks of :func:`validate` plus the method's name and ``method_args``, with no method
    object built: what a lab runs on its configs before any stage starts."""
    unknown = unknown_method_args(cfg.method, cfg.method_args)
    if unknown:
        raise OnlineError(f"method_args: {cfg.method} has no parameter {', '.join(unknown)}")
    validate(cfg, method_class(cfg.method))


class RunningMoments:
    """Running mean and variance over every reward seen (Chan et al. parallel update)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: Tensor) -> None:
        n, mean, var = x.numel(), float(x.mean()), float(x.var(unbiased=False))
        total = self.n + n
        delta = mean - self.mean
        self.m2 += var * n + delta**2 * self.n * n / total
        self.mean += delta * n / total
        self.n = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n > 1 else 1.0

    def state(self) -> dict:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    def load(self, d: dict) -> None:
        self.n, self.mean, self.m2 = d.get("n", 0), d.get("mean", 0.0), d.get("m2", 0.0)


def collect(executor, policy: LanguagePolicy, ref: LanguagePolicy, prompts: list[list[int]], scorer: Scorer,
            cfg: OnlineConfig, seed: int, index: int, kl_coef: float, moments: RunningMoments,
            method=None) -> Batch:
    """Sample, score and KL-shape rollout ``index`` (deterministic in ``(seed, index)`` and the weights).

    A method with a ``rollout(executor, policy, index, prompts, cfg, seed) -> Rollout`` method samples
    the rollout itself (a guide's roll-in, a second attempt); it returns rows grouped by prompt, the
    same number per prompt, and that number is the batch's ``k``."""
    rng = step_rng(seed, index, salt=31)
    picked = rng.integers(0, len(prompts), cfg.optim.batch_size).tolist()
    chosen = [prompts[i] for i in picked]
    gen_seed = int(rng.integers(2**62))
    if hasattr(method, "rollout"):
        ro = method.rollout(executor, policy, index, chosen, cfg, gen_seed)
        k, rest = divmod(len(ro.response_ids), len(chosen))
        if rest or k < 1:
            raise OnlineError(f"{type(method).__name__}.rollout returned {len(ro.response_ids)} rows for "
                              f"{len(chosen)} prompts; expected the same number of rows per prompt")
    else:
        k = cfg.samples_per_prompt
        ro = executor.sample(policy, index, chosen, k, cfg.max_new_tokens, cfg.temperature, cfg.top_p, gen_seed)
    if not getattr(executor, "exact_logprobs", True):  # the engine's own kernels: score with the learner's
        ro = behaviour_logprobs(policy, ro)
    samples = Samples(ro.prompt_ids, ro.response_ids, ro.finished, k, prompt_index=[i for i in picked for _ in range(k)])
    ref_logps, (scores, parts) = executor.score(ref if cfg.kl.monitor else None, scorer, samples, index)
    if ref_logps is None:  # no reference pass: nothing reads ref_logps (validate() made sure)
        ref_logps = ro.steps.logps
    steps = Steps(logps=ro.steps.logps, old_logps=ro.steps.logps, ref_logps=ref_logps[:, : ro.steps.num_steps],
                  mask=ro.steps.mask)
    valid = scorer.valid(parts, len(samples))
    scores = impute_missing(scores, valid, k)
    learner = scores
    if cfg.reward_norm:
        moments.update(scores)
        learner = (scores - moments.mean) / (moments.std + 1e-8)
    if cfg.reward_clip > 0:
        learner = learner.clamp(-cfg.reward_clip, cfg.reward_clip)
    beta = kl_coef if cfg.kl.mode == "reward" else 0.0
    token_rewards = kl_penalized_rewards(learner, steps, beta, cfg.kl.estimator)
    stats = {"proxy_reward": float(scores.mean()),
             **({"kl": float(steps.seq_logratio().mean())} if cfg.kl.monitor else {}),
             "kl_coef": kl_coef,
             "length": float(steps.lengths().mean()),
             "finished": sum(ro.finished) / len(ro.finished),
             **({"no_reward": float((~valid).float().mean())} if not bool(valid.all()) else {}),
             **{f"{name}_reward": float(v.nanmean()) for name, v in parts.items() if name in scorer.monitors}}
    if not bool(valid.all()):  # unscored samples leave the loss (after the stats, which describe the rollout)
        steps = steps.replace(mask=steps.mask * valid[:, None].to(steps.mask.dtype))
    return Batch(samples, steps, learner, parts, token_rewards, stats)


def behaviour_logprobs(policy: LanguagePolicy, ro: Rollout) -> Rollout:
    """``ro`` with its log-probs recomputed by ``policy`` (the learner's forward), so the importance
    ratio at the first update on a rollout is exactly 1, whatever engine sampled it."""
    scored = policy.score(ro.prompt_ids, ro.response_ids)
    T = ro.steps.num_steps
    logps = torch.zeros_like(ro.steps.logps)
    logps[:, : min(T, scored.num_steps)] = scored.logps[:, :T]
    return Rollout(ro.prompt_ids, ro.response_ids, ro.finished, ro.steps.replace(logps=logps * ro.steps.mask))


def impute_missing(scores: Tensor, valid: Tensor, k: int) -> Tensor:
    """``scores`` with each unscored sample's reward set to its group's mean over the scored ones
    (0 for a group with none), so baselines and normalisations see no made-up spread."""
    if bool(valid.all()):
        return scores
    g, v = scores.view(-1, k), valid.view(-1, k).float()
    mean = (g * v).sum(1, keepdim=True) / v.sum(1, keepdim=True).clamp(min=1)
    return torch.where(v.bool(), g, mean.expand_as(g)).reshape(-1)


class SignalWatch:
    """Warns when every group's samples got identical rewards (within ``tol``) for ``patience``
    rollouts in a row: once per such stretch, again only after the signal came back."""

    def __init__(self, names: list[str], patience: int | None = None, tol: float = 1e-8):
        self.names, self.tol, self.flat = names, tol, 0
        self.patience = NO_SIGNAL_ROLLOUTS if patience is None else patience

    def update(self, scores: Tensor, k: int, step: int) -> None:
        if k < 2 or not self.names:  # one sample per prompt, or no reward: groups carry no signal to lose
            return
        g = scores.view(-1, k)
        if bool(((g.max(1).values - g.min(1).values) <= self.tol).all()):
            self.flat += 1
        else:
            self.flat = 0
        if self.flat == self.patience:
            values = ", ".join(f"{float(v):g}" for v in g[:, 0].unique()[:5])
            warnings.warn(f"no learning signal: at step {step}, every group's samples have had identical rewards "
                          f"for {self.patience} rollouts in a row (reward {', '.join(self.names)}: {values}); the "
                          "advantages are all zero. Check the reward on a few samples, or make the task easier",
                          NoSignalWarning, stacklevel=2)


def train_online(run: Run, stage: str, policy: LanguagePolicy, ref: LanguagePolicy, prompts: list[list[int]],
                 scorer: Scorer, cfg: OnlineConfig, seed: int, method=None, executor=None,
                 quiet: bool = False, on_rollout: Callable[[Batch], None] | None = None):
    """Train ``policy`` online with ``cfg.method`` (or a given ``method`` object); returns the method.

    Logs one metrics line per optimiser step: the method's loss terms, the rollout's proxy and
    monitor rewards, KL to the reference, length, approx-KL and clip fraction to the behaviour
    policy. ``on_rollout`` sees every new scored batch (for labs that keep their own curves).
    """
    from rlxf.executors import make_executor

    method = method if method is not None else build_method(cfg)
    validate(cfg, method)
    if on_rollout is not None and run.scale.distributed:
        raise OnlineError(f"{stage}: on_rollout sees batches in the driver, which a data-parallel learner "
                          f"(run.learner_workers = {run.scale.learner_workers}) does not have; use one learner worker")
    if run.scale.distributed and run.scale.strategy == "fsdp":
        raise OnlineError(f"{stage}: run.strategy = \"fsdp\" shards the policy over the learner workers, but only "
                          "the first worker samples, and a sharded model cannot generate alone; use run.strategy "
                          "= \"ddp\" for online methods")
    own_executor = executor is None  # made here, so closed here (a Ray executor's actors hold CPUs)
    executor = executor if executor is not None else make_executor(run.scale)
    reduction = cfg.loss_reduction or method.reduction
    ctx = Context(cfg, policy, ref, cfg.kl.coef, reduction)
    moments = RunningMoments()
    watch = SignalWatch(list(scorer.rewards))
    cache: dict[str, Any] = {"index": None}
    U = cfg.updates_per_rollout * cfg.minibatches
    P = cfg.optim.batch_size

    def make_batch(step: int) -> list:
        index, within = divmod(step, U)
        if cache["index"] != index:
            rank, size = world()
            batch = None
            if rank == 0:  # in a data-parallel learner only rank 0 samples, scores and prepares
                batch = collect(executor, policy, ref, prompts, scorer, cfg, seed, index, ctx.kl_coef, moments,
                                method)
                watch.update(batch.scores, batch.k, step)
                method.prepare(batch, ctx)
                if on_rollout is not None:
                    on_rollout(batch)
                if cfg.kl.target > 0:
                    ctx.kl_coef = adaptive_kl_beta(ctx.kl_coef, batch.stats["kl"], cfg.kl.target, cfg.kl.horizon,
                                                   batch.samples.k * P)
            if size > 1:  # the other ranks get the batch and rank 0's state (KL coefficient, moments, method)
                batch, state = broadcast_object((batch, extra_state()))
                if rank > 0:
                    on_resume(state)
            cache.update(index=index, batch=batch)
        batch = cache["batch"]
        epoch, mb = divmod(within, cfg.minibatches)
        order = torch.randperm(P, generator=torch.Generator().manual_seed(seed * 7919 + index * 131 + epoch))
        size = math.ceil(P / cfg.minibatches)
        return [(batch, int(g)) for g in order[mb * size:(mb + 1) * size].sort().values]

    def loss_fn(micro: list, full: list):
        batch: Batch = micro[0][0]
        groups, all_rows = [g for _, g in micro], batch.rows([g for _, g in full])
        mask = batch.steps.mask[all_rows]
        rows_in_loss = max(1, int((mask.sum(-1) > 0).sum()))  # rows with no reward have an all-zero mask
        reducer = Reducer(ctx.reduction, rows_in_loss, float(mask.sum()), cfg.max_new_tokens)
        reducer.groups = [g for _, g in full]
        loss, metrics, steps = method.loss(batch, groups, reducer, ctx)
        if cfg.kl.mode == "loss" and steps is not None and ctx.kl_coef > 0:
            kl_term = reducer(ctx.kl_coef * kl_estimate(steps, cfg.kl.estimator), steps.mask)
            loss = loss + kl_term
            metrics["kl_loss"] = kl_term.item()
        if steps is not None:
            metrics.update(_ratio_stats(steps, reducer, getattr(method, "clip", 0.2)))
        share = len(micro) / len(full)
        metrics.update({k: v * share for k, v in batch.stats.items()})
        return loss, metrics

    def extra_state() -> dict:
        return {"kl_coef": ctx.kl_coef, "moments": moments.state(), **method.state()}

    def on_resume(state: dict) -> None:
        ctx.kl_coef = state.get("kl_coef", ctx.kl_coef)
        moments.load(state.get("moments", {}))
        method.load_state(state)

    model = torch.nn.ModuleDict({"policy": policy.model, **method.modules()})
    if run.scale.distributed:  # rollout actors must find room beside the learner workers
        from rlxf.executors.ray_backend import RayExecutor

        actors = executor.scale.rollout_workers * executor.scale.rollout_cpus if isinstance(executor, RayExecutor) else 0
        check_room(run.scale, next(model.parameters()).device.type == "cuda", actors)
    try:
        train(run, stage, model, cfg.optim, make_batch, loss_fn, quiet=quiet, extra_state=extra_state,
              on_resume=on_resume)
    finally:
        if own_executor:
            executor.close()
    return method


@torch.no_grad()
def _ratio_stats(steps: Steps, reducer: Reducer, clip: float) -> dict[str, float]:
    """Approx-KL (k3 of the behaviour policy against the current one) and the clipped fraction."""
    log_ratio = steps.masked(steps.logps - steps.old_logps)
    ratio = log_ratio.exp()
    n = reducer.n_tokens
    return {"approx_kl": float(steps.masked(ratio - 1 - log_ratio).sum() / n),
            "clip_frac": float(steps.masked(((ratio - 1).abs() > clip).float()).sum() / n)}


class Method:
    """Base for online methods: ``prepare`` adds advantages to a batch, ``loss`` returns
    ``(share of the global loss, metrics, the Steps it used or None)``."""

    reduction = "token"
    min_samples = 1
    clip = 0.2
    clip_high: float | None = None
    uses_reference = True  # reads ref_logps itself (not only through the KL settings)

    def prepare(self, batch: Batch, ctx: Context) -> None:
        pass

    def loss(self, batch: Batch, groups: list[int], reducer: Reducer, ctx: Context):
        """The PPO-clipped policy gradient on ``batch.extra["adv"]`` (per sequence ``[B]`` or per
        token ``[B, T]``, set by ``prepare``), reduced by ``reducer``. At one update per rollout the
        ratio is 1 and this is REINFORCE's gradient."""
        rows = batch.rows(groups)
        steps = batch.policy_steps(ctx.policy, rows)
        adv = batch.extra["adv"][rows]
        adv = adv[:, : steps.num_steps] if adv.dim() == 2 else adv
        loss = reducer(ppo_clip_loss(steps, adv, self.clip, self.clip_high), steps.mask)
        return loss, {"loss": loss.item()}, steps

    def modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass
