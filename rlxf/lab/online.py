"""The online over-optimisation lab: gold and proxy reward against KL for online RL methods.

Reuses the pipeline's SFT, comparison and reward-model stages, trains extra reward models for
an ensemble when a run asks for one, then trains each configured run (a method on a reward:
the single reward model, an ensemble aggregated by mean / WCO / UWO, or preferences from a
labeler for SPO) from the SFT policy with the online controller, and evaluates every policy on
held-out prompts. Writes ``summary.json`` shaped ``{run: {"gold", "proxy", "kl",
"win_rate_vs_sft", "labeler_win_rate_vs_sft"}}`` (win rates by gold, and under the
intransitive labeler, and each run's training gold and proxy at its peak-gold window and its
last window) beside ``report.html`` and an ``online_curves.png`` of gold and proxy against KL and
against the training step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlxf.algorithms.evaluate import mean_se, paired_gain, sampled_kl
from rlxf.algorithms.online.controller import METHODS, OnlineConfig, build_method, train_online
from rlxf.algorithms.online.ppo import Critic
from rlxf.algorithms.reward_training import train_reward_model
from rlxf.core.config import ConfigError, apply_table
from rlxf.core.runs import atomic_write_text
from rlxf.executors import make_executor
from rlxf.lab import report
from rlxf.lab.config import PipelineConfig, online_config
from rlxf.lab.pipeline import Pipeline, PipelineError
from rlxf.labelers.simulated import IntransitiveLabeler
from rlxf.rewards.model import RewardModel
from rlxf.rewards.scoring import Samples, Scorer, ensemble_reward, model_reward, text_reward

REWARDS = ("rm", "ensemble_mean", "ensemble_wco", "ensemble_uwo", "preferences", "rm_intransitive")


@dataclass(frozen=True)
class LabRun:
    """One curve of the lab: ``method`` trained on ``reward``, written ``"name:method:reward"``."""

    name: str
    method: str
    reward: str


def parse_run(text: str) -> LabRun:
    parts = [p.strip() for p in text.split(":")]
    if len(parts) != 3 or not all(parts):
        raise PipelineError(f"online.runs: {text!r} should read 'name:method:reward', e.g. 'ppo_wco:ppo:ensemble_wco'")
    return LabRun(*parts)


@dataclass
class OnlineLabSection(OnlineConfig):
    """Every run's :class:`OnlineConfig` starts from these fields (``optim.steps``; ``optim.batch_size``,
    the prompts per rollout; ``optim.lr``; ``samples_per_prompt``; ``kl.coef``, ...), with sampling from
    ``[generation]``; the run's method comes from ``runs`` and its own changes from ``overrides``
    (run name -> a table of OnlineConfig keys). ``updates_per_rollout`` applies to PPO runs; the
    other methods take one update per rollout unless their override sets it."""

    updates_per_rollout: int = 2  # PPO-style reuse of each rollout
    ensemble_size: int = 3
    uwo_lambda: float = 0.5
    labeler_weights: list[float] = field(default_factory=lambda: [0.6, 0.4])  # gold, brevity (intransitive mix)
    runs: list[str] = field(default_factory=lambda: ["ppo:ppo:rm", "ppo_wco:ppo:ensemble_wco",
                                                     "ppo_uwo:ppo:ensemble_uwo", "grpo:grpo:rm",
                                                     "online_dpo:online_dpo:rm", "spo:spo:preferences"])
    overrides: dict[str, dict] = field(default_factory=dict)  # e.g. {online_dpo = {optim = {lr = 1e-4}}}

    def parsed_runs(self) -> list[LabRun]:
        return [parse_run(r) for r in self.runs]


@dataclass
class OnlineLabConfig(PipelineConfig):
    lab: str = "online"
    online: OnlineLabSection = field(default_factory=OnlineLabSection)


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def gold_at_kl(curve: list[dict], kl: float, width: float = 0.25) -> float | None:
    """Mean training-batch gold of a run's steps whose KL is within ``width`` (relative) of ``kl``:
    where a baseline stood at the KL another run ended at. None when no step came that close."""
    near = [m["gold_reward"] for m in curve if abs(m["kl"] - kl) <= width * max(abs(kl), 1e-3)]
    return float(np.mean(near)) if near else None


CURVE_WINDOW = 20  # training steps per window when finding where gold peaked and where it ended


def turn_down(curve: list[dict], window: int = CURVE_WINDOW) -> dict:
    """Where a run's training gold peaked and where it ended: means over consecutive ``window``-step
    windows of the batch gold and of the single reward model's score (the proxy); one window when
    the run is shorter than ``window``."""
    window = max(1, min(window, len(curve)))
    gold = np.array([m["gold_reward"] for m in curve])
    proxy = np.array([m.get("rm_reward", m["proxy_reward"]) for m in curve])
    starts = range(0, len(curve) - window + 1, window)
    g = [gold[s: s + window].mean() for s in starts]
    p = [proxy[s: s + window].mean() for s in starts]
    peak = int(np.argmax(g))
    return {"train_peak_step": peak * window, "train_peak_gold": float(g[peak]), "train_peak_proxy": float(p[peak]),
            "train_end_gold": float(g[-1]), "train_end_proxy": float(p[-1])}


def seed_comparison(summaries: list[dict], baseline: str = "ppo") -> dict:
    """Paired over seeds (one lab summary per seed), each as ``(mean, standard error)``: the
    baseline's training gold drop from its peak window to its last one and its proxy rise over the
    same windows, and every run's final held-out gold and its gain over the baseline."""
    def over(f):
        return mean_se([f(s) for s in summaries])

    base = lambda s: s[baseline]  # noqa: E731
    return {"gold_drop": over(lambda s: base(s)["train_peak_gold"] - base(s)["train_end_gold"]),
            "proxy_rise": over(lambda s: base(s)["train_end_proxy"] - base(s)["train_peak_proxy"]),
            "gold": {n: over(lambda s, n=n: s[n]["gold"]) for n in summaries[0]},
            "kl": {n: over(lambda s, n=n: s[n]["kl"]) for n in summaries[0]},
            "gain_vs_baseline": {n: over(lambda s, n=n: s[n]["gold"] - s[baseline]["gold"])
                                 for n in summaries[0] if n not in ("sft", baseline)}}


