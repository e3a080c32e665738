"""MultiCritique (rlxf.algorithms.critique.multicritique): critique units, simulated agents, the
meta-critique, MARV pairs, the critic trainers, and the claim against a single agent's critiques."""

import random
from dataclasses import replace

import pytest

from rlxf.algorithms.critique import multicritique as mc
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.critique.bench import CritiqueItem, arithmetic_items
from rlxf.critique.format import critic_prompt, parse_critique, Verdict
from rlxf.critique.simulated import simulated_corrector
from rlxf.tasks.arithmetic import check_steps

Q, WRONG = "3+4*2=", "4*2=9\n3+9=12\nanswer: 12"  # step 1 is wrong, the rest follows from it


def test_a_critique_of_units_works_each_step_again_and_rejects_at_the_first_flag():
    notes = mc.recompute(Q, WRONG)
    assert notes == ["4*2=8", "3+9=12", "answer 12"]  # the right value of each operation, as written
    text = mc.flag_critique(notes, [3, 1, 1, 7])  # repeats and steps past the end are dropped
    assert text == "step 1: 4*2=8 wrong\nstep 2: 3+9=12 ok\nstep 3: answer 12 wrong\nverdict: incorrect 1"
    assert mc.flagged_steps(text) == [1, 3]
    assert mc.flagged_steps("step 0: wrong\nstep 2: ok\nstep 4: 1+1=2 wrong") == [4]
    assert parse_critique(text) == Verdict(False, 1)
    assert parse_critique(mc.flag_critique(notes, [])) == Verdict(True)
    assert mc.recompute("7=", "answer: 7") == ["answer 7"]


def test_step_kinds():
    assert [mc.step_kind(s) for s in ("4*2=9", "3+9=12", "12-3=9", "answer: 12")] == ["*", "+", "-", "answer"]


def test_a_perfect_agent_flags_exactly_the_checker_s_wrong_steps_and_a_blind_one_misses_its_kind():
    request = critic_prompt(Q, WRONG)
    assert check_steps(Q, WRONG) == [False, True, True]
    perfect = mc.critic_agent(mc.AgentProfile(miss=0.0, false_alarm=0.0), seed=0)
    assert mc.flagged_steps(perfect.complete([request])[0]) == [1]
    blind = mc.critic_agent(mc.AgentProfile(miss=0.0, false_alarm=0.0, blind_spot=("*",), blind_miss=1.0), seed=0)
    assert parse_critique(blind.complete([request])[0]) == Verdict(True)


def test_agent_rates_follow_the_profile():
    """Over 4000 draws the miss and false-alarm rates are within 4 standard errors of the profile's."""
    prof = mc.AgentProfile(miss=0.3, false_alarm=0.1, blind_spot=("answer",), blind_miss=0.8)
    rng = random.Random(0)
    steps, labels = ["4*2=9", "3+9=12", "answer: 13"], [False, True, False]
    flags = [mc.noisy_flags(prof, labels, steps, rng) for _ in range(4000)]
    for k, p in ((1, 0.7), (2, 0.1), (3, 0.2)):
        rate = sum(k in f for f in flags) / len(flags)
        assert abs(rate - p) < 4 * (p * (1 - p) / len(flags)) ** 0.5, (k, rate, p)


def test_bad_profiles_are_named():
    with pytest.raises(ValueError, match="false_alarm"):
        mc.AgentProfile(false_alarm=1.5)
    with pytest.raises(ValueError, match="blind_spot"):
        mc.AgentProfile(blind_spot=("/",))


def test_the_meta_critique_keeps_only_confirmed_units_from_every_agent():
    notes = mc.recompute(Q, WRONG)
    critiques = [mc.flag_critique(notes, [2, 3]), mc.flag_critique(notes, [1]), "verdict: correct"]
    assert mc.valid_units(Q, WRONG, critiques[0]) == []
    assert mc.meta_critique(Q, WRONG, critiques) == mc.flag_critique(notes, [1])
    right = "4*2=8\n3+8=11\nanswer: 11"
    merged = mc.meta_critique(Q, right, [mc.flag_critique(mc.recompute(Q, right), [2])])
    assert parse_critique(merged) == Verdict(True) and mc.flagged_steps(merged) == []


