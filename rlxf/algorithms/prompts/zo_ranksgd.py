"""ZO-RankSGD (Tang, Rybin & Chang, ICLR 2024, "Zeroth-Order Optimization Meets Human Feedback:
Provable Learning via Ranking Oracles"): minimise f when the only feedback is a ranking.

Each round draws m directions xi_i ~ N(0, I), shows the points x + mu * xi_i to a ranking oracle
(a person, or a simulated ranker driven by gold), and receives the indices of the best k of them
in order. The ranking implies a set E of comparisons (i better than j): every ordered pair among
the k ranked points, and each ranked point against each of the m - k unranked ones, so
|E| = k(k-1)/2 + k(m-k). The rank estimator

    g_hat = (1/|E|) * sum_{(i better than j) in E} (xi_j - xi_i)

points uphill (towards larger f) in expectation, and the descent step is x <- x - eta * g_hat.
Since only orders are seen, the iterates are unchanged by any strictly increasing transform of f.
The weights follow the edge definition and sum to zero; a released implementation of the method
weights the ranked points by (m - 2r), one more each than the edges give (not followed here).

Baselines at equal oracle queries (points shown): the same descent with m = k = 2 (a pairwise
comparison oracle, one bit per round), and random search that shows the current point with m - 1
perturbations and moves to the one ranked first. Benchmark functions are in
:mod:`rlxf.tasks.black_box`, the soft-prompt objective in :mod:`.soft_prompt`.

Run ``python -m rlxf.algorithms.prompts.zo_ranksgd --help`` for the benchmark table.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.labelers.simulated import PlackettLuceLabeler
from rlxf.tasks.black_box import get_function


class RankingOracle(Protocol):
    """Shown points ``[m, d]``, returns the indices of the best k of them, best first, ``[k]``."""

    def __call__(self, points: np.ndarray) -> np.ndarray: ...


@dataclass
class SimulatedRanker:
    """A ranking oracle for a gold objective ``f`` to minimise. It orders the points by the
    Plackett-Luce model on -f with rationality ``beta`` (beta = inf: the true order; finite beta:
    any two points come out in the wrong order with probability about sigma(-beta * |f_a - f_b|)),
    and shows the top ``k`` (None: all). ``queries`` counts the points it has been shown."""

    f: Callable[[np.ndarray], np.ndarray]
    k: int | None = None
    beta: float = math.inf
    seed: int = 0
    queries: int = field(default=0, init=False)

    def __post_init__(self):
        if self.k is not None and self.k < 1:
            raise ValueError(f"SimulatedRanker: k must be >= 1 or None, got {self.k}")
        self._labeler = PlackettLuceLabeler(beta=self.beta, seed=self.seed)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.atleast_2d(points)
        self.queries += len(points)
        order = self._labeler.rank(-np.asarray(self.f(points), dtype=float))
        return order[: self.k or len(points)]


def _check_order(order, m: int) -> np.ndarray:
    order = np.asarray(order, dtype=int)
    if order.ndim != 1 or not 1 <= len(order) <= m or len(set(order.tolist())) != len(order) \
            or order.min() < 0 or order.max() >= m:
        raise ValueError(f"ranking must list 1..{m} distinct indices in [0, {m}), best first; got {order.tolist()}")
    if len(order) == 1 and m == 1:
        raise ValueError("a ranking of a single point implies no comparison; show m >= 2 points")
    return order


def comparison_edges(order, m: int) -> list[tuple[int, int]]:
    """The comparisons a top-k ranking of m points implies, as (better, worse) index pairs: each
    ranked point against every point ranked below it and against every unranked point."""
    order = _check_order(order, m).tolist()
    unranked = [j for j in range(m) if j not in order]
    return [(i, j) for r, i in enumerate(order) for j in order[r + 1:] + unranked]


def rank_weights(order, m: int) -> np.ndarray:
    """``[m]``: for each point, (times it lost) - (times it won) over the comparison edges, divided by
    |E|, so that g_hat = weights @ xi. The point ranked r-th (from 0) gets (2r - m + 1) / |E|, an
    unranked point k / |E|; the weights sum to zero."""
    order = _check_order(order, m)
    k = len(order)
    n_edges = k * (k - 1) // 2 + k * (m - k)
    w = np.full(m, float(k))
    w[order] = 2.0 * np.arange(k) - m + 1
    return w / n_edges


def rank_gradient(xi: np.ndarray, order) -> np.ndarray:
    """The rank estimator g_hat = (1/|E|) sum_{(i better j) in E} (xi_j - xi_i), ``[d]``, from the
    directions ``xi`` ``[m, d]`` and the oracle's ranking of the points x + mu * xi (best first)."""
    return rank_weights(order, len(xi)) @ xi


