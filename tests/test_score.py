"""SCoRe (rlxf.algorithms.online.score): the two-attempt rollout, per-turn rewards and KL, the
self-correction metrics, the naive correction-trace baseline, and the claim at toy scale."""

from __future__ import annotations

import pytest
import torch

from rlxf.algorithms.online.controller import Batch, OnlineConfig, OnlineError, build_method
from rlxf.algorithms.online.score import (
    INSTRUCTION,
    SCoRe,
    acc_at,
    changed_share,
    correction_traces,
    delta_c_to_i,
    delta_i_to_c,
    edit_distance,
    edit_distance_ratio,
    problem_reward,
    score_config,
    second_prompt,
    self_correction_metrics,
    shaped_rewards,
    train_score,
    two_turn_corpus,
)
from rlxf.core.steps import Steps
from rlxf.lab.rlvr import ALPHABET
from rlxf.rewards.scoring import Samples
from rlxf.tasks.arithmetic import ArithmeticTask, solve


def test_instruction_is_in_the_arithmetic_alphabet():
    assert set(INSTRUCTION) <= set(ALPHABET)
    assert second_prompt("3+4*2=", "4*2=8\n3+8=11\nanswer: 11") == \
        "3+4*2=4*2=8\n3+8=11\nanswer: 11" + INSTRUCTION + "3+4*2="


def test_edit_distance_on_hand_cases():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("answer: 7", "answer: 7") == 0
    assert edit_distance_ratio("kitten", "sitting") == pytest.approx(3 / 7)
    assert edit_distance_ratio("", "") == 0.0
    assert edit_distance_ratio("ab", "cd") == 1.0


def test_self_correction_metrics_on_a_hand_built_table():
    r1 = [True, True, False, False, True]
    r2 = [True, False, True, False, True]
    first = ["a", "b", "c", "d", "e"]
    second = ["a", "x", "y", "d ", "e"]  # trailing space: not a change
    m = self_correction_metrics(r1, r2, first, second)
    assert m["acc_t1"] == pytest.approx(0.6) and m["acc_t2"] == pytest.approx(0.6)
    assert m["delta"] == pytest.approx(0.0)
    assert m["i_to_c"] == pytest.approx(0.2) and m["c_to_i"] == pytest.approx(0.2)
    assert m["changed"] == pytest.approx(0.4)
    assert m["edit_ratio"] == pytest.approx((0 + 1 + 1 + 0.5 + 0) / 5)
    assert acc_at([1, 0, 0, 0]) == 0.25
    assert delta_i_to_c([0, 0, 1], [1, 0, 1]) == pytest.approx(1 / 3)
    assert delta_c_to_i([1, 1, 0], [0, 1, 1]) == pytest.approx(1 / 3)
    assert changed_share(["1", "2"], ["1", "3"]) == 0.5


def test_shaped_reward_table():
    r1 = torch.tensor([0.0, 1.0, 0.0, 1.0])
    r2 = torch.tensor([1.0, 1.0, 0.0, 0.0])
    t1, t2 = shaped_rewards(r1, r2, stage=2, alpha=10.0)
    assert t1.tolist() == r1.tolist()
    assert t2.tolist() == [11.0, 1.0, 0.0, -10.0]  # i->c, c->c, i->i, c->i
    t1, t2 = shaped_rewards(r1, r2, stage=1, alpha=10.0)
    assert t1.tolist() == [0.0] * 4 and t2.tolist() == r2.tolist()


def _batch(scores, logratios, k):
    """A batch whose row i has one step with log pi - log pi_ref = logratios[i]."""
    n = len(scores)
    lp = torch.full((n, 1), -1.0)
    steps = Steps(logps=lp, mask=torch.ones(n, 1), ref_logps=lp - torch.tensor(logratios)[:, None],
                  old_logps=lp)
    samples = Samples([[0]] * n, [[1]] * n, [True] * n, k)
    return Batch(samples, steps, torch.tensor(scores), {}, torch.zeros(n, 1), {})


@pytest.mark.parametrize("stage", [1, 2])
def test_prepare_gives_per_turn_rloo_advantages_with_per_turn_kl(stage):
    # one prompt, m = 2: rows 0-1 first attempts, rows 2-3 their second attempts
    scores = [1.0, 0.0, 1.0, 1.0]  # pair 0: c->c, pair 1: i->c
    kl = [0.5, 1.5, 2.0, 4.0]
    batch = _batch(scores, kl, k=4)
    SCoRe(stage, alpha=10.0, beta1=0.01, beta2=0.1).prepare(batch, None)
    if stage == 1:
        turn1 = [0 - 0.1 * 0.5, 0 - 0.1 * 1.5]
        turn2 = [1 - 0.01 * 2.0, 1 - 0.01 * 4.0]
    else:
        turn1 = [1 - 0.01 * 0.5, 0 - 0.01 * 1.5]
        turn2 = [1 - 0.01 * 2.0, 11 - 0.01 * 4.0]
    want = [turn1[0] - turn1[1], turn1[1] - turn1[0], turn2[0] - turn2[1], turn2[1] - turn2[0]]
    assert batch.extra["adv"].tolist() == pytest.approx(want, abs=1e-5)
    assert batch.stats["acc_t1"] == 0.5 and batch.stats["acc_t2"] == 1.0


