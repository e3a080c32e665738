"""The control lab: true-reward PPO, preference-based RL under each query rule, and offline BC vs CPL
on one gymnasium task, each a resumable stage of one run directory.

    .venv/bin/rlxf run configs/lab_control.toml

Stages: ``ppo`` (PPO on the env reward: the reference return), ``pbrl_<rule>`` for every query rule
(PPO on a learned reward, preferences from a beta = 1 labeler on the hidden env reward), and
``offline`` (a mixed-quality dataset recorded from the PPO policy, its TQ and SACo, then behaviour
cloning against CPL from segment comparisons, compared on the env's return).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from rlxf.algorithms.active.pairs import load_pair_policy
from rlxf.algorithms.control.offline import OfflineConfig, label_segments, record_dataset, train_bc, train_offline_cpl
from rlxf.algorithms.control.pbrl import SELECTIONS, PbRL, PbRLConfig
from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.config import ConfigError
from rlxf.core.runs import Run, atomic_write_text, torch_save_atomic
from rlxf.data.transitions import state_action_coverage, trajectory_quality
from rlxf.lab import report
from rlxf.algorithms.evaluate import mean_se
from rlxf.lab.config import RunSection
from rlxf.lab.control_table import check_cells, format_cells, run_cell
from rlxf.lab.stages import StagedLab


@dataclass
class PbRLSection:
    """The query schedule of every ``pbrl_<rule>`` stage; the defaults are PbRLConfig's."""

    selections: tuple[str, ...] = ("uniform", "disagreement", "randomized")
    budget: int = PbRLConfig.budget
    first_queries: int = PbRLConfig.first_queries
    queries_per_round: int = PbRLConfig.queries_per_round
    schedule: str = PbRLConfig.schedule
    query_policy: str = PbRLConfig.query_policy  # the learned rule's policy file (empty: the shipped one)


@dataclass
class OfflineSection:
    enabled: bool = True
    episodes: int = 60
    comparisons: int = 2000
    segment_len: int = 100
    bc_steps: int = 300
    cpl_steps: int = 150


@dataclass
class TableSection:
    """The methods x tasks table: every method of ``methods`` that runs on a task of ``tasks`` is trained
    from scratch once per seed (``rlxf.lab.control_table.METHODS``; ``scale`` multiplies each method's
    default budget) and scored on its held-out episodes."""

    methods: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    scale: float = 1.0


@dataclass
class TrueSkillSection:
    """BASALT-style ranking: simulated judges compare pairs of episodes (the same episode seed for both
    agents) and TrueSkill rates the agents (``rlxf.lab.basalt``). ``reacher``: the Reacher-v5 protocol with
    five agents of known quality, its judge Bradley-Terry on return (``judge_beta`` per unit, a draw below
    ``tie_below``). Every table task with two or more methods is ranked too, from the cells' held-out
    episodes, by a judge on scores in units of the task's pooled standard deviation (``table_beta`` per
    unit, a draw below ``table_tie_below`` units). Each judge flips ``mistake_rate`` of its decided answers."""

    reacher: bool = False
    episodes: int = 40  # the Reacher protocol's episode pool (each agent plays every one)
    matches: int = 150
    selection: str = "uniform"  # or "active": BASALT's most informative pair
    judge_beta: float = 0.2
    tie_below: float = 2.0
    table_beta: float = 2.0
    table_tie_below: float = 0.1
    mistake_rate: float = 0.1


@dataclass
class ControlLabConfig:
    lab: str = "control"
    run: RunSection = field(default_factory=lambda: RunSection(dir="runs/control"))
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(total_steps=60_000))
    target: float = 475.0  # stop a learner once its greedy 20-episode mean reaches this
    eval_every: int = 4096
    pbrl: PbRLSection = field(default_factory=PbRLSection)
    offline: OfflineSection = field(default_factory=OfflineSection)
    table: TableSection = field(default_factory=TableSection)
    trueskill: TrueSkillSection = field(default_factory=TrueSkillSection)


