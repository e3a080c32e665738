"""The agents lab: LMRL-Gym's table of multi-turn methods x text tasks, each cell a resumable stage.

    .venv/bin/rlxf run configs/lab_agents.toml

For every task: ``data_<task>`` writes an offline dataset of mixed quality (scripted policies at the
configured skill levels, :func:`rlxf.agents.episodes.scripted_dataset`); then one stage per method trains a
tiny word-level GPT-2 on it and plays ``eval_episodes`` episodes from held-out environment seeds (the same
seeds for every method, so differences are paired by seed). Offline methods are those of
:mod:`rlxf.agents.offline` (BC, filtered BC, Monte-Carlo regression, ILQL; the value methods guide the
``bc`` stage's policy when ``bc`` is listed before them); ``ppo`` is multi-turn PPO
(:mod:`rlxf.agents.ppo`) started from the BC stage's policy, with the BC policy as its KL reference. The
table gives each method's success rate +- SE and its paired difference to BC; the report plots PPO's
rollout success against environment episodes beside the offline methods' held-out success.
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import torch

from rlxf.agents.env import EnvError, make_env
from rlxf.agents.episodes import TextEpisode, read_episodes, run_episodes, scripted_dataset, success_rate, write_episodes
from rlxf.agents.offline import METHODS as OFFLINE_METHODS
from rlxf.agents.offline import ValueConfig, guided_actor, train_offline
from rlxf.agents.ppo import MultiTurnPPO, seed_prompts
from rlxf.agents.render import agent_tokenizer
from rlxf.algorithms.evaluate import paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.controller import KLSettings, OnlineConfig, train_online
from rlxf.algorithms.online.ppo import Critic
from rlxf.core.config import ConfigError
from rlxf.core.runs import Run, atomic_write_text
from rlxf.lab import report
from rlxf.lab.config import RunSection
from rlxf.lab.stages import StagedLab
from rlxf.lab.train import scalar_head
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm
from rlxf.rewards.scoring import Scorer

METHODS = (*OFFLINE_METHODS, "ppo")
EVAL_SEED_BASE = 10**9  # held-out environment seeds: datasets use seed * 10**6 + i, PPO trains on 5 * 10**8 + i
PPO_SEED_BASE = 5 * 10**8


@dataclass
class AgentModelSection:
    """The tiny GPT-2 every method starts from (a fresh one per stage, from the run seed)."""

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    max_positions: int = 512


@dataclass
class AgentPPOSection:
    """Multi-turn PPO from the BC policy: ``steps`` rollouts (one optimiser step each) of ``batch_size``
    environment seeds x ``samples_per_prompt`` episodes, from ``train_seeds`` training seeds."""

    steps: int = 60
    batch_size: int = 8
    samples_per_prompt: int = 2
    train_seeds: int = 256
    lr: float = 3e-4
    kl_coef: float = 0.001
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.0  # 0: no value clipping (turn returns are in the task's own units)
    max_new_tokens: int = 4


@dataclass
class AgentsLabConfig:
    lab: str = "agents"
    run: RunSection = field(default_factory=lambda: RunSection(dir="runs/lab_agents"))
    tasks: list[str] = field(default_factory=lambda: ["maze", "maze_po"])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    skills: dict[str, float] = field(default_factory=lambda: {"expert": 1.0, "noisy": 0.5, "random": 0.0})
    episodes_per_skill: int = 40
    eval_episodes: int = 200
    eval_seed: int = EVAL_SEED_BASE  # held-out episodes play seeds eval_seed, eval_seed + 1, ...
    fraction: float = 0.1  # filtered BC keeps this top fraction of episodes by return
    model: AgentModelSection = field(default_factory=AgentModelSection)
    bc: OptimConfig = field(default_factory=lambda: OptimConfig(steps=300, batch_size=64, lr=1e-3,
                                                                checkpoint_every=0))
    values: ValueConfig = field(default_factory=ValueConfig)
    ppo: AgentPPOSection = field(default_factory=AgentPPOSection)


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a - b`` over paired entries and its standard error."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired difference needs two equal lists of at least 2 entries, got {len(a)} and {len(b)}")
    return paired_gain(a, b)


class AgentsLab(StagedLab):
    Config = AgentsLabConfig
    title = "Agents lab"

    def validate(self) -> None:
        cfg = self.cfg
        bad = [m for m in cfg.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"methods: unknown method(s) {bad}; expected some of {list(METHODS)}")
        if "ppo" in cfg.methods and not self._after_bc("ppo"):
            raise ConfigError("methods: ppo starts from the BC policy, so list \"bc\" before \"ppo\"")
        if "ppo" in cfg.methods and cfg.values.context_turns is not None:
            raise ConfigError("values.context_turns: multi-turn PPO trains on whole episodes, so its BC start must "
                              "see the whole history too; leave context_turns unset when methods include ppo")
        if not cfg.tasks:
            raise ConfigError("tasks: name at least one environment (e.g. \"maze\")")
        for task in cfg.tasks:
            try:
                make_env(task)
            except EnvError as e:
                raise ConfigError(f"tasks: {e}") from None
        if cfg.eval_episodes < 2 or cfg.episodes_per_skill < 1 or not cfg.skills:
            raise ConfigError("eval_episodes must be >= 2, episodes_per_skill >= 1 and skills non-empty")
        if cfg.eval_seed < PPO_SEED_BASE + cfg.ppo.train_seeds:
            raise ConfigError(f"eval_seed: held-out seeds must start at or above {PPO_SEED_BASE + cfg.ppo.train_seeds} "
                              f"(datasets and PPO's rollouts use the seeds below), got {cfg.eval_seed}")

    def stages(self) -> list[tuple[str, Callable[[], dict]]]:
        out = []
        for task in self.cfg.tasks:
            out.append((f"data_{task}", lambda t=task: self._data(t)))
            out += [(f"{m}_{task}", lambda t=task, m=m: self._method(t, m)) for m in self.cfg.methods]
        return out

    # -- stages -------------------------------------------------------------------------------
    def _make(self, task: str):
        return lambda: make_env(task)

    def _dataset(self, task: str) -> list[TextEpisode]:
        return read_episodes(self.run.stage_dir(f"data_{task}") / "episodes.jsonl")

    def _data(self, task: str) -> dict:
        eps = scripted_dataset(self._make(task), self.cfg.skills, self.cfg.episodes_per_skill, seed=self.seed + 1)
        write_episodes(self.run.stage_dir(f"data_{task}") / "episodes.jsonl", eps)
        rate, se = success_rate(eps)
        return {"episodes": len(eps), "success": rate, "se": se, "return": sum(e.ret for e in eps) / len(eps)}

    def _policy(self, task: str) -> LanguagePolicy:
        m = self.cfg.model
        tok = agent_tokenizer(make_env(task).words())
        return LanguagePolicy(tiny_causal_lm(tok, "gpt2", m.n_layer, m.n_embd, m.n_head, m.max_positions,
                                             seed=self.seed), tok)

    def _after_bc(self, method: str) -> bool:
        """Whether ``method`` starts from the ``bc`` stage's policy (bc is listed before it)."""
        return "bc" in self.cfg.methods[: self.cfg.methods.index(method)]

    def _load_bc(self, task: str, policy: LanguagePolicy) -> None:
        policy.model.load_state_dict(torch.load(self.run.stage_dir(f"bc_{task}") / "policy.pt"))

    def _method(self, task: str, method: str) -> dict:
        policy, data = self._policy(task), self._dataset(task)
        gen = torch.Generator().manual_seed(self.seed)
        if method == "ppo":
            actor = self._ppo(task, policy)
        else:
            # mc and ilql guide the bc stage's policy when there is one (the same policy BC is scored with)
            bc_done = method in ("mc", "ilql") and self._after_bc(method)
            if bc_done:
                self._load_bc(task, policy)
            with tempfile.TemporaryDirectory() as tmp:  # the offline learners' checkpoints are scratch
                actor = train_offline(method, Run(tmp, "scratch = 1\n"), policy, data, self.cfg.bc, self.cfg.values,
                                      self.cfg.fraction, generator=gen, bc_done=bc_done)
            if method == "bc":
                torch.save(policy.model.state_dict(), self.run.stage_dir(f"bc_{task}") / "policy.pt")
        seeds = [self.cfg.eval_seed + i for i in range(self.cfg.eval_episodes)]
        eps = run_episodes(self._make(task), actor, seeds, policy=method)
        rate, se = success_rate(eps)
        return {"success": rate, "se": se, "return": sum(e.ret for e in eps) / len(eps),
                "invalid": sum(sum(e.invalid) for e in eps) / sum(len(e) for e in eps),
                "successes": [int(e.success) for e in eps]}

    def _ppo(self, task: str, policy: LanguagePolicy):
        p = self.cfg.ppo
        self._load_bc(task, policy)
        ref = LanguagePolicy(copy.deepcopy(policy.model).requires_grad_(False), policy.tokenizer)
        critic = Critic(scalar_head(policy.model, policy.tokenizer.pad_token_id), policy.tokenizer.pad_token_id)
        method = MultiTurnPPO(critic, make=self._make(task), clip=p.clip, value_clip=p.value_clip, gamma=p.gamma,
                              lam=p.lam)
        cfg = OnlineConfig(samples_per_prompt=p.samples_per_prompt, max_new_tokens=p.max_new_tokens,
                           kl=KLSettings(mode="reward", coef=p.kl_coef),
                           optim=OptimConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, checkpoint_every=0))
        prompts = seed_prompts([PPO_SEED_BASE + i for i in range(p.train_seeds)])
        # no scorer reward: the environment's rewards enter per turn (rlxf.agents.ppo)
        train_online(self.run, f"ppo_{task}", policy, ref, prompts, Scorer({}), cfg, self.seed, method=method,
                     quiet=self.quiet)
        return guided_actor(policy, max_new_tokens=p.max_new_tokens, generator=torch.Generator().manual_seed(self.seed))

    # -- summary and report ---------------------------------------------------------------------
    def summary(self) -> dict:
        """Per task: the dataset's figures and, per method, success +- SE, mean return, the fraction of turns
        with an invalid action and the paired difference in success to BC (over the same held-out seeds)."""
        out: dict = {}
        for task in self.cfg.tasks:
            row: dict = {"data": self.run.result(f"data_{task}")}
            results = {m: self.run.result(f"{m}_{task}") for m in self.cfg.methods}
            for m, r in results.items():
                cell = {k: r[k] for k in ("success", "se", "return", "invalid")}
                if m != "bc" and "bc" in results:
                    cell["vs_bc"], cell["vs_bc_se"] = paired_difference(r["successes"], results["bc"]["successes"])
                row[m] = cell
            out[task] = row
        return out

    def execute(self) -> dict:
        self.run_stages()
        summary = self.summary()
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        self.write_report()
        return summary

    @staticmethod
    def format_table(summary: dict) -> str:
        """Methods x tasks: held-out success +- SE, and [paired difference to BC +- SE]."""
        tasks = list(summary)
        methods = [m for m in summary[tasks[0]] if m != "data"]
        lines = [f"{'method':<12}" + "".join(f"{t:>34}" for t in tasks)]
        data = "".join(f"{summary[t]['data']['success']:.3f} +- {summary[t]['data']['se']:.3f}".rjust(34) for t in tasks)
        lines.append(f"{'(dataset)':<12}" + data)
        for m in methods:
            cells = []
            for t in tasks:
                c = summary[t][m]
                diff = f" [{c['vs_bc']:+.3f} +- {c['vs_bc_se']:.3f}]" if "vs_bc" in c else ""
                cells.append(f"{c['success']:.3f} +- {c['se']:.3f}{diff}".rjust(34))
            lines.append(f"{m:<12}" + "".join(cells))
        return "\n".join(lines)

    def report_sections(self, summary: dict) -> list[str]:
        self._plot_curves(summary)
        return [report.paragraph(
            f"Held-out success rate (+- SE) of each method on {self.cfg.eval_episodes} episodes per task, the same "
            "environment seeds for every method; in brackets the paired difference to BC. Offline methods learn from "
            f"a dataset of scripted policies at skills {dict(self.cfg.skills)} ({self.cfg.episodes_per_skill} "
            "episodes each); PPO starts from the BC policy."),
            report.pre(self.format_table(summary)),
            report.heading("Learning curves"), report.image("agents_curves.png", "PPO rollout success per task")]

    def _plot_curves(self, summary: dict) -> None:
        tasks = list(summary)
        fig, axes = report.plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
        logged = self.run.metrics()
        p = self.cfg.ppo
        for ax, task in zip(axes.flat, tasks):
            rows = [r for r in logged if r["stage"] == f"ppo_{task}" and "success" in r]
            if rows:
                episodes = [(r["step"] + 1) * p.batch_size * p.samples_per_prompt for r in rows]
                ax.plot(episodes, report.smooth([r["success"] for r in rows]), color="C0",
                        label="ppo (rollouts, moving average)")
            for i, m in enumerate(m for m in summary[task] if m != "data"):
                ax.axhline(summary[task][m]["success"], color=f"C{i + 1}", ls="--", lw=1, label=f"{m} (held out)")
            ax.set_title(task)
            ax.set_xlabel("PPO environment episodes")
            ax.set_ylabel("success rate")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        report.save_figure(fig, self.run.dir / "agents_curves.png")

