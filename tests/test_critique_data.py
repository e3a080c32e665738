"""Training rows for critics and correctors from exported critique and correction records."""

from __future__ import annotations

import pytest

from rlxf.critique.data import (CritiqueDataError, corrector_rows, critic_rows, critique_target,
                                read_training_rows)
from rlxf.critique.format import corrector_prompt, critic_prompt, parse_critique
from rlxf.data.io import write_records
from rlxf.data.records import Correction, Critique, Demonstration

ANSWER = "3*4=12\n2+12=15\nanswer: 15"


def test_critic_rows_end_in_the_verdict_line_of_the_record():
    records = [Critique("2+3*4=", ANSWER, "2+12 is 14", "incorrect", 2),  # fields, no verdict line: appended
               Critique("1+1=", "answer: 2", "verdict: correct\nfine", "correct"),  # line moved to the end
               Critique("2*2=", "answer: 5", "wrong sum\nverdict: incorrect 1")]  # text alone judges
    rows = critic_rows(records)
    assert rows == [Demonstration("2+3*4=\n" + ANSWER + "\n#\n", "2+12 is 14\nverdict: incorrect 2"),
                    Demonstration("1+1=\nanswer: 2\n#\n", "fine\nverdict: correct"),
                    Demonstration("2*2=\nanswer: 5\n#\n", "wrong sum\nverdict: incorrect 1")]
    assert [r.prompt for r in rows] == [critic_prompt(c.prompt, c.response) for c in records]
    assert [parse_critique(r.response) for r in rows] == [c.judgment for c in records]


def test_a_free_text_critique_is_an_error_or_skipped():
    records = [Critique("q", "a", "Off topic."), Critique("q2", "a", "ok", "correct")]
    with pytest.raises(CritiqueDataError, match="critique record 0 .*has no verdict"):
        critic_rows(records)
    assert critic_rows(records, unjudged="skip") == [Demonstration("q2\na\n#\n", "ok\nverdict: correct")]
    assert critique_target(records[0]) is None
    with pytest.raises(ValueError, match="unjudged must be"):
        critic_rows(records, unjudged="drop")


def test_corrector_rows_pair_each_correction_with_its_critique():
    crit = [Critique("2+3*4=", ANSWER, "2+12 is 14", "incorrect", 2),
            Critique("1+1=", "answer: 3", "no", "incorrect", 1)]
    fixes = [Correction("2+3*4=", ANSWER, "3*4=12\n2+12=14\nanswer: 14")]
    (row,) = corrector_rows(crit, fixes)
    assert row == Demonstration(corrector_prompt("2+3*4=", ANSWER, "2+12 is 14\nverdict: incorrect 2"),
                                "3*4=12\n2+12=14\nanswer: 14")
    # two labelers critiqued the same response and both corrected it: paired in export order
    twice = [Critique("q", "a", "first", "incorrect", 1), Critique("q", "a", "second", "correct")]
    rows = corrector_rows(twice, [Correction("q", "a", "fix 1"), Correction("q", "a", "fix 2")])
    assert [r.prompt.split("\n")[3] for r in rows] == ["first", "second"]
    with pytest.raises(CritiqueDataError, match="2 critiques but 1 corrections"):
        corrector_rows(twice, [Correction("q", "a", "fix")])
    with pytest.raises(CritiqueDataError, match="has no critique of the same prompt and response"):
        corrector_rows(twice, [Correction("other", "a", "fix")])


def test_read_training_rows_from_exported_files(tmp_path):
    crit = [Critique("2+3*4=", ANSWER, "2+12 is 14", "incorrect", 2), Critique("1+1=", "answer: 2", "ok", "correct")]
    write_records(crit, tmp_path / "c.parquet")
    write_records([Correction("2+3*4=", ANSWER, "answer: 14")], tmp_path / "f.jsonl")
    critic, corrector = read_training_rows(tmp_path / "c.parquet", tmp_path / "f.jsonl")
    assert critic == critic_rows(crit) and len(corrector) == 1 and corrector[0].response == "answer: 14"
    assert read_training_rows(tmp_path / "c.parquet")[1] == []
