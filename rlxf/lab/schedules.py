"""Learning-rate schedules compared on the quickstart's SFT and reward-model stages.

For each seed: the quickstart pipeline runs its SFT stage with the linear schedule and its
comparisons stage. That linear run's logged gradient norms give the refined schedule
(:func:`~rlxf.algorithms.loop.refined_schedule`); SFT then runs again, from the same initial weights
and the same batches, with the cosine and the refined schedule. The reward-model stage is trained
three times on the same comparisons from the same (linear) SFT model: linear first, then cosine, then
refined from the linear run's norms. Every run has the stage's quickstart settings and steps.

Held-out losses: SFT, the mean NLL per response token on fresh test-split prompts; reward model, the
expected Bradley-Terry cross-entropy against the simulated labeler (its probability that the first
response wins, from gold) on pairs of SFT samples for test prompts.

    .venv/bin/python -m rlxf.lab.schedules --seeds 0 1 2 --out runs/schedules
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rlxf.algorithms.batching import step_rng
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.reward_training import train_reward_model
from rlxf.algorithms.sft import train_sft
from rlxf.core.config import load_config
from rlxf.core.runs import Run
from rlxf.labelers.simulated import bradley_terry_prob
from rlxf.lab.config import PipelineConfig
from rlxf.lab.pipeline import Pipeline
from rlxf.lab.stages import seed_stage
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

SCHEDULES = ("linear", "cosine", "refined")  # in the order they run: refined needs linear's norms


def scheduled(cfg: OptimConfig, schedule: str, first_run: Path) -> OptimConfig:
    """``cfg`` with ``schedule``; "refined" reads the norms of the same stage in ``first_run``."""
    return dataclasses.replace(cfg, schedule=schedule, refine_from=str(first_run) if schedule == "refined" else "")


def held_out_nll(policy: LanguagePolicy, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> float:
    """Mean negative log-likelihood per response token."""
    with torch.no_grad():
        steps = policy.score(prompt_ids, response_ids)
    return float(-(steps.logps * steps.mask).sum() / steps.mask.sum())


def expected_bt_loss(margin: torch.Tensor, p_first: np.ndarray) -> float:
    """Mean cross-entropy of sigma(margin) against P(first preferred) = ``p_first``."""
    p = torch.as_tensor(p_first, dtype=margin.dtype)
    return float(-(p * F.logsigmoid(margin) + (1 - p) * F.logsigmoid(-margin)).mean())


def compare_seed(seed: int, out: Path, overrides: list[str] = (), n_held_out: int = 1000,
                 quiet: bool = True) -> dict:
    """Held-out loss of each schedule on the SFT and reward-model stages for one seed:
    ``{"sft": {schedule: loss}, "reward_model": {...}, "lr": {stage: {schedule: [lr per step]}}}``."""
    cfg = load_config(PipelineConfig, "configs/quickstart.toml",
                      [f'run.dir="{out / f"seed{seed}" / "pipeline"}"', f"run.seed={seed}",
                       'sft.optim.schedule="linear"', *overrides])
    pipe = Pipeline(cfg, fresh=True, quiet=True, log=lambda _m: None)
    pipe.run_stages(until="comparisons")
    first = pipe.run.dir
    task, c = pipe.task, cfg
    test = task.corpus(n_held_out, seed=seed + 10**6, split="test")
    sft = pipe.policy("sft")
    test_prompts, test_responses = sft.encode([s.prompt for s in test]), sft.encode_responses([s.response for s in test])
    result: dict = {"sft": {"linear": held_out_nll(sft, test_prompts, test_responses)}, "reward_model": {},
                    "lr": {"sft": {}, "reward_model": {}}}
    corpus = task.corpus(c.sft.corpus_size, seed=seed)
    for schedule in ("cosine", "refined"):  # as the pipeline's stage_sft, with another schedule
        run = Run(out / f"seed{seed}" / f"sft_{schedule}", "", fresh=True)
        seed_stage(seed, "sft")
        tok = tiny_tokenizer(task.vocabulary())
        m = c.model
        policy = LanguagePolicy(tiny_causal_lm(tok, m.kind, m.n_layer, m.n_embd, m.n_head, m.max_positions, seed=seed), tok)
        train_sft(run, "sft", policy, policy.encode([s.prompt for s in corpus]),
                  policy.encode_responses([s.response for s in corpus]), scheduled(c.sft.optim, schedule, first),
                  seed, quiet)
        result["sft"][schedule] = held_out_nll(policy, test_prompts, test_responses)
        result["lr"]["sft"][schedule] = [r["lr"] for r in run.metrics("sft")]
    result["lr"]["sft"]["linear"] = [r["lr"] for r in pipe.run.metrics("sft")]

    # reward model: held-out pairs of SFT samples on test prompts, as the pipeline's stage draws them
    prompts = task.sample_prompts(c.reward_model.held_out_pairs, "test", step_rng(seed, 0, salt=22))
    ro = pipe._sample(sft, pipe._prompt_ids(sft, prompts), n=2, salt=2)
    gold = pipe._gold([p for p in prompts for _ in range(2)], pipe._texts(sft, ro.response_ids), ro.finished)
    p_first = bradley_terry_prob(gold[0::2], gold[1::2], c.comparisons.labeler_beta)
    pairs = pipe.comparisons(sft)[1]
    rm_dirs = {s: out / f"seed{seed}" / f"rm_{s}" for s in SCHEDULES}
    for schedule in SCHEDULES:
        run = Run(rm_dirs[schedule], "", fresh=True)
        seed_stage(seed, "reward_model")
        rm = pipe._new_reward_model()
        train_reward_model(run, "reward_model", rm, pairs, scheduled(c.reward_model.optim, schedule, rm_dirs["linear"]),
                           seed, quiet)
        with torch.no_grad():
            margin = rm.score(ro.prompt_ids[0::2], ro.response_ids[0::2]) - rm.score(ro.prompt_ids[1::2],
                                                                                     ro.response_ids[1::2])
        result["reward_model"][schedule] = expected_bt_loss(margin, p_first)
        result["lr"]["reward_model"][schedule] = [r["lr"] for r in run.metrics("reward_model")]
    return result


def summarise(results: list[dict]) -> dict:
    """Per stage: mean +- SE of each schedule's held-out loss, and refined's paired gain (refined
    minus the other, negative = refined lower) over seeds."""
    out = {}
    for stage in ("sft", "reward_model"):
        table = {s: mean_se([r[stage][s] for r in results]) for s in SCHEDULES}
        for other in ("linear", "cosine"):
            table[f"refined-{other}"] = paired_gain([r[stage]["refined"] for r in results],
                                                    [r[stage][other] for r in results])
        out[stage] = table
    return out


def plot_schedules(result: dict, path: Path) -> None:
    """The learning rate per step of each schedule, one panel per stage (one seed's runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, stage in zip(axes, ("sft", "reward_model")):
        for s in SCHEDULES:
            ax.plot(result["lr"][stage][s], label=s)
        ax.set(title=f"{stage} stage", xlabel="step", ylabel="learning rate")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/schedules", help="where the runs, results.json and schedules.png go")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a quickstart override such as sft.optim.steps=100 (repeatable)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results = [compare_seed(s, out, args.overrides, quiet=False) for s in args.seeds]
    summary = summarise(results)
    (out / "results.json").write_text(json.dumps({"seeds": args.seeds, "summary": summary,
                                                  "per_seed": [{k: r[k] for k in ("sft", "reward_model")}
                                                               for r in results]}, indent=1))
    plot_schedules(results[0], out / "schedules.png")
    for stage, table in summary.items():
        print(f"{stage}: " + "  ".join(f"{k} {m:.4f} +- {se:.4f}" for k, (m, se) in table.items()))
    print(f"plot: {out / 'schedules.png'}")


if __name__ == "__main__":
    main()
