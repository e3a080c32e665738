"""Critic-V (text-only): VEST-text corruptions, the Jaccard rule-based reward, RBR-ranked critique
pairs, the critique -> answer-again loop, and the claim that DPO on those pairs makes a better critic
whose feedback helps the reasoner."""

import random

import numpy as np
import pytest

from rlxf.algorithms.critique.critic_v import (LAB_CRITICS, CriticVConfig, LMReasoner, SelfCritic, corrupted_steps,
                                               critic_role, flag_critique, flagged_steps, gold_critique, insert_errors,
                                               jaccard, mean_jaccard, noisy_critic, rank_pairs, rbr, sft_rows,
                                               train_critic_dpo, train_critic_sft, vest_items)
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.policies.control import single_thread
from rlxf.critique.evaluate import closed_loop, direct_answers, paired_se
from rlxf.critique.format import corrector_prompt, critic_prompt, parse_critique
from rlxf.algorithms.critique import critic_v as cv
from rlxf.tasks.arithmetic import check_answer, check_steps, solve, split_steps


def test_jaccard_on_hand_computed_sets():
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert jaccard({1, 2, 3}, {1, 2}) == pytest.approx(2 / 3)
    assert jaccard({2}, {2}) == 1.0
    assert jaccard({1}, set()) == 0.0
    assert jaccard(set(), set()) == 1.0  # nothing flagged in a correct answer is a perfect critique
    assert jaccard({4}, {1, 2}) == 0.0


def test_critique_text_round_trips_its_flags():
    text = flag_critique({3, 1})
    assert text == "step 1: wrong\nstep 3: wrong\nverdict: incorrect 1"
    assert flagged_steps(text) == {1, 3}
    assert parse_critique(text).first_wrong_step == 1
    assert flag_critique(()) == "verdict: correct" and flagged_steps("verdict: correct") == set()
    assert flagged_steps("looks off\nverdict: incorrect 2") == {2}  # the verdict's step counts as flagged
    assert flagged_steps("no verdict here") == set()
    assert flagged_steps("step 2: wrong\nverdict: correct") == set()  # an accepting critique flags nothing


@pytest.mark.parametrize("problem", ["3+4*2=", "8*3*8-9=", "9-2-3+1="])
def test_insert_errors_makes_exactly_k_steps_wrong(problem):
    n_steps = len(check_steps(problem, solve(problem)))
    rng = random.Random(0)
    for k in range(n_steps + 1):
        for _ in range(5):
            answer = insert_errors(problem, k, rng)
            assert len(corrupted_steps(problem, answer)) == k
            if k < 2:  # two errors may cancel out in the final answer
                assert check_answer(problem, answer) == (k == 0)
    with pytest.raises(ValueError, match="k must be in 0..4"):
        insert_errors("3+4*2-1=", 5, rng)


def test_vest_items_carry_the_checker_gold_and_keep_splits_apart():
    train, test = vest_items(200, seed=1), vest_items(100, seed=1, split="test")
    assert {it.question for it in train}.isdisjoint(it.question for it in test)
    assert {it.meta["k"] for it in train} == {1, 2}  # like the paper's VEST, every item has errors
    assert not any(it.correct for it in train)
    with_clean = vest_items(60, seed=1, ks=(0, 1, 2))
    assert {it.meta["k"] for it in with_clean} == {0, 1, 2}
    with pytest.raises(ValueError, match="ks"):
        vest_items(5, ks=())
    for it in train + with_clean:
        wrong = {i + 1 for i, ok in enumerate(check_steps(it.question, it.answer)) if not ok}
        assert set(it.meta["corrupted"]) == wrong and len(wrong) == it.meta["k"]
        assert it.correct == (not wrong)
        assert it.first_wrong_step == (min(wrong) if wrong else None)
        assert rbr(it, gold_critique(it)) == 1.0


