"""Scoring rollouts: any mix of reward models, labelers, verifiers and (evaluation-only) gold.

A reward component is a callable ``fn(samples) -> [B]`` on a :class:`Samples` (prompt and
response ids, finished flags, and ``k`` samples per prompt, grouped). The learner's reward is
the weighted sum of the ``rewards`` components; ``monitors`` (gold reward, say) are computed on
the same samples and logged, but never reach the learner. Every component's output is checked:
an exception, a NaN, or a wrong shape stops the run with a :class:`RewardError` naming the
component and the step.

A component may return ``None`` for a sample: "no reward here" (TRL's convention, e.g. a
verifier for another task). The learner's reward is then the weighted sum over the components
that gave a value (TRL's nansum), and a sample no reward component scored is marked invalid
(:meth:`Scorer.valid`): the controller leaves it out of the loss. ``parts`` hold NaN where a
component gave None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from rlxf.rewards.ensemble import AGGREGATIONS, aggregate


class RewardError(RuntimeError):
    """A reward component failed; the message names the component and the step."""


@dataclass
class Samples:
    """What a reward component sees: ``k`` responses per prompt, grouped (rows i*k..i*k+k-1)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    finished: list[bool]
    k: int
    prompt_index: list[int] | None = None  # each row's prompt as an index into the run's prompt list
    step: int = 0  # the rollout being scored (set by the Scorer), for error messages

    def __len__(self) -> int:
        return len(self.response_ids)


RewardFn = Callable[[Samples], "Tensor | np.ndarray | Sequence[float]"]


@dataclass
class Scorer:
    """``rewards``: name -> (fn, weight), summed into the learner's reward; ``monitors``:
    name -> fn, logged only (gold reward lives here unless a config deliberately moves it).
    With no ``rewards`` the learner's reward is 0 (methods with a reward of their own, e.g. SPO)."""

    rewards: dict[str, tuple[RewardFn, float]]
    monitors: dict[str, RewardFn] = field(default_factory=dict)

    def __call__(self, samples: Samples, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The learner's reward ``[B]`` (summed over the components that gave a value) and every
        component's raw values (monitors included; NaN where a component gave None)."""
        samples.step = step
        parts = {name: _checked(fn, samples, name, step) for name, (fn, _w) in self.rewards.items()}
        total = torch.zeros(len(samples))
        for name, (_fn, w) in self.rewards.items():
            total = total + torch.nan_to_num(w * parts[name], nan=0.0)
        for name, fn in self.monitors.items():
            parts[name] = _checked(fn, samples, name, step)
        return total, parts

    def valid(self, parts: dict[str, Tensor], n: int) -> Tensor:
        """``[n]`` bool: the samples at least one reward component scored (all, without rewards)."""
        got = [~parts[name].isnan() for name in self.rewards]
        return torch.stack(got).any(0) if got else torch.ones(n, dtype=torch.bool)


def _checked(fn: RewardFn, samples: Samples, name: str, step: int) -> Tensor:
    try:
        out = fn(samples)
    except RewardError:
        raise  # already names the component and the step
    except Exception as e:  # noqa: BLE001 - any failure of user code becomes a named error
        raise RewardError(f"reward component {name!r} raised at step {step}: {type(e).__name__}: {e}") from e
    none = None
    if isinstance(out, (list, tuple)) and any(v is None for v in out):
        none = torch.tensor([v is None for v in out])
        out = [0.0 if v is None else v for v in out]
    try:
        t = torch.as_tensor(np.asarray(out, dtype=np.float32) if not isinstance(out, Tensor) else out).float()
    except (TypeError, ValueError) as e:
        raise RewardError(f"reward component {name!r} returned a non-numeric value at step {step}: {e}") from None
    if t.shape != (len(samples),):
        raise RewardError(f"reward component {name!r} returned shape {tuple(t.shape)} at step {step}; "
                          f"expected ({len(samples)},), one score per response")
    bad = (~torch.isfinite(t)).nonzero().flatten()
    if bad.numel():
        raise RewardError(f"reward component {name!r} returned NaN/inf at step {step} for rows {bad[:5].tolist()}")
    t = t.detach().cpu()
    return t if none is None else t.masked_fill(none, float("nan"))


# -- adapters --------------------------------------------------------------------------------


def model_reward(model) -> RewardFn:
    """A learned reward model (anything with ``score(prompt_ids, response_ids) -> [B]``)."""
    return lambda s: model.score(s.prompt_ids, s.response_ids)


def text_reward(decode: Callable[[list[int]], str], fn: Callable[[str, str, bool], float]) -> RewardFn:
    """A reward on texts: ``fn(prompt_text, response_text, finished)`` per sample (gold, verifiers)."""

    def score(s: Samples) -> list[float]:
        return [float(fn(decode(p), decode(r), f)) for p, r, f in zip(s.prompt_ids, s.response_ids, s.finished)]

    return score


def verifier_reward(decode: Callable[[list[int]], str], check: Callable[[str, str], bool],
                    alpha: float = 1.0) -> RewardFn:
    """RLVR's verifiable reward ``alpha * [check(prompt, response)]`` (Lambert et al., Tulu 3, 2024)."""
    return text_reward(decode, lambda p, r, _f: alpha * float(bool(check(p, r))))


def ensemble_reward(members: list[RewardFn], kind: str = "mean", lam: float = 0.5) -> RewardFn:
    """k reward components aggregated by :func:`rlxf.rewards.ensemble.aggregate`: ``mean``,
    ``wco`` (min over members) or ``uwo`` (mean - lam * variance over members)."""
    if kind not in AGGREGATIONS:
        raise ValueError(f"ensemble_reward: kind must be one of {', '.join(AGGREGATIONS)}, got {kind!r}")
    if len(members) < 2 and kind != "mean":
        raise ValueError(f"ensemble_reward: {kind} needs at least 2 members, got {len(members)}")

    def score(s: Samples) -> Tensor:
        return aggregate(torch.stack([torch.as_tensor(m(s)).float() for m in members]), kind, lam)

    return score


def group_win_rate(preference: Callable[[Samples, Tensor, Tensor], Tensor]) -> RewardFn:
    """Each sample's mean win probability against the other samples of its prompt's group.

    ``preference(samples, i, j) -> [n]`` gives P(response i beats response j) for row-index
    tensors i, j. The self-play reward of SPO (Swamy et al., "A Minimaximalist Approach to
    RLHF", 2024): win rate against the policy's own samples, no reward model.
    """

    def score(s: Samples) -> Tensor:
        k = s.k
        if k < 2:
            raise ValueError("group_win_rate needs at least 2 samples per prompt")
        B = len(s)
        base = torch.arange(B) // k * k
        a, b = [], []
        for off in range(1, k):
            a.append(torch.arange(B))
            b.append(base + (torch.arange(B) - base + off) % k)
        i, j = torch.cat(a), torch.cat(b)
        p = torch.as_tensor(preference(s, i, j)).float()
        return p.view(k - 1, B).mean(0)

    return score


def bradley_terry_preference(gold: RewardFn, beta: float = 1.0) -> Callable[[Samples, Tensor, Tensor], Tensor]:
    """A preference oracle from a gold reward: P(i beats j) = sigma(beta (g_i - g_j)) (Bradley-Terry)."""

    def pref(s: Samples, i: Tensor, j: Tensor) -> Tensor:
        g = torch.as_tensor(gold(s)).float()
        return torch.sigmoid(beta * (g[i] - g[j]))

    return pref
