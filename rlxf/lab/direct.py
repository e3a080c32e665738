"""The direct-preference lab: every direct objective, one SFT model, one set of comparisons, one budget.

Stages reuse the quickstart pipeline's (SFT, comparisons); then one resumable stage per
objective trains a copy of the SFT policy with :func:`train_pairs` (KTO: :func:`train_unpaired`
on the comparisons split into desirable/undesirable responses), all with the same optimiser
settings and number of steps, and held-out comparisons for the trainer's metrics. ``evaluate``
samples each policy on the task's test prompts and measures the gold reward (± standard
error, and the paired gain over SFT) and the sampled KL from the SFT policy. Output:
``summary.json`` and ``report.html`` with the table and a gold-vs-KL plot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from rlxf.algorithms.evaluate import mean_se, paired_gain, sampled_kl
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import evaluate_pairs, train_pairs
from rlxf.algorithms.offline_unpaired import train_unpaired
from rlxf.algorithms.preference_data import pairs_as_unpaired
from rlxf.core.runs import atomic_write_text
from rlxf.lab import report
from rlxf.lab.config import PipelineConfig, RunSection
from rlxf.lab.pipeline import Pipeline, PipelineError, loss_kwargs
from rlxf.objectives.preference import ALL_PAIR_LOSSES, DEFAULT_ARGS, KTO_ARGS
from rlxf.policies.language import LanguagePolicy

@dataclass
class DirectSection:
    """Which objectives run, with what hyperparameters, on what budget (shared by all)."""

    objectives: list[str] = field(default_factory=lambda: list(DEFAULT_ARGS))
    args: dict[str, dict[str, float]] = field(default_factory=dict)  # per objective, over DEFAULT_ARGS
    sft_model: str = ""  # a saved SFT model directory to start from instead of training one
    held_out_pairs: int = 200  # comparisons kept out of training for the trainer's metrics
    precompute_ref: bool = True
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=150, batch_size=64, lr=1e-3, warmup_steps=15))


@dataclass
class DirectLabConfig(PipelineConfig):
    lab: str = "direct"
    run: RunSection = field(default_factory=lambda: RunSection(dir="runs/lab_direct"))
    direct: DirectSection = field(default_factory=DirectSection)


class DirectLab(Pipeline):
    """Runs the direct-objective comparison in ``cfg.run.dir`` (resumable, stage by stage)."""

    Config = DirectLabConfig
    title = "Direct preference objectives"

    def validate(self) -> None:
        super().validate()
        d = self.cfg.direct
        if not d.objectives:
            raise PipelineError("direct.objectives is empty; name at least one objective")
        unknown = sorted(set(d.args) - set(d.objectives))
        if unknown:
            raise PipelineError(f"direct.args: {', '.join(unknown)} not in direct.objectives")
        for name in d.objectives:
            args = self.objective_args(name)
            if name == "kto":
                bad = sorted(set(args) - set(KTO_ARGS))
                if bad:
                    raise PipelineError(f"direct.args.kto: unknown {', '.join(bad)} (it takes: {', '.join(KTO_ARGS)})")
            elif name not in ALL_PAIR_LOSSES:
                known = ", ".join(sorted([*ALL_PAIR_LOSSES, "kto"]))
                raise PipelineError(f"direct.objectives: unknown objective {name!r}; known: {known}")
            else:
                try:
                    loss_kwargs(ALL_PAIR_LOSSES[name], 0.1, args)
                except PipelineError as e:
                    raise PipelineError(f"direct.args.{name}: {e}") from None
        self.start_model()

    def objective_args(self, name: str) -> dict[str, float]:
        """Hyperparameters of ``name``: :data:`DEFAULT_ARGS`, overridden by ``direct.args.<name>``."""
        return {**DEFAULT_ARGS.get(name, {}), **self.cfg.direct.args.get(name, {})}

    @staticmethod
    def format_table(summary: dict) -> str:
        return format_table(summary)

    def report_sections(self, summary: dict) -> list[str]:
        """The table, gold against KL, and each objective's training reward accuracy."""
        o = self.cfg.direct.optim
        plot_gold_vs_kl(summary, self.run.dir / "gold_vs_kl.png")
        plot_curves(self, self.run.dir / "reward_accuracy.png")
        return [report.paragraph(
            f"Every objective trained a copy of the same SFT policy on the same comparisons for {o.steps} steps of "
            f"{o.batch_size} pairs (KTO: twice as many single responses). Gold reward is the task's hidden objective, "
            "measured on held-out prompts (mean ± standard error; gains are paired differences against SFT on the "
            "same prompts). KL is the sampled KL from the SFT policy. Held-out accuracy: share of held-out "
            "comparisons whose implicit reward orders the pair as labelled."),
            report.pre(format_table(summary)),
            report.heading("Gold reward against KL from SFT"), report.image("gold_vs_kl.png", "gold vs KL"),
            report.heading("Training reward accuracy"), report.image("reward_accuracy.png", "reward accuracy curves")]

    # -- stages -----------------------------------------------------------
    def stages(self) -> list[tuple[str, Callable[[], dict]]]:
        out = [("sft", self.stage_sft), ("comparisons", self.stage_comparisons)]
        out += [(f"direct_{name}", lambda n=name: self.stage_objective(n)) for name in self.cfg.direct.objectives]
        return out + [("evaluate", self.stage_evaluate)]

    def start_model(self) -> str:
        """``direct.sft_model`` when given (checked), else the pipeline's starting model."""
        path = self.cfg.direct.sft_model
        if path and not (Path(path) / "config.json").is_file():
            raise PipelineError(f"direct.sft_model: {path} is not a saved model directory (no config.json)")
        return path or super().start_model()

    def stage_sft(self) -> dict:
        path = self.cfg.direct.sft_model
        if not path:
            return super().stage_sft()
        LanguagePolicy.from_pretrained(path).save_pretrained(self._model_dir("sft"))
        return {"source": path}

    def _split(self, policy: LanguagePolicy):
        """Training and held-out pairs (the last ``held_out_pairs``, at most a fifth) of the run's comparisons."""
        pairs = self._pairs(policy)
        n_eval = min(self.cfg.direct.held_out_pairs, len(pairs) // 5)
        return pairs[: len(pairs) - n_eval], pairs[len(pairs) - n_eval:]

    def stage_objective(self, name: str) -> dict:
        d = self.cfg.direct
        stage, policy = f"direct_{name}", self.policy("sft")
        ref = policy.reference()
        train, held = self._split(policy)
        args = self.objective_args(name)
        if name == "kto":
            # a comparison is two KTO examples; twice the batch keeps the sequences per step equal
            optim = replace(d.optim, batch_size=2 * d.optim.batch_size)
            train_unpaired(self.run, stage, policy, ref, pairs_as_unpaired(train), optim, self.seed, quiet=self.quiet,
                           precompute_ref=d.precompute_ref, **args)
            metrics = evaluate_pairs(policy, ref, held, args.get("beta", 0.1)) if held else {}
        else:
            loss = ALL_PAIR_LOSSES[name]
            kwargs = loss_kwargs(loss, 0.1, args)  # beta = 0.1 unless args set it
            metrics = train_pairs(self.run, stage, policy, ref, train, loss, kwargs, d.optim, self.seed, self.quiet,
                                  precompute_ref=d.precompute_ref, eval_pairs=held or None)
        policy.save_pretrained(self._model_dir(stage))
        last = self.run.metrics(stage)[-1]
        return {"final_loss": last["loss"], "held_out": metrics, "args": args}

    def stage_evaluate(self) -> dict:
        c = self.cfg
        prompts = self.task.prompts("test")[: c.eval.n_prompts]
        if len(prompts) < c.eval.n_prompts:
            raise PipelineError(f"eval.n_prompts={c.eval.n_prompts} but the task has {len(prompts)} test prompts")
        sft = self.policy("sft")
        prompt_ids = sft.encode(prompts)
        gold_of: dict[str, np.ndarray] = {}
        summary: dict[str, dict] = {}
        for i, name in enumerate(["sft", *c.direct.objectives]):
            policy = sft if name == "sft" else self.policy(f"direct_{name}")
            ro = self._sample(policy, prompt_ids, n=1, salt=100 + i)
            gold_of[name] = self._gold(prompts, self._texts(policy, ro.response_ids), ro.finished)
            kl = sampled_kl(ro.steps, sft.score(ro.prompt_ids, ro.response_ids)).numpy()
            gm, gse = mean_se(gold_of[name])
            gain, gain_se = paired_gain(gold_of[name], gold_of["sft"])
            lengths = [len(r) for r in ro.response_ids]
            row = {"gold_mean": gm, "gold_se": gse, "gain_vs_sft": gain, "gain_se": gain_se,
                   "kl": float(kl.mean()), "kl_se": mean_se(kl)[1], "mean_length": float(np.mean(lengths))}
            if name != "sft":
                held = self.run.result(f"direct_{name}").get("held_out", {})
                row["held_out_reward_accuracy"] = held.get("reward_accuracy")
            summary[name] = row
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        return {"summary": summary, "n_prompts": len(prompts)}


def format_table(summary: dict) -> str:
    """The summary as a fixed-width text table."""
    head = f"{'objective':<16} {'gold reward':>16} {'gain vs SFT':>16} {'KL from SFT':>16} {'length':>7} {'held-out acc':>12}"
    lines = [head, "-" * len(head)]
    for name, r in summary.items():
        gain = "" if name == "sft" else f"{r['gain_vs_sft']:+.3f} ± {r['gain_se']:.3f}"
        acc = r.get("held_out_reward_accuracy")
        lines.append(f"{name:<16} {r['gold_mean']:>8.3f} ± {r['gold_se']:.3f} {gain:>16} "
                     f"{r['kl']:>8.3f} ± {r['kl_se']:.3f} {r['mean_length']:>7.1f} "
                     f"{'' if acc is None else f'{acc:.3f}':>12}")
    return "\n".join(lines)


def plot_curves(lab: DirectLab, path) -> None:
    """Training reward accuracy of every objective, smoothed, on one axis."""
    fig, ax = report.plt.subplots(figsize=(7.5, 4.5))
    for i, name in enumerate(lab.cfg.direct.objectives):
        rows = [r for r in lab.run.metrics(f"direct_{name}") if "reward_accuracy" in r]
        if rows:
            ax.plot([r["step"] for r in rows], report.smooth([r["reward_accuracy"] for r in rows]), color=f"C{i % 10}",
                    linestyle="-" if i < 10 else "--", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training reward accuracy (moving average of 10)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    report.save_figure(fig, path)


def plot_gold_vs_kl(summary: dict, path) -> None:
    """Gold reward (± s.e.) against sampled KL from SFT (± s.e.), each point named."""
    fig, ax = report.plt.subplots(figsize=(8, 5.5))
    for i, (name, r) in enumerate(summary.items()):
        ax.errorbar(r["kl"], r["gold_mean"], xerr=r["kl_se"], yerr=r["gold_se"], fmt="os^Dv<>p"[i % 8],
                    color=f"C{i % 10}", capsize=2, alpha=0.8)
        ax.annotate(name, (r["kl"], r["gold_mean"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.axhline(summary["sft"]["gold_mean"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("KL from the SFT policy (nats, sampled)")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.set_title("Direct objectives: gold reward against KL from SFT")
    ax.grid(alpha=0.3)
    report.save_figure(fig, path)
