"""Pure losses for control-side algorithms: behaviour cloning, IQL, SAC, PRDC and multi-critic advantages.

Each returns unreduced per-example terms (``[batch]``, or ``[batch, steps]`` for ``Steps``); the
caller averages. Nothing here knows about networks: inputs are the tensors they produced.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.core.steps import Steps


def bc_loss(steps: Steps) -> Tensor:
    """Behaviour cloning ``-log pi(a_t|s_t)`` per step, ``[B, T]``, zero on padding (Pomerleau 1991)."""
    return steps.masked(-steps.logps)


def expectile_loss(diff: Tensor, tau: float = 0.7) -> Tensor:
    """Asymmetric squared loss ``|tau - 1(u < 0)| u^2`` of ``u = Q(s,a) - V(s)``, same shape as ``diff``.

    Kostrikov, Nair, Levine, "Offline RL with Implicit Q-Learning" (ICLR 2022), eq. 5: with
    ``tau > 0.5`` V fits an upper expectile of Q over dataset actions, an in-sample max.
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"expectile_loss: tau must be in (0, 1), got {tau}")
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return weight * diff**2


def awr_weights(advantage: Tensor, beta: float = 3.0, max_weight: float = 100.0) -> Tensor:
    """Advantage-weighted regression weights ``min(exp(beta A), max_weight)``, detached.

    IQL's policy extraction (Kostrikov et al. 2022, eq. 7; Peng et al. 2019, AWR). ``beta`` is the
    inverse temperature (IQL's default 3.0 on MuJoCo); the clip at 100 is the official code's.
    """
    return torch.exp(beta * advantage.detach()).clamp(max=max_weight)


def awr_loss(logps: Tensor, advantage: Tensor, beta: float = 3.0, max_weight: float = 100.0) -> Tensor:
    """``-exp(beta A) log pi(a|s)`` per example, ``[B]``: BC weighted towards high-advantage actions."""
    return -awr_weights(advantage, beta, max_weight) * logps


def soft_q_target(rewards: Tensor, next_q: Tensor, next_logp: Tensor, done: Tensor, gamma: float,
                  alpha: float) -> Tensor:
    """SAC critic target ``r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s'))``, ``[B]``.

    Haarnoja et al., "Soft Actor-Critic Algorithms and Applications" (2018). ``next_q [B]`` is the
    min over target critics; ``done`` marks terminations only (a time-limit truncation bootstraps).
    """
    return (rewards + gamma * (1.0 - done.float()) * (next_q - alpha * next_logp)).detach()


def sac_actor_loss(q_new: Tensor, logp_new: Tensor, alpha: float) -> Tensor:
    """SAC actor loss ``alpha log pi(a~|s) - min_i Q_i(s, a~)`` per state, ``[B]`` (reparameterised ``a~``)."""
    return alpha * logp_new - q_new


def sac_alpha_loss(log_alpha: Tensor, logp_new: Tensor, target_entropy: float) -> Tensor:
    """Temperature loss ``-log_alpha (log pi + H_target)`` per state, ``[B]`` (Haarnoja et al. 2018, eq. 18)."""
    return -log_alpha * (logp_new.detach() + target_entropy)