def test_rbr_scores_critiques_by_jaccard():
    it = next(it for it in vest_items(50, seed=2) if it.meta["k"] == 2)
    a, b = it.meta["corrupted"]
    assert rbr(it, flag_critique({a})) == 0.5
    assert rbr(it, flag_critique({a, b, 9})) == pytest.approx(2 / 3)
    assert rbr(it, "verdict: correct") == 0.0


def test_noisy_critics_perturb_gold_at_their_error_rate():
    items = vest_items(300, seed=3)
    prompts = [critic_prompt(it.question, it.answer) for it in items]
    perfect = [rbr(it, c) for it, c in zip(items, noisy_critic(0.0).complete(prompts))]
    always = [rbr(it, c) for it, c in zip(items, noisy_critic(1.0).complete(prompts))]
    half = [rbr(it, c) for it, c in zip(items, noisy_critic(0.5, seed=1).complete(prompts))]
    assert perfect == [1.0] * len(items)
    assert max(always) < 1.0  # every perturbation changes the flags
    assert 0.4 < np.mean(np.array(half) < 1.0) < 0.6


def test_rank_pairs_takes_the_first_best_and_worst_and_skips_ties():
    items = [it for it in vest_items(60, seed=4) if it.meta["k"] == 2][:2]
    a, b = items[0].meta["corrupted"]
    cands = [flag_critique({a}), flag_critique({a, b}), "verdict: correct", flag_critique({b})]
    same = [flag_critique({1})] * 3
    pairs = rank_pairs(items, [cands, same])
    assert pairs == [(critic_prompt(items[0].question, items[0].answer), cands[1], cands[2])]


def test_sft_rows_pair_critic_requests_with_gold_critiques():
    items = vest_items(5, seed=5)
    assert sft_rows(items) == [(critic_prompt(it.question, it.answer), gold_critique(it)) for it in items]


@pytest.fixture
def perfect_sampler(monkeypatch):
    """Replaces the reasoner LM's sampler by the canonical solution's continuation of each prompt."""
    asked = []

    def sample(policy, prompts, n, seed, *, temperature, max_new_tokens):
        asked.extend(prompts)
        out = []
        for p in prompts:
            question, _, prefix = p.partition("=")
            lines = split_steps(solve(question + "="))
            out.append(["\n".join(lines[len(prefix.split("\n")) - 1:])])
        return out

    monkeypatch.setattr(cv, "sample_responses", sample)
    return asked


def test_lm_reasoner_keeps_the_steps_before_the_flagged_one_and_redoes_the_rest(perfect_sampler):
    q = "8*3*8-9="
    wrong = "8*3=24\n24*8=190\n190-9=181\nanswer: 181"
    reasoner = LMReasoner(policy=None)
    out = reasoner.complete([corrector_prompt(q, wrong, flag_critique({2})),
                             corrector_prompt(q, wrong, flag_critique(())),
                             corrector_prompt(q, "", flag_critique({1}))])
    assert out == [solve(q), wrong, solve(q)]
    assert perfect_sampler == [q + "8*3=24\n", q]  # the accepted answer is not resampled


def test_self_critic_flags_where_its_own_solution_departs(perfect_sampler):
    q = "8*3*8-9="
    critic = SelfCritic(policy=None)
    out = critic.complete([critic_prompt(q, solve(q)), critic_prompt(q, "8*3=24\n24*8=190\n190-9=181\nanswer: 181"),
                           critic_prompt(q, "8*3=24\n24*8=192\n192-9=183\nanswer: 184")])
    assert out == [flag_critique(()), flag_critique({2}), flag_critique({4})]