class _ScriptedExecutor:
    """Answers every prompt with ``answer: j`` (j = sample number, or 9 for single samples); each row's
    log-probs hold its position in the call, so a reordering of steps shows."""

    calls = 0

    def sample(self, policy, index, prompts, n, max_new_tokens, temperature, top_p, seed):
        from rlxf.policies.language import Rollout

        self.calls += 1
        texts = [f"answer: {j if n > 1 else 9}" for _ in prompts for j in range(n)]
        ids = policy.encode_responses(texts)
        width = max(map(len, ids))
        base = 100.0 * self.calls
        logps = torch.tensor([[base + i] * width for i in range(len(ids))])
        return Rollout([p for p in prompts for _ in range(n)], ids, [True] * len(ids),
                       Steps(logps=logps, mask=torch.ones_like(logps)))


def test_rollout_groups_each_prompts_first_attempts_then_their_second_attempts():
    from rlxf.lab.rlvr import arithmetic_tokenizer
    from rlxf.policies.language import LanguagePolicy
    from rlxf.policies.tiny import tiny_causal_lm

    tok = arithmetic_tokenizer()
    policy = LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=8, n_head=2, max_positions=128), tok)
    problems = ["3+4*2=", "1+1-1="]
    ro = SCoRe().rollout(_ScriptedExecutor(), policy, 0, policy.encode(problems), score_config(1, attempts=2), 0)
    prompts = [policy.decode(p) for p in ro.prompt_ids]
    assert prompts == [problems[0], problems[0], second_prompt(problems[0], "answer: 0"),
                       second_prompt(problems[0], "answer: 1"),
                       problems[1], problems[1], second_prompt(problems[1], "answer: 0"),
                       second_prompt(problems[1], "answer: 1")]
    assert [policy.decode(r) for r in ro.response_ids] == ["answer: 0", "answer: 1", "answer: 9", "answer: 9"] * 2
    # first call rows 0-3 (log-probs 100..103), second call rows 0-3 (200..203), interleaved per prompt
    assert ro.steps.logps[:, 0].tolist() == [100, 101, 200, 201, 102, 103, 202, 203]


def test_problem_reward_scores_each_row_against_its_problem():
    problems = ["3+4*2=", "1+1-1="]
    texts = [solve(problems[0]), "answer: 2", solve(problems[1])]
    vocab = {t: i for i, t in enumerate(texts)}
    s = Samples([[0]] * 3, [[vocab[t]] for t in texts], [True] * 3, 1, prompt_index=[0, 0, 1])
    fn = problem_reward(problems, lambda ids: texts[ids[0]])
    assert fn(s) == [1.0, 0.0, 1.0]
    s.prompt_index = None
    with pytest.raises(ValueError, match="prompt_index"):
        fn(s)


def test_correction_traces_pair_wrong_with_right_and_keep_right():
    q = ["3+4*2=", "3+4*2=", "1+1-1=", "2*2+1="]
    good = [solve(x) for x in q]
    first = [good[0], "answer: 3", "answer: 9", "answer: 0"]
    second = ["answer: 4", "answer: 5", good[2], "answer: 1"]
    rows = correction_traces(q, first, second)
    assert rows == [
        {"prompt": second_prompt(q[0], good[0]), "completion": good[0]},  # right -> right
        {"prompt": second_prompt(q[1], "answer: 3"), "completion": good[0]},  # fixed by another sample's right answer
        {"prompt": second_prompt(q[2], "answer: 9"), "completion": good[2]},  # fixed by its own second attempt
    ]  # problem 3: no right attempt anywhere, no row


def test_two_turn_corpus_keeps_a_right_first_attempt_and_answers_a_corrupted_one_anew():
    from rlxf.tasks.arithmetic import check_answer, check_steps

    task = ArithmeticTask(seed=0)
    rows = two_turn_corpus(task, 40, seed=0)
    assert rows[:40] == task.corpus(40)
    kept = 0
    for first, second in zip(rows[:40], rows[40:]):
        q, solution = first["prompt"], first["completion"]
        assert second["completion"] == solution  # always the worked solution of the same problem
        assert second["prompt"].startswith(q) and second["prompt"].endswith(INSTRUCTION + q)
        shown = second["prompt"][len(q):-len(INSTRUCTION + q)]
        if shown == solution:
            kept += 1
        else:  # one step corrupted: a wrong answer that the checker flags at exactly one line
            assert not check_answer(q, shown) and check_steps(q, shown).count(False) == 1
    assert 10 <= kept <= 30  # about half the shown attempts are right and kept, half corrupted