def nearest_neighbour_distance(queries: Tensor, keys: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Euclidean distance from each query row to its nearest key row, and that key's index, ``[B]``.

    Brute force with ``torch.cdist`` in chunks of keys (exact, like the KD-tree PRDC uses; no
    gradient flows into ``keys``).
    """
    best = torch.full((queries.shape[0],), float("inf"), dtype=queries.dtype)
    arg = torch.zeros(queries.shape[0], dtype=torch.long)
    with torch.no_grad():
        for start in range(0, keys.shape[0], chunk):
            d = torch.cdist(queries.detach(), keys[start : start + chunk])
            val, idx = d.min(dim=1)
            better = val < best
            best = torch.where(better, val, best)
            arg = torch.where(better, idx + start, arg)
    return best, arg


def prdc_constraint(states: Tensor, actions: Tensor, data_states: Tensor, data_actions: Tensor,
                    beta: float = 2.0) -> Tensor:
    """PRDC's dataset constraint ``d(s, a) = min_{(s',a') in D} ||(beta s) + a - (beta s') + a'||``, ``[B]``.

    Ran, Li, Zhang, Zhang, Yu, "Policy Regularization with Dataset Constraint for Offline RL" (ICML
    2023); ``+`` is concatenation. The neighbour is found without gradient; the returned distance
    is differentiable in ``actions`` (the policy's), pulling them towards the neighbour's action.
    """
    query = torch.cat([beta * states, actions], dim=-1)
    keys = torch.cat([beta * data_states, data_actions], dim=-1)
    _, idx = nearest_neighbour_distance(query, keys)
    return (query - keys[idx]).norm(dim=-1)


def prdc_actor_loss(q: Tensor, constraint: Tensor, alpha: float = 2.5) -> Tensor:
    """``-lambda Q(s, pi(s)) + d(s, pi(s))`` per state with ``lambda = alpha / mean|Q|``, ``[B]``.

    The TD3+BC normalisation (Fujimoto & Gu 2021) that PRDC keeps; ``alpha`` 2.5 is its MuJoCo default.
    """
    lam = alpha / q.abs().mean().detach().clamp(min=1e-6)
    return -lam * q + constraint


def prior_kl(dist: torch.distributions.Distribution, prior: torch.distributions.Distribution) -> Tensor:
    """``KL(pi(.|s) || pi_prior(.|s))`` per state, ``[B]``: the demonstration-regularised RL penalty.

    Tiapkin et al., "Demonstration-Regularized RL" (ICLR 2024): after behaviour cloning, RL maximises
    ``V^pi - lambda KL(pi || pi_BC)``. Exact for categorical and diagonal-Gaussian policies; gradient
    flows into ``dist`` only when the caller built ``prior`` without gradient.
    """
    return torch.distributions.kl_divergence(dist, prior)


def doc_mi_estimate(energies: Tensor, bins: Tensor, log_prior: Tensor) -> Tensor:
    """Contrastive estimate of the information a latent carries about luck, per example and latent, ``[N, K]``.

    Yang et al., "Dichotomy of Control" (ICLR 2023). ``energies [N, K, B]`` is ``f(s, a, z, b)`` for every
    latent ``z`` and return bin ``b``; ``bins [N]`` the bin the example's future fell in; ``log_prior [B]``
    the log of the dataset's bin frequencies. Returns ``f(s, a, z, b_i) - log sum_b prior_b exp f(s, a, z, b)``:
    its mean under ``q(z | future)`` is a lower bound on ``I(z; b | s, a)`` that ``f`` tightens.
    """
    pos = energies.gather(-1, bins.long().view(-1, 1, 1).expand(-1, energies.shape[1], 1)).squeeze(-1)
    return pos - torch.logsumexp(energies + log_prior, dim=-1)


def doc_loss(q: Tensor, action_logps: Tensor, value_errors: Tensor, prior_logps: Tensor, mi: Tensor,
             mi_weight: float = 1.0) -> dict[str, Tensor]:
    """DoC's training terms per example, ``[N]`` each, for a discrete latent marginalised exactly.

    ``q [N, K]`` posterior ``q(z | s, a, future)``; ``action_logps [N, K]`` ``log pi(a | s, z)``;
    ``value_errors [N, K]`` ``V(s, z) - R`` (the example's return-to-go); ``prior_logps [N, K]``
    ``log p(z | s)``; ``mi [N, K]`` from :func:`doc_mi_estimate`. Terms:

    - ``action``: ``-E_q log pi(a | s, z)`` (future-conditioned BC; shapes q and the policy);
    - ``value``: ``E_q (V(s, z) - R)^2``; it shapes q too (as in the official code), which is what tempts
      the latent to encode luck and why the penalty is needed;
    - ``prior``: ``KL(stopgrad q || p(z | s))`` (the prior reads the latent, never shapes it);
    - ``critic``: ``-E_{stopgrad q} mi`` (the energy ``f`` tightens the bound);
    - ``mi``: ``mi_weight * E_q stopgrad(mi)`` (q is pushed to carry no information about luck).

    The official tabular code descends one sum in which q also lowers the contrastive loss; here q and
    ``f`` play the penalty's two sides (q minimises the estimate that ``f`` maximises), as the paper's
    constraint reads.
    """
    qd = q.detach()
    return {
        "action": -(q * action_logps).sum(-1),
        "value": (q * value_errors**2).sum(-1),
        "prior": (qd * (torch.log(qd.clamp_min(1e-12)) - prior_logps)).sum(-1),
        "critic": -(qd * mi).sum(-1),
        "mi": mi_weight * (q * mi.detach()).sum(-1),
    }


def bc_log_barrier(action_logps: Tensor) -> Tensor:
    """``-mean_a log pi(a|s)`` per state, ``[B]``, from ``action_logps [B, A]`` (every action's log-prob).

    Added to behaviour cloning with a small weight it keeps every action's probability bounded below,
    as the BC phase of demonstration-regularised RL asks (Tiapkin et al., ICLR 2024), so a KL towards
    the BC policy stays finite and RL can still try what the demonstrator never did.
    """
    return -action_logps.mean(-1)


def normalise_advantages(adv: Tensor, eps: float = 1e-8) -> Tensor:
    """Advantages scaled to zero mean and unit standard deviation over the batch: ``[m]`` as one
    column, ``[m, K]`` column by column (one reward term each, so no term's scale swamps another's).
    A single row is returned unchanged."""
    if adv.shape[0] < 2:
        return adv
    if adv.dim() == 1:
        return (adv - adv.mean()) / (adv.std() + eps)
    return (adv - adv.mean(0)) / (adv.std(0) + eps)


def combine_advantages(adv: Tensor, weights: Tensor) -> Tensor:
    """The actor's advantage from per-term ones: ``sum_k w_k adv[:, k] / sum_k w_k``, ``[m, K] -> [m]``."""
    weights = torch.as_tensor(weights, dtype=adv.dtype)
    if weights.shape != adv.shape[-1:]:
        raise ValueError(f"term weights have shape {tuple(weights.shape)}; expected ({adv.shape[-1]},), one per reward term")
    return adv @ weights / weights.sum()
