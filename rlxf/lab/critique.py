"""The critique lab: every critic measured by outcome on each task's critique items.

    .venv/bin/rlxf run configs/lab_critique.toml

For each task (``arithmetic``, ``code``) the lab builds a pool of answers to judge (half right,
half wrong at one step: :mod:`rlxf.critique.bench`), and for each critic one resumable stage
measures its verdict accuracy (overall and by difficulty), its first-error localisation, and
RealCritic's closed loop with the config's corrector: self-critique (the corrector's own direct
answers), cross-critique (the pool) and iterative critique (the pool over ``rounds`` rounds), each
against the corrector's direct answers with the 2x2 transition matrix. Critics are the config's
``[[critics]]`` (simulated profiles or LM roles, :mod:`rlxf.critique.config`) and trained critics
from the ``trained`` modules' ``LAB_CRITICS`` (name -> builder(run, seed) -> TextModel; arithmetic
only). The last stage writes ``summary.json``::

    {task: {"n", "direct", "critics": {critic: {"verdict_accuracy", "by_difficulty", "localisation",
            "closed_loop": {mode: {"accuracy", "vs_direct", "vs_direct_se", "fixed", "broken",
                                   "transitions", "per_round"}}}}}}

``fixed`` is the closed-loop correction rate (i->c over the answers wrong before), ``broken`` the
share of right answers the loop broke (c->i over those right before).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from rlxf.core.config import ConfigError
from rlxf.core.runs import atomic_write_text
from rlxf.critique.config import (ItemsSpec, RoleSpec, check_critics, check_items, check_role, make_corrector,
                                  make_critic, make_items)
from rlxf.critique.evaluate import critique_eval, critique_items, score_verdicts
from rlxf.lab import report
from rlxf.lab.config import RunSection
from rlxf.lab.registry import resolve
from rlxf.lab.stages import StagedLab

TASKS = ("arithmetic", "code")
MODES = ("self", "cross", "iterative")
TRAINED: dict[str, str] = {
    "multicritique": "rlxf.algorithms.critique.multicritique:LAB_CRITICS",
    "critic_v": "rlxf.algorithms.critique.critic_v:LAB_CRITICS",
}
"""Modules whose trained critics (``LAB_CRITICS``) the lab can run, by the name ``trained`` lists."""


def _default_critics() -> list[RoleSpec]:
    return [RoleSpec(name="always_correct", miss=1.0), RoleSpec(name="random_flip", miss=0.5, false_alarm=0.5,
                                                                 misplace=0.5, seed=1),
            RoleSpec(name="good", miss=0.1, false_alarm=0.05, misplace=0.1, seed=2)]


@dataclass
class CritiqueLabConfig:
    """``tasks`` to run, each task's items (``[arithmetic]``, ``[code]``), the closed loop's
    ``rounds`` (iterative critique) and ``[corrector]``, the ``[[critics]]`` and the ``trained``
    critic modules (names of :data:`TRAINED`; their critics run on arithmetic)."""

    lab: str = "critique"
    run: RunSection = field(default_factory=lambda: RunSection(dir="runs/critique"))
    tasks: list[str] = field(default_factory=lambda: ["arithmetic"])
    arithmetic: ItemsSpec = field(default_factory=lambda: ItemsSpec(task="arithmetic", n=600))
    code: ItemsSpec = field(default_factory=lambda: ItemsSpec(task="code", n=150))
    rounds: int = 3
    corrector: RoleSpec = field(default_factory=RoleSpec)
    critics: list[RoleSpec] = field(default_factory=_default_critics)
    trained: list[str] = field(default_factory=list)


class CritiqueLab(StagedLab):
    """Runs the critique lab in ``cfg.run.dir``: one stage per (task, critic), then ``summary``."""

    Config = CritiqueLabConfig
    title = "Critique lab"

    def __init__(self, cfg: CritiqueLabConfig, fresh: bool = False, quiet: bool = False,
                 log: Callable[[str], None] = print):
        self._items: dict[str, list] = {}
        super().__init__(cfg, fresh, quiet, log)

    def validate(self) -> None:
        """Tasks known, items, corrector and critics well-formed, trained modules importable with a
        ``LAB_CRITICS`` dict, rounds >= 1; nothing is written on failure."""
        c = self.cfg
        if not c.tasks or len(set(c.tasks)) != len(c.tasks) or any(t not in TASKS for t in c.tasks):
            raise ConfigError(f"tasks: expected a non-empty list of distinct tasks among {', '.join(TASKS)}, "
                              f"got {c.tasks}")
        for task in c.tasks:
            spec = getattr(c, task)
            if spec.task != task:
                raise ConfigError(f"{task}.task: the [{task}] items must be of task {task!r}, got {spec.task!r}")
            check_items(spec, task)
        if c.rounds < 1:
            raise ConfigError(f"rounds: expected an integer >= 1, got {c.rounds}")
        check_role(c.corrector, "corrector", critic=False)
        check_critics(c.critics)
        if len(set(c.trained)) != len(c.trained):
            raise ConfigError(f"trained: expected distinct module names, got {c.trained}")
        names = [s.name for s in c.critics]
        for module in c.trained:
            if module not in TRAINED:
                raise ConfigError(f"trained: unknown critic module {module!r}; known: {', '.join(TRAINED)}")
            found = resolve(TRAINED[module], f"trained: {module}")
            if not isinstance(found, dict) or not found or not all(callable(b) for b in found.values()):
                raise ConfigError(f"trained: {module}: {TRAINED[module]} is not a dict of critic builders")
            names += list(found)
        if len(set(names)) != len(names):
            raise ConfigError(f"critics: names must be distinct across [[critics]] and trained critics, got {names}")

    def critic_names(self, task: str) -> list[str]:
        names = [s.name for s in self.cfg.critics]
        if task == "arithmetic":
            names += [name for m in self.cfg.trained for name in resolve(TRAINED[m], f"trained: {m}")]
        return names

    def stages(self) -> list[tuple[str, Callable[[], dict]]]:
        out = [(f"{task}.{name}", lambda t=task, n=name: self._measure(t, n))
               for task in self.cfg.tasks for name in self.critic_names(task)]
        return out + [("summary", self._summary)]

    def items(self, task: str) -> list:
        if task not in self._items:
            self._items[task] = make_items(getattr(self.cfg, task))
        return self._items[task]

    def _critic(self, task: str, name: str):
        spec = next((s for s in self.cfg.critics if s.name == name), None)
        if spec is not None:
            return make_critic(spec, task)
        module = next(m for m in self.cfg.trained if name in resolve(TRAINED[m], f"trained: {m}"))
        return resolve(TRAINED[module], f"trained: {module}")[name](self.run, self.seed)

    def _measure(self, task: str, name: str) -> dict:
        """Verdict accuracy, localisation and the closed loop in every mode, for one critic."""
        items = self.items(task)
        critic = self._critic(task, name)
        scores = score_verdicts(items, critique_items(critic, items))
        rows = critique_eval({name: critic}, make_corrector(self.cfg.corrector, task), items,
                             ("direct", *MODES), self.cfg.rounds)
        direct = rows[0]["accuracy"]
        loop = {r["mode"]: {k: r[k] for k in ("accuracy", "vs_direct", "vs_direct_se", "fixed", "broken",
                                              "transitions", "per_round")} for r in rows[1:]}
        self.log(f"[{task}.{name}] verdict {scores['accuracy']:.3f}, localisation {scores['localisation']:.3f}, "
                 f"cross {loop['cross']['accuracy']:.3f} (direct {direct:.3f})")
        return {"n": len(items), "direct": direct, "verdict_accuracy": scores["accuracy"],
                "by_difficulty": scores["by_difficulty"], "localisation": scores["localisation"], "closed_loop": loop}

    def _summary(self) -> dict:
        summary = {}
        for task in self.cfg.tasks:
            results = {name: self.run.result(f"{task}.{name}") for name in self.critic_names(task)}
            first = next(iter(results.values()))
            summary[task] = {"n": first["n"], "direct": first["direct"], "critics": {
                name: {k: r[k] for k in ("verdict_accuracy", "by_difficulty", "localisation", "closed_loop")}
                for name, r in results.items()}}
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        return {"tasks": list(summary)}

    @staticmethod
    def format_table(summary: dict) -> str:
        return format_table(summary)

    def report_sections(self, summary: dict) -> list[str]:
        """What was measured, the table, verdict accuracy against closed-loop gain, and accuracy by round."""
        plot_critics(summary, self.run.dir / "critique_critics.png")
        return [report.paragraph(
                    "Each critic judges a pool of answers, half right and half wrong at one step. Verdict: the share "
                    "of answers whose accept/reject matches gold. Loc.: the share of wrong answers whose first wrong "
                    "step it names exactly. Closed loop (RealCritic): a corrector redoes each rejected answer from the "
                    "step named; cross = the pool, self = the corrector's own direct answers, iter = the pool over "
                    "several rounds. Gain: accuracy after correction minus the corrector's direct accuracy on the "
                    "same questions, ± its paired standard error. fixed = i->c over wrong answers; c->i counts right "
                    "answers the loop broke."),
                report.pre(self.format_table(summary)),
                report.image("critique_critics.png", "verdict accuracy and closed-loop accuracy by round")]


def format_table(summary: dict) -> str:
    """One row per (task, critic): verdict accuracy, localisation, cross-critique accuracy and its gain
    over direct (± paired SE), fixed rate, c->i count, self and final iterative accuracy."""
    head = (f"{'task':<10} {'critic':<16} {'verdict':>7} {'loc.':>5} {'direct':>6} {'cross':>6} {'gain ± se':>15} "
            f"{'fixed':>5} {'c->i':>5} {'self':>6} {'iter':>6}")
    lines = [head, "-" * len(head)]
    for task, t in summary.items():
        for name, r in t["critics"].items():
            cross, loop = r["closed_loop"]["cross"], r["closed_loop"]
            gain = f"{cross['vs_direct']:+.3f} ± {cross['vs_direct_se']:.3f}"
            lines.append(f"{task:<10} {name:<16} {r['verdict_accuracy']:>7.3f} {r['localisation']:>5.3f} "
                         f"{t['direct']:>6.3f} {cross['accuracy']:>6.3f} {gain:>15} {cross['fixed']:>5.3f} "
                         f"{cross['transitions']['c->i']:>5} {loop['self']['accuracy']:>6.3f} "
                         f"{loop['iterative']['accuracy']:>6.3f}")
    return "\n".join(lines)


def plot_critics(summary: dict, path) -> None:
    """Per task: verdict accuracy against cross-critique gain over direct (one point per critic),
    and iterative accuracy by round (one line per critic, direct dashed)."""
    fig, axes = report.plt.subplots(2, len(summary), figsize=(5 * len(summary), 7.6), squeeze=False)
    for col, (task, t) in enumerate(summary.items()):
        top, bottom = axes[0, col], axes[1, col]
        for i, (name, r) in enumerate(t["critics"].items()):
            cross = r["closed_loop"]["cross"]
            top.errorbar(r["verdict_accuracy"], cross["vs_direct"], yerr=2 * cross["vs_direct_se"], fmt="o",
                         color=f"C{i}", label=name, capsize=3)
            rounds = r["closed_loop"]["iterative"]["per_round"]
            bottom.plot(range(1, len(rounds) + 1), rounds, "o-", color=f"C{i}", label=name, ms=4)
        top.axhline(0, color="grey", lw=0.8)
        top.set(title=f"{task}: critique quality by outcome", xlabel="verdict accuracy",
                ylabel="cross-critique gain over direct (± 2 se)")
        bottom.axhline(t["direct"], color="grey", ls="--", lw=0.8, label="direct")
        bottom.set_xticks(range(1, len(rounds) + 1))
        bottom.set(title=f"{task}: iterative critique", xlabel="round", ylabel="accuracy after correction")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    report.save_figure(fig, path)


__all__ = ["CritiqueLab", "CritiqueLabConfig", "TRAINED", "format_table", "plot_critics"]
