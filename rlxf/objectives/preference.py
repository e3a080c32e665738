"""Direct preference objectives: losses on (chosen, rejected) pairs of per-step tensors.

Every loss here returns one value per pair (or per example for KTO), shape ``[batch]``;
the trainer averages over the global batch, so the result does not depend on
micro-batching or padding. Each variant is its own function; ``PAIR_LOSSES`` maps the
config name to it, and a config passes the variant's hyperparameters by keyword.

Shapes: ``chosen`` and ``rejected`` are :class:`Steps` with the same batch size; their
step axes may differ in length. Sums and means run over real (unmasked) steps only.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.core.steps import Steps
from rlxf.objectives.cpl import cpl_loss


# -- shared pieces ----------------------------------------------------------


def implicit_reward(steps: Steps, beta: float) -> Tensor:
    """DPO's implicit reward ``beta * log(pi(y|x) / pi_ref(y|x))``, ``[batch]`` (Rafailov et al. 2023)."""
    return beta * steps.seq_logratio()


def dpo_margin(chosen: Steps, rejected: Steps) -> Tensor:
    """h(x, y_w, y_l) = log pi/pi_ref on chosen minus the same on rejected, ``[batch]``."""
    return chosen.seq_logratio() - rejected.seq_logratio()


def nll_loss(steps: Steps) -> Tensor:
    """Token-averaged negative log-likelihood ``-(1/|y|) sum_t log pi(y_t)``, ``[batch]``.

    The supervised term shared by ORPO, TRL-style RPO and the language-feedback losses.
    """
    return -steps.mean()


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# -- DPO and label-noise variants ---------------------------------------------


def dpo_loss(chosen: Steps, rejected: Steps, beta: float = 0.1) -> Tensor:
    """DPO (sigmoid) loss ``-log sigma(beta * h)`` per pair, ``[batch]``.

    Rafailov et al., "Direct Preference Optimization", NeurIPS 2023, eq. 7.
    """
    return -F.logsigmoid(beta * dpo_margin(chosen, rejected))


