"""Policy-gradient objectives on per-step tensors: KL estimators, group baselines, PPO, GAE.

Everything here is a pure function of ``Steps`` (or of plain ``[batch, steps]`` tensors) and
returns unreduced per-example or per-step terms; the trainer picks the reduction (token mean,
sequence mean, Dr. GRPO's constant divisor) so that it is the same however a batch is split.
Formulas: ALGORITHMS.md section 0.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlxf.core.steps import Steps

# -- KL estimators --------------------------------------------------------------------------


def kl_k1(steps: Steps) -> Tensor:
    """k1 = -log rho with rho = pi_ref/pi, i.e. ``log pi - log pi_ref`` per step, ``[B, T]``.

    Unbiased for KL(pi || pi_ref) when actions are sampled from pi; high variance and can be
    negative. Schulman, "Approximating KL Divergence" (2020). Zero on padding.
    """
    return steps.logratio()


def kl_k2(steps: Steps) -> Tensor:
    """k2 = 0.5 (log rho)^2 per step, ``[B, T]``: biased, low variance, non-negative (Schulman 2020)."""
    return 0.5 * steps.logratio() ** 2


def kl_k3(steps: Steps) -> Tensor:
    """k3 = (rho - 1) - log rho per step, ``[B, T]``: unbiased and non-negative (Schulman 2020).

    The estimator GRPO uses for its KL loss term (Shao et al. 2024). Zero on padding.
    """
    log_rho = -steps.logratio()  # already 0 on padding, so exp(0) - 1 - 0 = 0 there
    return torch.expm1(log_rho) - log_rho


def occupancy_chi2(steps: Steps, sqrt: bool = False, trim: float = 0.01, max_log_ratio: float = 20.0) -> Tensor:
    """Per-step chi-squared occupancy penalty ``rho_t - 1``, ``[B, T]`` (Laidlaw et al., "Correlated
    Proxies", ICLR 2025: regularise the state-action occupancy measure, not the action distribution).

    For text every state (prompt + prefix) is reached by exactly one path, so the occupancy ratio
    of (s_t, a_t) under pi and pi_ref is the product of the token ratios so far: ``log rho_t =
    sum_{t' <= t} (log pi - log pi_ref)``, exact, where control needs a discriminator to estimate it.
    Averaged over pi's occupancy, ``rho_t - 1`` estimates chi^2(mu_pi || mu_ref). ``sqrt=True``
    divides by the square root of the batch's ``trim``-trimmed mean penalty (floored at 0.01), the
    gradient scale of penalising sqrt(chi^2) as the paper does. ``log rho_t`` is capped at
    ``max_log_ratio`` against overflow. Zero on padding.
    """
    log_rho = torch.cumsum(steps.logratio(), dim=-1).clamp(max=max_log_ratio)
    pen = steps.masked(torch.expm1(log_rho))
    if sqrt:
        real = pen[steps.mask > 0]
        if real.numel():
            lo, hi = torch.quantile(real.float(), torch.tensor([trim, 1 - trim], dtype=torch.float32))
            kept = real[(real >= lo) & (real <= hi)]
            pen = pen / kept.mean().clamp(min=0.01).sqrt()
    return pen


KL_ESTIMATORS: dict[str, Callable[[Steps], Tensor]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3,
    # not KL estimators: divergence penalties that use the same per-step seam (reward mode only)
    "chi2_occupancy": occupancy_chi2,
    "sqrt_chi2_occupancy": lambda steps: occupancy_chi2(steps, sqrt=True),
}
REWARD_ONLY = ("chi2_occupancy", "sqrt_chi2_occupancy")


def kl_estimate(steps: Steps, kind: str = "k3") -> Tensor:
    """Per-step estimate of KL(pi || pi_ref) by estimator ``kind`` (k1, k2 or k3), ``[B, T]``.

    Needs ``steps.ref_logps``; actions are assumed sampled from pi. Zero on padding.
    """
    try:
        fn = KL_ESTIMATORS[kind]
    except KeyError:
        raise ValueError(f"kl_estimate: unknown kind {kind!r}; expected one of {sorted(KL_ESTIMATORS)}") from None
    return fn(steps)


# -- advantages from groups of samples ------------------------------------------------------


def _check_group(rewards: Tensor, who: str) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"{who}: rewards must be [prompts, samples], got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(f"{who}: needs at least 2 samples per prompt for a baseline, got {rewards.shape[1]}")


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out advantages ``A_i = R_i - mean_{j != i} R_j``, ``[P, K] -> [P, K]``.

    Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
    Human Feedback in LLMs" (2024). ``K >= 2`` samples per prompt.
    """
    _check_group(rewards, "rloo_advantages")
    k = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def grpo_advantages(rewards: Tensor, scale: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages ``(R_i - mean R) / (std R + eps)``, ``[P, K] -> [P, K]``.

    Shao et al., "DeepSeekMath" (2024). ``std`` is the unbiased sample std over the group (as in
    TRL's GRPOTrainer). ``scale=False`` drops the std division: Dr. GRPO (Liu et al.,
    "Understanding R1-Zero-Like Training", 2025), which removes the bias toward groups whose
    rewards barely differ. ``K >= 2`` samples per prompt.
    """
    _check_group(rewards, "grpo_advantages")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def whiten(x: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to zero mean and unit std over the real entries of the whole batch.

    REINFORCE++ (Hu 2025) uses this global, batch-level normalisation of token advantages in
    place of a per-prompt baseline. Padded entries come back as 0. Same shape as ``x``.
    """
    if mask is None:
        mask = torch.ones_like(x)
    m = mask > 0
    vals = x[m]
    if vals.numel() < 2:
        raise ValueError(f"whiten: needs at least 2 real entries, got {vals.numel()}")
    out = (x - vals.mean()) / (vals.std() + eps)
    return torch.where(m, out, torch.zeros((), dtype=x.dtype, device=x.device))


# -- losses ---------------------------------------------------------------------------------


def reinforce_loss(steps: Steps, advantages: Tensor) -> Tensor:
    """Sequence-level REINFORCE ``-A * sum_t log pi(y_t)``, ``advantages [B] -> [B]``.

    The loss RLOO optimises (Ahmadian et al. 2024; Williams 1992). Advantages are treated as
    constants (detached); fold any KL penalty into the rewards before computing them.
    """
    if advantages.shape != (steps.batch_size,):
        raise ValueError(
            f"reinforce_loss: advantages must be [batch]={steps.batch_size}, got {tuple(advantages.shape)}"
        )
    return -advantages.detach() * steps.sum()


def ppo_clip_loss(steps: Steps, advantages: Tensor, clip: float = 0.2, clip_high: float | None = None) -> Tensor:
    """PPO clipped surrogate ``-min(rho A, clip(rho, 1-eps, 1+eps) A)`` per step, ``[B, T]``.

    Schulman et al., "Proximal Policy Optimization Algorithms" (2017), eq. 7, with
    ``rho = pi / pi_old`` from ``steps.logps`` and ``steps.old_logps``. ``advantages`` is per step
    ``[B, T]`` or per sequence ``[B]`` (broadcast over steps, as in GRPO) and is detached.
    ``clip_high`` (default: ``clip``) sets a separate upper bound 1+clip_high (DAPO's
    clip-higher). Unreduced; zero on padding.
    """
    if steps.old_logps is None:
        raise ValueError("ppo_clip_loss: Steps.old_logps is not set; record the behaviour log-probs at rollout")
    adv = advantages.detach()
    if adv.shape == (steps.batch_size,):
        adv = adv[:, None].expand_as(steps.logps)
    elif adv.shape != steps.logps.shape:
        raise ValueError(
            f"ppo_clip_loss: advantages must be [batch] or [batch, steps]={tuple(steps.logps.shape)}, "
            f"got {tuple(adv.shape)}"
        )
    adv = steps.masked(adv)  # padding may hold NaN; keep it out of the backward pass too
    high = clip if clip_high is None else clip_high
    ratio = torch.exp(steps.masked(steps.logps - steps.old_logps))
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + high) * adv)
    return steps.masked(-surrogate)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = None) -> Tensor:
    """Squared value error per step, ``[B, T]``, zero on padding; optionally PPO-clipped.

    With ``clip = eps_v``: ``max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)``
    (Schulman et al. 2017 as implemented in OpenAI baselines). No factor 1/2: scale it in the
    trainer's value coefficient. ``returns`` and ``old_values`` are detached.
    """
    real = mask > 0
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    # zero the padding first so NaN there cannot reach the gradient
    values = torch.where(real, values, zero)
    returns = torch.where(real, returns.detach(), zero)
    old_values = torch.where(real, old_values.detach(), zero)
    loss = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return torch.where(real, loss, zero)


