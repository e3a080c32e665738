"""ZO-RankSGD: the rank estimator on hand-computed numbers, its expectation on a linear function,
invariance to monotone transforms, the simulated oracle's error profile, and the claim against
pairwise descent and random search at equal oracle queries."""

import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.evaluate import paired_gain
from rlxf.algorithms.prompts.soft_prompt import WORDS, tiny_soft_prompt_score
from rlxf.algorithms.prompts.zo_ranksgd import (
    SimulatedRanker, comparison_edges, compare, main, random_search, rank_gradient, rank_weights, zo_ranksgd,
)
from rlxf.policies.tiny import tiny_tokenizer
from rlxf.tasks.black_box import get_function, quadratic, rosenbrock


def test_estimator_by_hand():
    # m = 3 points, the oracle shows the top k = 2: point 2 best, then point 0; point 1 unranked.
    # Edges (better, worse): (2,0), (2,1), (0,1); |E| = 1 + 2 = 3.
    # g = [(xi0 - xi2) + (xi1 - xi2) + (xi1 - xi0)] / 3 = (2 xi1 - 2 xi2) / 3.
    xi = np.array([[5.0, -1.0], [1.0, 0.0], [0.0, 3.0]])
    assert comparison_edges([2, 0], 3) == [(2, 0), (2, 1), (0, 1)]
    np.testing.assert_allclose(rank_weights([2, 0], 3), [0.0, 2 / 3, -2 / 3])
    np.testing.assert_allclose(rank_gradient(xi, [2, 0]), [2 / 3, -2.0])
    # a full ranking of 4: |E| = 6, weights (2r - 3) / 6 by rank r = 0..3, summing to zero
    np.testing.assert_allclose(rank_weights([1, 3, 0, 2], 4), [1 / 6, -3 / 6, 3 / 6, -1 / 6])
    # the closed form equals the sum over edges for a partial ranking
    rng = np.random.default_rng(0)
    xi = rng.standard_normal((6, 3))
    by_edges = sum(xi[j] - xi[i] for i, j in comparison_edges([4, 1, 5], 6)) / len(comparison_edges([4, 1, 5], 6))
    np.testing.assert_allclose(rank_gradient(xi, [4, 1, 5]), by_edges)


def test_one_descent_step_by_hand():
    # f(x) = x_0 + 2 x_1, x = 0, m = 2, mu = 0.1, eta = 0.5: the step is -eta * (xi_worse - xi_better)
    f = lambda p: p @ np.array([1.0, 2.0])  # noqa: E731
    traj = zo_ranksgd(SimulatedRanker(f), np.zeros(2), steps=1, m=2, mu=0.1, eta=0.5, seed=3, gold=f)
    xi = np.random.default_rng(3).standard_normal((2, 2))
    worse, better = (0, 1) if f(xi[0]) > f(xi[1]) else (1, 0)
    np.testing.assert_allclose(traj.x, -0.5 * (xi[worse] - xi[better]))
    np.testing.assert_allclose(traj.gold, [0.0, f(traj.x)])
    assert traj.queries.tolist() == [0, 2]


def test_expectation_on_linear_function_points_along_gradient():
    """For f(x) = a.x and m = 2, xi_worse - xi_better = |z.u| u + (orthogonal part) with z ~ N(0, 2I),
    u = a/|a|, so E[g_hat] = sqrt(2) * sqrt(2/pi) * u = (2/sqrt(pi)) u exactly. For m = 5, k = 3,
    the mean lies along u (positive component, orthogonal part zero). Each coordinate is checked
    within 4 Monte-Carlo standard errors."""
    a = np.array([3.0, -1.0, 0.5, 0.0, 2.0])
    u = a / np.linalg.norm(a)
    f = lambda p: p @ a  # noqa: E731
    rng = np.random.default_rng(1)
    for m, k, n in ((2, None, 4000), (5, 3, 4000)):
        oracle = SimulatedRanker(f, k=k, seed=2)
        g = np.array([rank_gradient(xi, oracle(xi)) for xi in rng.standard_normal((n, m, len(a)))])
        mean, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(n)
        along = g @ u
        assert along.mean() > 10 * along.std(ddof=1) / math.sqrt(n)
        perp = mean - along.mean() * u
        assert np.all(np.abs(perp) < 4 * se), (m, perp, se)
        if m == 2:
            assert np.all(np.abs(mean - 2 / math.sqrt(math.pi) * u) < 4 * se), (mean, se)


@pytest.mark.parametrize("name,dim", [("quadratic", 100), ("rosenbrock", 10)])
def test_invariant_to_monotone_transform(name, dim):
    """Only orders are seen, so f and exp(f / 10) give identical iterates with the same seeds;
    a value-based method would not."""
    f = get_function(name)
    g = lambda p: np.exp(f(p) / 10.0)  # noqa: E731
    x0 = np.full(dim, 0.5)
    runs = [zo_ranksgd(SimulatedRanker(h, k=4, seed=1), x0, steps=50, m=8, mu=0.01, eta=0.01, seed=0, gold=f)
            for h in (f, g)]
    np.testing.assert_array_equal(runs[0].x, runs[1].x)
    assert runs[0].gold[-1] < runs[0].gold[0]