def compare_runs(run_dirs: list[str], baseline: str = "ppo") -> str:
    """The :func:`seed_comparison` of finished lab runs (one per seed) as a text table."""
    c = seed_comparison([json.loads((Path(d) / "summary.json").read_text()) for d in run_dirs], baseline)
    pm = lambda x: f"{x[0]:+.3f} ± {x[1]:.3f}"  # noqa: E731
    lines = [f"{len(run_dirs)} seeds; {baseline}: training gold falls {pm(c['gold_drop'])} from its peak window "
             f"to its last while its proxy rises {pm(c['proxy_rise'])}",
             f"{'run':<14} {'final gold':>16} {'KL':>16} {'gold - ' + baseline:>18}"]
    for n, (g, se) in c["gold"].items():
        gain = pm(c["gain_vs_baseline"][n]) if n in c["gain_vs_baseline"] else "-"
        lines.append(f"{n:<14} {g:>8.3f} ± {se:.3f} {c['kl'][n][0]:>8.2f} ± {c['kl'][n][1]:.2f} {gain:>18}")
    return "\n".join(lines)


class OnlineLab(Pipeline):
    """The pipeline's first three stages, then one online stage per run and an evaluation."""

    Config = OnlineLabConfig

    def validate(self) -> None:
        super().validate()
        o = self.cfg.online
        runs = o.parsed_runs()
        names = [r.name for r in runs]
        if len(set(names)) != len(names):
            raise PipelineError(f"online.runs: run names must be unique, got {names}")
        unknown = sorted(set(o.overrides) - set(names))
        if unknown:
            raise PipelineError(f"online.overrides: no run named {', '.join(unknown)} (runs: {', '.join(names)})")
        if o.method != OnlineConfig.method:
            raise PipelineError("online.method: each run names its method in online.runs ('name:method:reward')")
        for r in runs:
            if r.method not in METHODS:
                raise PipelineError(f"online.runs[{r.name}].method: unknown method {r.method!r}; "
                                    f"known: {', '.join(sorted(METHODS))}")
            if r.reward not in REWARDS:
                raise PipelineError(f"online.runs[{r.name}].reward must be one of {', '.join(REWARDS)}, "
                                    f"got {r.reward!r}")
        self.validate_online("online", o, {f"online.runs[{r.name}]": self.run_config(r) for r in runs})
        if any(r.reward.startswith("ensemble") for r in runs) and o.ensemble_size < 2:
            raise PipelineError("online.ensemble_size must be >= 2 when a run uses an ensemble reward")

    def stages(self):
        out = [("sft", self.stage_sft), ("comparisons", self.stage_comparisons),
               ("reward_model", self.stage_reward_model)]
        if any(r.reward.startswith("ensemble") for r in self.cfg.online.parsed_runs()):
            out.append(("reward_ensemble", self.stage_reward_ensemble))
        if any(r.reward == "rm_intransitive" for r in self.cfg.online.parsed_runs()):
            out.append(("reward_model_intransitive", self.stage_reward_model_intransitive))
        out += [(f"online_{r.name}", lambda r=r: self.stage_online(r)) for r in self.cfg.online.parsed_runs()]
        return out + [("evaluate", self.stage_evaluate)]

    # -- rewards ---------------------------------------------------------------------------
    def stage_reward_ensemble(self) -> dict:
        """Extra reward models on the same comparisons, differing only by seed (Coste et al. 2024)."""
        sft = self.policy("sft")
        for i in range(1, self.cfg.online.ensemble_size):
            rm = RewardModel.from_pretrained(self._model_dir("sft"))
            torch.manual_seed(self.seed + i)
            rm.model.score.reset_parameters()
            train_reward_model(self.run, f"reward_model_{i}", rm, self._pairs(sft), self.cfg.reward_model.optim,
                               self.seed + i, self.quiet)
            rm.save_pretrained(self._model_dir(f"reward_model_{i}"))
        return {"members": self.cfg.online.ensemble_size}

    def stage_reward_model_intransitive(self) -> dict:
        """A reward model fit to the intransitive labeler's answers on the same pairs: what RM-based
        PPO learns from the labels SPO plays on."""
        records, pairs = self.comparisons(self.policy("sft"))  # aligned: the usable comparisons only
        crit = lambda side: self._text_criteria([(r.prompt, getattr(r, side)) for r in records])  # noqa: E731
        labeler = IntransitiveLabeler(self.cfg.online.labeler_weights, beta=self.cfg.comparisons.labeler_beta,
                                      seed=self.seed + 17)
        first = labeler.prefers_first(crit("chosen"), crit("rejected"))
        pairs = [(p, c, r) if keep else (p, r, c) for (p, c, r), keep in zip(pairs, first)]
        rm = RewardModel.from_pretrained(self._model_dir("sft"))
        train_reward_model(self.run, "reward_model_intransitive", rm, pairs, self.cfg.reward_model.optim,
                           self.seed, self.quiet)
        rm.save_pretrained(self._model_dir("reward_model_intransitive"))
        return {"n_pairs": len(pairs), "agreement_with_comparison_labels": float(np.mean(first))}

    def _ensemble(self) -> list[RewardModel]:
        extra = [RewardModel.from_pretrained(self._model_dir(f"reward_model_{i}"))
                 for i in range(1, self.cfg.online.ensemble_size)]
        return [self.reward_model()] + extra

    def _criteria(self, policy, s: Samples) -> np.ndarray:
        """Per-response scores under the labeler's criteria: gold, and brevity (-words/2)."""
        texts = [(policy.decode(p), policy.decode(r), f) for p, r, f in zip(s.prompt_ids, s.response_ids, s.finished)]
        return self._text_criteria(texts)

    def _text_criteria(self, texts) -> np.ndarray:
        """Criteria of (prompt, response[, finished]) texts: ``[n, 2]``."""
        rows = [(t[0], t[1], t[2] if len(t) > 2 else True) for t in texts]
        return self._criteria_from(np.array([self.task.gold(p, r, f) for p, r, f in rows]), [r for _, r, _ in rows])

    @staticmethod
    def _criteria_from(gold: np.ndarray, responses: list[str]) -> np.ndarray:
        """``[n, 2]``: the gold already computed, and brevity (-words/2)."""
        return np.column_stack([gold, [-len(r.split()) / 2 for r in responses]]).reshape(-1, 2)

    def _preference(self, policy):
        """P(i beats j) under an intransitive mixture labeler over the criteria."""
        labeler = IntransitiveLabeler(self.cfg.online.labeler_weights, beta=self.cfg.comparisons.labeler_beta)

        def pref(s: Samples, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            c = self._criteria(policy, s)
            return torch.as_tensor(labeler.prob_first(c[i.numpy()], c[j.numpy()]), dtype=torch.float32)

        return pref

    def _gold_fn(self, policy):
        return text_reward(policy.decode, lambda p, r, f: self.task.gold(p, r, f))

    # -- online runs -----------------------------------------------------------------------
    def run_config(self, r: LabRun) -> OnlineConfig:
        """Run ``r``'s config: the [online] section's OnlineConfig fields, sampling from [generation],
        its method, then its table in ``online.overrides``."""
        o = self.cfg.online
        cfg = online_config(o, self.cfg.generation, method=r.method,
                            updates_per_rollout=o.updates_per_rollout if r.method == "ppo" else 1)
        try:
            return apply_table(cfg, o.overrides.get(r.name, {}), f"online.overrides.{r.name}")
        except ConfigError as e:
            raise PipelineError(str(e)) from None

    def stage_online(self, r: LabRun) -> dict:
        o = self.cfg.online
        policy = self.policy("sft")
        rm = self.reward_model()
        rewards = {"rm": (model_reward(rm), 1.0)}
        critic_from = rm
        if r.reward == "rm_intransitive":  # everything it learns comes from the intransitive labels
            critic_from = RewardModel.from_pretrained(self._model_dir("reward_model_intransitive"))
            rewards = {r.reward: (model_reward(critic_from), 1.0)}
        elif r.reward.startswith("ensemble"):
            members = [model_reward(m) for m in self._ensemble()]
            rewards = {r.reward: (ensemble_reward(members, r.reward.split("_")[1], o.uwo_lambda), 1.0)}
        elif r.reward == "preferences":
            rewards = {}
        objects = {"critic": Critic.from_reward_model(critic_from), "preference": self._preference(policy)}
        cfg = self.run_config(r)
        monitors = {"gold": self._gold_fn(policy)}
        if r.reward != "rm":
            monitors["rm"] = model_reward(rm)
        executor = make_executor(self.run.scale)
        try:
            prompts = policy.encode(self.task.prompts("train"))
            train_online(self.run, f"online_{r.name}", policy, policy.reference(), prompts, Scorer(rewards, monitors),
                         cfg, self.seed, method=build_method(cfg, **objects), executor=executor, quiet=self.quiet)
        finally:
            executor.close()
        policy.save_pretrained(self._model_dir(f"online_{r.name}"))
        last = self.run.metrics(f"online_{r.name}")[-1]
        return {"final_gold_reward": last["gold_reward"], "final_kl": last["kl"]}

    # -- evaluation ------------------------------------------------------------------------
    def stage_evaluate(self) -> dict:
        prompts = self.task.prompts("test")[: self.cfg.eval.n_prompts]
        sft, rm = self.policy("sft"), self.reward_model()
        ids = sft.encode(prompts)
        rows = {}
        for name in ["sft"] + [r.name for r in self.cfg.online.parsed_runs()]:
            policy = sft if name == "sft" else self.policy(f"online_{name}")
            ro = self._sample(policy, ids, n=1, salt=300)
            texts = self._texts(policy, ro.response_ids)
            gold = self._gold(prompts, texts, ro.finished)
            kl = sampled_kl(ro.steps, sft.score(ro.prompt_ids, ro.response_ids)).numpy()
            proxy = rm.score(ro.prompt_ids, ro.response_ids).numpy()
            rows[name] = {"gold": gold, "proxy": proxy, "kl": float(kl.mean()),
                          "criteria": self._criteria_from(gold, texts)}
        summary, table = {}, {}
        base = rows["sft"]["gold"]
        labeler = IntransitiveLabeler(self.cfg.online.labeler_weights, beta=self.cfg.comparisons.labeler_beta)
        for name, r in rows.items():
            win = float(np.mean((r["gold"] > base) + 0.5 * (r["gold"] == base)))
            # P(this policy's answer beats SFT's) under the intransitive labeler SPO plays on
            lab_win = float(labeler.prob_first(r["criteria"], rows["sft"]["criteria"]).mean())
            summary[name] = {"gold": float(r["gold"].mean()), "proxy": float(r["proxy"].mean()), "kl": r["kl"],
                             "win_rate_vs_sft": win, "labeler_win_rate_vs_sft": lab_win}
            gm, gse = mean_se(r["gold"])
            gain, gain_se = paired_gain(r["gold"], base)
            table[name] = {"gold_mean": gm, "gold_se": gse, "proxy_mean": summary[name]["proxy"], "kl": r["kl"],
                           "kl_kind": "sampled", "gain_vs_sft": gain, "gain_se": gain_se}
        if "ppo" in summary:
            curve = self.run.metrics("online_ppo")
            for name, row in summary.items():
                if name not in ("sft", "ppo"):
                    row["ppo_gold_at_same_kl"] = gold_at_kl(curve, row["kl"])
        for r in self.cfg.online.parsed_runs():
            summary[r.name].update(turn_down(self.run.metrics(f"online_{r.name}")))
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        return {"summary": table, "online_summary": summary, "n_prompts": len(prompts)}

    @staticmethod
    def format_table(summary: dict) -> str:
        head = (f"{'run':<16} {'gold':>8} {'proxy':>8} {'KL':>8} {'win vs SFT':>11} "
                f"{'labeler win vs SFT':>19} {'PPO gold at this KL':>20}")
        lines = [head, "-" * len(head)]
        lines += [f"{n:<16} {r['gold']:>8.3f} {r['proxy']:>8.3f} {r['kl']:>8.3f} {r['win_rate_vs_sft']:>11.3f} "
                  f"{r.get('labeler_win_rate_vs_sft', float('nan')):>19.3f} "
                  f"{_num(r.get('ppo_gold_at_same_kl')):>20}" for n, r in summary.items()]
        return "\n".join(lines)

    def report_sections(self, summary: dict) -> list[str]:
        """The pipeline's sections, then gold and proxy against KL and against the step over training."""
        self._plot_curves()
        return [*super().report_sections(summary),
                report.heading("Online runs: reward against KL and against the training step"),
                report.image("online_curves.png", "online curves")]

    def _plot_curves(self) -> None:
        """Gold and proxy reward against KL and against the training step, one colour per run."""
        fig, axes = report.plt.subplots(2, 2, figsize=(12, 9))
        for i, r in enumerate(self.cfg.online.parsed_runs()):
            rows = self.run.metrics(f"online_{r.name}")
            kl = report.smooth([m["kl"] for m in rows])
            gold = report.smooth([m["gold_reward"] for m in rows])
            proxy = report.smooth([m.get("rm_reward", m["proxy_reward"]) for m in rows])
            for row, x in ((0, kl), (1, [m["step"] for m in rows])):  # by KL, then by step
                axes[row, 0].plot(x, gold, color=f"C{i}", label=r.name)
                axes[row, 1].plot(x, proxy, color=f"C{i}", label=r.name)
        for ax, title, x in zip(axes.flat, ("gold reward", "proxy (single reward model)") * 2,
                                ["KL from SFT (nats, sampled, moving average)"] * 2 + ["training step"] * 2):
            ax.set_xlabel(x)
            ax.set_title(f"{title} against {'KL' if x.startswith('KL') else 'step'} over training")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        report.save_figure(fig, self.run.dir / "online_curves.png")
