"""The online controller's pieces against hand numbers, its error path, resume, and the executors."""

from __future__ import annotations

import math

import pytest
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.controller import (
    KLSettings,
    OnlineConfig,
    OnlineError,
    Reducer,
    RunningMoments,
    build_method,
    train_online,
)
from rlxf.core.runs import Run
from rlxf.policies.language import LanguagePolicy
from rlxf.rewards.scoring import (
    RewardError,
    Samples,
    Scorer,
    bradley_terry_preference,
    ensemble_reward,
    group_win_rate,
)


def _samples(n: int, k: int = 2) -> Samples:
    return Samples([[5]] * n, [[6, 2]] * n, [True] * n, k)


def test_reducer_hand_numbers():
    per_step = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # global batch of 4 rows with 6 tokens in all; this micro-batch holds 2 of the rows
    assert Reducer("token", 4, 6.0, 3)(per_step, mask).item() == pytest.approx((1 + 2 + 3) / 6)
    assert Reducer("sequence", 4, 6.0, 3)(per_step, mask).item() == pytest.approx((1.5 + 3) / 4)
    assert Reducer("sum", 4, 6.0, 3)(per_step, mask).item() == pytest.approx((3 + 3) / 4)
    assert Reducer("constant", 4, 6.0, 3)(per_step, mask).item() == pytest.approx(6 / 12)