def test_merged_critiques_are_more_often_right_than_any_single_agent():
    items = arithmetic_items(300, seed=5)
    agents = {n: mc.critic_agent(p, seed=i) for i, (n, p) in enumerate(mc.AGENTS.items())}
    gathered = mc.gather(agents, items)
    merged = mc.merged_critiques(gathered, items)
    best = mc.best_single_agent(items, gathered)
    assert mc.raw_accuracy(items, merged) > mc.raw_accuracy(items, gathered[best]) + 0.1
    precision = mc.unit_precision(gathered, items)
    assert set(precision) == set(mc.AGENTS) and all(0 < p < 1 for p in precision.values())


def test_marv_scores_a_critique_by_the_revisions_it_leads_to():
    wrong = CritiqueItem("arithmetic", Q, WRONG, False, 1, 2)
    right = CritiqueItem("arithmetic", Q, "4*2=8\n3+8=11\nanswer: 11", True, None, 2)
    fixers = [simulated_corrector(1.0, seed=s) for s in range(2)]
    notes = mc.recompute(Q, WRONG)
    critiques = [mc.flag_critique(notes, [1]), mc.flag_critique(notes, [2]), "verdict: correct"]
    assert mc.marv_score(wrong, critiques, fixers) == [1.0, 0.0, 0.0]  # only rejecting at step 1 helps
    assert mc.marv_score(right, ["verdict: correct"], [simulated_corrector(0.0)]) == [1.0]
    assert mc.marv_score(right, ["verdict: incorrect 1"], [simulated_corrector(0.0)]) == [0.0]  # a false alarm breaks it


TINY = mc.MultiCritiqueConfig(n_train=24, sft=OptimConfig(steps=2, batch_size=8, checkpoint_every=10**6),
                              dpo=OptimConfig(steps=2, batch_size=4, checkpoint_every=10**6), dpo_items=12, samples=3)


def test_every_lab_critic_trains_and_answers_critic_requests(tmp_path):
    run = Run(tmp_path / "run", "multicritique smoke", fresh=True)
    items = arithmetic_items(3, seed=9)
    for kind in mc.KINDS:
        critic = mc.lab_critic(kind, replace(TINY, sft=replace(TINY.sft, steps=2)))(run, 0)
        texts = critic.complete([critic_prompt(it.question, it.answer) for it in items])
        assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="critic kind"):
        mc.build_critic(run, "oracle", TINY)


def test_marv_pairs_prefer_the_critique_with_more_fixes():
    assert mc.best_and_worst([0.5, 1.0, 0.0, 1.0, 0.0]) == (1, 2)
    assert mc.best_and_worst([0.5, 0.5]) is None
    wrong = CritiqueItem("arithmetic", Q, WRONG, False, 1, 2)
    right = CritiqueItem("arithmetic", Q, "4*2=8\n3+8=11\nanswer: 11", True, None, 2)
    fix = mc.flag_critique(mc.recompute(Q, WRONG), [1])
    groups = [["verdict: correct", fix, "verdict: incorrect 3"], ["verdict: correct", "verdict: correct"]]
    rows = mc.preferred([wrong, right], groups, [simulated_corrector(1.0)])
    assert rows == [(wrong, fix, "verdict: correct")]  # the right item's critiques tie: no pair
    policy = mc.new_critic(seed=0)  # untrained: the sampled pairs only need the right shapes
    pairs, counts = mc.marv_pairs(policy, [wrong, right], [simulated_corrector(0.5)], k=3, seed=0, max_new_tokens=8)
    assert counts == {"items": 2, "pairs": len(pairs)}


