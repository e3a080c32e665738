"""The meta-RL lab: PPO's clip against learned drifts (LPO, TA-LPO, GROOVE) in and out of distribution.

    .venv/bin/rlxf run configs/lab_meta.toml

Every stage trains ``seeds`` agents per method side by side (:func:`rlxf.algorithms.control.lpo.train_agents`,
the agents of one seed index starting from the same weights under every method) and scores each by its
final greedy return. Stages: ``cartpole_N<updates>`` (default CartPole at the meta-training lifetime: in
distribution), ``cartpole_N<h>`` for each other lifetime in ``horizons``, ``levels_inside`` and
``levels_outside`` (held-out CartPole physics inside and outside the meta-training box), and
``acrobot_N<updates>`` (a task no drift was trained on). The drifts are the shipped ones
(``rlxf/algorithms/control/drifts``, trained by ``python -m rlxf.algorithms.control.lpo_meta train``) or
files named in ``drifts``. The report has the table, the learning curves and the learned drifts
``D(r, A)`` early and late in training (``meta_returns.png``, ``meta_drifts.png``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from rlxf.algorithms.control.lpo import BUILTIN_DRIFTS, InnerConfig, NeuralDrift, grouped, train_agents
from rlxf.algorithms.control.lpo_meta import LEVEL_RANGES, SHIPPED_DIR, held_out_levels, load_drift
from rlxf.algorithms.evaluate import mean_se
from rlxf.core.config import ConfigError
from rlxf.core.runs import atomic_write_text
from rlxf.lab import report
from rlxf.lab.config import RunSection
from rlxf.lab.stages import StagedLab


@dataclass
class MetaLabConfig:
    lab: str = "meta"
    run: RunSection = field(default_factory=lambda: RunSection(dir="runs/meta"))
    methods: tuple[str, ...] = ("clip", "lpo", "ta_lpo", "groove")  # "clip", "dpo" or a drift name / file
    drifts: dict[str, str] = field(default_factory=dict)  # method -> drift file, in place of the shipped one
    seeds: int = 3  # agents per method in every stage
    updates: int = 30  # the lifetime the drifts were meta-trained at
    horizons: tuple[int, ...] = (15, 60)  # other lifetimes (TA-LPO's out-of-distribution test)
    levels: int = 8  # held-out CartPole levels inside and outside the training box (each)
    acrobot: bool = True
    n_envs: int = 16
    n_steps: int = 32
    eval_envs: int = 16


class MetaLab(StagedLab):
    Config = MetaLabConfig
    title = "Meta-RL lab"

    def validate(self) -> None:
        c = self.cfg
        for name in c.methods:
            if name in BUILTIN_DRIFTS:
                continue
            path = Path(c.drifts[name]) if name in c.drifts else SHIPPED_DIR / f"{name}.pt"
            if not path.is_file():
                raise ConfigError(f"methods: {name!r} is neither a built-in drift ({', '.join(BUILTIN_DRIFTS)}) nor a "
                                  f"drift file ({path} does not exist; set drifts.{name} = \"path\")")
        for key in ("seeds", "updates", "n_envs", "n_steps", "eval_envs"):
            if getattr(c, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(c, key)}")
        if any(h < 1 for h in c.horizons):
            raise ConfigError(f"horizons must all be >= 1, got {list(c.horizons)}")

    def drift(self, name: str):
        if name in BUILTIN_DRIFTS:
            return BUILTIN_DRIFTS[name]
        return load_drift(self.cfg.drifts.get(name, name))

    def inner(self, env: str = "cartpole", updates: int | None = None) -> InnerConfig:
        c = self.cfg
        return InnerConfig(env=env, updates=updates or c.updates, n_envs=c.n_envs, n_steps=c.n_steps, eval_envs=c.eval_envs)

    def stages(self) -> list[tuple[str, Callable[[], dict]]]:
        c = self.cfg
        out = [(f"cartpole_N{c.updates}", lambda: self._compare(self.inner()))]
        out += [(f"cartpole_N{h}", lambda h=h: self._compare(self.inner(updates=h))) for h in c.horizons if h != c.updates]
        if c.levels:
            out += [(f"levels_{side}", lambda side=side: self._compare(self.inner(), side)) for side in ("inside", "outside")]
        if c.acrobot:
            out.append((f"acrobot_N{c.updates}", lambda: self._compare(self.inner("acrobot"))))
        return out

    def _compare(self, inner: InnerConfig, levels: str | None = None) -> dict:
        """All methods in one batched run; per method its final returns, mean and SE, and its mean curve."""
        methods, k = list(self.cfg.methods), self.cfg.seeds
        lv = None
        per = k
        if levels is not None:
            held = held_out_levels(self.cfg.levels)[levels]
            per = k * self.cfg.levels
            lv = {key: held[key].repeat(k).repeat(len(methods)) for key in LEVEL_RANGES}
        init = torch.Generator().manual_seed(self.seed)
        seed = int(torch.randint(2**31, (1,), generator=init))
        out = train_agents(grouped([self.drift(m) for m in methods], per), per * len(methods), inner, seed=seed,
                           levels=lv, init_groups=len(methods))
        result = {"updates": inner.updates, "env": inner.env}
        for i, m in enumerate(methods):
            final = out["final"][i * per : (i + 1) * per]
            mean, se = mean_se(final.numpy())
            curve = out["curve"][:, i * per : (i + 1) * per].nanmean(1)
            result[m] = {"mean": mean, "se": se, "final": final.tolist(),
                         "curve": [None if c != c else float(c) for c in curve.tolist()]}
        return result

    def summary(self) -> dict:
        return {name: self.run.result(name) for name, _ in self.stages()}

    def execute(self) -> dict:
        self.run_stages()
        summary = self.summary()
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        self.write_report()
        return summary

    def format_table(self, summary: dict) -> str:
        methods = list(self.cfg.methods)
        lines = [f"{'stage':<18}" + "".join(f"{m:>18}" for m in methods)]
        for name, r in summary.items():
            lines.append(f"{name:<18}" + "".join(f"{r[m]['mean']:>10.1f} +- {r[m]['se']:<5.1f}" for m in methods))
        return "\n".join(lines)

    def report_sections(self, summary: dict) -> list[str]:
        self._plot_returns(summary)
        self._plot_drifts()
        c = self.cfg
        return [report.paragraph(
            f"Final greedy return (mean +- SE over {c.seeds} agents per method; held-out level stages: over "
            f"{c.seeds} agents x {c.levels} levels) of PPO-style agents whose policy loss is -(rA - D(r, A)) with "
            f"each method's drift D. The learned drifts were meta-trained on CartPole levels at {c.updates} "
            "updates; the other lifetimes, the held-out levels and Acrobot are outside that."),
            report.pre(self.format_table(summary)),
            report.heading("Learning curves"), report.image("meta_returns.png", "mean episode return per update"),
            report.heading("Learned drifts early and late in training"),
            report.paragraph("D(r, A) against the ratio r for A = +1 and A = -1 at training progress 0.1 and 0.9 "
                             "(only TA-LPO's drift sees the progress; the others are the same in both panels)."),
            report.image("meta_drifts.png", "drift against ratio, early and late")]

    def _plot_returns(self, summary: dict) -> None:
        names = list(summary)
        fig, axes = report.plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
        for ax, name in zip(axes[0], names):
            for i, m in enumerate(self.cfg.methods):
                ys = summary[name][m]["curve"]
                ax.plot(range(1, len(ys) + 1), [float("nan") if y is None else y for y in ys], color=f"C{i}", label=m)
            ax.set_title(name)
            ax.set_xlabel("update")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("mean return of finished episodes")
        axes[0][0].legend(fontsize=8)
        report.save_figure(fig, self.run.dir / "meta_returns.png")

    def _plot_drifts(self) -> None:
        r = torch.linspace(0.5, 1.5, 101)
        fig, axes = report.plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
        for ax, progress in zip(axes, (0.1, 0.9)):
            for i, m in enumerate(self.cfg.methods):
                d = self.drift(m)
                for adv, ls in ((1.0, "-"), (-1.0, "--")):
                    a = torch.full_like(r, adv)
                    with torch.no_grad():
                        y = d(r[None], a[None], progress)[0] if isinstance(d, NeuralDrift) else d(r, a, progress)
                    ax.plot(r.numpy(), y.numpy(), ls=ls, color=f"C{i}", label=f"{m}, A={adv:+g}")
            ax.set_title(f"training progress n/N = {progress}")
            ax.set_xlabel("ratio r")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("drift D(r, A)")
        axes[1].legend(fontsize=7, ncol=2)
        report.save_figure(fig, self.run.dir / "meta_drifts.png")