def test_scorer_sums_weighted_rewards_and_keeps_monitors_out():
    s = _samples(3)
    scorer = Scorer({"a": (lambda _s: [1.0, 2.0, 3.0], 2.0), "b": (lambda _s: torch.ones(3), -1.0)},
                    {"gold": lambda _s: [100.0, 100.0, 100.0]})
    total, parts = scorer(s, step=0)
    assert total.tolist() == [1.0, 3.0, 5.0]
    assert parts["gold"].tolist() == [100.0] * 3 and parts["a"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("fn, words", [
    (lambda s: 1 / 0, "raised at step 7"),
    (lambda s: [float("nan")] * len(s), "NaN/inf at step 7"),
    (lambda s: [1.0, 2.0], "shape (2,) at step 7"),
])
def test_scorer_names_the_failing_component_and_step(fn, words):
    with pytest.raises(RewardError, match="'judge'") as e:
        Scorer({"ok": (lambda s: [0.0] * len(s), 1.0), "judge": (fn, 1.0)})(_samples(3), step=7)
    assert words in str(e.value)


def test_ensemble_aggregations_hand_numbers():
    members = [lambda s: torch.tensor([1.0, 0.0]), lambda s: torch.tensor([3.0, 0.0])]
    s = _samples(2)
    assert ensemble_reward(members, "mean")(s).tolist() == [2.0, 0.0]
    assert ensemble_reward(members, "wco")(s).tolist() == [1.0, 0.0]
    # variance (not std) over members: var([1, 3]) = 1
    assert ensemble_reward(members, "uwo", lam=0.5)(s).tolist() == [1.5, 0.0]
    with pytest.raises(ValueError, match="kind"):
        ensemble_reward(members, "max")


def test_group_win_rate_is_mean_win_probability_within_each_group():
    gold = lambda s: torch.tensor([0.0, 1.0, 2.0, 5.0, 5.0, 5.0])  # noqa: E731
    s = Samples([[1]] * 6, [[2]] * 6, [True] * 6, k=3)
    wins = group_win_rate(bradley_terry_preference(gold, beta=1.0))(s)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [(sig(-1) + sig(-2)) / 2, (sig(1) + sig(-1)) / 2, (sig(2) + sig(1)) / 2, 0.5, 0.5, 0.5]
    assert wins.tolist() == pytest.approx(expected, abs=1e-6)


def test_running_moments_match_the_pooled_statistics():
    xs = [torch.randn(5, generator=torch.Generator().manual_seed(i)) * (i + 1) + i for i in range(4)]
    m = RunningMoments()
    for x in xs:
        m.update(x)
    pooled = torch.cat(xs)
    assert m.mean == pytest.approx(float(pooled.mean()), abs=1e-5)
    assert m.std == pytest.approx(float(pooled.std(unbiased=False)), abs=1e-5)


# -- the controller on an untrained tiny model (tests/conftest.py): errors, resume, executors ---


def _count_a(policy):
    a = policy.tokenizer.convert_tokens_to_ids("a")
    return lambda s: [float(r.count(a)) for r in s.response_ids]


def _cfg(steps=4, **kw) -> OnlineConfig:
    return OnlineConfig(method=kw.pop("method", "rloo"), samples_per_prompt=2, max_new_tokens=6,
                        kl=kw.pop("kl", KLSettings(coef=0.05)),
                        optim=OptimConfig(steps=steps, batch_size=4, lr=1e-3, checkpoint_every=2), **kw)


def _run(tmp_path, policy, scorer, cfg, executor=None, name="run"):
    pol = policy.copy()
    run = Run(tmp_path / name, "cfg")
    prompts = pol.encode(["a b", "c d", "e f", "b c"])
    train_online(run, "online", pol, pol.reference(), prompts, scorer, cfg, seed=3, executor=executor, quiet=True)
    return run, pol


def test_unknown_method_and_bad_args_are_named(tiny_policy):
    with pytest.raises(OnlineError, match="unknown online method 'ppo2'"):
        build_method(_cfg(method="ppo2"))
    with pytest.raises(OnlineError, match="grpo has no parameter bogus"):
        build_method(_cfg(method="grpo", method_args={"bogus": 1.0}))


def test_failing_reward_stops_with_its_name_keeps_checkpoint_and_resumes(tmp_path, tiny_policy):
    state = {"broken": True}

    def flaky(s: Samples):
        if state["broken"] and flaky.calls >= 3:
            raise TimeoutError("labeler did not answer")
        flaky.calls += 1
        return [0.0] * len(s)

    flaky.calls = 0
    scorer = Scorer({"labeler": (flaky, 1.0), "count": (_count_a(tiny_policy), 1.0)})
    with pytest.raises(RewardError, match=r"'labeler' raised at step 3: TimeoutError"):
        _run(tmp_path, tiny_policy, scorer, _cfg(steps=6))
    run = Run(tmp_path / "run", "cfg")
    assert (run.dir / "stages" / "online" / "checkpoint.pt").exists()
    assert [m["step"] for m in run.metrics("online")] == [0, 1, 2]
    state["broken"] = False
    run, _ = _run(tmp_path, tiny_policy, scorer, _cfg(steps=6))
    assert [m["step"] for m in run.metrics("online")] == [0, 1, 2, 3, 4, 5]


def test_local_executor_never_imports_ray():
    import subprocess
    import sys

    code = ("import sys; from rlxf.executors import make_executor; import rlxf.algorithms.online.rloo; "
            "make_executor(); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_adaptive_kl_coefficient_follows_the_controller(tmp_path, tiny_policy):
    from rlxf.objectives.policy_gradient import adaptive_kl_beta

    scorer = Scorer({"count": (_count_a(tiny_policy), 1.0)})
    cfg = _cfg(steps=4, kl=KLSettings(coef=0.1, target=1e4, horizon=8))
    run, _ = _run(tmp_path, tiny_policy, scorer, cfg)
    rows = run.metrics("online")
    assert rows[0]["kl_coef"] == pytest.approx(0.1)
    for prev, nxt in zip(rows, rows[1:]):  # each rollout's measured KL sets the next rollout's beta
        expected = adaptive_kl_beta(prev["kl_coef"], prev["kl"], 1e4, 8, n_steps=8)
        assert nxt["kl_coef"] == pytest.approx(expected, rel=1e-4)
    assert rows[-1]["kl_coef"] < 0.1  # KL far below a huge target lowers beta


def test_kl_as_reward_penalty_enters_the_token_rewards(tmp_path, tiny_policy):
    seen = []
    scorer = Scorer({"zero": (lambda s: [0.0] * len(s), 1.0)})
    pol = tiny_policy.copy()
    cfg = _cfg(steps=2, kl=KLSettings(mode="reward", estimator="k1", coef=0.5))
    train_online(Run(tmp_path / "kl", "cfg"), "online", pol, tiny_policy.reference(), pol.encode(["a b", "c d"]),
                 scorer, cfg, seed=0, quiet=True, on_rollout=seen.append)
    b = seen[-1]
    # with a zero score the sequence reward is exactly -beta * sum_t (log pi - log pi_ref)
    assert torch.allclose(b.token_rewards.sum(-1), -0.5 * b.steps.seq_logratio(), atol=1e-6)


def test_online_lab_config_errors_name_the_field(tmp_path):
    from rlxf.core.config import ConfigError, load_config
    from rlxf.lab.online import OnlineLab
    from rlxf.lab.pipeline import PipelineError

    def lab(*sets):
        cfg = load_config(OnlineLab.Config, None, [f'run.dir="{tmp_path / "lab"}"', *sets])
        return OnlineLab(cfg, quiet=True, log=lambda _m: None)

    with pytest.raises(PipelineError, match="should read 'name:method:reward'"):
        lab('online.runs=["ppo"]')
    with pytest.raises(PipelineError, match=r"online.runs\[x\].method: unknown method 'ppx'"):
        lab('online.runs=["x:ppx:rm"]')
    with pytest.raises(PipelineError, match=r"online.runs\[x\].reward must be one of"):
        lab('online.runs=["x:ppo:gold"]')
    with pytest.raises(ConfigError, match="run.executor must be one of local, ray, got 'dask'"):
        lab('run.executor="dask"')
    with pytest.raises(PipelineError, match=r"online.runs\[c\].method_args: constrained has no parameter treshold"):
        lab('online.runs=["c:constrained:rm"]', 'online.overrides={c = {method_args = {treshold = 1.0}}}')
    with pytest.raises(PipelineError, match=r"online.runs\[p\].kl.estimator must be one of"):
        lab('online.runs=["p:ppo:rm"]', 'online.overrides={p = {kl = {estimator = "k4"}}}')
    with pytest.raises(PipelineError, match=r"online.overrides.p: unknown key 'optim.lrr'"):
        lab('online.runs=["p:ppo:rm"]', 'online.overrides={p = {optim = {lrr = 1e-4}}}')
    with pytest.raises(PipelineError, match=r"online.overrides: no run named q"):
        lab('online.runs=["p:ppo:rm"]', 'online.overrides={q = {}}')
    with pytest.raises(PipelineError, match=r"online.max_new_tokens: online stages sample with \[generation\]"):
        lab('online.max_new_tokens=8')
    with pytest.raises(PipelineError, match=r"online.method: each run names its method"):
        lab('online.method="grpo"')
    assert not (tmp_path / "lab").exists()  # nothing written on bad input


def test_verifier_reward_scores_exact_answers_on_the_arithmetic_task():
    from rlxf.lab.rlvr import arithmetic_tokenizer
    from rlxf.rewards.scoring import verifier_reward
    from rlxf.tasks.arithmetic import check_answer, solve

    tok = arithmetic_tokenizer()
    enc = lambda t: tok(t, add_special_tokens=False).input_ids  # noqa: E731
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    right = solve("3+4*2=")
    wrong = right.replace("answer: 11", "answer: 14")
    s = Samples([enc("3+4*2=")] * 2, [enc(right) + [tok.eos_token_id], enc(wrong)], [True, False], k=2)
    assert decode(s.prompt_ids[0]) == "3+4*2=" and decode(s.response_ids[0]) == right  # chars round-trip
    assert verifier_reward(decode, check_answer, alpha=10.0)(s) == [10.0, 0.0]


def test_gold_at_kl_averages_the_baseline_near_that_kl():
    from rlxf.lab.online import gold_at_kl

    curve = [{"kl": 0.1, "gold_reward": 1.0}, {"kl": 0.9, "gold_reward": 2.0}, {"kl": 1.1, "gold_reward": 4.0},
             {"kl": 3.0, "gold_reward": 9.0}]
    assert gold_at_kl(curve, 1.0) == pytest.approx(3.0)  # 0.9 and 1.1 are within 25% of 1.0
    assert gold_at_kl(curve, 2.0) is None


def test_skipping_the_reference_pass_trains_the_same_and_is_refused_where_it_matters(tmp_path, tiny_policy):
    """kl.monitor = false with kl.mode = "none": the reference policy is never run, metrics carry
    no KL, and a method that ignores the reference trains exactly as with the pass."""
    scorer = Scorer({"count": (_count_a(tiny_policy), 1.0)})
    with_ref, pol_a = _run(tmp_path, tiny_policy, scorer, _cfg(method="grpo", kl=KLSettings(mode="none")), name="a")

    class NoReference(LanguagePolicy):
        def score(self, *a, **k):
            raise AssertionError("the reference pass ran")

    pol = tiny_policy.copy()
    ref = NoReference(pol.reference().model, pol.tokenizer)
    run = Run(tmp_path / "b", "cfg")
    prompts = pol.encode(["a b", "c d", "e f", "b c"])
    train_online(run, "online", pol, ref, prompts, scorer,
                 _cfg(method="grpo", kl=KLSettings(mode="none", monitor=False)), seed=3, quiet=True)
    a, b = with_ref.metrics("online"), run.metrics("online")
    assert all("kl" not in m for m in b)
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    assert all(torch.equal(x, y) for x, y in zip(pol_a.model.parameters(), pol.model.parameters()))
    with pytest.raises(OnlineError, match="kl.monitor = false skips the reference pass"):
        _run(tmp_path, tiny_policy, scorer, _cfg(method="grpo", kl=KLSettings(mode="reward", monitor=False)), name="c")
    with pytest.raises(OnlineError, match="online_dpo reads the reference log-probs itself"):
        _run(tmp_path, tiny_policy, scorer, _cfg(method="online_dpo", kl=KLSettings(mode="none", monitor=False)),
             name="d")


def test_online_lab_end_to_end_at_a_tiny_budget(tmp_path):
    """The lab's stages run in order on a tiny budget: the intransitive reward model is fit to
    relabelled pairs, and every run gets both win rates and (beside PPO) PPO's gold at its KL."""
    import json

    from rlxf.core.config import load_config
    from rlxf.lab.online import OnlineLab

    cfg = load_config(OnlineLab.Config, None, [
        f'run.dir="{tmp_path / "lab"}"', "sft.optim.steps=30", "sft.corpus_size=2000", "comparisons.n_pairs=200",
        "reward_model.optim.steps=10", "reward_model.held_out_pairs=50", "eval.n_prompts=40", "online.optim.steps=2",
        "online.optim.batch_size=4", 'online.runs=["ppo:ppo:rm","ppo_i:ppo:rm_intransitive","spo:spo:preferences"]'])
    lab = OnlineLab(cfg, quiet=True, log=lambda _m: None)
    summary = lab.execute()
    assert set(summary) == {"sft", "ppo", "ppo_i", "spo"}
    relabel = lab.run.result("reward_model_intransitive")
    # the 0.6/0.4 gold/brevity labeler disagrees with the stored Bradley-Terry labels on some pairs, not all
    assert 0.5 < relabel["agreement_with_comparison_labels"] < 1.0
    for name, row in summary.items():
        assert 0.0 <= row["labeler_win_rate_vs_sft"] <= 1.0
        assert ("ppo_gold_at_same_kl" in row) == (name not in ("sft", "ppo"))
    assert summary["sft"]["labeler_win_rate_vs_sft"] == pytest.approx(0.5)  # against itself
    assert json.loads((lab.run.dir / "summary.json").read_text()) == summary
