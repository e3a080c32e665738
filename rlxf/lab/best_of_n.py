"""The best-of-N over-optimisation lab: when does a learned reward stop tracking gold?

For each label budget, K reward models are trained on the first ``budget`` comparisons of SFT
samples (member 0 is "the single RM"; the K together are the ensemble). N = 1..n_max samples per
held-out prompt are drawn once from the SFT policy; best-of-N picks the highest proxy score
(single, ensemble mean, worst-case WCO or uncertainty-weighted UWO, Coste et al. 2024), and we
record the gold and proxy reward of the pick against the analytic KL log N - (N - 1)/N
(Gao et al. 2023). Small N are averaged over the n_max / N disjoint groups of the same samples.

Stages reuse the quickstart pipeline's (SFT, comparisons); each reward model is its own
resumable stage. Output: ``summary.json`` shaped ``{reward_type: {budget: {N: {"gold", "proxy"}}}}``
and ``report.html`` with the curves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rlxf.algorithms.evaluate import best_of_n_kl, mean_se
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.reward_training import train_reward_model
from rlxf.core.runs import atomic_write_text, torch_save_atomic
from rlxf.lab import report
from rlxf.lab.config import ComparisonsSection, GenerationSection, ModelSection, RunSection, SFTSection
from rlxf.lab.pipeline import Pipeline, PipelineError
from rlxf.rewards.ensemble import aggregate, member_indices
from rlxf.rewards.evaluation import pairwise_accuracy
from rlxf.rewards.model import RewardModel
from rlxf.tasks.hidden_pref import HiddenPrefConfig

REWARD_TYPES = ("single", "mean", "wco", "uwo")


@dataclass
class RewardModelsSection:
    """Label budgets (comparisons per reward model) and how long each model trains:
    ``max(min_steps, epochs * budget / batch_size)`` optimiser steps."""

    budgets: list[int] = field(default_factory=lambda: [500, 2000, 8000])
    epochs: float = 2.0
    min_steps: int = 20
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=0, batch_size=64, lr=1e-3, warmup_steps=10))


@dataclass
class EnsembleSection:
    members: int = 5
    bootstrap: bool = False  # False: members differ by seed only (as in Coste et al.)
    uwo_lambda: float = 0.5


@dataclass
class BestOfNSection:
    n_max: int = 256  # a power of two
    n_prompts: int = 200
    reward_types: list[str] = field(default_factory=lambda: list(REWARD_TYPES))


@dataclass
class BestOfNLabConfig:
    lab: str = "best_of_n"
    run: RunSection = field(default_factory=lambda: RunSection(dir="runs/best_of_n"))
    task: HiddenPrefConfig = field(default_factory=HiddenPrefConfig)
    model: ModelSection = field(default_factory=ModelSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    sft: SFTSection = field(default_factory=SFTSection)
    comparisons: ComparisonsSection = field(default_factory=lambda: ComparisonsSection(n_pairs=8400))
    reward_model: RewardModelsSection = field(default_factory=RewardModelsSection)
    ensemble: EnsembleSection = field(default_factory=EnsembleSection)
    best_of_n: BestOfNSection = field(default_factory=BestOfNSection)


def bon_picks(gold: np.ndarray, score: np.ndarray, sizes: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per prompt, the mean gold and proxy of the best-of-N pick for each N in ``sizes``, from
    ``[P, n_max]`` arrays: the n_max samples of a prompt are cut into n_max // N disjoint groups of N."""
    P, n_max = gold.shape
    out = {}
    for n in sizes:
        g = gold[:, : n_max // n * n].reshape(P, -1, n)
        s = score[:, : n_max // n * n].reshape(P, -1, n)
        pick = s.argmax(-1)[..., None]
        out[n] = (np.take_along_axis(g, pick, -1)[..., 0].mean(1), s.max(-1).mean(1))
    return out


def curve_of(picks: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[int, dict[str, float]]:
    """Means over prompts of :func:`bon_picks` output: ``{N: {"gold", "proxy"}}``."""
    return {n: {"gold": float(g.mean()), "proxy": float(p.mean())} for n, (g, p) in picks.items()}


def bon_curve(gold: np.ndarray, score: np.ndarray, sizes: list[int]) -> dict[int, dict[str, float]]:
    """Mean gold and proxy of the best-of-N pick for each N in ``sizes`` (see :func:`bon_picks`)."""
    return curve_of(bon_picks(gold, score, sizes))


class BestOfNLab(Pipeline):
    """Runs the over-optimisation lab in ``cfg.run.dir`` (resumable, stage by stage)."""

    Config = BestOfNLabConfig
    title = "Best-of-N over-optimisation"

    def validate(self) -> None:
        c = self.cfg
        self.validate_model()
        b, e, n = c.reward_model.budgets, c.ensemble, c.best_of_n
        if not b or any(x < 2 for x in b):
            raise PipelineError(f"reward_model.budgets must be a non-empty list of integers >= 2, got {b}")
        if not c.comparisons.path and max(b) > c.comparisons.n_pairs:
            raise PipelineError(f"reward_model.budgets: the largest budget {max(b)} exceeds comparisons.n_pairs "
                                f"= {c.comparisons.n_pairs}; raise comparisons.n_pairs")
        if e.members < 1:
            raise PipelineError(f"ensemble.members must be at least 1, got {e.members}")
        if n.n_max < 1 or n.n_max & (n.n_max - 1):
            raise PipelineError(f"best_of_n.n_max must be a power of two, got {n.n_max}")
        bad = sorted(set(n.reward_types) - set(REWARD_TYPES))
        if bad or not n.reward_types:
            raise PipelineError(f"best_of_n.reward_types: unknown {bad or 'empty list'}; known: {', '.join(REWARD_TYPES)}")
        self.validate_inputs()

    @staticmethod
    def format_table(summary: dict) -> str:
        return format_table(summary)

    def report_sections(self, summary: dict) -> list[str]:
        """The headline sentences, the curves, the gold table and each member's accuracy."""
        ev = self.run.result("evaluate")
        plot_curves(summary, self.run.dir / "best_of_n.png")
        return [report.paragraph("Best-of-N from the SFT policy on held-out prompts, picking by a learned proxy "
                                 "reward; gold is the task's hidden reward. x-axis: the analytic KL of best-of-N "
                                 "from the SFT policy, log N - (N-1)/N."),
                report.bullets(headline(ev["analysis"])), report.image("best_of_n.png", "gold and proxy against KL"),
                report.heading("Gold reward of the pick"), report.pre(format_table(summary)),
                report.heading("Held-out pairwise accuracy against gold of each ensemble member"),
                report.table([[b, ", ".join(f"{a:.3f}" for a in accs)] for b, accs in ev["rm_accuracy"].items()],
                             header=["budget", "members"]),
                report.heading("Analysis"), report.pre(json.dumps(ev["analysis"], indent=1))]

    # -- stages -----------------------------------------------------------
    def stages(self) -> list[tuple[str, Callable[[], dict]]]:
        out = [("sft", self.stage_sft), ("comparisons", self.stage_comparisons), ("samples", self.stage_samples)]
        for budget in self.cfg.reward_model.budgets:
            for k in range(self.cfg.ensemble.members):
                out.append((f"rm_{budget}_{k}", lambda b=budget, k=k: self.stage_member(b, k)))
        return out + [("evaluate", self.stage_evaluate)]

    def _samples_path(self) -> Path:
        return self.run.stage_dir("samples") / "samples.pt"

    def stage_samples(self) -> dict:
        """n_max SFT samples for each held-out prompt, with their gold reward."""
        c = self.cfg.best_of_n
        prompts = self.task.prompts("test")[: c.n_prompts]
        if len(prompts) < c.n_prompts:
            raise PipelineError(f"best_of_n.n_prompts={c.n_prompts} but the task has {len(prompts)} test prompts")
        sft = self.policy("sft")
        ro = self._sample(sft, self._prompt_ids(sft, prompts), n=c.n_max, salt=300)
        gold = self._gold([p for p in prompts for _ in range(c.n_max)], self._texts(sft, ro.response_ids), ro.finished)
        torch_save_atomic({"prompt_ids": ro.prompt_ids, "response_ids": ro.response_ids,
                           "gold": torch.tensor(gold).reshape(len(prompts), c.n_max)}, self._samples_path())
        return {"n_prompts": len(prompts), "n_max": c.n_max, "gold_mean": float(gold.mean())}

    def _budget_rows(self, budget: int) -> list:
        pairs = self._pairs(self.policy("sft"))
        if len(pairs) < budget:
            raise PipelineError(f"reward_model.budgets: budget {budget} needs {budget} comparisons but only "
                                f"{len(pairs)} are usable; raise comparisons.n_pairs")
        return pairs[:budget]

    def stage_member(self, budget: int, k: int) -> dict:
        """Train member ``k`` of the budget's ensemble and score every sample with it."""
        c, stage = self.cfg, f"rm_{budget}_{k}"
        rows = self._budget_rows(budget)
        rows = [rows[i] for i in member_indices(len(rows), k, self.seed, c.ensemble.bootstrap)]
        rc = c.reward_model
        steps = max(rc.min_steps, math.ceil(rc.epochs * budget / rc.optim.batch_size))
        with torch.random.fork_rng():
            torch.manual_seed(self.seed * 1000 + k)  # the new score head differs per member
            rm = RewardModel.from_pretrained(self._model_dir("sft"))
        train_reward_model(self.run, stage, rm, rows, replace(rc.optim, steps=steps), self.seed * 1000 + k, self.quiet)
        samples = torch.load(self._samples_path())
        scores = rm.score(samples["prompt_ids"], samples["response_ids"]).reshape(samples["gold"].shape)
        torch_save_atomic(scores, self.run.stage_dir(stage) / "scores.pt")
        gold = samples["gold"]
        acc = pairwise_accuracy(scores[:, 0::2].flatten(), scores[:, 1::2].flatten(), gold[:, 0::2].flatten(),
                                gold[:, 1::2].flatten())
        return {"budget": budget, "member": k, "steps": steps, "held_out_accuracy_vs_gold": acc}

    def stage_evaluate(self) -> dict:
        c = self.cfg
        gold = torch.load(self._samples_path())["gold"].numpy()
        sizes = [2**i for i in range(int(math.log2(c.best_of_n.n_max)) + 1)]
        summary: dict = {t: {} for t in c.best_of_n.reward_types}
        picks: dict = {t: {} for t in c.best_of_n.reward_types}
        accuracy = {}
        for budget in c.reward_model.budgets:
            members = torch.stack([torch.load(self.run.stage_dir(f"rm_{budget}_{k}") / "scores.pt")
                                   for k in range(c.ensemble.members)])
            accuracy[budget] = [self.run.result(f"rm_{budget}_{k}")["held_out_accuracy_vs_gold"]
                                for k in range(c.ensemble.members)]
            for t in c.best_of_n.reward_types:
                score = members[0] if t == "single" else aggregate(members, t, c.ensemble.uwo_lambda)
                per_prompt = bon_picks(gold, score.numpy(), sizes)
                picks[t][budget] = {n: g for n, (g, _) in per_prompt.items()}
                summary[t][budget] = curve_of(per_prompt)
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        return {"analysis": analyse(summary, picks), "rm_accuracy": accuracy}


def analyse(summary: dict, picks: dict | None = None) -> dict:
    """Per reward type and budget: the N where gold peaks, gold there, gold and proxy at the
    largest N, and how much gold was lost from the peak. With ``picks`` (per-prompt gold of the
    picks, ``{type: {budget: {N: [P]}}}``) also paired standard errors over prompts: of the
    loss from the peak, and of each type's gold at the largest N minus the single RM's."""
    out: dict = {}
    for t, by_budget in summary.items():
        for budget, curve in by_budget.items():
            ns = sorted(curve, key=int)
            peak = max(ns, key=lambda n: curve[n]["gold"])
            last = ns[-1]
            row = {"peak_n": int(peak), "peak_gold": curve[peak]["gold"], "n_max": int(last),
                   "gold_at_n_max": curve[last]["gold"], "gold_lost": curve[peak]["gold"] - curve[last]["gold"],
                   "gold_at_1": curve[ns[0]]["gold"], "proxy_at_n_max": curve[last]["proxy"]}
            if picks is not None:
                mine = {int(n): v for n, v in picks[t][budget].items()}
                row["gold_lost_se"] = mean_se(mine[int(peak)] - mine[int(last)])[1]
                if t != "single" and "single" in picks:
                    single = {int(n): v for n, v in picks["single"][budget].items()}
                    diff = mine[int(last)] - single[int(last)]
                    row["minus_single_at_n_max"] = float(diff.mean())
                    row["minus_single_at_n_max_se"] = mean_se(diff)[1]
            out.setdefault(t, {})[str(budget)] = row
    return out


def format_table(summary: dict) -> str:
    """Gold reward of the best-of-N pick, one row per (reward type, budget), one column per N."""
    first = next(iter(next(iter(summary.values())).values()))
    ns = sorted(first, key=int)
    head = f"{'reward':<8} {'budget':>6} " + " ".join(f"{'N=' + str(n):>7}" for n in ns)
    lines = ["gold reward of the best-of-N pick", head, "-" * len(head)]
    for t, by_budget in summary.items():
        for budget, curve in by_budget.items():
            lines.append(f"{t:<8} {budget!s:>6} " + " ".join(f"{curve[n]['gold']:>7.3f}" for n in ns))
    return "\n".join(lines)


def plot_curves(summary: dict, path: Path) -> None:
    """Gold (top row) and proxy (bottom row) against best-of-N KL, one column per budget."""
    budgets = list(next(iter(summary.values())))
    fig, axes = report.plt.subplots(2, len(budgets), figsize=(4.6 * len(budgets), 7.0), squeeze=False)
    for j, budget in enumerate(budgets):
        for i, t in enumerate(summary):
            curve = summary[t][budget]
            ns = sorted(curve, key=int)
            kl = [best_of_n_kl(int(n)) for n in ns]
            axes[0, j].plot(kl, [curve[n]["gold"] for n in ns], "o-", color=f"C{i}", label=t, ms=3)
            axes[1, j].plot(kl, [curve[n]["proxy"] for n in ns], "o--", color=f"C{i}", label=t, ms=3)
        axes[0, j].set_title(f"{budget} comparisons: gold")
        axes[1, j].set_title(f"{budget} comparisons: proxy")
        axes[1, j].set_xlabel("KL of best-of-N = log N - (N-1)/N (nats)")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("gold reward of the pick")
    axes[1, 0].set_ylabel("proxy score of the pick")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    report.save_figure(fig, path)


def _pm(a: dict, key: str) -> str:
    se = a.get(key + "_se")
    return f"{a[key]:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def headline(analysis: dict) -> list[str]:
    """Sentences stating the single RM's peak and fall and what each ensemble loses at N = n_max
    (± paired standard errors over prompts, where the analysis has them)."""
    lines = []
    for budget, a in analysis.get("single", {}).items():
        s = (f"Budget {budget}: the single RM's gold peaks at N={a['peak_n']} ({a['peak_gold']:.3f}) and is "
             f"{a['gold_at_n_max']:.3f} at N={a['n_max']} (lost {_pm(a, 'gold_lost')}; N=1 gives {a['gold_at_1']:.3f})")
        others = []
        for t in ("mean", "wco", "uwo"):
            if t in analysis:
                o = analysis[t][budget]
                text = f"{t.upper()} loses {o['gold_lost']:.3f} (gold {o['gold_at_n_max']:.3f}"
                if "minus_single_at_n_max" in o:
                    text += f", {_pm(o, 'minus_single_at_n_max')} above the single RM"
                others.append(text + ")")
        lines.append(s + ("; at N=" + str(a["n_max"]) + " " + ", ".join(others) if others else "") + ".")
    return lines
