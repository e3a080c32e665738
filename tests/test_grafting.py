"""Grafting (skill localisation): each step against hand-computed numbers, then the claim on the arithmetic task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlxf.algorithms import grafting as G
from rlxf.rewards.evaluation import expected_calibration_error


def _params():
    pre = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.0, 0.0, 0.0])}
    ft = {"w": torch.tensor([[1.5, 2.0], [0.0, 4.1]]), "b": torch.tensor([1.0, -0.2, 0.05])}
    return pre, ft


def test_graft_is_the_formula_on_hand_made_tensors():
    pre, ft = _params()
    mask = {"w": torch.tensor([[1.0, 1.0], [0.0, 0.5]]), "b": torch.tensor([0.0, 1.0, 0.0])}
    out = G.graft(pre, ft, mask)
    # pre + mask * (ft - pre): w = [[1 + 0.5, 2 + 0], [3 + 0, 4 + 0.5 * 0.1]], b = [0, -0.2, 0]
    assert torch.allclose(out["w"], torch.tensor([[1.5, 2.0], [3.0, 4.05]]))
    assert torch.allclose(out["b"], torch.tensor([0.0, -0.2, 0.0]))
    ones = {k: torch.ones_like(v) for k, v in pre.items()}
    assert all(torch.equal(G.graft(pre, ft, ones)[k], ft[k]) for k in ft)
    with pytest.raises(ValueError, match="do not match"):
        G.graft(pre, {"w": ft["w"]}, mask)


def test_highest_movement_mask_takes_the_largest_moves_within_budget():
    pre, ft = _params()  # |ft - pre| = w [[.5, 0], [3, .1]], b [1, .2, .05]; P = 7
    assert G.budget(pre, 0.3) == 2  # floor(0.3 * 7)
    m = G.highest_movement_mask(pre, ft, 0.3)
    assert torch.equal(m["w"], torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(m["b"], torch.tensor([1.0, 0, 0]))
    m = G.highest_movement_mask(pre, ft, 0.5)  # 3 entries: 3, 1, .5
    assert G.mask_size(m) == 3 and m["w"][0, 0] == 1
    assert G.budget(pre, 1e-6) == 1
    with pytest.raises(ValueError, match="sparsity"):
        G.budget(pre, 0.0)


def test_relaxation_starts_at_the_base_mask():
    pre, ft = _params()
    base = G.highest_movement_mask(pre, ft, 0.5)
    scores = G.initial_scores(base, torch.Generator().manual_seed(0))
    assert all(((s >= 0) & (s < 1)).all() for s in scores.values())
    gamma = G.relaxed_mask(base, scores, bias=10.0)
    for k in base:  # sigmoid(S - 10) <= sigmoid(-9) = 1.23e-4
        assert (gamma[k] - base[k]).abs().max() <= 1.24e-4
        assert ((gamma[k] > 0) & (gamma[k] < 1)).all()
    # by hand: base 1, S = 10 -> 1 - sigmoid(0) = 0.5; base 0, S = 12 -> sigmoid(2)
    g = G.relaxed_mask({"x": torch.tensor([1.0, 0.0])}, {"x": torch.tensor([10.0, 12.0])})
    assert torch.allclose(g["x"], torch.tensor([0.5, 1 / (1 + math.exp(-2))]))


def test_manual_mask_update_on_a_hand_computed_case():
    # a one-parameter-vector "model" with loss L = sum(c * theta) per batch: dL/dtheta = c
    model = torch.nn.Linear(2, 1, bias=False)
    pre = {"weight": torch.tensor([[0.0, 1.0]])}
    ft = {"weight": torch.tensor([[2.0, 0.0]])}  # delta = [2, -1]
    cs = [torch.tensor([[1.0, 3.0]]), torch.tensor([[3.0, 1.0]])]  # mean dL/dtheta = [2, 2]

    def loss_fn(i):
        return (cs[i] * model.weight).sum()

    mask = {"weight": torch.tensor([[0.5, 0.5]])}
    g = G.mask_gradient(model, pre, ft, mask, loss_fn, n_batches=2)
    assert torch.allclose(g["weight"], torch.tensor([[4.0, -2.0]]))  # mean grad * delta
    assert torch.allclose(model.weight, torch.tensor([[1.0, 0.5]]))  # left at the graft
    base = {"weight": torch.tensor([[1.0, 0.0]])}
    scores = {"weight": torch.tensor([[10.0, 10.0]])}  # sigmoid'(0) = 1/4
    new = G.update_scores(scores, base, g, lr=2.0, bias=10.0)
    # S - lr (1 - 2 base) g sigma': [10 - 2 * (-1) * 4 / 4, 10 - 2 * 1 * (-2) / 4] = [12, 11]
    assert torch.allclose(new["weight"], torch.tensor([[12.0, 11.0]]))
    gamma = G.relaxed_mask(base, new)  # [1 - sigmoid(2), sigmoid(1)]: the first entry leaves, the second joins
    assert torch.allclose(G.round_mask(gamma, k=2)["weight"], torch.tensor([[0.0, 1.0]]))


def test_round_mask_respects_the_budget_and_learn_mask_never_exceeds_it():
    gamma = {"a": torch.tensor([0.9, 0.6, 0.55, 0.1]), "b": torch.tensor([0.7, 0.49])}
    assert torch.equal(G.round_mask(gamma, k=2)["a"], torch.tensor([1.0, 0, 0, 0]))
    assert torch.equal(G.round_mask(gamma, k=2)["b"], torch.tensor([1.0, 0]))
    assert G.mask_size(G.round_mask(gamma, k=10)) == 4  # only the entries >= 0.5

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    pre = G.parameters_of(model)
    ft = {k: v + torch.randn_like(v) for k, v in pre.items()}
    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def loss_fn(i):
        return ((model(x[i * 16:(i + 1) * 16]) - y[i * 16:(i + 1) * 16]) ** 2).mean()

    def score_fn(m):
        with torch.no_grad():
            return -float(((m(x) - y) ** 2).mean())

    res = G.learn_mask(model, pre, ft, loss_fn, 2, score_fn, G.GraftSettings(sparsity=0.1, epochs=4, lr=1e5))
    k = G.budget(pre, 0.1)
    assert all(h["size"] <= k for h in res.history) and G.mask_size(res.mask) <= k
    assert res.score == max(h["score"] for h in res.history)
    assert res.history[0]["overlap_base"] == 1.0
    assert any(h["overlap_base"] < 1.0 for h in res.history[1:])  # the update moved the mask
    assert torch.allclose(model[0].weight, G.graft(pre, ft, res.mask)["0.weight"])  # the model holds the kept graft


def test_jaccard_by_hand():
    a = {"x": torch.tensor([1.0, 1.0, 0.0, 0.0])}
    b = {"x": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert G.jaccard(a, b) == pytest.approx(1 / 3)
    assert G.jaccard(a, a) == 1.0


def test_ece_and_gain_fraction_on_hand_computed_numbers():
    from rlxf.lab.grafting import gain_fraction

    # bins of width 0.1: {0.05, 0.05} outcomes {0, 1} -> |0.5 - 0.05| = 0.45; {0.95} outcome 1 -> 0.05;
    # {0.72} outcome 0 -> 0.72. ECE = (2 * 0.45 + 0.05 + 0.72) / 4
    assert expected_calibration_error([0.05, 0.05, 0.95, 0.72], [0, 1, 1, 0]) == pytest.approx((0.9 + 0.05 + 0.72) / 4)
    base, ft, graft = [0, 0, 0, 0, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 1]
    f, se = gain_fraction(base, ft, graft)
    assert f == pytest.approx(0.75)
    # a - f b = [.25, .25, .25, -.75, 0]: SE = std / sqrt(5), divided by mean(b) = 0.8
    assert se == pytest.approx(np.std([.25, .25, .25, -.75, 0], ddof=1) / math.sqrt(5) / 0.8)
    with pytest.raises(ValueError, match="gains nothing"):
        gain_fraction(ft, base, graft)


def _tiny_lab(**kw):
    from rlxf.algorithms.loop import OptimConfig
    from rlxf.lab.grafting import GraftLab

    return GraftLab(pretrain_rows=64, pretrain=OptimConfig(steps=4, batch_size=8, checkpoint_every=10**6),
                    finetune_rows=16, finetune=OptimConfig(steps=2, batch_size=8, checkpoint_every=10**6),
                    n_layer=1, n_embd=16, graft=G.GraftSettings(epochs=1), mask_batches=1, n_select=4, n_test=8,
                    max_new_tokens=8, **kw)


def test_lab_problem_sets_are_truly_held_out():
    """Every set comes from one task seed, so its test split is disjoint from its train split (two task
    seeds' splits are not: their hashes are independent), and no test problem was trained on."""
    from rlxf.lab.grafting import GraftLab, data

    sets = data(GraftLab(seed=3, n_test=500))
    trained = {r["prompt"] for r in sets["pretrain"] + sets["finetune"]} | set(sets["validation"])
    assert len(sets["test"]) == len(sets["held_out"]) == 500
    assert not trained & (set(sets["test"]) | set(sets["held_out"]))
    assert all("-" not in r["prompt"] for r in sets["finetune"]) and all("-" not in p for p in sets["test"])
    assert all("-" in p for p in sets["held_out"])
    share = np.mean(["answer = " in r["completion"] for r in sets["pretrain"]])
    assert 0.45 < share < 0.55  # about half the pre-training solutions are in the other format


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_lab_runs_end_to_end_at_a_tiny_budget(tmp_path, method):
    from rlxf.lab.grafting import plot, run_lab, table

    out = run_lab(_tiny_lab(method=method, sparsities=(0.01,)), tmp_path / "run")
    assert out["mask_sizes"]["graft 1%"] <= G.budget({"x": torch.zeros(out["n_parameters"])}, 0.01)
    assert set(out["test"]) == {"base", "finetuned", "graft 1%"}
    assert all(len(r["correct"]) == 8 for r in out["per_item"]["held_out"].values())
    assert "graft 1%" in table(out)
    if method == "sft":
        plot([out, out], tmp_path / "kept.png")
        assert (tmp_path / "kept.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="first run (seed 0, 500 test problems): base 0.350, SFT 0.410, 1% graft 0.416 "
                   "strict greedy accuracy; gain kept 1.100 +- 0.355 (delta-method SE), so f - 2 SE = 0.39 < 0.8: this "
                   "seed's base already wrote the strict format on most problems, the SFT gain is small and its "
                   "fraction too noisy to show 80%; ECE base 0.172, SFT 0.048, graft 0.195")
def test_graft_of_one_percent_keeps_80_percent_of_the_sft_gain(tmp_path):
    """The claim (issue 22, item 5), pre-registered before its first run: on the arithmetic task, a
    tiny GPT-2 pre-trained on worked solutions half of which end ``answer = N``, SFT on 256 strict
    solutions (2-3 operators, no '-'), a graft of at most 1% of the parameters (mask learned for 5
    epochs from the highest-movement mask) keeps at least 80% of the fine-tuned gain in strict greedy
    accuracy. Seed 0 (the settings were chosen on seed 100), 500 paired held-out test problems.

    Gain kept f = (acc_graft - acc_base) / (acc_ft - acc_base) over the same 500 problems; its SE is the
    delta method's, SE(mean(a - f b)) / mean(b), a = graft - base and b = ft - base per problem. Passes
    iff the fine-tune's gain over the base is beyond 2 paired SE and f - 2 SE >= 0.8. Calibration (ECE)
    and the held-out type ('-' problems) are printed for the guide, not asserted."""
    from rlxf.algorithms.evaluate import paired_gain
    from rlxf.lab.grafting import GraftLab, run_lab, table

    out = run_lab(GraftLab(seed=0, sparsities=(0.01,)), tmp_path / "run")
    print(table(out))
    recs = out["per_item"]["test"]
    assert len(recs["base"]["correct"]) == 500
    gain, gain_se = paired_gain(recs["finetuned"]["correct"], recs["base"]["correct"])
    assert gain >= 2 * gain_se, f"the fine-tune gains {gain:+.3f} +- {gain_se:.3f} over the base"
    f, se = out["test"]["graft 1%"]["gain_kept"], out["test"]["graft 1%"]["gain_kept_se"]
    assert out["mask_sizes"]["graft 1%"] <= 0.01 * out["n_parameters"]
    assert f - 2 * se >= 0.8, f"graft keeps {f:.3f} +- {se:.3f} of the gain"
