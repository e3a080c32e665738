"""The critique format every critic, corrector and trainer shares (rlxf.critique.format)."""

import pytest

from rlxf.critique.format import (CRITIC_CHARS, Verdict, corrector_prompt, critic_prompt, parse_critique,
                                  render_critique, verdict_line)
from rlxf.policies.tiny import tiny_tokenizer


def test_a_rendered_critique_parses_back_to_its_verdict():
    for correct, step in [(True, None), (False, None), (False, 1), (False, 12)]:
        text = render_critique(correct, step, ["step 1: ok", "step 2: 4*2=9 is wrong"])
        assert text.splitlines()[-1] == verdict_line(correct, step)
        assert parse_critique(text) == Verdict(correct, step)


def test_the_last_verdict_line_counts_and_a_missing_one_accepts():
    assert parse_critique("verdict: correct\nverdict: incorrect at step 3") == Verdict(False, 3)
    assert parse_critique("  Verdict:  INCORRECT 2 ") == Verdict(False, 2)
    assert parse_critique("the verdict: incorrect 2 is inline, not a line") == Verdict(None)
    assert parse_critique("no judgment here") == Verdict(None) and Verdict(None).accepts
    assert not parse_critique("verdict: incorrect").accepts
    assert parse_critique("verdict: correct 2") == Verdict(True)  # a step on an accepting verdict means nothing


def test_a_step_needs_a_rejecting_verdict():
    with pytest.raises(ValueError, match="first wrong step"):
        Verdict(True, 2)
    with pytest.raises(ValueError, match="first wrong step"):
        verdict_line(False, 0)


def test_requests_and_critiques_fit_the_character_tokenizer():
    tok = tiny_tokenizer(CRITIC_CHARS, split="chars")
    text = corrector_prompt("3+4*2=", "4*2=8\n3+8=11\nanswer: 11", render_critique(False, 2, ["step 2: wrong"]))
    assert text.startswith(critic_prompt("3+4*2=", "4*2=8\n3+8=11\nanswer: 11"))
    assert tok.decode(tok(text)["input_ids"]) == text
