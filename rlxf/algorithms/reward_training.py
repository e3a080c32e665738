"""Training outcome reward models through the shared loop: comparisons (Bradley-Terry and its
margin / label-smoothed / soft-label variants), rankings (Plackett-Luce) and ratings (regression)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Callable, Sequence

import numpy as np
import torch

from rlxf.algorithms.batching import epoch_batches, step_rng
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.rewards.losses import (
    check_comparison_labels,
    check_rankings,
    check_ratings,
    margin_bt_loss,
    plackett_luce_loss,
    rating_regression_loss,
    soft_bt_loss,
    step_bce_loss,
    step_regression_loss,
)
from rlxf.rewards.model import RewardModel

PAIR_LOSSES = ("bt", "smoothed", "margin")


def pair_loss_terms(r_a: torch.Tensor, r_b: torch.Tensor, p_first: torch.Tensor, loss: str, eps: float = 0.1,
                    margin: torch.Tensor | None = None) -> torch.Tensor:
    """One term per pair for ``loss`` ("bt", "smoothed" or "margin"), with p_first = P(a preferred)
    (1 or 0 for a hard label, 0.5 for a tie). The margin applies to whichever side was preferred."""
    if loss == "bt":
        return soft_bt_loss(r_a, r_b, p_first)
    if loss == "smoothed":
        return soft_bt_loss(r_a, r_b, p_first * (1 - eps) + (1 - p_first) * eps)
    return p_first * margin_bt_loss(r_a, r_b, margin) + (1 - p_first) * margin_bt_loss(r_b, r_a, margin)


def train_reward_model(run: Run, stage: str, rm: RewardModel, pairs: list[tuple[list[int], list[int], list[int]]],
                       cfg: OptimConfig, seed: int, quiet: bool = False, *, loss: str = "bt",
                       labels: Sequence[float] | None = None, eps: float = 0.1,
                       margins: Sequence[float] | None = None) -> None:
    """``pairs`` holds (prompt_ids, chosen_ids, rejected_ids), or (prompt_ids, a_ids, b_ids) with
    ``labels`` = P(a preferred) per pair (1, 0, 0.5 for a tie, NaN for skipped: dropped).

    ``loss``: "bt" (Bradley-Terry; soft labels when ``labels`` is given), "smoothed"
    (label-smoothed BT with ``eps``) or "margin" (BT with a per-pair ``margins``).
    """
    if loss not in PAIR_LOSSES:
        raise ValueError(f"reward loss must be one of {', '.join(PAIR_LOSSES)}, got {loss!r}")
    if loss == "margin" and (margins is None or len(margins) != len(pairs)):
        raise ValueError("the margin loss needs one margin per pair (margins=...)")
    rows = list(range(len(pairs)))
    target = None
    if labels is not None:
        if len(labels) != len(pairs):
            raise ValueError(f"{len(labels)} labels for {len(pairs)} pairs")
        target = check_comparison_labels(labels)
        rows = [i for i in rows if not math.isnan(target[i])]
    make_batch = epoch_batches(len(rows), cfg.batch_size, seed)

    def loss_fn(micro: list[int], batch: list[int]):
        idx = [rows[i] for i in micro]
        prompts = [pairs[i][0] for i in idx]
        scores = rm.forward(prompts + prompts, [pairs[i][1] for i in idx] + [pairs[i][2] for i in idx])
        r_a, r_b = scores[: len(idx)], scores[len(idx):]
        p = torch.ones_like(r_a) if target is None else torch.tensor(target[idx], dtype=r_a.dtype)
        m = None if margins is None else torch.tensor([float(margins[i]) for i in idx], dtype=r_a.dtype)
        terms = pair_loss_terms(r_a, r_b, p, loss, eps, m)
        right = torch.where(p == 0.5, torch.full_like(p, 0.5), ((r_a > r_b) == (p > 0.5)).to(p.dtype))
        total = terms.sum() / len(batch)
        return total, {"loss": total.item(), "accuracy": right.sum().item() / len(batch)}

    train(run, stage, rm.model, cfg, make_batch, loss_fn, quiet=quiet)


def out_of_fold_strength(run: Run, stage: str, new_rm: Callable[[], RewardModel],
                         pairs: list[tuple[list[int], list[int], list[int]]], members: int, cfg: OptimConfig,
                         seed: int, quiet: bool = False) -> torch.Tensor:
    """Preference strength r(chosen) - r(rejected) of every pair, ``[n]``, measured by reward models
    that never trained on it: ``members`` models, model m trained on every fold but fold m.

    Secrets of RLHF Part II measures strength with an ensemble trained on all the data; scoring
    held-out folds instead keeps a model from vouching for a wrong label it memorised. Each member's
    strengths are kept as the stage ``{stage}_{m}``'s result, so an interrupted run resumes by member.
    """
    if members < 2:
        raise ValueError(f"preference strength needs at least 2 members (folds), got {members}")
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
    order = step_rng(seed, 0, salt=24).permutation(len(pairs))
    strength = torch.zeros(len(pairs))
    for m in range(members):
        name, held = f"{stage}_{m}", np.sort(order[m::members])
        if run.is_done(name) and run.result(name).get("pairs_digest") != digest:
            run.reset_stage(name)  # the comparisons changed since this member ran
        if not run.is_done(name):
            rm, rest = new_rm(), set(held.tolist())
            train_reward_model(run, name, rm, [p for i, p in enumerate(pairs) if i not in rest], cfg, seed + 1 + m,
                               quiet)
            with torch.no_grad():
                prompts = [pairs[i][0] for i in held]
                diff = rm.score(prompts, [pairs[i][1] for i in held]) - rm.score(prompts, [pairs[i][2] for i in held])
            run.mark_done(name, {"pairs_digest": digest, "strength": diff.tolist()})
        strength[held] = torch.tensor(run.result(name)["strength"])
    return strength


def train_ranking_reward_model(run: Run, stage: str, rm: RewardModel,
                               rankings: list[tuple[list[int], list[list[int]], list[int]]],
                               cfg: OptimConfig, seed: int, quiet: bool = False) -> None:
    """Plackett-Luce on rankings (prompt_ids, [response_ids...], order best first by index)."""
    check_rankings([r[2] for r in rankings])
    make_batch = epoch_batches(len(rankings), cfg.batch_size, seed)

    def loss_fn(micro: list[int], batch: list[int]):
        k = max(len(rankings[i][2]) for i in micro)
        prompts, responses, mask = [], [], torch.zeros(len(micro), k)
        for row, i in enumerate(micro):
            p, resp, order = rankings[i]
            for j in range(k):
                o = order[min(j, len(order) - 1)]  # pad short rankings by repeating the last item (masked)
                prompts.append(p)
                responses.append(resp[o])
            mask[row, : len(order)] = 1
        scores = rm.forward(prompts, responses).reshape(len(micro), k)
        total = plackett_luce_loss(scores, mask).sum() / len(batch)
        top = (scores[:, 0] >= scores.masked_fill(mask <= 0, -math.inf).max(1).values).float()
        return total, {"loss": total.item(), "top1_accuracy": top.sum().item() / len(batch)}

    train(run, stage, rm.model, cfg, make_batch, loss_fn, quiet=quiet)


def train_rating_reward_model(run: Run, stage: str, rm: RewardModel,
                              ratings: list[tuple[list[int], list[int], float]], scale: tuple[float, float],
                              cfg: OptimConfig, seed: int, quiet: bool = False) -> None:
    """Regression on ratings (prompt_ids, response_ids, rating within ``scale``)."""
    check_ratings([r[2] for r in ratings], scale)
    make_batch = epoch_batches(len(ratings), cfg.batch_size, seed)
    values = np.array([float(r[2]) for r in ratings])

    def loss_fn(micro: list[int], batch: list[int]):
        scores = rm.forward([ratings[i][0] for i in micro], [ratings[i][1] for i in micro])
        total = rating_regression_loss(scores, torch.tensor(values[micro], dtype=scores.dtype), scale).sum() / len(batch)
        return total, {"loss": total.item()}

    train(run, stage, rm.model, cfg, make_batch, loss_fn, quiet=quiet)


def train_process_reward_model(run: Run, stage: str, prm, rows: list[tuple[list[int], list[int], list[int], list[float]]],
                               cfg: OptimConfig, seed: int, quiet: bool = False, loss: str = "bce") -> None:
    """Fit per-step scores of a :class:`~rlxf.rewards.process.ProcessRewardModel` to per-step targets.

    ``rows`` holds (prompt_ids, response_ids, step_ends, targets): one target per step end.
    ``loss="bce"``: targets are probabilities (PRM step labels, an outcome at the last step for an
    ORM, or PAV's prover success Q^mu); ``"mse"``: targets are values to regress.
    """
    if loss not in ("bce", "mse"):
        raise ValueError(f"process loss must be 'bce' or 'mse', got {loss!r}")
    for i, (_, _, ends, targets) in enumerate(rows):
        if len(ends) != len(targets) or not ends:
            raise ValueError(f"process rows: row {i} has {len(ends)} step ends but {len(targets)} targets")
    make_batch = epoch_batches(len(rows), cfg.batch_size, seed)

    def loss_fn(micro: list[int], batch: list[int]):
        sel = [rows[i] for i in micro]
        scores, mask = prm.step_forward([r[0] for r in sel], [r[1] for r in sel], [r[2] for r in sel])
        y = torch.zeros_like(scores)
        for j, r in enumerate(sel):
            y[j, : len(r[3])] = torch.tensor(r[3], dtype=y.dtype)
        terms = step_bce_loss(scores, y, mask) if loss == "bce" else step_regression_loss(scores, y, mask)
        n_steps = sum(len(rows[i][3]) for i in batch)
        total = terms.sum() / n_steps
        return total, {"loss": total.item()}

    train(run, stage, prm.model, cfg, make_batch, loss_fn, quiet=quiet)