def cdpo_loss(chosen: Steps, rejected: Steps, beta: float = 0.1, eps: float = 0.1) -> Tensor:
    """Conservative DPO / label smoothing: ``(1-eps)*(-log sigma(beta h)) + eps*(-log sigma(-beta h))``, ``[batch]``.

    Mitchell, "A note on DPO with noisy preferences & relationship to IPO", 2023. ``eps`` is
    the assumed label-flip rate; ``eps = 0`` is DPO.
    """
    z = beta * dpo_margin(chosen, rejected)
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def robust_dpo_loss(chosen: Steps, rejected: Steps, beta: float = 0.1, eps: float = 0.1) -> Tensor:
    """Robust DPO: ``[(1-eps)*(-log sigma(beta h)) - eps*(-log sigma(-beta h))] / (1 - 2 eps)``, ``[batch]``.

    Chowdhury et al., "Provably Robust DPO: Aligning Language Models with Noisy Feedback",
    ICML 2024 (arXiv 2403.00409). An unbiased estimate of the clean-label DPO loss when labels
    flip with probability ``eps`` in ``[0, 0.5)``; note the minus sign, unlike cDPO.
    """
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"robust_dpo_loss: eps is a label-flip rate in [0, 0.5), got {eps}")
    z = beta * dpo_margin(chosen, rejected)
    return (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


# -- IPO ------------------------------------------------------------------------


def ipo_loss(chosen: Steps, rejected: Steps, tau: float = 0.1) -> Tensor:
    """IPO, paper form: ``(h - 1/(2 tau))^2`` with summed log-ratios, ``[batch]``.

    Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", AISTATS 2024, eq. 17 (as in the original DPO repository).
    """
    return (dpo_margin(chosen, rejected) - 1.0 / (2.0 * tau)) ** 2


def ipo_mean_loss(chosen: Steps, rejected: Steps, tau: float = 0.1) -> Tensor:
    """IPO, TRL form: each log-ratio divided by its response length before the margin, ``[batch]``.

    ``(mean_t logratio(y_w) - mean_t logratio(y_l) - 1/(2 tau))^2``. Azar et al., AISTATS 2024;
    TRL reports this is how the paper's numbers were produced.
    """
    h = chosen.mean(chosen.logratio()) - rejected.mean(rejected.logratio())
    return (h - 1.0 / (2.0 * tau)) ** 2


# -- RPO --------------------------------------------------------------------------


def rpo_loss(chosen: Steps, rejected: Steps, beta: float = 0.1, eta: float = 0.005) -> Tensor:
    """RPO, paper form: ``DPO(beta) - eta * beta * log pi(y_w|x)`` with a summed log-prob, ``[batch]``.

    Liu et al., "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an
    Adversarial Regularizer", NeurIPS 2024. The chosen response plays the baseline y_base.
    """
    return dpo_loss(chosen, rejected, beta) - eta * beta * chosen.sum()


def rpo_mean_loss(chosen: Steps, rejected: Steps, beta: float = 0.1, alpha: float = 1.0) -> Tensor:
    """TRL ``rpo_alpha`` form: ``DPO(beta) + alpha * token-averaged NLL of y_w``, ``[batch]``.

    Pang et al., "Iterative Reasoning Preference Optimization", 2024. The NLL is averaged
    per example (TRL averages over all chosen tokens in a batch).
    """
    return dpo_loss(chosen, rejected, beta) + alpha * nll_loss(chosen)


def dpo_sft_loss(chosen: Steps, rejected: Steps, beta: float = 0.1, sft_weight: float = 1.0,
                 tokens_per_example: float | None = None) -> Tensor:
    """TRL's ``loss_type=["sigmoid", "sft"]``: DPO plus ``sft_weight`` times the chosen NLL, ``[batch]``.

    TRL averages the NLL over every chosen token of the batch (not per example), so each
    example's share is ``-sum_t log pi(y_w,t) / tokens_per_example`` with ``tokens_per_example``
    = chosen tokens / pairs in the global batch (this batch's when None; the trainer passes the
    global value so micro-batching does not change the result). With ``loss_weights=[1, eta]``
    this is how TRL runs RPO (Liu et al., NeurIPS 2024) and iterative RPO (Pang et al., 2024).
    """
    if tokens_per_example is None:
        tokens_per_example = float(chosen.lengths().mean().clamp(min=1))
    return dpo_loss(chosen, rejected, beta) - sft_weight * chosen.sum() / tokens_per_example


# -- f-DPO --------------------------------------------------------------------------
# Wang et al., "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
# Divergence Constraints", ICLR 2024: loss -log sigma(beta f'(u_w) - beta f'(u_l)) with
# u = pi(y|x)/pi_ref(y|x), evaluated from the summed log-ratio log u.


def _fdpo(chosen_f: Tensor, rejected_f: Tensor, beta: float) -> Tensor:
    return -F.logsigmoid(beta * (chosen_f - rejected_f))


def fdpo_reverse_kl_loss(chosen: Steps, rejected: Steps, beta: float = 0.1) -> Tensor:
    """f-DPO with reverse KL, ``f'(u) = log u`` (identical to DPO), ``[batch]``. Wang et al., ICLR 2024."""
    return _fdpo(chosen.seq_logratio(), rejected.seq_logratio(), beta)


def fdpo_forward_kl_loss(chosen: Steps, rejected: Steps, beta: float = 0.1) -> Tensor:
    """f-DPO with forward KL, ``f'(u) = -1/u``, ``[batch]``. Wang et al., ICLR 2024.

    ``1/u`` overflows when a response has become far less likely than under the reference.
    """
    return _fdpo(-torch.exp(-chosen.seq_logratio()), -torch.exp(-rejected.seq_logratio()), beta)


def fdpo_js_loss(chosen: Steps, rejected: Steps, beta: float = 0.1) -> Tensor:
    """f-DPO with Jensen-Shannon, ``f'(u) = log(2u/(1+u)) = log 2 + log sigma(log u)``, ``[batch]``.

    Wang et al., ICLR 2024; the constant log 2 cancels in the difference.
    """
    return _fdpo(F.logsigmoid(chosen.seq_logratio()), F.logsigmoid(rejected.seq_logratio()), beta)


def _alpha_fprime(log_u: Tensor, alpha: float) -> Tensor:
    return log_u if alpha == 0 else -torch.expm1(-alpha * log_u) / alpha


def fdpo_alpha_loss(chosen: Steps, rejected: Steps, beta: float = 0.1, alpha: float = 0.5) -> Tensor:
    """f-DPO with the alpha-divergence, ``f'(u) = (1 - u^(-alpha)) / alpha``, ``[batch]``.

    Wang et al., ICLR 2024 (and TRL's older code). ``alpha -> 0`` is reverse KL (DPO), ``alpha = 1``
    is forward KL (up to a constant that cancels); ``alpha`` in (0, 1) interpolates. TRL's current
    ``(u^(a-1) - 1)/(a-1)`` is a different parameterisation (a = 1 - alpha), not used here.
    """
    return _fdpo(_alpha_fprime(chosen.seq_logratio(), alpha), _alpha_fprime(rejected.seq_logratio(), alpha), beta)


# -- hinge losses -------------------------------------------------------------------


def slic_loss(chosen: Steps, rejected: Steps, delta: float = 1.0, lam: float = 0.1) -> Tensor:
    """SLiC-HF: ``max(0, delta - log pi(y_w|x) + log pi(y_l|x)) - lam * log pi(y_w|x)``, ``[batch]``.

    Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", 2023. No
    reference model; summed log-probs; the regulariser's target is the chosen response
    (``lam = 0`` drops it; 0.1 and ``delta = 1`` follow HALOs' slic config).
    """
    logp_w, logp_l = chosen.sum(), rejected.sum()
    return F.relu(delta - logp_w + logp_l) - lam * logp_w


def hinge_loss(chosen: Steps, rejected: Steps, beta: float = 0.1) -> Tensor:
    """TRL "hinge": ``max(0, 1 - beta * h)`` with the reference back in, ``[batch]``.

    Zhao et al. 2023 as used by Liu et al., "Statistical Rejection Sampling Improves Preference
    Optimization" (RSO), ICLR 2024; ``1/beta`` acts as the margin.
    """
    return F.relu(1.0 - beta * dpo_margin(chosen, rejected))


# -- reference-free, length-normalised -------------------------------------------------


def simpo_loss(chosen: Steps, rejected: Steps, beta: float = 2.0, gamma: float = 1.0) -> Tensor:
    """SimPO: ``-log sigma(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma)``, ``[batch]``.

    Meng, Xia, Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    NeurIPS 2024. No reference model; default gamma/beta = 0.5, the paper's starting point.
    """
    return -F.logsigmoid(beta * (chosen.mean() - rejected.mean()) - gamma)


def orpo_loss(chosen: Steps, rejected: Steps, lam: float = 0.1) -> Tensor:
    """ORPO: ``NLL(y_w) + lam * -log sigma(log odds(y_w) - log odds(y_l))``, ``[batch]``.

    Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
    EMNLP 2024. ``odds = P/(1-P)`` with ``P = exp(mean_t log pi(y_t))``; ``log(1-P)`` via log1mexp.
    The mean log-prob is clamped just below 0 so ``P = 1`` gives a finite (huge) log-odds.
    """

    return nll_loss(chosen) + lam * _odds_ratio_term(chosen, rejected)


def _odds_ratio_term(chosen: Steps, rejected: Steps) -> Tensor:
    """ORPO's ``-log sigma(log odds(y_w) - log odds(y_l))`` with length-normalised probabilities, ``[batch]``."""

    def log_odds(s: Steps) -> Tensor:
        logp = s.mean().clamp(max=-1e-7)
        return logp - _log1mexp(logp)

    return -F.logsigmoid(log_odds(chosen) - log_odds(rejected))


def orpo_trl_loss(chosen: Steps, rejected: Steps, lam: float = 0.1, nll_steps: Steps | None = None,
                  tokens_per_example: float | None = None) -> Tensor:
    """ORPO as TRL's ``ORPOTrainer`` computes it, ``[batch]``: the odds-ratio term as in
    :func:`orpo_loss`, but the NLL averaged over all tokens of the batch's chosen sequences.

    Hong, Lee, Thorne, EMNLP 2024. TRL's NLL covers the prompt as well as the response
    (every token after the first): pass those per-token log-probs as ``nll_steps``; without
    it the chosen response alone is used. ``tokens_per_example`` is as in :func:`dpo_sft_loss`.
    """
    nll = chosen if nll_steps is None else nll_steps
    if tokens_per_example is None:
        tokens_per_example = float(nll.lengths().mean().clamp(min=1))
    return lam * _odds_ratio_term(chosen, rejected) - nll.sum() / tokens_per_example


# -- KTO (unpaired) ------------------------------------------------------------------


def kto_reference_point(mismatched: Steps) -> Tensor:
    """KTO's reference point ``z0 = max(0, mean_i log pi(y_j|x_i)/pi_ref(y_j|x_i))``, a detached scalar.

    Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization", ICML 2024.
    ``mismatched`` holds responses scored under other examples' prompts (e.g. y shifted by one in
    the batch); compute it over the global batch, as it is a batch statistic.
    """
    return mismatched.seq_logratio().mean().clamp(min=0).detach()


def kto_loss(
    steps: Steps,
    desirable: Tensor,
    kl_ref_point: Tensor | float,
    beta: float = 0.1,
    lambda_d: float = 1.0,
    lambda_u: float = 1.0,
) -> Tensor:
    """KTO loss per example, ``[batch]``, with ``r = log pi(y|x)/pi_ref(y|x)`` and ``z0`` detached.

    ``lambda_d * (1 - sigma(beta (r - z0)))`` where ``desirable`` (bool ``[batch]``), else
    ``lambda_u * (1 - sigma(beta (z0 - r)))``. Ethayarajh et al., ICML 2024.
    """
    r = steps.seq_logratio()
    z0 = torch.as_tensor(kl_ref_point, dtype=r.dtype, device=r.device).detach()
    good = lambda_d * (1.0 - torch.sigmoid(beta * (r - z0)))
    bad = lambda_u * (1.0 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable.to(torch.bool), good, bad)


# -- From r to Q* ----------------------------------------------------------------------


def token_rewards(steps: Steps, beta: float) -> Tensor:
    """DPO's implicit per-token reward ``beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))``, ``[batch, steps]``.

    Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function",
    COLM 2024. Zero on padding; sums to :func:`implicit_reward`. It equals the true reward up to
    potential-based shaping, so it serves as dense credit assignment.
    """
    return beta * steps.logratio()


PairLoss = Callable[..., Tensor]

PAIR_LOSSES: dict[str, PairLoss] = {
    "dpo": dpo_loss,
    "cdpo": cdpo_loss,
    "robust_dpo": robust_dpo_loss,
    "ipo": ipo_loss,
    "ipo_mean": ipo_mean_loss,
    "rpo": rpo_loss,
    "rpo_mean": rpo_mean_loss,
    "fdpo_reverse_kl": fdpo_reverse_kl_loss,
    "fdpo_forward_kl": fdpo_forward_kl_loss,
    "fdpo_js": fdpo_js_loss,
    "fdpo_alpha": fdpo_alpha_loss,
    "slic": slic_loss,
    "hinge": hinge_loss,
    "simpo": simpo_loss,
    "orpo": orpo_loss,
    "cpl": cpl_loss,
}
"""Config name -> pair loss ``fn(chosen, rejected, **hyperparams) -> [batch]``."""

TRL_FORM_LOSSES: dict[str, PairLoss] = {
    "dpo_sft": dpo_sft_loss,
    "orpo_trl": orpo_trl_loss,
}
"""Pair losses whose supervised term is averaged over the batch's tokens, as TRL does. They take
``tokens_per_example`` (a global-batch statistic the trainer supplies). TRL's other losses match
functions in ``PAIR_LOSSES``: sigmoid -> ``dpo``, ipo -> ``ipo_mean``, robust -> ``robust_dpo``,
hinge -> ``hinge``, CPO simpo -> ``simpo``, CPO sigmoid with label smoothing -> ``cdpo`` form."""

ALL_PAIR_LOSSES: dict[str, PairLoss] = {**PAIR_LOSSES, **TRL_FORM_LOSSES}

KTO_ARGS = ("beta", "lambda_d", "lambda_u")
"""The hyperparameters KTO (:func:`kto_loss` through ``train_unpaired``) takes."""

DEFAULT_ARGS: dict[str, dict[str, float]] = {
    "dpo": {"beta": 0.1},
    "cdpo": {"beta": 0.1, "eps": 0.1},
    "robust_dpo": {"beta": 0.1, "eps": 0.1},
    "ipo": {"tau": 0.1},
    "ipo_mean": {"tau": 0.5},  # a per-token target margin of 1 nat (TRL's beta = 0.1 asks for 5)
    "rpo": {"beta": 0.1, "eta": 0.5},
    "dpo_sft": {"beta": 0.1, "sft_weight": 1.0},
    "fdpo_forward_kl": {"beta": 0.1},
    "fdpo_js": {"beta": 0.1},
    "fdpo_alpha": {"beta": 0.1, "alpha": 0.5},
    "slic": {"delta": 1.0, "lam": 0.1},
    "hinge": {"beta": 0.1},
    "simpo": {"beta": 2.0, "gamma": 1.0},
    "orpo": {"lam": 0.1},
    "cpl": {"alpha": 0.1, "lam": 0.5},
    "kto": {"beta": 0.1},
}
"""Default hyperparameters per objective (pair losses and ``kto``): the papers' defaults where they
suit a small model, else noted. Labs and ``rlxf train`` apply a run's own values over these."""