def test_config_errors():
    with pytest.raises(OnlineError, match="stage"):
        build_method(OnlineConfig(method="score", method_args={"stage": 3}))
    assert isinstance(build_method(OnlineConfig(method="score", method_args={"stage": 1})), SCoRe)
    cfg = score_config(2)
    cfg.kl.mode = "reward"
    with pytest.raises(OnlineError, match="kl.mode"):
        SCoRe().rollout(None, None, 0, [[1]], cfg, 0)


def test_smoke_two_stages_on_the_controller(tmp_path):
    from rlxf.core.runs import Run
    from rlxf.lab.rlvr import arithmetic_tokenizer
    from rlxf.policies.language import LanguagePolicy
    from rlxf.policies.tiny import tiny_causal_lm

    tok = arithmetic_tokenizer()
    policy = LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=16, n_head=2, max_positions=128, seed=0), tok)
    start = {k: v.clone() for k, v in policy.model.state_dict().items()}
    run = Run(tmp_path, "score smoke", fresh=True)
    cfg = score_config(4, batch_size=2, attempts=2, max_new_tokens=8)
    train_score(run, "score", policy, ArithmeticTask(seed=0).prompts(8), cfg, stage1_steps=2)
    lines = [ln for ln in (tmp_path / "metrics.jsonl").read_text().splitlines() if "acc_t1" in ln]
    assert len(lines) == 4 and '"kl_t2"' in lines[0]
    assert any(not torch.equal(v, policy.model.state_dict()[k]) for k, v in start.items())


@pytest.fixture(scope="module")
def two_turn_start(arith_prover, tmp_path_factory):
    """The weak prover SFT'd 600 steps on the two-attempt format (keep a right first attempt, answer a
    corrupted one anew), corpus seed 1."""
    import copy

    from rlxf.core.runs import Run
    from rlxf.lab.self_correction import two_turn_start

    run = Run(tmp_path_factory.mktemp("two_turn_start"), "two-attempt start", fresh=True)
    return two_turn_start(run, copy.deepcopy(arith_prover), ArithmeticTask(seed=0), seed=1)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured (seed 1, 500 test problems, greedy; start that keeps right answers: Delta -0.038, changed 0.47): "
    "Delta SCoRe -0.028 (Acc@t1 0.242, t2 0.214), two-turn RL -0.016, Pair-SFT +0.010; SCoRe - two-turn RL "
    "-0.012 (se 0.012), SCoRe - Pair-SFT -0.038 (se 0.012): neither holds; changed answers 0.73 / 0.57 / 0.56"))
def test_score_improves_more_from_attempt_1_to_2_than_naive_sft_and_two_turn_rl(two_turn_start, tmp_path):
    """SCoRe (stage 1: 20 steps, stage 2: 40 steps, alpha 10, beta1 0.01, beta2 0.1) against plain two-turn
    RL (60 stage-2 steps, alpha 0, no stage 1) and naive Pair-SFT (pairs of the start's own attempts:
    wrong -> a right attempt, right -> itself; 100 SFT steps), all from the same two-attempt start and
    each with the same number of sampled attempt pairs (60 x 16 prompts x 2 = 1920).

    Threshold (set before the first run): on 500 test problems, greedy, SCoRe's Delta = Acc@t2 - Acc@t1
    exceeds each baseline's by at least 2 standard errors of the per-problem paired difference of
    (r2 - r1). Reported for every arm: the share of changed answers and the mean edit-distance ratio.
    """
    from rlxf.core.runs import Run
    from rlxf.lab.self_correction import compare, paired_gain

    run = Run(tmp_path, "score claim", fresh=True)
    table = compare(run, two_turn_start, ArithmeticTask(seed=0), arms=("score", "two_turn_rl", "pair_sft"), seed=1)
    for name, m in table.items():
        print(name, {k: round(v, 3) for k, v in m.items() if k not in ("r1", "r2")})
    gains = {arm: paired_gain(table["score"], table[arm]) for arm in ("two_turn_rl", "pair_sft")}
    print("paired gains of SCoRe's delta (mean, se):", gains)
    for arm, (mean, se) in gains.items():
        assert mean >= 2 * se, f"SCoRe's delta beats {arm}'s by {mean:+.3f} (se {se:.3f})"