def test_dpo_on_a_marv_pair_raises_the_chosen_critique_over_the_rejected(tmp_path):
    sft = mc.new_critic(seed=0)
    prompt = sft.encode([critic_prompt(Q, WRONG)])[0]
    chosen, rejected = sft.encode_responses([mc.flag_critique(mc.recompute(Q, WRONG), [1]), "verdict: correct"])
    run = Run(tmp_path / "run", "marv", fresh=True)
    dpo = mc.train_marv(run, "marv", sft, [(prompt, chosen, rejected)], OptimConfig(steps=5, batch_size=1, lr=1e-3,
                                                                                    checkpoint_every=10**6))
    margin = lambda p: float(p.score([prompt], [chosen]).sum()[0] - p.score([prompt], [rejected]).sum()[0])
    assert margin(dpo) > margin(sft) + 1.0 and [r["step"] for r in run.metrics("marv")] == list(range(5))


def test_mismatched_training_rows_are_named(tmp_path):
    with pytest.raises(ValueError, match="2 items but 1 critiques"):
        mc.train_critic(Run(tmp_path / "r", "x", fresh=True), "sft", arithmetic_items(2), ["verdict: correct"],
                        TINY.sft)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured 2026-12-06: merged 0.368 vs single agent 0.370 verdict accuracy "
                   "(gain -0.002, paired SE 0.009, 600 held-out items); both 400-step tiny critics accept almost "
                   "every answer (accept_right 0.97 / 0.95, reject_wrong 0.03 / 0.04): at this budget the critic "
                   "learns no check of the arithmetic, so the cleaner labels have nothing to act on (at 2400 steps, "
                   "six times the budget: 0.647 vs 0.428, +0.218, SE 0.020)")
def test_claim_a_critic_trained_on_merged_meta_critiques_beats_one_trained_on_a_single_agent(tmp_path):
    """MultiCritique's claim at toy scale. Two critic LMs of the same size from the same init train
    the same number of steps on the same 3000 arithmetic items (difficulties 1-2, half wrong): one on
    the merged meta-critiques of three agents, one on the raw critiques of the single best agent
    (the one whose raw verdicts match gold most often). Both judge the same held-out items (>= 500,
    none of whose (question, answer) pairs was trained on), greedily.

    Threshold, fixed before the first run: the merged critic's verdict accuracy exceeds the single
    agent's by at least 2 paired standard errors; localisation (exact first wrong step on the wrong
    items) is reported. Held equal: items, rows, SFT steps (400), batch, learning rate, init seed.
    Seeds 1 (training) and 7 (held-out items) were not used while designing the method."""
    import numpy as np

    from rlxf.critique.evaluate import critique_items, paired_se, score_verdicts

    cfg = mc.MultiCritiqueConfig()
    run = Run(tmp_path / "run", "multicritique claim", fresh=True)
    items, gathered, merged = mc.training_data(cfg, seed=1)
    best = mc.best_single_agent(items, gathered)
    test = mc.held_out(cfg, items, 600, seed=7)
    verdicts, scores = {}, {}
    for name, targets in (("merged", merged), ("single", gathered[best])):
        policy = mc.train_critic(run, name, items, targets, cfg.sft, seed=1)
        verdicts[name] = critique_items(mc.as_role(policy), test)
        scores[name] = score_verdicts(test, verdicts[name])
    hits = {n: [v.accepts == it.correct for v, it in zip(verdicts[n], test)] for n in verdicts}
    gain = np.mean(hits["merged"]) - np.mean(hits["single"])
    se = paired_se(hits["merged"], hits["single"])
    print(f"best single agent {best}; raw verdict accuracy merged {mc.raw_accuracy(items, merged):.3f}, "
          f"single {mc.raw_accuracy(items, gathered[best]):.3f}")
    for n, s in scores.items():
        print(f"{n}: accuracy {s['accuracy']:.3f} accept_right {s['accept_right']:.3f} reject_wrong "
              f"{s['reject_wrong']:.3f} localisation {s['localisation']:.3f} (n {s['n']}, wrong {s['n_wrong']})")
    print(f"verdict accuracy gain {gain:+.3f} (paired SE {se:.3f})")
    assert gain >= 2 * se and gain > 0
