"""PerfRL: instruction counting in the sandbox, the RRHF loss, the rewrite task and its reward."""

import pytest
import torch

from rlxf.agents import perf
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.objectives.ranking import rrhf_loss
from rlxf.policies.control import single_thread
from rlxf.tasks import sandbox

LOOP = "def f(n):\n    t = 0\n    for i in range(n):\n        t = t + i\n    return t\n"


def test_rrhf_loss_on_hand_numbers():
    # pairs with r_i < r_j: (0,1) gives max(0, -1 - -2) = 1, (0,2) and (1,2) give 0
    rank, ft = rrhf_loss(torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([0.25]))
    assert rank.tolist() == [1.0] and ft.tolist() == [0.25]
    # a tie in reward (candidates 0 and 1) is no pair: only (2,0) = 0.5 and (2,1) = 1.5 count
    rank, _ = rrhf_loss(torch.tensor([[0.0, -1.0, 0.5]]), torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([0.0]))
    assert rank.tolist() == [2.0]
    with pytest.raises(ValueError, match=r"\[B, k\]"):
        rrhf_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))


def test_sandbox_counts_instructions_deterministically():
    tests = [([n], sum(range(n))) for n in (0, 5, 10)]
    a, b = sandbox.run(LOOP, "f", tests, count=True), sandbox.run(LOOP, "f", tests, count=True)
    costs = [c.cost for c in a.cases]
    assert a.status == "ok" and a.pass_rate == 1.0 and costs == [c.cost for c in b.cases]
    # each loop iteration runs the same instructions: the cost is affine in n
    assert costs[0] > 0 and costs[2] - costs[1] == costs[1] - costs[0] > 0 and a.cost == sum(costs)
    # a builtin's work is not counted: the closed form costs the same for every n
    closed = sandbox.run("def f(n):\n    return sum(range(n))\n", "f", tests, count=True)
    assert len({c.cost for c in closed.cases}) == 1 and closed.cost < a.cost
    assert sandbox.run(LOOP, "f", tests).cost == 0  # no counting unless asked


def test_code_words_round_trip_and_constants():
    p = perf.perf_problems()["sum_multiples_of_3"]
    text = p.model_text(perf.REWRITES[p.template][0])
    assert "3" not in text.split() and "K0" in text.split() and text.split()[0] == "@0"
    assert p.program_text(text).replace(" ", "") == p.slow.replace(" ", "")
    assert perf.body_of("return x".split()).startswith("?")  # words before any line start do not parse


@pytest.fixture(scope="module")
def meter():
    return perf.CostMeter()


def test_every_rewrite_passes_and_the_reference_is_cheaper(meter):
    for template in perf.REWRITES:
        p = next(q for q in perf.perf_problems().values() if q.template == template)
        bodies = [p.slow, p.fast, *p.others]
        outs = meter.outcomes([p] * len(bodies), bodies)
        assert all(o.passed for o in outs), p.id
        assert outs[0].speedup == 1.0 and outs[1].speedup > 1.1, p.id


def test_reward_tiers(meter):
    p = perf.perf_problems()["count_letter_a"]
    broken, wrong, slow, fast = meter.outcomes([p] * 4, ["return (", "return 0", p.slow, p.fast])
    assert broken.reward == -1.0 and wrong.reward == 0.0 and wrong.speedup == 1.0
    assert slow.reward == 1.0 and fast.reward == slow.cost / fast.cost > 1.0


def test_sft_rows_mix_and_bad_kind():
    probs = list(perf.perf_problems().values())[:3]
    rows = perf.sft_rows(probs, {"fast": 1.0}, 2, seed=0)
    assert [t for _, t in rows] == [p.model_text(perf.REWRITES[p.template][1]) for p in probs for _ in range(2)]
    bugs = perf.sft_rows(probs, {"bug": 1.0}, 2, seed=0)
    assert all(t in perf.bug_texts(p) for p, t in bugs)
    with pytest.raises(ValueError, match="unknown kinds"):
        perf.sft_rows(probs, {"fastest": 1.0}, 1, seed=0)


def test_rrhf_training_smoke(tmp_path, meter):
    """Two RRHF steps on the shared loop move the weights and log the rank and fine-tuning terms."""
    probs = perf.split(0)[0][:4]
    policy = perf.make_policy(0, n_layer=1, n_embd=16)
    before = [p.detach().clone() for p in policy.model.parameters()]
    run = Run(tmp_path / "run", "perf smoke", fresh=True)
    with single_thread():  # two threads on a busy machine made these two steps take 45 s instead of 2
        perf.train_rrhf(run, policy, probs, meter, OptimConfig(steps=2, batch_size=2, checkpoint_every=0))
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))
    assert (tmp_path / "run").exists()


@pytest.mark.slow
def test_rrhf_speeds_up_the_sft_baseline_with_tests_passing(tmp_path):
    """PerfRL's claim at toy scale: RRHF from an SFT baseline (1-layer GPT-2, 64 wide, 150 SFT steps
    on mixed-quality rewrites, then 30 RRHF steps of 8 problems x k = 4) raises the measured speed-up
    (instruction counts, a failing rewrite scored 1.0) on the 50 held-out problems. Threshold, set
    before the first run: for each of 3 seeds (0, 1, 2), the paired per-problem gain in mean speed-up
    is >= 2 SE and the error rate (rewrites failing a test) does not rise. Equal: problems, samples
    (4 per problem, same sampling seed) and SFT data; RRHF adds its own 30 steps."""
    meter = perf.CostMeter()
    for seed in (0, 1, 2):
        out = perf.experiment(str(tmp_path / f"s{seed}"), seed, meter=meter)
        gain, se = perf.paired(out["sft"]["speedup"], out["rrhf"]["speedup"])
        err, _ = perf.paired(out["sft"]["error"], out["rrhf"]["error"])
        assert gain >= 2 * se, (seed, gain, se)
        assert err <= 0.0, (seed, err)
