"""``rlxf train METHOD``: one method on the user's own model, data and rewards, as a resumable run.

Every method the project has runs here: ``sft``, ``reward-model``, each pair loss, ``kto`` and each
online method. :meth:`TrainLab.validate` loads and checks the model, the data and the rewards before
the run directory exists, so bad input leaves nothing behind. The run has two stages:

- ``train``: the method's trainer on the prepared data (checkpointed, so an interrupted run resumes);
  as it finishes it writes the model, atomically, to the output directory (``<run dir>/model`` unless
  ``output`` names another), so a finished stage always has its model on disk;
- ``evaluate``: held-out metrics of the trained model next to the starting model's, written to
  ``summary.json`` (and the report's table).

``--output DIR`` on the command line is the run directory; the model goes to ``DIR/model``.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rlxf.algorithms.evaluate import mean_se, paired_gain, sampled_kl
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import evaluate_pairs, train_pairs
from rlxf.algorithms.offline_unpaired import train_unpaired
from rlxf.algorithms.online.controller import (
    METHODS,
    OnlineConfig,
    OnlineError,
    build_method,
    check_config,
    method_class,
    train_online,
)
from rlxf.algorithms.online.ppo import Critic
from rlxf.algorithms.reward_training import train_reward_model
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import atomic_write_text
from rlxf.core.trackers import check_trackers
from rlxf.lab import report
from rlxf.lab.config import RunSection
from rlxf.lab.stages import StagedLab
from rlxf.objectives.preference import ALL_PAIR_LOSSES, DEFAULT_ARGS, KTO_ARGS
from rlxf.rewards.model import RewardModel
from rlxf.rewards.scoring import Samples, Scorer, group_win_rate
from rlxf.rewards.specs import reward_components, rewards_preference

from rlxf.lab.train_data import DataSettings, prepare_data
from rlxf.policies.loading import LoraSettings, ModelError, ModelSettings, check_model, load_policy, save_policy

SUPERVISED, REWARD_MODEL, PAIRS, UNPAIRED, ONLINE = ("supervised", "reward model", "offline preference pairs",
                                                     "offline unpaired feedback", "online")
DATA_KIND = {SUPERVISED: "demonstration", REWARD_MODEL: "comparison", PAIRS: "comparison", UNPAIRED: "unpaired",
             ONLINE: "prompt"}
SELF_REWARDED = ("sharpening",)  # online methods that need no --reward (their reward is the model's own)


def methods_by_family() -> dict[str, list[str]]:
    """Every method ``rlxf train`` runs, grouped by family, in display order."""
    return {SUPERVISED: ["sft"], REWARD_MODEL: ["reward-model"], PAIRS: sorted(ALL_PAIR_LOSSES),
            UNPAIRED: ["kto"], ONLINE: sorted(METHODS)}


class TrainError(ValueError):
    """A ``rlxf train`` input that cannot run; raised before the run directory is created."""


def family(method: str) -> str:
    for fam, names in methods_by_family().items():
        if method in names:
            return fam
    every = [m for names in methods_by_family().values() for m in names]
    raise TrainError(f"unknown method {method!r}; methods: {', '.join(every)} (see rlxf train --help)"
                     if method else "no method given: rlxf train METHOD ... (see rlxf train --help)")


def takes_preference(method: str) -> bool:
    return "preference" in inspect.signature(method_class(method)).parameters


def needs_preference(method: str) -> bool:
    p = inspect.signature(method_class(method)).parameters.get("preference")
    return p is not None and p.default is inspect.Parameter.empty


# -- the config --------------------------------------------------------------------------------
def _optim(lr: float, batch_size: int = 8, checkpoint_every: int = 25) -> Callable[[], OptimConfig]:
    return lambda: OptimConfig(steps=100, batch_size=batch_size, lr=lr, warmup_steps=10,
                               checkpoint_every=checkpoint_every)


@dataclass
class SFTSettings:
    optim: OptimConfig = field(default_factory=_optim(2e-5))


@dataclass
class RewardModelSettings:
    """``loss``: "bt" (Bradley-Terry) or "smoothed" (label-smoothed BT, trusting each label
    ``1 - label_smoothing``); ``pooling``: the score of the last token ("last") or the head summed over tokens."""

    loss: str = "bt"
    label_smoothing: float = 0.1
    pooling: str = "last"
    optim: OptimConfig = field(default_factory=_optim(1e-5))


@dataclass
class OfflineSettings:
    """``loss_args``: the loss's hyperparameters over its defaults (:data:`DEFAULT_ARGS`);
    ``precompute_ref``: score the reference once before training instead of on every batch."""

    loss_args: dict[str, float] = field(default_factory=dict)
    precompute_ref: bool = True
    optim: OptimConfig = field(default_factory=_optim(5e-6))


@dataclass
class EvalSettings:
    """The evaluate stage reads at most ``max_prompts`` held-out rows (the first ones): for online methods,
    prompts sampled once by the trained and once by the starting model (training's sampling settings)."""

    max_prompts: int = 200


def _online() -> OnlineConfig:
    return OnlineConfig(method="", max_new_tokens=64, optim=_optim(5e-6, batch_size=4, checkpoint_every=10)())


@dataclass
class TrainConfig:
    """``rlxf train``'s run: the method, the user's model, data and rewards, and each family's settings.
    ``run.dir`` empty means ``runs/train_<method>``; ``output`` empty means ``<run dir>/model``."""

    lab: str = "train"
    method: str = ""
    rewards: list[str] = field(default_factory=list)
    monitors: list[str] = field(default_factory=list)
    output: str = ""
    run: RunSection = field(default_factory=lambda: RunSection(dir=""))
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    reward_model: RewardModelSettings = field(default_factory=RewardModelSettings)
    offline: OfflineSettings = field(default_factory=OfflineSettings)
    online: OnlineConfig = field(default_factory=_online)
    eval: EvalSettings = field(default_factory=EvalSettings)


def resolved(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its run directory filled in (``runs/train_<method>`` when empty)."""
    return cfg if cfg.run.dir else replace(cfg, run=replace(cfg.run, dir=f"runs/train_{cfg.method}"))


def output_dir(cfg: TrainConfig, run_dir: str | Path | None = None) -> Path:
    """Where the trained model goes: ``output``, else ``model/`` inside the run directory."""
    return Path(cfg.output) if cfg.output else Path(run_dir or resolved(cfg).run.dir) / "model"


def online_config(cfg: TrainConfig) -> OnlineConfig:
    """The controller's config: ``[online]`` with the run's method."""
    if cfg.online.method and cfg.online.method != cfg.method:
        raise TrainError(f"online.method = {cfg.online.method!r} but the run's method is {cfg.method!r}: "
                         "name the method once (rlxf train METHOD, or method = ... in the TOML)")
    return replace(cfg.online, method=cfg.method)


def loss_args(cfg: TrainConfig) -> dict[str, float]:
    """The offline loss's hyperparameters: :data:`DEFAULT_ARGS`, then ``offline.loss_args``; names
    the loss does not take are errors."""
    method, args = cfg.method, {**DEFAULT_ARGS.get(cfg.method, {}), **cfg.offline.loss_args}
    takes = KTO_ARGS if method == "kto" else list(inspect.signature(ALL_PAIR_LOSSES[method]).parameters)[2:]
    takes = [t for t in takes if t != "tokens_per_example"]
    bad = sorted(set(args) - set(takes))
    if bad:
        raise TrainError(f"offline.loss_args: {method} has no parameter {', '.join(bad)} "
                         f"(it takes: {', '.join(takes) or 'nothing'})")
    return args


# -- help: every --set key of a method, with its default ---------------------------------------
def _flatten(prefix: str, obj: Any) -> list[tuple[str, Any]]:
    if is_dataclass(obj):
        return [kv for f in fields(obj) for kv in _flatten(f"{prefix}{f.name}.", getattr(obj, f.name))]
    return [(prefix[:-1], obj)]


def _toml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def _signature_defaults(fn: Callable, skip: tuple[str, ...]) -> list[tuple[str, Any]]:
    out = []
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out.append((name, "(required)" if p.default is inspect.Parameter.empty else p.default))
    return out


def method_options(method: str) -> str:
    """The ``--set`` keys ``method`` reads, with their defaults, as help text."""
    fam = family(method)
    cfg = TrainConfig(method=method)
    section = {SUPERVISED: "sft", REWARD_MODEL: "reward_model", PAIRS: "offline", UNPAIRED: "offline",
               ONLINE: "online"}[fam]
    lines = [f"{method} ({fam}): data of kind {DATA_KIND[fam]!r}; settings (--set KEY=VALUE, or the TOML):"]
    if fam in (PAIRS, UNPAIRED):
        fn = train_unpaired if method == "kto" else ALL_PAIR_LOSSES[method]
        skip = ("run", "stage", "policy", "ref", "examples", "cfg", "seed", "quiet", "precompute_ref",
                "fast_kernels", "tokens_per_example")
        params = dict(_signature_defaults(fn, skip)[0 if method == "kto" else 2:])
        params.update(DEFAULT_ARGS.get(method, {}))
        lines += [f"  offline.loss_args.{k} = {_toml(v) if v != '(required)' else v}" for k, v in params.items()]
    if fam == ONLINE:
        cls = method_class(method)
        for k, v in _signature_defaults(cls, ("critic", "preference")):
            lines.append(f"  online.method_args.{k} = {v if v == '(required)' else _toml(v)}")
        if takes_preference(method):
            lines.append("  (a judge: --reward judge:DIR or judge:file.py:fn; without one, Bradley-Terry on --reward)")
    shown = [kv for kv in _flatten(f"{section}.", getattr(cfg, section))
             if kv[0] not in ("online.method", "online.method_args", "offline.loss_args")]
    shown += _flatten("eval.", cfg.eval)
    shared = [kv for name in ("model", "lora", "data") for kv in _flatten(f"{name}.", getattr(cfg, name))]
    shared += [("run.seed", cfg.run.seed), ("output", '"" (the run directory\'s model/)')]
    lines += [f"  {k} = {_toml(v)}" for k, v in shown]
    lines += ["shared settings:"] + [f"  {k} = {v if k == 'output' else _toml(v)}" for k, v in shared]
    return "\n".join(lines)


def methods_help() -> str:
    lines = ["methods (rlxf train METHOD --help lists a method's settings):"]
    for fam, names in methods_by_family().items():
        lines.append(f"  {fam}: {', '.join(names)}")
    return "\n".join(lines)


# -- loading everything before the run exists ---------------------------------------------------
@dataclass
class Inputs:
    """What :meth:`TrainLab.validate` loaded: the starting policy, the prepared data, and the
    learner's rewards, the monitors and the judge (a preference, for methods that take one)."""

    policy: Any
    data: Any
    rewards: dict = field(default_factory=dict)
    monitors: dict = field(default_factory=dict)
    judge: Callable | None = None


def is_judge(spec: str) -> bool:
    head, star, rest = spec.partition("*")
    return (rest if star else spec).strip().startswith("judge:")


def load_rewards(cfg: TrainConfig, tokenizer, rows, prompts_text, conversational) -> tuple[dict, dict, dict]:
    """``(rewards, monitors, judges)`` of ``cfg`` on ``rows``: name -> (component, weight), name ->
    component, and name -> (preference, weight) for the (at most one) ``judge:`` spec."""
    plain = [s for s in cfg.rewards if not is_judge(s)]
    judge_specs = [s for s in cfg.rewards if is_judge(s)]
    if len(judge_specs) > 1:
        raise TrainError(f"--reward: at most one judge, got {', '.join(judge_specs)}")
    load = lambda specs, judge=False: (  # noqa: E731
        reward_components(specs, tokenizer, rows, prompts_text, conversational, judge=judge) if specs else {})
    monitors = {name: fn for name, (fn, _w) in load(cfg.monitors).items()}
    return load(plain), monitors, load(judge_specs, judge=True)


def check_settings(cfg: TrainConfig) -> str:
    """The checks that need no model or data; returns the method's family."""
    fam = family(cfg.method)
    check_trackers(cfg.run.report_to, "--report-to (run.report_to)")
    if not cfg.data.path:
        raise TrainError("no training data: pass --data FILE (or set data.path)")
    if fam in (PAIRS, UNPAIRED):
        loss_args(cfg)
    if fam == REWARD_MODEL:
        if cfg.reward_model.loss not in ("bt", "smoothed"):
            raise TrainError(f"reward_model.loss must be 'bt' or 'smoothed', got {cfg.reward_model.loss!r}")
        if cfg.reward_model.pooling not in ("last", "sum"):
            raise TrainError(f"reward_model.pooling must be 'last' or 'sum', got {cfg.reward_model.pooling!r}")
        if cfg.lora.r:
            raise TrainError("lora.r: reward-model trains the whole model (LoRA applies to policies); set lora.r = 0")
    if cfg.lora.save == "adapters" and not cfg.lora.r:
        raise TrainError('lora.save = "adapters" needs LoRA adapters to save: set lora.r > 0, or lora.save = "merged"')
    if fam == ONLINE:
        check_config(online_config(cfg))
        if cfg.method not in SELF_REWARDED and not cfg.rewards:
            what = "a judge (--reward judge:...) or a reward" if takes_preference(cfg.method) else "a reward"
            raise TrainError(f"{cfg.method} learns from rewards: give {what}, e.g. --reward my_rewards.py:fn "
                             "(a Python function), answer_match, regex:PATTERN or a reward-model directory")
    elif cfg.rewards or cfg.monitors:
        which = "--reward" if cfg.rewards else "--monitor"
        raise TrainError(f"{which}: {cfg.method} learns from the labels in --data; rewards and monitors are for "
                         f"online methods ({', '.join(sorted(METHODS))})")
    return fam


def cache_root(run_dir: str | Path) -> Path:
    """Where dequantised GGUF copies are kept: ``.rlxf-cache`` beside the run directory."""
    return Path(run_dir).resolve().parent / ".rlxf-cache"


def load_inputs(cfg: TrainConfig) -> Inputs:
    """Check the settings, then load the model, the data and the rewards, in that order."""
    fam = check_settings(cfg)
    cache = cache_root(resolved(cfg).run.dir)
    check_model(cfg.model, cfg.lora, cache)
    policy = load_policy(cfg.model, cfg.lora, cache, seed=cfg.run.seed)
    data = prepare_data(cfg.data, DATA_KIND[fam], policy.tokenizer, cfg.run.seed)
    inputs = Inputs(policy, data)
    if fam == ONLINE:
        inputs.rewards, inputs.monitors, judges = load_rewards(
            cfg, policy.tokenizer, data.train_rows, data.prompt_texts, data.conversational)
        for name, (preference, weight) in judges.items():
            # a method that takes a preference gets the judge; any other learns each sample's win rate in its group
            if takes_preference(cfg.method):
                inputs.judge = preference
            else:
                inputs.rewards[name] = (group_win_rate(preference), weight)
        if needs_preference(cfg.method) and inputs.judge is None:
            inputs.judge = rewards_preference(inputs.rewards)
        thresholds = cfg.online.method_args.get("thresholds")
        missing = sorted(set(thresholds) - set(inputs.rewards) - set(inputs.monitors)) \
            if isinstance(thresholds, dict) else []
        if missing:
            raise TrainError(f"online.method_args.thresholds: {', '.join(missing)} is not a reward or monitor of "
                             f"this run (they are: {', '.join([*inputs.rewards, *inputs.monitors])})")
        check_rewards(inputs, cfg)
    return inputs


def check_rewards(inputs: Inputs, cfg: TrainConfig) -> None:
    """Score two sampled answers to the first training prompt with every reward, monitor and judge,
    so a reward that raises or returns something unusable stops the command before the run
    directory exists (a reward that fails only later stops the run at that step)."""
    from rlxf.rewards.scoring import RewardError

    k, new_tokens = 2, min(8, cfg.online.max_new_tokens)
    ro = inputs.policy.sample(inputs.data.train[:1], n=k, max_new_tokens=new_tokens,
                              generator=torch.Generator().manual_seed(cfg.run.seed))
    samples = Samples(ro.prompt_ids, ro.response_ids, ro.finished, k, prompt_index=[0] * k)
    try:
        Scorer(inputs.rewards, inputs.monitors)(samples, 0)
        if inputs.judge is not None:
            inputs.judge(samples, torch.tensor([0]), torch.tensor([1]))
    except RewardError as e:
        raise RewardError(f"{e} (checked on {k} samples of the first training prompt before the run started; "
                          "nothing was written)") from e


def total_reward(rewards: dict) -> Callable[[Samples], torch.Tensor]:
    """The weighted sum of reward components, as one component: summed over the components that
    gave a value, NaN where none did (as the learner's reward leaves that sample out)."""
    scorer = Scorer(rewards)

    def score(s: Samples) -> torch.Tensor:
        total, parts = scorer(s, s.step)
        return total.masked_fill(~scorer.valid(parts, len(s)), float("nan"))

    return score


def scalar_head(model, pad_token_id: int):
    """A sequence-classification model (one output) sharing ``model``'s architecture and trunk
    weights, with a new head: the start of a reward model or of PPO's critic."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(model.config)
    config.num_labels, config.pad_token_id = 1, pad_token_id
    head = AutoModelForSequenceClassification.from_config(config, torch_dtype=next(model.parameters()).dtype)
    head.load_state_dict(model.state_dict(), strict=False)  # the trunk; the LM head has no counterpart
    return head.to(next(model.parameters()).device)


def describe(cfg: TrainConfig, inputs: Inputs) -> str:
    """What a run with ``cfg`` would do, from its loaded inputs (``--dry-run``)."""
    fam, data = family(cfg.method), inputs.data
    model = inputs.policy.model
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optim = {SUPERVISED: cfg.sft.optim, REWARD_MODEL: cfg.reward_model.optim, PAIRS: cfg.offline.optim,
             UNPAIRED: cfg.offline.optim, ONLINE: cfg.online.optim}[fam]
    lines = [f"method: {cfg.method} ({fam})",
             f"model: {cfg.model.path} ({n_params:,} parameters, {n_train:,} trained"
             f"{f', LoRA r={cfg.lora.r}' if cfg.lora.r else ''})",
             f"data: {cfg.data.path}: {len(data.train)} training and {len(data.eval)} held-out "
             f"{DATA_KIND[fam]} rows"]
    lines += report_lines(data.report, "  ")
    if fam == ONLINE:
        lines.append(f"rewards: {', '.join(f'{w:g} * {n}' for n, (_f, w) in inputs.rewards.items()) or 'none'}")
        if inputs.monitors:
            lines.append(f"monitors: {', '.join(inputs.monitors)}")
        if cfg.rewards and any(is_judge(s) for s in cfg.rewards) and takes_preference(cfg.method):
            lines.append("judge: " + next(s for s in cfg.rewards if is_judge(s)))
    lines += [f"would train: {optim.steps} steps of {optim.batch_size} "
              f"{'prompts' if fam == ONLINE else 'rows'} at lr {optim.lr:g}",
              f"run directory: {resolved(cfg).run.dir}", f"model output: {output_dir(cfg)}",
              "first rendered prompt:", str(data.report.get("first_prompt", ""))]
    return "\n".join(lines)


def report_lines(rep: dict, indent: str) -> list[str]:
    """The data report (:func:`prepare_data`'s) as indented lines, the first prompt left out."""
    lines = []
    for k, v in rep.items():
        if k == "first_prompt":
            continue
        if isinstance(v, dict) and k == "tokens_per_row":
            v = f"min {v['min']}, mean {v['mean']:.1f}, max {v['max']}"
        elif isinstance(v, dict):
            lines += [f"{indent}{k}:" + ("" if v else " none"), *report_lines(v, indent + "  ")]
            continue
        lines.append(f"{indent}{k}: {v}")
    return lines


def dry_run(cfg: TrainConfig) -> str:
    """Load and check everything ``cfg`` needs, write nothing, and say what would run."""
    return describe(cfg, load_inputs(cfg))


# -- the lab ------------------------------------------------------------------------------------
class TrainLab(StagedLab):
    """``rlxf train``: see the module docstring."""

    Config = TrainConfig
    title = "rlxf train"

    def __init__(self, cfg: TrainConfig, fresh: bool = False, quiet: bool = False,
                 log: Callable[[str], None] = print):
        self._trained = self._start = None
        super().__init__(resolved(cfg), fresh, quiet, log)

    def validate(self) -> None:
        self.inputs = load_inputs(self.cfg)
        rep = self.inputs.data.report
        self.log(f"[data] {rep['train_items']} training and {rep['eval_items']} held-out rows "
                 f"({rep['rows_dropped']} of {rep['rows_read']} dropped, {rep['prompts_truncated']} prompts truncated)")

    @property
    def output_dir(self) -> Path:
        return output_dir(self.cfg, self.run.dir)

    def stages(self):
        return [("train", self.stage_train), ("evaluate", self.stage_evaluate)]

    # -- train ----------------------------------------------------------------------------------
    def stage_train(self) -> dict:
        cfg, fam = self.cfg, family(self.cfg.method)
        policy, data, run, seed = self.inputs.policy, self.inputs.data, self.run, self.seed
        if fam == REWARD_MODEL:
            r = cfg.reward_model
            rm = RewardModel(scalar_head(policy.model, policy.tokenizer.pad_token_id), policy.tokenizer,
                             policy.device, pooling=r.pooling)
            train_reward_model(run, "train", rm, data.train, r.optim, seed, self.quiet, loss=r.loss,
                               eps=r.label_smoothing)
            rm.save_pretrained(self.output_dir)
            self._trained = rm
            return self._train_result()
        # the starting model, for training (the reference) and for evaluation
        ref = policy.reference() if fam != SUPERVISED or cfg.lora.r else None
        if fam in (PAIRS, UNPAIRED) and cfg.offline.precompute_ref:
            self.log(f"[train] scoring the training rows this run visits (of {len(data.train)}) under the reference "
                     "once (offline.precompute_ref)")
        if fam == SUPERVISED:
            train_sft(run, "train", policy, [p for p, _ in data.train], [r for _, r in data.train], cfg.sft.optim,
                      seed, self.quiet)
        elif fam == PAIRS:
            o = cfg.offline
            train_pairs(run, "train", policy, ref, data.train, ALL_PAIR_LOSSES[cfg.method], loss_args(cfg), o.optim,
                        seed, self.quiet, precompute_ref=o.precompute_ref)
        elif fam == UNPAIRED:
            o = cfg.offline
            train_unpaired(run, "train", policy, ref, data.train, o.optim, seed, quiet=self.quiet,
                           precompute_ref=o.precompute_ref, **loss_args(cfg))
        else:
            self._train_online(policy, ref)
        save_policy(policy, self.output_dir, cfg.lora)
        self._trained, self._start = policy, ref
        return self._train_result()

    def _train_online(self, policy, ref) -> None:
        cfg, inputs, pad = online_config(self.cfg), self.inputs, policy.tokenizer.pad_token_id
        objects: dict[str, Any] = {} if inputs.judge is None else {"preference": inputs.judge}
        if "critic" in inspect.signature(method_class(cfg.method)).parameters:
            # PPO's value model starts from the starting model's trunk (a LoRA policy's is loaded without adapters)
            base = load_policy(self.cfg.model, None, cache_root(self.run.dir)).model if self.cfg.lora.r else policy.model
            objects["critic"] = Critic(scalar_head(base, pad), pad)
        train_online(self.run, "train", policy, ref, inputs.data.train, Scorer(inputs.rewards, inputs.monitors), cfg,
                     self.seed, method=build_method(cfg, **objects), quiet=self.quiet)

    def _train_result(self) -> dict:
        last = self.run.metrics("train")[-1]
        return {"final_loss": last.get("loss"), "output": str(self.output_dir), "data": self.inputs.data.report}

    # -- evaluate -------------------------------------------------------------------------------
    def trained_and_start(self):
        """The trained model (in memory, or read back from the output directory) and the starting one."""
        cfg, fam = self.cfg, family(self.cfg.method)
        if fam == REWARD_MODEL:
            return self._trained or RewardModel.from_pretrained(self.output_dir, self.inputs.policy.device), None
        start, trained = self._start, self._trained
        if trained is None:  # a new process: the model loaded by validate() is the untrained one
            start = self.inputs.policy
            trained = load_policy(replace(cfg.model, path=str(self.output_dir), chat_template=""), None,
                                  cache_root(self.run.dir))
        elif start is None:  # full-model SFT trained the loaded model in place
            start = load_policy(cfg.model, None, cache_root(self.run.dir))
        return trained, start

    def stage_evaluate(self) -> dict:
        fam, data = family(self.cfg.method), self.inputs.data
        trained, start = self.trained_and_start()
        held = data.eval[: self.cfg.eval.max_prompts]
        self.log(f"[evaluate] the trained and the starting model on {len(held)} held-out rows")
        if not held:
            metrics: dict[str, dict] = {}
        elif fam == SUPERVISED:
            metrics = {"nll_per_token": _compare(*(nll_per_token(m, held) for m in (start, trained)))}
        elif fam == REWARD_MODEL:
            metrics = reward_model_metrics(trained, held)
        elif fam == PAIRS:
            beta = loss_args(self.cfg).get("beta", 0.1)
            m = evaluate_pairs(trained, start, held, beta, batch_size=16)  # full-vocabulary KL: small chunks
            metrics = {k: {"start": 0.0, "trained": m[k]} for k in ("reward_accuracy", "reward_margin", "kl")}
        elif fam == UNPAIRED:
            metrics = kto_metrics(trained, start, held, loss_args(self.cfg)["beta"])
        else:
            metrics = self._online_metrics(trained, start)
        summary = {"method": self.cfg.method, "family": fam, "held_out": len(held), "output": str(self.output_dir),
                   "metrics": metrics}
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        return {"metrics": metrics}

    def _online_metrics(self, trained, start) -> dict:
        """Each reward and monitor, and the KL to the starting model, on held-out prompts: one sample
        per prompt from each model (the same seeds), gains paired by prompt; a judge compares the two
        samples of each prompt (P(trained beats start))."""
        cfg, data = online_config(self.cfg), self.inputs.data
        n = min(len(data.eval), self.cfg.eval.max_prompts)  # as stage_evaluate's rows
        prompts = data.eval[:n]
        rewards, monitors, judges = load_rewards(self.cfg, trained.tokenizer, data.eval_rows[:n],
                                                 data.eval_prompt_texts[:n], data.conversational)
        parts = {**{f"reward {k}": fn for k, (fn, _w) in rewards.items()},
                 **{f"monitor {k}": fn for k, fn in monitors.items()}}
        if len(rewards) > 1:
            parts["reward (weighted sum)"] = total_reward(rewards)
        values: dict[str, dict[str, np.ndarray]] = {}
        rollouts = {}
        for which, policy in (("start", start), ("trained", trained)):
            gen = torch.Generator().manual_seed(self.seed * 7919 + 17)
            ro = rollouts[which] = policy.sample(prompts, 1, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                                 generator=gen)
            samples = Samples(ro.prompt_ids, ro.response_ids, ro.finished, 1, prompt_index=list(range(n)))
            out = {name: _as_array(fn(samples)) for name, fn in parts.items()}
            out["kl to start"] = (sampled_kl(ro.steps, start.score(ro.prompt_ids, ro.response_ids)).numpy()
                                  if which == "trained" else np.zeros(n))
            out["length"] = np.array([len(r) for r in ro.response_ids], dtype=float)
            values[which] = out
        out = {name: _compare(values["start"][name], values["trained"][name]) for name in values["trained"]}
        t, st = rollouts["trained"], rollouts["start"]
        both = Samples(t.prompt_ids + st.prompt_ids, t.response_ids + st.response_ids, t.finished + st.finished, 1,
                       prompt_index=[*range(n), *range(n)])
        for name, (preference, _w) in judges.items():
            wins = _as_array(preference(both, torch.arange(n), torch.arange(n, 2 * n)))
            mean, se = mean_se(wins)
            out[f"{name} win rate vs start"] = {"start": 0.5, "trained": mean, "trained_se": se}
        return out

    # -- table and report -----------------------------------------------------------------------
    @staticmethod
    def format_table(summary: dict) -> str:
        return format_table(summary)

    def report_sections(self, summary: dict) -> list[str]:
        """The held-out table, the learning curves of everything the trainer logged, and the data report."""
        rows = self.run.metrics("train")
        keys = [k for k in (rows[-1] if rows else {}) if k not in ("stage", "step", "lr", "grad_norm", "kl_coef")]
        first = [k for k in ("loss", "proxy_reward", "kl") if k in keys]
        curves = [("train", k) for k in first + sorted(set(keys) - set(first))]
        out = [report.heading("Held-out metrics"), report.paragraph(
            f"{summary['method']} ({summary['family']}) on the data's {summary['held_out']} held-out rows: the trained "
            "model next to the model it started from (mean ± standard error; changes are paired by row where both "
            f"have per-row values). The model is in {summary['output']}."), report.pre(format_table(summary))]
        if report.plot_metric_panels(self.run, curves, self.run.dir / "learning_curves.png"):
            out += [report.heading("Learning curves"), report.image("learning_curves.png", "learning curves")]
        return out


def _as_array(values) -> np.ndarray:
    """Reward values as floats, None (no reward) as NaN."""
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy().astype(float)
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def _compare(start, trained) -> dict:
    """Mean ± s.e. of both, and the paired change, from per-row values (NaN rows left out)."""
    start, trained = np.asarray(start, dtype=float), np.asarray(trained, dtype=float)
    keep = ~(np.isnan(start) | np.isnan(trained))
    if not keep.any():
        return {"start": None, "trained": None}
    (s, s_se), (t, t_se) = mean_se(start[keep]), mean_se(trained[keep])
    gain, gain_se = paired_gain(trained[keep], start[keep])
    return {"start": s, "start_se": s_se, "trained": t, "trained_se": t_se, "change": gain, "change_se": gain_se}


@torch.no_grad()
def nll_per_token(policy, rows) -> np.ndarray:
    """Each held-out response's negative log-likelihood per token."""
    return (-policy.score([p for p, _ in rows], [r for _, r in rows]).mean()).numpy()


@torch.no_grad()
def reward_model_metrics(rm: RewardModel, pairs) -> dict:
    """Held-out accuracy (chosen scored above rejected) and mean margin of a reward model."""
    prompts = [p for p, _, _ in pairs]
    margin = (rm.score(prompts, [c for _, c, _ in pairs]) - rm.score(prompts, [r for _, _, r in pairs])).numpy()
    acc, acc_se = mean_se(margin > 0)
    m, m_se = mean_se(margin)
    return {"accuracy": {"start": 0.5, "trained": acc, "trained_se": acc_se},
            "margin": {"start": 0.0, "trained": m, "trained_se": m_se}}


@torch.no_grad()
def kto_metrics(trained, start, examples, beta: float) -> dict:
    """KTO's implicit reward beta * log pi/pi_start of held-out desirable and undesirable responses."""
    prompts, completions = [e[0] for e in examples], [e[1] for e in examples]
    good = np.array([bool(e[2]) for e in examples])
    reward = beta * (trained.score(prompts, completions).sum() - start.score(prompts, completions).sum()).numpy()
    out = {}
    for name, rows in (("reward_desirable", good), ("reward_undesirable", ~good)):
        if rows.any():
            mean, se = mean_se(reward[rows])
            out[name] = {"start": 0.0, "trained": mean, "trained_se": se}
    return out


def format_table(summary: dict) -> str:
    """The held-out metrics as a fixed-width table: start, trained and the change."""

    def cell(d: dict, key: str) -> str:
        v = d.get(key)
        if v is None:
            return ""
        se = d.get(f"{key}_se")
        sign = "+" if key == "change" else ""
        return f"{v:{sign}.4f}" + (f" ± {se:.4f}" if se is not None else "")

    w = max([24, *map(len, summary["metrics"])])
    head = f"{'held-out metric':<{w}} {'start':>20} {'trained':>20} {'change':>20}"
    lines = [f"{summary['method']}: {summary['held_out']} held-out rows", head, "-" * len(head)]
    for name, d in summary["metrics"].items():
        lines.append(f"{name:<{w}} {cell(d, 'start'):>20} {cell(d, 'trained'):>20} {cell(d, 'change'):>20}")
    if not summary["metrics"]:
        lines.append("(no held-out rows)")
    return "\n".join(lines)


# -- rlxf sample ----------------------------------------------------------------------------------
def model_of(run_or_model: str | Path) -> tuple[Path, bool | None]:
    """The model directory of a ``rlxf train`` run directory (and whether its data was chat), or
    ``run_or_model`` itself (and None: not known)."""
    from rlxf.core.config import load_config
    from rlxf.lab.registry import lab_of

    path = Path(run_or_model)
    config = path / "config.toml"
    if not config.is_file():
        return path, None
    if lab_of(config) != "train":
        raise TrainError(f"{path} is a {lab_of(config)} run, not a rlxf train run: give a model directory")
    cfg = load_config(TrainConfig, config)
    if family(cfg.method) == REWARD_MODEL:
        raise TrainError(f"{path} trained a reward model, which scores text but does not generate it")
    out = output_dir(cfg, path)
    if not out.exists():
        raise TrainError(f"{path}: the run has not written its model ({out}) yet; run the same rlxf train again "
                         "to finish it")
    done = path / "stages" / "train" / "done.json"
    chat = json.loads(done.read_text())["data"].get("conversational") if done.is_file() else None
    return out, chat


def render_prompt(tokenizer, text: str, chat: bool = True) -> str:
    """A user turn in the tokenizer's chat template, ready for the answer; the text itself without a
    template or with ``chat`` False."""
    if not chat or not getattr(tokenizer, "chat_template", None):
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: one per non-empty line, or the ``prompt`` field of each line of a ``.jsonl``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file")
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if path.suffix != ".jsonl":
        return [line for _, line in lines]
    prompts = []
    for i, line in lines:
        try:
            prompts.append(str(json.loads(line)["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise TrainError(f"--prompts {path}, line {i}: expected a JSON object with a prompt field") from None
    return prompts


def sample_texts(run_or_model: str | Path, prompts: list[str], n: int = 1, max_new_tokens: int = 128,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 chat: bool | None = None) -> list[list[str]]:
    """``n`` completions of each prompt from a trained model. Prompts are rendered as a user turn of
    the model's chat template when ``chat`` is True; None: as the run's training data was (a model
    directory: whenever the tokenizer has a template)."""
    if n < 1 or max_new_tokens < 1:
        raise TrainError(f"--n and --max-new-tokens must be at least 1, got {n} and {max_new_tokens}")
    if temperature <= 0 or not 0 < top_p <= 1:
        raise TrainError(f"--temperature must be > 0 and --top-p in (0, 1], got {temperature} and {top_p}")
    model, run_chat = model_of(run_or_model)
    chat = chat if chat is not None else run_chat is not False
    policy = load_policy(ModelSettings(path=str(model)))
    ids = [policy.tokenizer(render_prompt(policy.tokenizer, p, chat), add_special_tokens=False).input_ids
           for p in prompts]
    ro = policy.sample(ids, n, max_new_tokens, temperature, top_p, generator=torch.Generator().manual_seed(seed))
    texts = [policy.decode(r) for r in ro.response_ids]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def _user_errors() -> tuple[type[Exception], ...]:
    from rlxf.algorithms.preference_data import PreferenceDataError
    from rlxf.data.records import RecordError
    from rlxf.rewards.scoring import RewardError
    from rlxf.rewards.specs import RewardSpecError

    # RewardValueError (a reward's bad output) is a RewardError; PreferenceDataError is a DataError
    return (TrainError, ModelError, OnlineError, PreferenceDataError, RecordError, RewardError, RewardSpecError)


USER_ERRORS = _user_errors()
"""Errors that mean bad input from the user (``rlxf`` prints them and exits 2)."""
