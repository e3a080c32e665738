"""Skill localisation by grafting: the few fine-tuned parameters that carry a skill, pasted onto the base.

A graft keeps the pre-trained weights everywhere except on a binary mask ``gamma``, where it takes the
fine-tuned ones: ``theta(gamma) = theta_pre + gamma * (theta_ft - theta_pre)``. The grafted values are
not retrained. The mask holds at most a fraction ``s`` of all parameters.

Finding the mask (each step a function below):

- :func:`highest_movement_mask`: the base mask ``gamma_base``, the ``s * P`` entries that moved most,
  ``|theta_ft - theta_pre|``.
- :func:`relaxed_mask`: the continuous mask ``gamma = gamma_base + (1 - 2 gamma_base) sigmoid(S - b)``
  with scores ``S ~ U[0, 1)`` and bias ``b = 10``, so ``gamma`` starts at ``gamma_base`` (to ~1e-4).
- :func:`mask_gradient`: ``dL/dgamma = mean over batches of dL/dtheta * (theta_ft - theta_pre)``,
  ``dL/dtheta`` taken at ``theta(gamma)`` (the graft is linear in ``gamma``).
- :func:`update_scores`: a plain gradient step on ``S`` through the chain rule,
  ``S <- S - lr (1 - 2 gamma_base) * g * sigmoid'(S - b)`` (no optimiser, no L1 term).
- :func:`round_mask`: the binary mask a relaxed one stands for, ``gamma >= 0.5``, cut to the
  budget's top entries by ``gamma`` if more pass.
- :func:`learn_mask`: epochs of the last three, keeping the rounded mask with the best score (the
  caller's, e.g. train + validation accuracy) among the base mask and each epoch's.

Masks and parameter sets are dicts ``name -> tensor`` over a model's ``named_parameters`` (tied
weights appear once).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

Params = dict[str, torch.Tensor]


def parameters_of(model: torch.nn.Module) -> Params:
    """A detached copy of every parameter, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def n_parameters(params: Params) -> int:
    return sum(t.numel() for t in params.values())


def budget(params: Params, sparsity: float) -> int:
    """How many entries a mask of fraction ``sparsity`` may hold: ``floor(sparsity * P)``, at least 1."""
    if not 0.0 < sparsity <= 1.0:
        raise ValueError(f"grafting: sparsity must be in (0, 1], got {sparsity}")
    return max(1, math.floor(sparsity * n_parameters(params)))


def _check_names(a: Params, b: Params, what: str) -> None:
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        diff = sorted(set(a) ^ set(b)) or [k for k in a if a[k].shape != b[k].shape]
        raise ValueError(f"grafting: {what} do not match the same model (first differences: {diff[:3]})")


def task_vector(pre: Params, ft: Params) -> Params:
    """``theta_ft - theta_pre``, by name."""
    _check_names(pre, ft, "pre-trained and fine-tuned parameters")
    return {k: ft[k] - pre[k] for k in pre}


def graft(pre: Params, ft: Params, mask: Params) -> Params:
    """``theta(gamma) = theta_pre + gamma * (theta_ft - theta_pre)`` (``mask`` may be continuous)."""
    _check_names(pre, mask, "parameters and mask")
    delta = task_vector(pre, ft)
    return {k: pre[k] + mask[k].to(pre[k].dtype) * delta[k] for k in pre}


@torch.no_grad()
def load_parameters(model: torch.nn.Module, params: Params) -> None:
    """Write ``params`` into ``model``'s parameters in place."""
    for name, p in model.named_parameters():
        p.copy_(params[name])


def top_k_mask(scores: Params, k: int) -> Params:
    """1 on the ``k`` largest entries of ``scores`` over all tensors together (ties broken by position), else 0."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    if not 0 <= k <= flat.numel():
        raise ValueError(f"grafting: cannot keep {k} of {flat.numel()} entries")
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat.float(), k, sorted=False).indices] = True
    out, at = {}, 0
    for name, s in scores.items():
        out[name] = keep[at:at + s.numel()].view(s.shape).float()
        at += s.numel()
    return out


def highest_movement_mask(pre: Params, ft: Params, sparsity: float) -> Params:
    """``gamma_base``: the ``budget(sparsity)`` entries with the largest ``|theta_ft - theta_pre|``."""
    delta = task_vector(pre, ft)
    return top_k_mask({k: v.abs() for k, v in delta.items()}, budget(pre, sparsity))


def initial_scores(base: Params, generator: torch.Generator | None = None) -> Params:
    """The relaxation's scores at the start, ``S ~ U[0, 1)``."""
    return {k: torch.rand(v.shape, generator=generator) for k, v in base.items()}


def relaxed_mask(base: Params, scores: Params, bias: float = 10.0) -> Params:
    """``gamma = gamma_base + (1 - 2 gamma_base) * sigmoid(S - b)``: in (0, 1), near ``gamma_base`` while ``S << b``."""
    return {k: base[k] + (1 - 2 * base[k]) * torch.sigmoid(scores[k] - bias) for k in base}


