"""TrueSkill ratings from pairwise outcomes: the two-player update, written out from its formulas.

Herbrich, Minka & Graepel, "TrueSkill: A Bayesian Skill Rating System" (NIPS 2006). Each agent's skill
is a Gaussian ``N(mu, sigma^2)``; a game's performance is skill plus ``N(0, beta^2)`` noise; a draw is a
performance gap within the draw margin ``eps``. After a game between 1 and 2 (1 won, or a draw):

    sigma_i^2 <- sigma_i^2 + tau^2                      (skills drift between games)
    c^2 = 2 beta^2 + sigma_1^2 + sigma_2^2,   t = (mu_1 - mu_2) / c,   e = eps / c
    win:  v = N(t - e) / Phi(t - e),          w = v (v + t - e)
    draw: v = (N(-e - t) - N(e - t)) / (Phi(e - t) - Phi(-e - t))
          w = v^2 + ((e - t) N(e - t) + (e + t) N(e + t)) / (Phi(e - t) - Phi(-e - t))
    mu_1 <- mu_1 + sigma_1^2 / c * v,         mu_2 <- mu_2 - sigma_2^2 / c * v
    sigma_i^2 <- sigma_i^2 (1 - sigma_i^2 / c^2 * w)

with ``N``/``Phi`` the standard normal density/CDF. The draw margin comes from the draw probability:
``eps = Phi^-1((p_draw + 1) / 2) * sqrt(2) * beta``. Defaults are TrueSkill's: mu 25, sigma 25/3,
beta 25/6, tau 25/300, p_draw 0.1. Agents are ranked by the conservative score ``mu - 3 sigma``.

MineRL BASALT picks the next match where the expected drop of ``sigma_1^2 + sigma_2^2`` is largest,
weighting the two outcomes by ``P(1 beats 2) = Phi((mu_1 - mu_2) / sqrt(beta^2 + sigma_1^2 + sigma_2^2))``
(:func:`most_informative_pair`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_STD = NormalDist()


def _pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


@dataclass(frozen=True)
class Rating:
    mu: float = 25.0
    sigma: float = 25.0 / 3

    @property
    def conservative(self) -> float:
        """``mu - 3 sigma``: a skill the agent has with ~99.9% belief; the ranking score."""
        return self.mu - 3 * self.sigma


@dataclass(frozen=True)
class TrueSkill:
    """The model's constants (TrueSkill's defaults)."""

    mu: float = 25.0
    sigma: float = 25.0 / 3
    beta: float = 25.0 / 6
    tau: float = 25.0 / 300
    draw_probability: float = 0.1

    def __post_init__(self):
        if not (self.sigma > 0 and self.beta > 0 and self.tau >= 0 and 0 <= self.draw_probability < 1):
            raise ValueError(f"TrueSkill: need sigma > 0, beta > 0, tau >= 0 and 0 <= draw_probability < 1; got {self}")

    def rating(self) -> Rating:
        return Rating(self.mu, self.sigma)

    @property
    def draw_margin(self) -> float:
        """``eps`` for two players: ``Phi^-1((p_draw + 1) / 2) * sqrt(2) * beta``."""
        return _STD.inv_cdf((self.draw_probability + 1) / 2) * math.sqrt(2) * self.beta

    def rate(self, r1: Rating, r2: Rating, draw: bool = False) -> tuple[Rating, Rating]:
        """The ratings after a game in which ``r1`` beat ``r2`` (or drew with it)."""
        s1, s2 = r1.sigma**2 + self.tau**2, r2.sigma**2 + self.tau**2
        c2 = 2 * self.beta**2 + s1 + s2
        c = math.sqrt(c2)
        t, e = (r1.mu - r2.mu) / c, self.draw_margin / c
        v, w = _v_w_draw(t, e) if draw else _v_w_win(t, e)
        return (Rating(r1.mu + s1 / c * v, math.sqrt(s1 * (1 - s1 / c2 * w))),
                Rating(r2.mu - s2 / c * v, math.sqrt(s2 * (1 - s2 / c2 * w))))

    def win_probability(self, r1: Rating, r2: Rating) -> float:
        """BASALT's ``P(1 beats 2) = Phi((mu_1 - mu_2) / sqrt(beta^2 + sigma_1^2 + sigma_2^2))``."""
        return _cdf((r1.mu - r2.mu) / math.sqrt(self.beta**2 + r1.sigma**2 + r2.sigma**2))


def _v_w_win(t: float, e: float) -> tuple[float, float]:
    x = t - e
    denom = _cdf(x)
    v = _pdf(x) / denom if denom > 1e-300 else -x  # the ratio's limit for very unlikely wins
    return v, v * (v + x)


def _v_w_draw(t: float, e: float) -> tuple[float, float]:
    a, b = e - t, -e - t
    denom = _cdf(a) - _cdf(b)
    if denom < 1e-300:  # a draw far outside the margin: the gap moves to the margin's nearest edge
        return (a if t < 0 else b), 1.0
    v = (_pdf(b) - _pdf(a)) / denom
    w = v * v + (a * _pdf(a) - b * _pdf(b)) / denom
    return v, w


def most_informative_pair(ts: TrueSkill, ratings: dict[str, Rating]) -> tuple[str, str]:
    """BASALT's active match choice: the pair whose game is expected to shrink ``sigma_1^2 + sigma_2^2``
    most (outcomes weighted by :meth:`TrueSkill.win_probability`; draws ignored)."""
    names, best, pick = list(ratings), -math.inf, None
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = ratings[a], ratings[b]
            p = ts.win_probability(ra, rb)
            before = ra.sigma**2 + rb.sigma**2
            won, lost = ts.rate(ra, rb), ts.rate(rb, ra)
            after = p * (won[0].sigma**2 + won[1].sigma**2) + (1 - p) * (lost[0].sigma**2 + lost[1].sigma**2)
            if before - after > best:
                best, pick = before - after, (a, b)
    if pick is None:
        raise ValueError("most_informative_pair needs at least two agents")
    return pick


def rate_games(games, agents=None, ts: TrueSkill | None = None, start: dict[str, Rating] | None = None
               ) -> dict[str, Rating]:
    """Ratings after ``games`` in order: ``(first, second, outcome)`` with outcome 1.0 (first won),
    0.0 (second won) or 0.5 (draw). ``agents`` (default: everyone in the games) start at the prior,
    or at ``start`` where it rates them."""
    ts = ts or TrueSkill()
    ratings = {a: ts.rating() for a in (agents or [])}
    ratings.update(start or {})
    for a, b, y in games:
        if y not in (0.0, 0.5, 1.0):
            raise ValueError(f"game ({a!r}, {b!r}): outcome must be 1.0, 0.0 or 0.5, got {y!r}")
        if a == b:
            raise ValueError(f"game ({a!r}, {b!r}): an agent cannot play itself")
        ra, rb = ratings.setdefault(a, ts.rating()), ratings.setdefault(b, ts.rating())
        if y == 0.5:
            ratings[a], ratings[b] = ts.rate(ra, rb, draw=True)
        elif y == 1.0:
            ratings[a], ratings[b] = ts.rate(ra, rb)
        else:
            ratings[b], ratings[a] = ts.rate(rb, ra)
    return ratings


def leaderboard(ratings: dict[str, Rating]) -> list[tuple[str, Rating]]:
    """Agents sorted by conservative score ``mu - 3 sigma``, best first."""
    return sorted(ratings.items(), key=lambda kv: -kv[1].conservative)