def test_training_paths_run_at_tiny_size(tmp_path):
    cfg = CriticVConfig(sft_items=12, sft=OptimConfig(steps=2, batch_size=8, checkpoint_every=10**6), dpo_items=8,
                        temperatures=(1.0,), samples=1, simulated=(1.0,),
                        dpo=OptimConfig(steps=1, batch_size=4, checkpoint_every=10**6), n_embd=32)
    run = Run(tmp_path, "critic-v smoke", fresh=True)
    base = train_critic_sft(run, cfg, seed=0)
    dpo = train_critic_dpo(run, base, cfg, seed=0)
    assert run.metrics("critic_v_pairs")[0]["pairs"] >= 1
    assert any((p - q).abs().max() > 0 for p, q in zip(base.model.parameters(), dpo.model.parameters()))
    assert set(LAB_CRITICS) == {"critic_v_sft", "critic_v_dpo"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The claims below were measured on one intra-op thread. Float rounding differs with the thread
    count, and these tiny critics amplify it: with torch's default two threads claim (a) came out at
    SFT 0.240, DPO 0.203 (-0.037, se 0.021), against +0.110 on one thread. One thread makes the
    tests reproduce the figures they state."""
    with single_thread():
        yield


SEED = 1  # the claims' training and sampling seed; seed 0's figures were reported before VEST followed the paper


@pytest.fixture(scope="module")
def trained_critics(tmp_path_factory):
    """The SFT critic and its DPO copy (seed 1), trained once for the claim tests, and their per-item
    Jaccard on 500 held-out VEST items: test problems 500-999 of ``ArithmeticTask(0)`` (the reasoner's
    task and the critics' ``task_seed``, so neither has trained on them; problems 0-499 were the
    held-out set of the seed-0 figures), every item corrupted in 1-2 steps."""
    cfg = CriticVConfig()
    run = Run(tmp_path_factory.mktemp("critic_v"), "critic-v claim", fresh=True)
    sft = train_critic_sft(run, cfg, seed=SEED)
    dpo = train_critic_dpo(run, sft, cfg, seed=SEED)
    held_out = vest_items(500, seed=SEED, split="test", task_seed=cfg.task_seed, start=500)
    return {"sft": sft, "dpo": dpo, "held_out": held_out,
            "j_sft": mean_jaccard(critic_role(sft), held_out), "j_dpo": mean_jaccard(critic_role(dpo), held_out)}


def _gain(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured (seed 1, 500 held-out items, all corrupted): DPO lowers the mean "
                   "Jaccard from the SFT critic's 0.356 to 0.136 (-0.221, paired se 0.016)")
def test_claim_dpo_critic_localises_corrupted_steps_better_than_its_sft_start(trained_critics):
    """Claim (a), threshold fixed before the first run: the DPO critic's mean Jaccard(flagged,
    corrupted) on the 500 held-out VEST items beats the SFT critic it started from by >= 2 paired
    standard errors (and by more than 0). Held equal: the same SFT start, the same items, greedy
    decoding; DPO adds 150 steps on RBR-ranked pairs of the SFT critic's own samples (800 items).

    Re-measured on new seeds (critic seed 1, new held-out problems) after VEST was made to follow
    the paper (errors inserted in every item). Before (seed 0, a third of the items uncorrupted):
    SFT 0.230, DPO 0.340 (+0.110, se 0.031), met only by a DPO critic that accepted every answer."""
    t = trained_critics
    gain, se = _gain(t["j_dpo"], t["j_sft"])
    print(f"\nJaccard: SFT {t['j_sft'].mean():.3f}, DPO {t['j_dpo'].mean():.3f}, gain {gain:+.3f} (se {se:.3f})")
    assert gain > 0 and gain >= 2 * se


def best_constant_critic(items) -> tuple[frozenset[int], np.ndarray]:
    """The critic that flags the same steps in every answer, with the set chosen on ``items``
    themselves (so the strongest such critic), and its per-item Jaccard."""
    n = max(len(check_steps(it.question, it.answer)) for it in items)
    sets = [frozenset(k + 1 for k in range(n) if mask >> k & 1) for mask in range(1, 2 ** n)]
    scores = {s: np.array([jaccard(s, set(it.meta["corrupted"])) for it in items]) for s in sets}
    best = max(sets, key=lambda s: (scores[s].mean(), -len(s)))
    return best, scores[best]


def test_best_constant_critic_on_hand_made_items():
    items = [it for it in vest_items(80, seed=6) if len(check_steps(it.question, it.answer)) == 3][:3]
    for it, wrong in zip(items, [(1,), (1,), (2, 3)]):
        it.meta["corrupted"] = wrong
    best, scores = best_constant_critic(items)
    # sums over the three items: {1}: 2; {1, 2}: 1/2 + 1/2 + 1/3; {1, 3} the same; {2, 3}: 1; {1, 2, 3}: 1/3 + 1/3 + 2/3
    assert best == {1} and scores.tolist() == [1.0, 1.0, 0.0]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured (seed 1, 500 held-out items): the DPO critic's Jaccard 0.136 is below "
                   "the best constant critic's (flag steps 1-3 always) 0.416 (-0.281, se 0.014); the SFT critic's 0.356 too")
def test_claim_dpo_critic_beats_the_best_constant_critic(trained_critics):
    """A guard against a degenerate critic, threshold fixed before its first run: the DPO critic's
    mean Jaccard on the 500 held-out items beats the best constant critic (the same steps flagged
    in every answer, the set chosen on these items) by >= 2 paired standard errors. It replaces the
    check against the always-accept critic, which now scores 0 on every item (before, seed 0: the DPO
    critic equalled it, 0.340 against 0.340)."""
    t = trained_critics
    best, j_const = best_constant_critic(t["held_out"])
    gain, se = _gain(t["j_dpo"], j_const)
    print(f"\nDPO {t['j_dpo'].mean():.3f} vs constant {sorted(best)} {j_const.mean():.3f}: {gain:+.3f} (se {se:.3f})")
    assert gain > 0 and gain >= 2 * se


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured (seed 1, 500 held-out problems): the DPO critic's loop lowers the "
                   "reasoner's direct 0.166 to 0.086 (-0.080, se 0.013; c->i 43, i->c 3); the SFT critic's ends at 0.170 "
                   "(+0.004, se 0.014) and self-refine's at 0.224 (+0.058, se 0.014)")
def test_claim_dpo_critic_feedback_raises_the_reasoner_accuracy(trained_critics, arith_prover):
    """Claim (b), threshold fixed before the first run: the frozen reasoner (the ``arith_prover``
    fixture, sampling at temperature 1) with the DPO critic's feedback (up to 3 rounds, RealCritic's
    closed loop) is right more often than its single shot on the same 500 held-out problems by >= 2
    paired standard errors (and by more than 0). Self-refine's loop (the reasoner re-solving to
    check itself) is printed beside it, not asserted; the SFT critic's loop was printed in the seed-1
    run too and is left out since, to keep the test's cost (it ended at 0.170, +0.004, se 0.014).

    Re-measured on new seeds (critic seed 1, reasoner sampling seed 1, new problems) after VEST was
    made to follow the paper. Before (seed 0): direct 0.196, DPO loop 0.196 (+0.000: it accepted
    every answer), SFT loop 0.196, self-refine 0.240 (+0.044, se 0.016)."""
    t = trained_critics
    reasoner = LMReasoner(arith_prover, temperature=1.0, seed=SEED)
    direct = direct_answers(reasoner, t["held_out"])
    loops = {name: closed_loop(critic, reasoner, direct, rounds=3)
             for name, critic in (("dpo", critic_role(t["dpo"])), ("self", SelfCritic(arith_prover, seed=SEED + 1)))}
    for name, r in loops.items():
        print(f"{name}: direct {r['start_accuracy']:.3f} -> rounds {[round(a, 3) for a in r['per_round']]} "
              f"({r['accuracy'] - r['start_accuracy']:+.3f}, se {paired_se(r['final'], r['start']):.3f}), "
              f"{r['transitions']}")
    r = loops["dpo"]
    gain = r["accuracy"] - r["start_accuracy"]
    assert gain > 0 and gain >= 2 * paired_se(r["final"], r["start"])