class ControlLab(StagedLab):
    Config = ControlLabConfig
    title = "Control lab"

    def __init__(self, cfg: ControlLabConfig, fresh: bool = False, quiet: bool = False,
                 log: Callable[[str], None] = print):
        cfg.ppo.seed = cfg.run.seed
        super().__init__(cfg, fresh, quiet, log)

    def validate(self) -> None:
        bad = [s for s in self.cfg.pbrl.selections if s not in SELECTIONS]
        if bad:
            raise ConfigError(f"pbrl.selections: unknown rule(s) {bad}; expected some of {list(SELECTIONS)}")
        if "learned" in self.cfg.pbrl.selections:
            try:
                load_pair_policy(self.cfg.pbrl.query_policy or None, "pbrl.query_policy")
            except ValueError as e:
                raise ConfigError(str(e)) from None
        t = self.cfg.table
        check_cells(t.methods, t.tasks)
        if not t.seeds or t.scale <= 0:
            raise ConfigError(f"table: expected at least one seed and scale > 0, got seeds {list(t.seeds)}, scale {t.scale}")
        ts = self.cfg.trueskill
        if ts.selection not in ("uniform", "active"):
            raise ConfigError(f"trueskill.selection: expected 'uniform' or 'active', got {ts.selection!r}")
        if ts.matches < 1 or ts.episodes < 1 or not 0 <= ts.mistake_rate < 0.5 or min(ts.judge_beta, ts.table_beta) <= 0:
            raise ConfigError(f"trueskill: expected matches >= 1, episodes >= 1, 0 <= mistake_rate < 0.5 and judge "
                              f"betas > 0; got matches {ts.matches}, episodes {ts.episodes}, mistake_rate {ts.mistake_rate}, judge_beta {ts.judge_beta}, "
                              f"table_beta {ts.table_beta}")

    def stages(self) -> list[tuple[str, Callable[[], dict]]]:
        out = [("ppo", self._ppo)] + [(f"pbrl_{rule}", lambda r=rule: self._pbrl(r)) for rule in self.cfg.pbrl.selections]
        out += [("offline", self._offline)] if self.cfg.offline.enabled else []
        cells = check_cells(self.cfg.table.methods, self.cfg.table.tasks)
        out += [(f"table_{m}_{t}", lambda m=m, t=t: self._cell(m, t)) for m, t in cells]
        out += [("basalt_reacher", self._trueskill_reacher)] if self.cfg.trueskill.reacher else []
        ranked = [t for t in self.cfg.table.tasks if sum(task == t for _, task in cells) >= 2]
        return out + [(f"trueskill_{t}", lambda t=t: self._trueskill_task(t, [m for m, task in cells if task == t]))
                      for t in ranked]

    def _trueskill_reacher(self) -> dict:
        from rlxf.lab.basalt import basalt_table

        ts = self.cfg.trueskill
        table = basalt_table(ts.matches, ts.judge_beta, ts.mistake_rate, ts.tie_below, ts.selection, seed=self.seed,
                             n_episodes=ts.episodes)
        self._reacher_gif(table)
        return table

    def _reacher_gif(self, table: dict) -> None:
        """``basalt_reacher.gif``: the top- and bottom-rated agents side by side on the same episode seed
        (what a judge of the protocol sees); skipped with a note where MuJoCo cannot render."""
        from rlxf.lab.basalt import NOISES, TASK, reacher_agents
        from rlxf.tasks.render import RenderError, episode_frames, side_by_side, write_gif

        agents = reacher_agents(NOISES, self.seed)
        best, worst = table["rows"][0]["agent"], table["rows"][-1]["agent"]
        try:
            clips = [episode_frames(agents[a], TASK, seed=self.seed, max_steps=50, every=2)[0] for a in (best, worst)]
        except RenderError as e:
            self.log(f"[basalt_reacher] no GIF: {e}")
            return
        write_gif(side_by_side(*clips), self.run.dir / "basalt_reacher.gif", fps=15)

    def _trueskill_task(self, task: str, methods: list[str]) -> dict:
        """The methods of one table task ranked by simulated judges on their held-out episodes: episode i of
        one method against episode i of another (with several seeds, seed by seed), scores divided by the
        task's pooled standard deviation."""
        import numpy as np

        from rlxf.labelers.simulated import BPrefLabeler
        from rlxf.lab.basalt import gold_order, kendall_tau, simulate_matches, trueskill_table

        ts = self.cfg.trueskill
        golds = {m: np.ravel(np.asarray(self.run.result(f"table_{m}_{task}")["scores"], dtype=float)) for m in methods}
        n = min(len(g) for g in golds.values())
        golds = {m: g[:n] for m, g in golds.items()}
        scale = float(np.concatenate(list(golds.values())).std()) or 1.0
        judge = BPrefLabeler(beta=ts.table_beta, mistake_rate=ts.mistake_rate, tie_below=ts.table_tie_below,
                             seed=self.seed)
        games = simulate_matches({m: g / scale for m, g in golds.items()}, ts.matches, judge,
                                 selection=ts.selection, seed=self.seed)
        rows = trueskill_table(games, agents=methods)
        for r in rows:
            r["gold_mean_return"] = float(golds[r["agent"]].mean())
        gold = gold_order(golds)
        order = [r["agent"] for r in rows]
        return {"rows": rows, "gold_order": gold, "kendall_tau": kendall_tau(order, gold), "top1": order[0] == gold[0],
                "games": len(games)}

    def _cell(self, method: str, task: str) -> dict:
        """One cell of the table: the method trained once per seed; with several seeds the standard error
        is over the seeds' means, with one over its held-out episodes."""
        t = self.cfg.table
        runs = [run_cell(method, task, seed, t.scale) for seed in t.seeds]
        if len(runs) == 1:
            return runs[0]
        mean, se = mean_se([r["mean"] for r in runs])
        return {**runs[0], "scores": [r["scores"] for r in runs], "seed_means": [r["mean"] for r in runs],
                "mean": mean, "se": se}

    def _ppo(self) -> dict:
        ppo = PPO(self.cfg.ppo)
        hist = ppo.learn(eval_every=self.cfg.eval_every, target=self.cfg.target, run=self.run, stage="ppo")
        torch_save_atomic(ppo.policy.state_dict(), self.run.stage_dir("ppo") / "policy.pt")
        return {"steps": ppo.steps_done, "eval_return": hist[-1]["eval_return"] if hist else None}

    def _pbrl(self, rule: str) -> dict:
        p = self.cfg.pbrl
        pbrl = PbRL(PbRLConfig(ppo=PPOConfig(**asdict(self.cfg.ppo)), selection=rule, budget=p.budget,
                               first_queries=p.first_queries, queries_per_round=p.queries_per_round,
                               schedule=p.schedule, query_policy=p.query_policy, seed=self.cfg.run.seed))
        hist = pbrl.train(eval_every=self.cfg.eval_every, target=self.cfg.target, run=self.run, stage=f"pbrl_{rule}")
        return {"queries": pbrl.queries, "steps": pbrl.ppo.steps_done, "eval_return": hist[-1]["eval_return"] if hist else None}

    def _offline(self) -> dict:
        o, env = self.cfg.offline, self.cfg.ppo.env
        expert = PPO(self.cfg.ppo).policy
        expert.load_state_dict(torch.load(self.run.stage_dir("ppo") / "policy.pt"))
        seed = self.cfg.run.seed
        mixed = record_dataset(expert, env, o.episodes, eps=(0.0, 0.25, 0.5, 0.75, 1.0, 1.0), seed=seed + 1)
        rand = record_dataset(expert, env, 20, eps=(1.0,), seed=seed + 2)
        best = record_dataset(expert, env, 5, eps=(0.0,), seed=seed + 3)
        mixed.save(self.run.stage_dir("offline") / "dataset")
        with tempfile.TemporaryDirectory() as tmp:  # BC and CPL checkpoints are scratch
            scratch = Run(tmp, "scratch = 1\n")
            bc = train_bc(mixed, scratch, OfflineConfig(OptimConfig(steps=o.bc_steps, batch_size=256, checkpoint_every=0)))
            chosen, rejected = label_segments(mixed, o.comparisons, o.segment_len, seed=seed)
            n_actions = int(mixed.transitions().actions.max()) + 1 if mixed.discrete else mixed.episodes[0].actions.shape[-1]
            cpl = train_offline_cpl(chosen, rejected, mixed.obs_shape[0], n_actions, mixed.discrete, scratch,
                                    OfflineConfig(OptimConfig(steps=o.cpl_steps, batch_size=64, checkpoint_every=0)))
        return {
            "tq": trajectory_quality(mixed.episodes, rand.episodes, best.episodes),
            "saco": state_action_coverage(mixed.episodes, rand.episodes + best.episodes, decimals=2),
            "bc_return": float(evaluate(bc, env, 20, deterministic=False).mean()),
            "cpl_return": float(evaluate(cpl, env, 20, deterministic=False).mean()),
        }

    def summary(self) -> dict:
        """Every stage's result, by stage name."""
        return {name: self.run.result(name) for name, _ in self.stages()}

    def execute(self) -> dict:
        summary = super().execute()
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        return summary

    def report_sections(self, summary: dict) -> list[str]:
        """The table, and the greedy eval return of every online stage against env steps and
        (preference-based stages) against queries asked, in ``control_curves.png``."""
        self._plot_curves(summary)
        return [report.paragraph(
            f"PPO on the env's reward, then PPO on a reward learned from a beta = {PbRLConfig.rationality:g} labeler's "
            f"preferences under each query rule (at most {self.cfg.pbrl.budget} queries), each stopped once its greedy "
            f"20-episode mean reaches {self.cfg.target:g}; then behaviour cloning against offline CPL on a "
            "mixed-quality dataset recorded from the PPO policy (its trajectory quality TQ and state-action coverage "
            "SACo beside them). Then every method of the [table] section on every listed task it runs on, trained from "
            "scratch per seed and scored on held-out episodes (mean +- standard error), and BASALT-style TrueSkill "
            "tables: simulated judges compare same-seed episodes of two agents and TrueSkill ranks them."),
            report.pre(self.format_table(summary)),
            report.heading("Learning curves"), report.image("control_curves.png", "eval return against env steps and queries")
        ] + ([report.heading("BASALT protocol: the top- and bottom-rated Reacher agents, same episode"),
              report.image("basalt_reacher.gif", "top-rated agent (left) and bottom-rated agent (right)")]
             if (self.run.dir / "basalt_reacher.gif").is_file() else [])

    def _plot_curves(self, summary: dict) -> None:
        fig, (by_steps, by_queries) = report.plt.subplots(1, 2, figsize=(11, 4))
        logged = self.run.metrics()  # read metrics.jsonl once, not once per stage
        for i, name in enumerate(summary):
            rows = [r for r in logged if r["stage"] == name]
            if not rows:
                continue
            returns = [r["eval_return"] for r in rows]
            style = dict(marker="o", ms=3, label=name, color=f"C{i}")  # one colour per stage in both panels
            by_steps.plot([r["steps"] for r in rows], returns, **style)
            if "queries" in rows[0]:
                by_queries.plot([r["queries"] for r in rows], returns, **style)
        for ax, xlabel in ((by_steps, "env steps"), (by_queries, "preference queries asked")):
            ax.axhline(self.cfg.target, color="grey", ls="--", lw=1, label=f"target {self.cfg.target:g}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("greedy eval return (20 episodes)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        by_steps.set_title(f"{self.cfg.ppo.env}: learning curves")
        by_queries.set_title("preference-based RL: return against queries")
        report.save_figure(fig, self.run.dir / "control_curves.png")

    @staticmethod
    def format_table(summary: dict) -> str:
        lines = [f"{'stage':<20} {'env steps':>10} {'queries':>8} {'eval return':>12}"]
        for name, r in summary.items():
            if name == "offline" or name.startswith(("table_", "trueskill_", "basalt_")):
                continue
            ret = "-" if r.get("eval_return") is None else f"{r['eval_return']:.1f}"
            lines.append(f"{name:<20} {r['steps']:>10} {r.get('queries', '-'):>8} {ret:>12}")
        if "offline" in summary:
            o = summary["offline"]
            lines.append(f"offline: TQ {o['tq']:.3f}  SACo {o['saco']:.3f}  BC return {o['bc_return']:.1f}  "
                         f"CPL return {o['cpl_return']:.1f}")
        cells = [r for name, r in summary.items() if name.startswith("table_")]
        if cells:
            lines += ["", "methods x tasks (mean +- standard error of held-out success or return):", format_cells(cells)]
        for name, r in summary.items():
            if name.startswith(("trueskill_", "basalt_")):
                from rlxf.lab.basalt import format_table as format_ratings

                lines += ["", f"{name}: TrueSkill from {r['games']} judged pairs (best first by mu - 3 sigma; "
                              f"Kendall tau with the gold order {r['kendall_tau']:.2f})", format_ratings(r["rows"])]
        return "\n".join(lines)
