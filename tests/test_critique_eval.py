"""Critique evaluation: simulated critics and correctors, verdict accuracy, localisation, RealCritic's
closed loop and modes, and ``rlxf critique-eval``."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from rlxf.cli import main
from rlxf.core.config import ConfigError
from rlxf.critique import config as critique_config
from rlxf.critique.bench import CritiqueItem, arithmetic_items, code_items, gold_verdict
from rlxf.critique.evaluate import (closed_loop, critique_eval, format_table, localisation, paired_se,
                                    score_verdicts, transitions, verdict_accuracy)
from rlxf.critique.format import Verdict, corrector_prompt, critic_prompt, parse_critique, render_critique
from rlxf.critique.simulated import (ALWAYS_CORRECT, RANDOM_FLIP, CriticProfile, simulated_corrector,
                                     simulated_critic, split_request)
from rlxf.tasks.arithmetic import solve


@pytest.fixture(scope="module")
def items():
    return arithmetic_items(300, seed=5)


class Scripted:
    """A TextModel that replies from a dict (request -> reply), counting requests."""

    def __init__(self, replies: dict[str, str], default: str = "verdict: correct"):
        self.replies, self.default, self.requests = replies, default, []

    def complete(self, requests):
        self.requests += requests
        return [self.replies.get(r, self.default) for r in requests]


def test_split_request_reads_back_both_request_kinds(items):
    it = items[0]
    assert split_request("arithmetic", critic_prompt(it.question, it.answer)) == (it.question, it.answer, None)
    text = corrector_prompt(it.question, it.answer, "step 1: wrong\nverdict: incorrect 1")
    assert split_request("arithmetic", text) == (it.question, it.answer, "step 1: wrong\nverdict: incorrect 1")
    assert split_request("arithmetic", critic_prompt(it.question, "")) == (it.question, "", None)
    with pytest.raises(ValueError, match="no final '#' line"):
        split_request("arithmetic", "3+4=\n7")


def test_perfect_critic_matches_gold_and_names_the_step(items):
    critic = simulated_critic(CriticProfile(), seed=0)
    texts = critic.complete([critic_prompt(it.question, it.answer) for it in items])
    for it, text in zip(items, texts):
        v = parse_critique(text)
        assert v == Verdict(it.correct, it.first_wrong_step)
        assert text.count("step ") == (len(text.splitlines()) - 1)  # one note per step up to the verdict
    assert verdict_accuracy(critic, items)["accuracy"] == 1.0
    assert localisation(critic, items)["localisation"] == 1.0


def test_profiles_err_as_set(items):
    n_right = sum(it.correct for it in items)
    always = verdict_accuracy(simulated_critic(ALWAYS_CORRECT), items)
    assert always["accuracy"] == n_right / len(items) and always["accept_right"] == 1.0
    assert verdict_accuracy(simulated_critic(CriticProfile(miss=1.0, false_alarm=1.0)), items)["accuracy"] == 0.0
    assert localisation(simulated_critic(CriticProfile(misplace=1.0)), items)["localisation"] == 0.0
    many = arithmetic_items(2000, seed=6)
    got = verdict_accuracy(simulated_critic(CriticProfile(miss=0.3, false_alarm=0.1), seed=3), many)
    assert abs((1 - got["reject_wrong"]) - 0.3) < 3 * (0.3 * 0.7 / 1000) ** 0.5
    assert abs((1 - got["accept_right"]) - 0.1) < 3 * (0.1 * 0.9 / 1000) ** 0.5
    with pytest.raises(ValueError, match="miss must be in"):
        CriticProfile(miss=1.5)


def test_expertise_by_difficulty(items):
    critic = simulated_critic({1: CriticProfile(), 2: CriticProfile(), 3: ALWAYS_CORRECT})
    acc = verdict_accuracy(critic, items)["by_difficulty"]
    hard = [it for it in items if it.difficulty == 3]
    assert acc[1] == acc[2] == 1.0 and acc[3] == sum(it.correct for it in hard) / len(hard)
    with pytest.raises(ValueError, match="no profile for difficulty"):
        simulated_critic({1: CriticProfile()}).complete([critic_prompt("1+2*3=", solve("1+2*3="))])


def test_critic_is_a_function_of_the_request(items):
    critic = simulated_critic(RANDOM_FLIP, seed=4)
    prompts = [critic_prompt(it.question, it.answer) for it in items[:40]]
    assert critic.complete(prompts) == critic.complete(prompts[::-1])[::-1]


def test_corrector_redoes_from_the_named_step():
    q = "2+3*4="
    wrong = next(it for it in arithmetic_items(200, seed=1) if not it.correct and it.first_wrong_step == 2)
    q, bad, k = wrong.question, wrong.answer, wrong.first_wrong_step
    fixer = simulated_corrector(skill=1.0)
    ask = lambda answer, crit: fixer.complete([corrector_prompt(q, answer, crit)])[0]  # noqa: E731
    assert ask(bad, render_critique(True)) == bad  # accepted: unchanged
    assert ask(bad, render_critique(False, k)) == solve(q)  # at the first wrong step: fixed
    assert ask(bad, render_critique(False, 1)) == solve(q)  # before it: fixed
    assert ask(bad, render_critique(False, k + 1)) == bad  # after it: the kept steps hold the error
    assert ask(bad, "no verdict here") == bad
    breaker = simulated_corrector(skill=0.0)
    redone = breaker.complete([corrector_prompt(q, solve(q), render_critique(False, 1))])[0]
    assert not gold_verdict("arithmetic", q, redone).correct


def test_closed_loop_counts_transitions_by_hand():
    right = [CritiqueItem("arithmetic", q, solve(q), True, None, 1) for q in ("1+2=", "3*4=")]
    wrong = [CritiqueItem("arithmetic", q, f"{q}0\nanswer: 0", False, 1, 1) for q in ("5+1=", "2*3=")]
    items = right + wrong
    reject = "step 1: wrong\nverdict: incorrect 1"
    critic = Scripted({critic_prompt(it.question, it.answer): reject for it in (items[0], items[2])})
    corrector = Scripted({corrector_prompt(it.question, it.answer, reject): solve(it.question) for it in items})
    got = closed_loop(critic, corrector, items, rounds=3)
    assert got["transitions"] == {"c->c": 2, "c->i": 0, "i->c": 1, "i->i": 1}
    assert got["accuracy"] == 0.75 and got["start_accuracy"] == 0.5
    assert got["per_round"] == [0.75, 0.75, 0.75]
    assert got["fixed"] == 0.5 and got["broken"] == 0.0
    # round 2 judges only the two rewritten answers; item 2's is accepted and leaves, item 0's rewrite is
    # its old answer, rejected again in rounds 2 and 3
    assert got["critic_calls"] == 4 + 2 + 1 and got["corrector_calls"] == 2 + 1 + 1
    # a corrector that breaks the right answer it was wrongly asked to fix: c->i
    breaker = Scripted({corrector_prompt(items[0].question, items[0].answer, reject): "1+2=4\nanswer: 4"})
    assert closed_loop(critic, breaker, items)["transitions"]["c->i"] == 1


def test_paired_se_and_transitions_by_hand():
    assert paired_se([1, 1, 0, 0], [0, 1, 0, 1]) == pytest.approx((2 / 3 / 4) ** 0.5)
    assert transitions([True, True, False], [False, True, True]) == {"c->c": 1, "c->i": 1, "i->c": 1, "i->i": 0}


def test_score_verdicts_reads_a_missing_verdict_as_accept(items):
    wrong = [it for it in items if not it.correct][:4]
    s = score_verdicts(wrong, [Verdict(None)] * 4)
    assert s["accuracy"] == 0.0 and s["localisation"] == 0.0


def test_critique_eval_rows(items):
    critics = {"perfect": simulated_critic(CriticProfile()), "always": simulated_critic(ALWAYS_CORRECT)}
    rows = critique_eval(critics, simulated_corrector(0.5), items[:60], rounds=2)
    assert [(r["critic"], r["mode"]) for r in rows] == [("-", "direct")] + [
        (c, m) for c in critics for m in ("self", "cross", "iterative")]
    by = {(r["critic"], r["mode"]): r for r in rows}
    assert by["always", "cross"]["accuracy"] == by["always", "cross"]["start_accuracy"]
    assert by["always", "self"]["accuracy"] == by["-", "direct"]["accuracy"]
    assert by["perfect", "cross"]["transitions"]["c->i"] == 0
    assert len(by["perfect", "iterative"]["per_round"]) == 2
    assert by["perfect", "iterative"]["accuracy"] >= by["perfect", "cross"]["accuracy"]
    assert "perfect" in format_table(rows)
    with pytest.raises(ValueError, match="modes must be"):
        critique_eval(critics, simulated_corrector(0.5), items[:4], modes=("bogus",))


def test_code_task_closed_loop():
    items = code_items(6, seed=1)
    critic = simulated_critic(CriticProfile(), task="code")
    assert verdict_accuracy(critic, items)["accuracy"] == 1.0
    got = closed_loop(critic, simulated_corrector(1.0, task="code"), items)
    assert got["accuracy"] == 1.0 and got["transitions"]["i->c"] == sum(not it.correct for it in items)


def test_cli_prints_the_table(tmp_path, capsys):
    cfg = tmp_path / "eval.toml"
    cfg.write_text('modes = ["direct", "cross"]\n[items]\nn = 40\n[[critics]]\nname = "sharp"\nmiss = 0.1\n')
    assert main(["critique-eval", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "sharp" in out and "direct" in out and "c->i" in out


@pytest.mark.parametrize("text, option", [
    ('[items]\ntask = "chess"\n[[critics]]\nname = "a"\n', "items.task"),
    ('[[critics]]\nname = "a"\nfalse_alarm = 1.2\n', "critics[0].false_alarm"),
    ('[[critics]]\nname = "a"\n[[critics]]\nname = "a"\n', "distinct"),
    ('[[critics]]\nname = "a"\nkind = "lm"\n', "critics[0].model"),
    ('modes = ["cross", "solo"]\n[[critics]]\nname = "a"\n', "modes"),
    ('[corrector]\nskill = -1\n[[critics]]\nname = "a"\n', "corrector.skill"),
    ('[items]\nn = 10\n', "critics"),
    ('[[critics]]\nnam = "a"\n', "nam"),
])
def test_bad_config_names_the_option_before_anything_runs(tmp_path, capsys, monkeypatch, text, option):
    monkeypatch.setattr(critique_config, "make_items", lambda spec: pytest.fail("items built before the check"))
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["critique-eval", str(cfg)]) == 2
    assert option in capsys.readouterr().err


def test_override_is_checked_too():
    with pytest.raises(ConfigError, match=r"items.n: expected an integer >= 1, got 0"):
        critique_config.load_eval_config("configs/critique_eval.toml", ["items.n=0"])


@pytest.mark.slow
def test_realcritic_claim_only_a_good_critic_beats_direct():
    """RealCritic at toy scale, cross-critique on a 50/50 pool of 600 arithmetic answers (items seed
    11), corrector of skill 0.5 (its direct accuracy on the same questions is the baseline).

    Threshold, written before the first run: the paired gain of accuracy after correction over the
    direct answers of the same 600 questions is below +2 paired SE for the always-correct critic and
    for the random-flip critic, and at least +2 paired SE for the good critic (miss 0.1, false alarm
    0.05, misplace 0.1). Held equal: the items, the corrector and its draws, one critique round each.
    c->i is reported for each critic (and must be 0 for always-correct, which never rejects)."""
    items = arithmetic_items(600, seed=11)
    critics = {"always": simulated_critic(ALWAYS_CORRECT), "random": simulated_critic(RANDOM_FLIP, seed=1),
               "good": simulated_critic(CriticProfile(miss=0.1, false_alarm=0.05, misplace=0.1), seed=2)}
    rows = critique_eval(critics, simulated_corrector(0.5, seed=3), items, modes=("direct", "cross"))
    print("\n" + format_table(rows))
    by = {r["critic"]: r for r in rows if r["mode"] == "cross"}
    assert by["always"]["transitions"]["c->i"] == 0
    for name in ("always", "random"):
        assert by[name]["vs_direct"] < 2 * by[name]["vs_direct_se"], name
    assert by["good"]["vs_direct"] >= 2 * by["good"]["vs_direct_se"]
    print({name: r["transitions"]["c->i"] for name, r in by.items()})