# -- returns and advantages from per-step rewards ---------------------------------------------


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    bootstrap_value: Tensor | None = None,
    terminated: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation; returns ``(advantages, returns)``, both ``[B, T]``.

    Schulman et al., "High-Dimensional Continuous Control Using GAE" (2016):
    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)``, ``A_t = sum_l (gamma lam)^l delta_{t+l}``,
    returns ``A_t + V(s_t)``. After a sequence's last real step, ``V(s_{T})`` is 0 if the episode
    terminated and ``bootstrap_value [B]`` if it was truncated (time limit, segment cut).
    ``terminated [B]`` bool defaults to all True (a finished LM response). Padding, anywhere in
    a row, is skipped and comes back as 0. Computed without gradient.
    """
    b = rewards.shape[0]
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    real = mask > 0
    r = torch.where(real, rewards, zero)
    v = torch.where(real, values, zero)
    if terminated is None:
        terminated = torch.ones(b, dtype=torch.bool, device=values.device)
    terminated = terminated.to(torch.bool)
    if bootstrap_value is None:
        if not bool(terminated.all()):
            raise ValueError("gae: some sequences are truncated (terminated=False) but no bootstrap_value was given")
        bootstrap_value = torch.zeros(b, dtype=values.dtype, device=values.device)
    next_value = torch.where(terminated, zero, bootstrap_value.to(values.dtype))
    next_adv = torch.zeros(b, dtype=values.dtype, device=values.device)
    adv = torch.zeros_like(v)
    for t in range(v.shape[1] - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = delta + gamma * lam * next_adv
        m = real[:, t]
        adv[:, t] = torch.where(m, a_t, zero)
        next_value = torch.where(m, v[:, t], next_value)
        next_adv = torch.where(m, a_t, next_adv)
    return adv, torch.where(real, adv + v, zero)


def kl_penalized_rewards(scores: Tensor, steps: Steps, beta: float, kind: str = "k1") -> Tensor:
    """Per-step RLHF rewards ``-beta * KL_t`` plus ``scores [B]`` on each row's last real step, ``[B, T]``.

    Ziegler et al., "Fine-Tuning Language Models from Human Preferences" (2019); with the default
    ``kind="k1"`` the penalty is ``-beta (log pi - log pi_ref)``. The result is a constant
    (detached) reward signal; its row sum is ``score - beta * sum_t KL_t``. Zero on padding.
    """
    if scores.shape != (steps.batch_size,):
        raise ValueError(f"kl_penalized_rewards: scores must be [batch]={steps.batch_size}, got {tuple(scores.shape)}")
    real = steps.mask > 0
    empty = (~real.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(f"kl_penalized_rewards: rows {empty.tolist()} have no real steps to put their score on")
    rewards = -beta * kl_estimate(steps.detach(), kind)
    positions = torch.arange(steps.num_steps, device=real.device).expand_as(real)
    last = torch.where(real, positions, -1).amax(dim=1)
    rewards[torch.arange(steps.batch_size, device=real.device), last] += scores.detach().to(rewards.dtype)
    return rewards


def adaptive_kl_beta(beta: float, kl: float, target: float, horizon: float, n_steps: int, k_beta: float = 0.1) -> float:
    """Ziegler et al. (2019) proportional KL controller; returns the next beta.

    ``beta * (1 + k_beta * clip((kl - target) / target, -0.2, 0.2) * n_steps / horizon)``, where
    ``kl`` is the measured sequence KL and ``n_steps`` the samples seen since the last update.
    """
    if target <= 0 or horizon <= 0:
        raise ValueError(f"adaptive_kl_beta: target and horizon must be > 0, got target={target}, horizon={horizon}")
    error = min(max((float(kl) - target) / target, -0.2), 0.2)
    return beta * (1.0 + k_beta * error * n_steps / horizon)
