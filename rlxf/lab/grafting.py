"""Grafting on the arithmetic task: how much of a fine-tuned skill a few grafted parameters keep.

The base is a tiny character-level GPT-2 pre-trained on a corpus of worked solutions with 1 to 4
operators whose answers are all written ``answer = N`` (the task's second source,
:meth:`ArithmeticTask.corpus`), so it does the arithmetic but the strict verifier rejects every
answer. A few-shot fine-tune (SFT on a few hundred strict ``answer: N`` solutions of 2-3 operators,
or DPO with the strict solution chosen over its ``answer = N`` twin) teaches the verifier's format.
Grafting then keeps a fraction ``s`` of the fine-tune's parameter changes (:mod:`rlxf.algorithms.grafting`).

Measured on held-out test-split problems, greedily decoded, for base, fine-tuned and each graft:
strict accuracy (the gain), the expected calibration error of the model's probability of its own
answer (the greedy response's probability at temperature 1, against strict correctness), and the
same on a held-out problem type (4 operators, which the fine-tune never saw).

``python -m rlxf.lab.grafting --help`` runs it and prints the table of ``docs/meta_rl.md``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from rlxf.algorithms import grafting as G
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import train_pairs
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.lab.rlvr import prover_on_rows
from rlxf.objectives.preference import dpo_loss
from rlxf.policies.language import LanguagePolicy
from rlxf.rewards.evaluation import expected_calibration_error
from rlxf.tasks.arithmetic import ALT_ANSWER, ArithmeticTask, check_answer, solve


@dataclass
class GraftLab:
    """The experiment's settings (defaults: the claim test's budget)."""

    seed: int = 0
    method: str = "sft"  # how the skill is fine-tuned: "sft" or "dpo"
    sparsities: tuple[float, ...] = (0.001, 0.005, 0.01)
    pretrain_rows: int = 4000
    pretrain: OptimConfig = field(default_factory=lambda: OptimConfig(steps=1000, batch_size=32, lr=3e-3,
                                                                      checkpoint_every=10**6))
    pretrain_mixed: float = 0.5  # share of pre-training solutions written ``answer = N``
    finetune_rows: int = 256
    finetune: OptimConfig = field(default_factory=lambda: OptimConfig(steps=60, batch_size=32, lr=1e-3,
                                                                      checkpoint_every=10**6))
    dpo_beta: float = 0.1
    dpo_lr: float = 1e-4  # DPO's learning rate in place of finetune.lr (seed 100: 3e-4 and 1e-3 collapse the policy)
    n_layer: int = 2
    n_embd: int = 64
    graft: G.GraftSettings = field(default_factory=lambda: G.GraftSettings(epochs=5, lr=1e7))
    mask_batches: int = 4  # batches of 64 fine-tuning rows per mask gradient
    n_select: int = 64  # train and validation problems each, for choosing the rounded mask
    n_test: int = 500
    held_out_op: str = "-"  # fine-tuning never sees a problem with this operator; held-out tests all have it
    max_new_tokens: int = 64

    def __post_init__(self):
        if self.method not in ("sft", "dpo"):
            raise ValueError(f"GraftLab.method must be 'sft' or 'dpo', got {self.method!r}")
        for s in self.sparsities:
            if not 0 < s <= 1:
                raise ValueError(f"GraftLab.sparsities: each must be in (0, 1], got {s}")


def data(cfg: GraftLab) -> dict[str, list]:
    """Every problem set of one seed, all from ``ArithmeticTask(seed)``'s splits, so no test problem is
    ever trained on: ``pretrain`` rows (a ``pretrain_mixed`` share ending ``answer = N``), ``finetune``
    rows (strict) and ``validation`` problems, both new train-split problems without ``held_out_op``,
    and ``test`` / ``held_out`` test-split problems without / with ``held_out_op``."""
    task = ArithmeticTask(seed=cfg.seed)
    pre = task.corpus(cfg.pretrain_rows, mixed_format=cfg.pretrain_mixed)
    seen = {r["prompt"] for r in pre}
    want = cfg.finetune_rows + cfg.n_select
    pool = [p for p in task.prompts(4 * want + len(seen), "train") if p not in seen and cfg.held_out_op not in p]
    if len(pool) < want:
        raise ValueError(f"grafting lab: only {len(pool)} new train problems without {cfg.held_out_op!r}; "
                         f"lower finetune_rows or n_select")
    tests = task.prompts(4 * cfg.n_test, "test")
    out = {"pretrain": pre, "finetune": [{"prompt": p, "completion": solve(p)} for p in pool[:cfg.finetune_rows]],
           "validation": pool[cfg.finetune_rows:want],
           "test": [p for p in tests if cfg.held_out_op not in p][:cfg.n_test],
           "held_out": [p for p in tests if cfg.held_out_op in p][:cfg.n_test]}
    trained = {r["prompt"] for r in out["pretrain"] + out["finetune"]} | set(out["validation"])
    leaked = [p for p in out["test"] + out["held_out"] if p in trained]
    if leaked or min(len(out["test"]), len(out["held_out"])) < cfg.n_test:  # cannot happen: one seed's splits
        raise RuntimeError(f"grafting lab: {len(leaked)} test problems were trained on, or too few test problems")
    return out


@torch.no_grad()
def answer_records(policy: LanguagePolicy, problems: list[str], max_new_tokens: int = 64) -> dict[str, np.ndarray]:
    """Greedy responses: per problem, ``correct`` (strict verifier), ``lenient`` (either answer format)
    and ``confidence``, the probability at temperature 1 of the greedy response (the model's
    probability of its answer by its own working)."""
    ro = policy.sample(policy.encode(problems), n=1, max_new_tokens=max_new_tokens, temperature=1e-4,
                       generator=torch.Generator(device=policy.device).manual_seed(0))
    texts = [policy.decode(r) for r in ro.response_ids]
    logp = (ro.steps.logps * ro.steps.mask).sum(-1)
    return {"correct": np.array([check_answer(p, t) for p, t in zip(problems, texts)], dtype=float),
            "lenient": np.array([check_answer(p, t, lenient=True) for p, t in zip(problems, texts)], dtype=float),
            "confidence": logp.exp().cpu().numpy().astype(float)}


def gain_fraction(base, ft, graft) -> tuple[float, float]:
    """``(mean(graft) - mean(base)) / (mean(ft) - mean(base))`` over the same items, and its standard
    error by the delta method: ``SE(mean(a - f b)) / mean(b)`` with ``a = graft - base``, ``b = ft - base``
    per item (the ratio's first-order error, paired over items)."""
    a = np.asarray(graft, float) - np.asarray(base, float)
    b = np.asarray(ft, float) - np.asarray(base, float)
    if b.mean() <= 0:
        raise ValueError(f"gain_fraction: the fine-tuned model gains nothing over the base ({b.mean():+.3f})")
    f = a.mean() / b.mean()
    return float(f), mean_se(a - f * b)[1] / float(b.mean())


def summarise(records: dict[str, np.ndarray]) -> dict[str, float]:
    acc, se = mean_se(records["correct"])
    return {"accuracy": acc, "accuracy_se": se, "lenient": float(records["lenient"].mean()),
            "ece": expected_calibration_error(records["confidence"], records["correct"]),
            "confidence": float(records["confidence"].mean())}


def pretrain_base(run: Run, cfg: GraftLab, rows: list[dict], quiet: bool) -> LanguagePolicy:
    return prover_on_rows(run, rows, cfg.pretrain, cfg.seed, cfg.n_layer, cfg.n_embd, quiet)


def fine_tune(run: Run, cfg: GraftLab, base: LanguagePolicy, rows: list[dict], quiet: bool) -> LanguagePolicy:
    """A copy of ``base`` fine-tuned on the strict-format ``rows``: SFT, or DPO with each strict solution
    chosen over the same solution ending ``answer = N``."""
    policy = base.copy()
    prompts = policy.encode([r["prompt"] for r in rows])
    chosen = policy.encode_responses([r["completion"] for r in rows])
    if cfg.method == "sft":
        train_sft(run, "finetune", policy, prompts, chosen, cfg.finetune, cfg.seed, quiet)
    else:
        rejected = policy.encode_responses([r["completion"].replace("answer: ", ALT_ANSWER) for r in rows])
        train_pairs(run, "finetune", policy, base.reference(), list(zip(prompts, chosen, rejected)), dpo_loss,
                    {"beta": cfg.dpo_beta}, replace(cfg.finetune, lr=cfg.dpo_lr), cfg.seed, quiet)
    policy.model.eval()
    return policy


def mask_objective(policy: LanguagePolicy, rows: list[dict], cfg: GraftLab):
    """The mask's loss: batch ``i``'s mean response NLL on the fine-tuning rows (batches of 64 in a
    seeded order, the strict SFT loss whichever method fine-tuned)."""
    order = np.random.default_rng(cfg.seed).permutation(len(rows))
    prompts = policy.encode([r["prompt"] for r in rows])
    responses = policy.encode_responses([r["completion"] for r in rows])

    def loss_fn(i: int) -> torch.Tensor:
        idx = [int(j) for j in np.resize(order, (cfg.mask_batches * 64,))[i * 64:(i + 1) * 64]]
        steps = policy.steps([prompts[j] for j in idx], [responses[j] for j in idx])
        return -steps.sum().sum() / sum(len(responses[j]) for j in idx)

    return loss_fn


def run_lab(cfg: GraftLab, run_dir: str | Path = "runs/grafting", quiet: bool = True,
            base: LanguagePolicy | None = None) -> dict:
    """Pre-train (unless ``base``, the same seed's pre-trained model, is given), fine-tune, graft at each
    sparsity; returns the summary (``per_item`` holds the per-problem records of ``test`` and
    ``held_out`` for paired statistics, ``base_policy`` the pre-trained model)."""
    sets = data(cfg)
    run = Run(run_dir, json.dumps(asdict(cfg), default=str), fresh=True)
    base = base if base is not None else pretrain_base(run, cfg, sets["pretrain"], quiet)
    ft = fine_tune(run, cfg, base, sets["finetune"], quiet)
    pre_p, ft_p = G.parameters_of(base.model), G.parameters_of(ft.model)
    work = ft.copy()
    select = [r["prompt"] for r in sets["finetune"][:cfg.n_select]] + sets["validation"]

    def score_fn(_model) -> float:
        return float(answer_records(work, select, cfg.max_new_tokens)["correct"].mean())

    models = {"base": base, "finetuned": ft}
    masks, history = {}, {}
    for s in cfg.sparsities:
        gs = G.GraftSettings(**{**asdict(cfg.graft), "sparsity": s})
        res = G.learn_mask(work.model, pre_p, ft_p, mask_objective(work, sets["finetune"], cfg), cfg.mask_batches,
                           score_fn, gs, quiet)
        name = f"graft {100 * s:g}%"
        models[name] = LanguagePolicy(G.grafted_copy(work.model, G.graft(pre_p, ft_p, res.mask)), work.tokenizer)
        masks[name], history[name] = res.mask, res.history
    per_item = {split: {name: answer_records(m, sets[split], cfg.max_new_tokens) for name, m in models.items()}
                for split in ("test", "held_out")}
    out = {"settings": asdict(cfg), "n_parameters": G.n_parameters(pre_p), "history": history,
           "mask_sizes": {k: G.mask_size(m) for k, m in masks.items()}, "per_item": per_item, "masks": masks,
           "base_policy": base}
    for split, recs in per_item.items():
        out[split] = {name: summarise(r) for name, r in recs.items()}
        for name in masks:
            f, se = gain_fraction(recs["base"]["correct"], recs["finetuned"]["correct"], recs[name]["correct"]) \
                if recs["finetuned"]["correct"].mean() > recs["base"]["correct"].mean() else (math.nan, math.nan)
            d, d_se = paired_gain(recs[name]["correct"], recs["finetuned"]["correct"])
            out[split][name].update(gain_kept=f, gain_kept_se=se, vs_finetuned=d, vs_finetuned_se=d_se)
    return out


def pooled(runs: list[dict], split: str, name: str) -> dict[str, float]:
    """``name``'s gain kept and difference from the fine-tuned model over every seed's problems together
    (paired per problem; a seed whose fine-tune gains nothing then adds noise, not an unbounded ratio)."""
    recs = {m: np.concatenate([r["per_item"][split][m]["correct"] for r in runs]) for m in ("base", "finetuned", name)}
    gain = recs["finetuned"].mean() - recs["base"].mean()
    f, se = gain_fraction(recs["base"], recs["finetuned"], recs[name]) if gain > 0 else (math.nan, math.nan)
    d, d_se = paired_gain(recs[name], recs["finetuned"])
    return {"gain_kept": f, "gain_kept_se": se, "vs_finetuned": d, "vs_finetuned_se": d_se, "n": len(recs[name])}


def table(out: dict) -> str:
    lines = [f"parameters: {out['n_parameters']}; mask sizes: {out['mask_sizes']}"]
    for split in ("test", "held_out"):
        lines.append(f"\n{split}: {'model':12} {'accuracy':>15} {'lenient':>8} {'ECE':>6} {'conf':>6} "
                     f"{'gain kept':>15} {'- finetuned':>16}")
        for name, r in out[split].items():
            kept = f"{r['gain_kept']:.3f} +- {r['gain_kept_se']:.3f}" if "gain_kept" in r else ""
            vs = f"{r['vs_finetuned']:+.3f} +- {r['vs_finetuned_se']:.3f}" if "vs_finetuned" in r else ""
            lines.append(f"{'':10}{name:12} {r['accuracy']:.3f} +- {r['accuracy_se']:.3f} {r['lenient']:8.3f} "
                         f"{r['ece']:6.3f} {r['confidence']:6.3f} {kept:>15} {vs:>16}")
    return "\n".join(lines)


def plot(results: list[dict], path: str | Path) -> None:
    """Left: the fine-tuned gain kept on test problems against the grafted fraction (all seeds' problems
    pooled, delta-method SE). Right: strict accuracy on test and held-out-type problems of the
    grafts, with the base and fine-tuned models as flat lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0]["mask_sizes"])
    xs = [100 * s for s in results[0]["settings"]["sparsities"]]

    def mean_err(split, name, key):
        ys = np.array([r[split][name][key] for r in results])
        err = ys.std(ddof=1) / math.sqrt(len(ys)) if len(ys) > 1 else results[0][split][name].get(f"{key}_se", 0.0)
        return ys.mean(), err

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    kept = [pooled(results, "test", n) for n in names]
    if all(np.isfinite(k["gain_kept"]) for k in kept):
        left.errorbar(xs, [k["gain_kept"] for k in kept], yerr=[k["gain_kept_se"] for k in kept], fmt="o-", capsize=3)
    else:
        left.text(0.5, 0.5, "no fine-tuned gain over the base", ha="center", transform=left.transAxes)
    left.axhline(0.8, color="grey", lw=0.8, ls=":", label="80%")
    left.axhline(1.0, color="black", lw=0.8, label="fine-tuned")
    left.set(xscale="log", xlabel="parameters grafted (%)", ylabel="fraction of the fine-tuned gain kept",
             title="test problems")
    left.legend()
    for split, color in (("test", "C0"), ("held_out", "C1")):
        acc = [mean_err(split, n, "accuracy") for n in names]
        right.errorbar(xs, [a[0] for a in acc], yerr=[a[1] for a in acc], fmt="o-", color=color, capsize=3,
                       label=f"graft, {split.replace('_', ' ')}")
        right.axhline(mean_err(split, "base", "accuracy")[0], color=color, ls=":", lw=1, label=f"base, {split}")
        right.axhline(mean_err(split, "finetuned", "accuracy")[0], color=color, ls="--", lw=1,
                      label=f"fine-tuned, {split}")
    right.set(xscale="log", xlabel="parameters grafted (%)", ylabel="strict accuracy (greedy)",
              title="test and held-out type")
    right.legend(fontsize=7)
    fig.suptitle(f"grafting after {results[0]['settings']['method'].upper()}, {len(results)} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", choices=("sft", "dpo"), nargs="+", default=["sft"],
                    help="fine-tuning methods, each from the same pre-trained base; two: their masks' Jaccard overlap")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.001, 0.005, 0.01])
    ap.add_argument("--epochs", type=int, default=5, help="mask-learning epochs (0: the highest-movement mask)")
    ap.add_argument("--run-dir", default="runs/grafting")
    ap.add_argument("--plot", default=None, help="write the gain-kept plot here (PNG)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        base = None
        for method in args.methods:
            cfg = GraftLab(seed=seed, method=method, sparsities=tuple(args.sparsities),
                           graft=G.GraftSettings(epochs=args.epochs, lr=1e7))
            out = run_lab(cfg, Path(args.run_dir) / f"{method}-seed{seed}", quiet=args.quiet, base=base)
            base = out["base_policy"]
            print(f"== seed {seed} ({method})\n{table(out)}", flush=True)
            results[method].append(out)
        if len(args.methods) == 2:
            a, b = (results[m][-1]["masks"] for m in args.methods)
            print("mask Jaccard overlap " + " ".join(f"{k}: {G.jaccard(a[k], b[k]):.3f}" for k in a), flush=True)
    keep = ("settings", "n_parameters", "mask_sizes", "history", "test", "held_out")
    summary = {m: {"per_seed": [{k: r[k] for k in keep} for r in runs], "pooled": {}} for m, runs in results.items()}
    for method, runs in results.items():
        print(f"== {method}, {len(runs)} seed(s): accuracy and ECE mean +- SE over seeds")
        for split in ("test", "held_out"):
            for name in ("base", "finetuned", *runs[0]["mask_sizes"]):
                acc = mean_se([r[split][name]["accuracy"] for r in runs])
                ece = mean_se([r[split][name]["ece"] for r in runs])
                line = f"{split:9} {name:12} accuracy {acc[0]:.3f} +- {acc[1]:.3f}  ECE {ece[0]:.3f} +- {ece[1]:.3f}"
                if name in runs[0]["mask_sizes"]:
                    p = pooled(runs, split, name)
                    summary[method]["pooled"][f"{split} {name}"] = p
                    line += (f"  pooled over {p['n']} problems: gain kept {p['gain_kept']:.3f}"
                             f" +- {p['gain_kept_se']:.3f},"
                             f" - finetuned {p['vs_finetuned']:+.3f} +- {p['vs_finetuned_se']:.3f}")
                print(line)
        if args.plot:
            path = Path(args.plot)
            path = path if len(results) == 1 else path.with_name(f"{path.stem}_{method}{path.suffix}")
            plot(runs, path)
            print(f"plot: {path}")
    if len(args.methods) == 2:
        summary["jaccard"] = [{k: G.jaccard(a["masks"][k], b["masks"][k]) for k in a["masks"]}
                              for a, b in zip(*results.values())]
    path = Path(args.run_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=1, default=float))
    print(f"summary: {path}")
    return results


if __name__ == "__main__":
    main()