def mask_gradient(model: torch.nn.Module, pre: Params, ft: Params, mask: Params,
                  loss_fn: Callable[[int], torch.Tensor], n_batches: int) -> Params:
    """``g = (1 / n) sum_batches dL/dtheta * (theta_ft - theta_pre)``, with ``model`` holding
    ``theta(mask)``: the gradient of the mean batch loss with respect to the mask. ``loss_fn(i)``
    returns batch ``i``'s loss computed with ``model``; ``model``'s weights are left at the graft."""
    delta = task_vector(pre, ft)
    load_parameters(model, graft(pre, ft, mask))
    model.zero_grad(set_to_none=True)
    for i in range(n_batches):
        (loss_fn(i) / n_batches).backward()
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        grads[name] = g.detach() * delta[name]
    model.zero_grad(set_to_none=True)
    return grads


def update_scores(scores: Params, base: Params, grad: Params, lr: float, bias: float = 10.0) -> Params:
    """One manual step on the scores: ``S - lr (1 - 2 gamma_base) * g * sigmoid'(S - b)``,
    with ``sigmoid'(x) = sigmoid(x) (1 - sigmoid(x))``."""
    out = {}
    for k, s in scores.items():
        sig = torch.sigmoid(s - bias)
        out[k] = s - lr * (1 - 2 * base[k]) * grad[k] * sig * (1 - sig)
    return out


def round_mask(mask: Params, k: int) -> Params:
    """The binary mask: entries with ``gamma >= 0.5``, and of those at most ``k``, the largest ``gamma`` first."""
    passing = {name: torch.where(m >= 0.5, m, torch.full_like(m, -1.0)) for name, m in mask.items()}
    n_pass = int(sum((m >= 0.5).sum() for m in mask.values()))
    return top_k_mask(passing, min(k, n_pass))


def mask_size(mask: Params) -> int:
    return int(sum(m.sum() for m in mask.values()))


def jaccard(a: Params, b: Params) -> float:
    """``|a & b| / |a | b|`` of two binary masks (0 when both are empty)."""
    _check_names(a, b, "masks")
    inter = sum(int(((a[k] > 0) & (b[k] > 0)).sum()) for k in a)
    union = sum(int(((a[k] > 0) | (b[k] > 0)).sum()) for k in a)
    return inter / union if union else 0.0


@dataclass
class GraftSettings:
    """How :func:`learn_mask` searches (defaults as in the algorithm notes, except the learning rate,
    which depends on the loss's scale)."""

    sparsity: float = 0.01
    epochs: int = 10
    lr: float = 1e7
    bias: float = 10.0
    seed: int = 0


@dataclass
class GraftResult:
    mask: Params  # the kept binary mask
    score: float  # its score
    history: list[dict]  # per epoch (0 = the base mask): score, mask size, overlap with the base mask


def learn_mask(model: torch.nn.Module, pre: Params, ft: Params, loss_fn: Callable[[int], torch.Tensor],
               n_batches: int, score_fn: Callable[[torch.nn.Module], float], cfg: GraftSettings,
               quiet: bool = True) -> GraftResult:
    """Learn a graft mask of at most ``cfg.sparsity`` of the parameters, starting from the highest-movement
    mask. Each epoch: one manual gradient step on the scores from :func:`mask_gradient` over
    ``n_batches`` batches, then ``score_fn`` (higher is better) on the model with the rounded mask
    grafted. Returns the best rounded mask seen (the base mask included; the earliest on ties);
    ``model`` ends holding that graft. ``cfg.epochs = 0`` keeps the base mask."""
    k = budget(pre, cfg.sparsity)
    base = highest_movement_mask(pre, ft, cfg.sparsity)
    scores = initial_scores(base, torch.Generator().manual_seed(cfg.seed))

    def evaluate(binary: Params) -> float:
        load_parameters(model, graft(pre, ft, binary))
        return float(score_fn(model))

    best = GraftResult(base, evaluate(base), [])
    best.history.append({"epoch": 0, "score": best.score, "size": mask_size(base), "overlap_base": 1.0})
    for epoch in tqdm(range(1, cfg.epochs + 1), desc=f"graft s={cfg.sparsity:g}", disable=quiet, leave=False):
        grad = mask_gradient(model, pre, ft, relaxed_mask(base, scores, cfg.bias), loss_fn, n_batches)
        scores = update_scores(scores, base, grad, cfg.lr, cfg.bias)
        binary = round_mask(relaxed_mask(base, scores, cfg.bias), k)
        score = evaluate(binary)
        best.history.append({"epoch": epoch, "score": score, "size": mask_size(binary),
                             "overlap_base": jaccard(binary, base)})
        if score > best.score:
            best.mask, best.score = binary, score
    load_parameters(model, graft(pre, ft, best.mask))
    return best


def grafted_copy(model: torch.nn.Module, params: Params) -> torch.nn.Module:
    """A deep copy of ``model`` holding ``params``."""
    out = copy.deepcopy(model)
    load_parameters(out, params)
    return out