def test_oracle_error_profile():
    """Two points with a gold gap of 1 and beta = 1: the worse one comes first with probability
    sigma(-1) = 0.2689 (Plackett-Luce); the perfect oracle never errs; top-k and query counting."""
    f = lambda p: p[:, 0]  # noqa: E731
    points = np.array([[0.0], [1.0]])
    noisy = SimulatedRanker(f, beta=1.0, seed=0)
    wrong = np.array([noisy(points)[0] == 1 for _ in range(4000)], dtype=float)
    p = 1 / (1 + math.e)
    assert abs(wrong.mean() - p) < 4 * math.sqrt(p * (1 - p) / 4000)
    assert noisy.queries == 8000
    perfect = SimulatedRanker(f, k=2)
    assert perfect(np.array([[3.0], [1.0], [2.0]])).tolist() == [1, 2]


def test_noisy_oracle_still_descends():
    f, x0 = quadratic, np.ones(10)
    traj = zo_ranksgd(SimulatedRanker(f, beta=20.0, seed=5), x0, steps=30, m=10, mu=0.05, eta=0.2, seed=5, gold=f)
    assert traj.gold[-1] < 0.25 * traj.gold[0]
    search = random_search(SimulatedRanker(f, k=1, seed=5), x0, steps=30, m=10, mu=0.15, seed=5, gold=f)
    assert search.gold[-1] < search.gold[0] and search.queries[-1] == 300


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="ranking must list"):
        rank_weights([0, 0], 3)
    with pytest.raises(ValueError, match="ranking must list"):
        rank_weights([3], 3)
    with pytest.raises(ValueError, match="m >= 2"):
        zo_ranksgd(SimulatedRanker(quadratic), np.ones(2), steps=1, m=1, mu=0.1, eta=0.1)
    with pytest.raises(ValueError, match="unknown function 'sphere'"):
        get_function("sphere")
    with pytest.raises(ValueError, match="dimension >= 2"):
        rosenbrock(np.ones(1))
    with pytest.raises(SystemExit):
        main(["--k", "11"])


def test_cli_prints_table(capsys):
    main(["--function", "quadratic", "--dim", "4", "--queries", "40", "--seeds", "0", "1"])
    out = capsys.readouterr().out
    assert "zo-ranksgd" in out and "random-search" in out and "zo-ranksgd lower than pairwise" in out


@pytest.mark.xfail(strict=True, reason=(
    "measured on seeds 100-104: final f zo-ranksgd 6.004 +- 0.210, pairwise 5.151 +- 0.228, random search "
    "6.236 +- 0.047; ZO-RankSGD is 0.854 (paired SE 0.340) WORSE than pairwise and only 0.231 (paired SE "
    "0.233, 1.0 SE) better than random search. On the tuning seeds 0-2 it was 4.31 vs 5.10 vs 6.21: its "
    "step size eta = 0.05 sits next to a cliff (eta = 0.06 gave 5.61), so the tuned value did not transfer"))
def test_claim_beats_pairwise_and_random_search_at_equal_queries():
    """Claim (threshold fixed before the first run on these seeds): on Rosenbrock, d = 10, from
    x0 = 0 (f = 9), with a perfect ranking oracle and 3000 queries (points shown) per method,
    ZO-RankSGD with m = 10 full rankings ends at a lower gold f than (a) pairwise-comparison
    descent (m = 2) and (b) ranking-based random search (m = 10), each by at least 2 paired
    standard errors over the fresh seeds 100-104. Step sizes and radii are the DEFAULTS tuned on
    seeds 0-2."""
    res = compare("rosenbrock", 10, 3000, seeds=range(100, 105))
    for base in ("pairwise", "random-search"):
        gain, se = paired_gain(res[base], res["zo-ranksgd"])
        assert gain >= 2 * se and gain > 0, (base, gain, se, res)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_soft_prompt_score_matches_a_plain_forward(one_thread):
    """A soft prompt made of the embeddings of real tokens scores exactly the model's mean NLL of the
    target after those tokens, computed the ordinary way from token ids."""
    score = tiny_soft_prompt_score(n_virtual=2, target="red cat sat")
    tok = tiny_tokenizer(WORDS)
    prefix, target = tok("the dog")["input_ids"], tok("red cat sat")["input_ids"]
    soft = score.model.get_input_embeddings()(torch.tensor(prefix)).detach().numpy().ravel()
    with torch.no_grad():
        logits = score.model(torch.tensor([prefix + target])).logits[0, len(prefix) - 1:-1]
    expected = -torch.log_softmax(logits, -1)[torch.arange(3), torch.tensor(target)].mean().item()
    assert score(soft) == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(score(np.stack([soft, np.zeros_like(soft)]))[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="64 = 2 x 32"):
        score(np.zeros(10))


def test_claim_soft_prompt_beats_random_search(one_thread):
    """Claim (threshold fixed before the first run on these seeds): optimising the 4 x 32 soft prompt
    of the tiny GPT-2 (model seed 0, target "red cat sat", from x0 = 0) with a perfect ranking oracle
    and 300 queries, ZO-RankSGD (m = 10) ends at a lower gold NLL than random search (m = 10) by at
    least 2 paired standard errors over the fresh seeds 100-104 (DEFAULTS tuned on seeds 0-1)."""
    res = compare("soft-prompt", None, 300, seeds=range(100, 105), methods=("zo-ranksgd", "random-search"))
    gain, se = paired_gain(res["random-search"], res["zo-ranksgd"])
    assert gain >= 2 * se and gain > 0, (gain, se, res)