@dataclass
class Trajectory:
    """What a run saw: the gold f(x_t) of each iterate (x_0 first), the oracle queries (points
    shown) spent before it, and the final point."""

    gold: np.ndarray
    queries: np.ndarray
    x: np.ndarray


def _record(gold, x, trace):
    if gold is not None:
        trace.append(float(gold(x)))


def zo_ranksgd(oracle: RankingOracle, x0, *, steps: int, m: int, mu: float, eta: float, seed: int = 0,
               gold: Callable | None = None) -> Trajectory:
    """``steps`` rounds of ZO-RankSGD from ``x0`` with m points per ranking, smoothing radius ``mu``
    and step size ``eta``. ``gold`` (never shown to the learner) is recorded at every iterate."""
    if m < 2 or mu <= 0 or eta <= 0 or steps < 0:
        raise ValueError(f"zo_ranksgd needs m >= 2, mu > 0, eta > 0, steps >= 0; got m={m}, mu={mu}, "
                         f"eta={eta}, steps={steps}")
    rng = np.random.default_rng(seed)
    x = np.array(x0, dtype=float)
    trace: list[float] = []
    _record(gold, x, trace)
    for _ in range(steps):
        xi = rng.standard_normal((m, x.size))
        x = x - eta * rank_gradient(xi, oracle(x + mu * xi))
        _record(gold, x, trace)
    return Trajectory(np.array(trace), m * np.arange(steps + 1), x)


def random_search(oracle: RankingOracle, x0, *, steps: int, m: int, mu: float, seed: int = 0,
                  gold: Callable | None = None) -> Trajectory:
    """The ranking-only random search baseline: each round shows the current point and m - 1 points
    x + mu * xi, and moves to the one ranked first (m queries a round)."""
    if m < 2 or mu <= 0 or steps < 0:
        raise ValueError(f"random_search needs m >= 2, mu > 0, steps >= 0; got m={m}, mu={mu}, steps={steps}")
    rng = np.random.default_rng(seed)
    x = np.array(x0, dtype=float)
    trace: list[float] = []
    _record(gold, x, trace)
    for _ in range(steps):
        points = np.vstack([x, x + mu * rng.standard_normal((m - 1, x.size))])
        x = points[oracle(points)[0]]
        _record(gold, x, trace)
    return Trajectory(np.array(trace), m * np.arange(steps + 1), x)


# Per problem, with a perfect oracle: the start x0 = (c, ..., c), the query budget, and (eta, mu)
# for ZO-RankSGD (m = 10) and for pairwise descent, and mu for random search (m = 10), each the
# best mean final gold over tuning seeds (0-2 for the functions at d = 10, on grids eta in
# [0.001, 0.8], mu in [0.002, 0.3]; 0-1 for the soft prompt, eta in [0.01, 5], mu in [0.1, 1]).
# Claims are measured on other seeds.
DEFAULTS = {
    "quadratic": {"x0": 1.0, "queries": 300, "rank": (0.2, 0.002), "pairwise": (0.03, 0.002), "search_mu": 0.15},
    "rosenbrock": {"x0": 0.0, "queries": 3000, "rank": (0.05, 0.005), "pairwise": (0.005, 0.005),
                   "search_mu": 0.005},
    "soft-prompt": {"x0": 0.0, "queries": 300, "rank": (0.5, 0.1), "pairwise": (0.05, 0.1), "search_mu": 0.5},
}


def problem(name: str, dim: int | None = None):
    """(gold f, x0) for a benchmark function of dimension ``dim`` (default 10), or for ``soft-prompt``:
    4 soft-prompt vectors of a tiny in-process GPT-2 (128 numbers; see :mod:`.soft_prompt`)."""
    if name == "soft-prompt":
        from rlxf.algorithms.prompts.soft_prompt import tiny_soft_prompt_score

        f = tiny_soft_prompt_score()
        if dim not in (None, f.dim):
            raise ValueError(f"--dim: the soft prompt has {f.dim} numbers, got {dim}")
        dim = f.dim
    else:
        f, dim = get_function(name), 10 if dim is None else dim
    return f, np.full(dim, DEFAULTS[name]["x0"])


METHODS = ("zo-ranksgd", "pairwise", "random-search")


def compare(name: str, dim: int | None, queries: int, seeds, m: int = 10, k: int | None = None,
            beta: float = math.inf, methods=METHODS) -> dict[str, np.ndarray]:
    """Final gold per seed, ``{method: [n_seeds]}``, for ZO-RankSGD (m points, top k), pairwise
    descent (m = 2) and random search (m points), each spending ``queries`` oracle queries."""
    (f, x0), cfg = problem(name, dim), DEFAULTS[name]

    def ranker(s, kk):
        return SimulatedRanker(f, k=kk, beta=beta, seed=10_000 + s)

    runs = {
        "zo-ranksgd": lambda s: zo_ranksgd(ranker(s, k), x0, steps=queries // m, m=m, mu=cfg["rank"][1],
                                           eta=cfg["rank"][0], seed=s, gold=f),
        "pairwise": lambda s: zo_ranksgd(ranker(s, None), x0, steps=queries // 2, m=2, mu=cfg["pairwise"][1],
                                         eta=cfg["pairwise"][0], seed=s, gold=f),
        "random-search": lambda s: random_search(ranker(s, 1), x0, steps=queries // m, m=m, mu=cfg["search_mu"],
                                                 seed=s, gold=f),
    }
    return {meth: np.array([runs[meth](s).gold[-1] for s in seeds]) for meth in methods}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="ZO-RankSGD against pairwise descent and random search at "
                                "equal ranking-oracle queries on a benchmark function (final gold f, lower is better).")
    p.add_argument("--function", choices=sorted(DEFAULTS), default="rosenbrock")
    p.add_argument("--dim", type=int, default=None, help="dimension of x (default 10; the soft prompt has 128)")
    p.add_argument("--queries", type=int, default=None,
                   help="points shown to the oracle per method and seed (default: the function's budget in DEFAULTS)")
    p.add_argument("--m", type=int, default=10, help="points per ranking for ZO-RankSGD and random search")
    p.add_argument("--k", type=int, default=None, help="ZO-RankSGD sees only the top k (default: all m)")
    p.add_argument("--beta", type=float, default=math.inf, help="oracle rationality (inf: never wrong)")
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    a = p.parse_args(argv)
    a.queries = a.queries or DEFAULTS[a.function]["queries"]
    if (a.dim is not None and a.dim < 2) or a.m < 2 or a.queries < a.m or (a.k is not None and not 1 <= a.k <= a.m):
        p.error("need --dim >= 2, --m >= 2, --queries >= --m and 1 <= --k <= --m")
    if a.function == "soft-prompt":
        torch.set_num_threads(1)  # forwards of 10 short sequences: more threads cost more than they give
    res = compare(a.function, a.dim, a.queries, a.seeds, m=a.m, k=a.k, beta=a.beta)
    f, x0 = problem(a.function, a.dim)
    print(f"{a.function}, d={len(x0)}, f(x0)={f(x0):.3f}, {a.queries} queries, seeds {a.seeds}, beta={a.beta}")
    print(f"{'method':<14} {'final f':>9} {'SE':>7}")
    for name, v in res.items():
        mean, se = mean_se(v)
        print(f"{name:<14} {mean:>9.4f} {se:>7.4f}")
    for base in ("pairwise", "random-search"):
        gain, se = paired_gain(res[base], res["zo-ranksgd"])
        ratio = gain / se if se else math.inf
        print(f"zo-ranksgd lower than {base} by {gain:.4f} (paired SE {se:.4f}, {ratio:.1f} SE)")


if __name__ == "__main__":
    main()
