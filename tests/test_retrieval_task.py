"""The retrieval task (rlxf.tasks.retrieval): a seeded world of facts, its BM25 index, questions
whose gold follows the facts, the trajectory parsers and clear errors."""

from __future__ import annotations

import pytest

from rlxf.tasks.retrieval import (ATTRIBUTES, LINKS, Fact, RetrievalTask, final_answer, parse_facts, tokens)


@pytest.fixture(scope="module")
def task():
    return RetrievalTask(n_people=20, seed=3)


def test_world_is_seeded_and_has_one_document_per_fact(task):
    again = RetrievalTask(n_people=20, seed=3)
    assert again.docs == task.docs and again.people == task.people
    assert RetrievalTask(n_people=20, seed=4).docs != task.docs
    assert len(set(task.people)) == 20 and len(task.docs) == 20 * (len(ATTRIBUTES) + len(LINKS))
    for (subject, relation), value in task.facts.items():
        assert f"the {relation} of {subject} is {value}." in task.docs
        if relation in LINKS:
            assert value in task.people and value != subject
        else:
            lo, hi = ATTRIBUTES[relation]
            assert lo <= int(value) < hi


def test_gold_follows_the_chain_of_facts(task):
    qs = task.questions("all")
    assert len(qs) == 20 * (len(ATTRIBUTES) + len(LINKS) * len(ATTRIBUTES))
    two = task.question("what is the age of the rival of " + task.people[0] + "?")
    rival = task.facts[task.people[0], "rival"]
    assert two.chain == ("rival", "age") and two.answer == task.facts[rival, "age"]
    assert two.facts == (Fact(task.people[0], "rival", rival), Fact(rival, "age", two.answer))
    one = task.question(f"question: what is the height of {task.people[1]}?\nquery: anything\n")  # a trajectory
    assert one.answer == task.facts[task.people[1], "height"] and len(one.facts) == 1


def test_train_and_test_ask_about_disjoint_people(task):
    train, test = task.questions("train"), task.questions("test")
    assert {q.subject for q in train}.isdisjoint({q.subject for q in test})
    assert len(train) + len(test) == len(task.questions("all"))
    assert all(len(q.chain) == 2 for q in task.questions("test", hops=2))
    assert len(task.questions("test", hops=1)) == 10 * len(ATTRIBUTES)


def test_bm25_ranks_a_document_with_both_query_words_first(task):
    """A number fact comes first for "<relation> <subject>"; a link fact may tie with documents that
    name the subject as someone else's link (bag of words: the document critic's job)."""
    for (subject, relation), value in task.facts.items():
        top = task.search(f"{relation} {subject}", k=3)
        assert len(top) == 3 and len(set(top)) == 3
        assert {relation, subject} <= set(tokens(top[0]))
        if relation in ATTRIBUTES:
            assert top[0] == Fact(subject, relation, value).text


def test_parsers_and_check_answer(task):
    q = task.questions("test", hops=2)[0]
    text = f"query: x\ndoc: {q.facts[0].text}\nreason: the answer is 12.\nreason: the answer is {q.answer}.\n"
    assert parse_facts(text) == [q.facts[0]]
    assert final_answer(text) == q.answer and final_answer("no answer here") is None
    assert task.check_answer(q.prompt, text) == 1.0
    assert task.check_answer(q.prompt, "reason: the answer is 0.\n") == float(q.answer == "0")
    assert task.check_answer(q.prompt, "") == 0.0
    assert tokens("What is the Age of the mentor of Zorvan?") == ["age", "mentor", "zorvan"]


def test_bad_input_is_named(task):
    with pytest.raises(ValueError, match="not a question of this task"):
        task.question("what is the colour of nobody?")
    with pytest.raises(ValueError, match="split must be"):
        task.questions("dev")
    with pytest.raises(ValueError, match="k must be >= 1"):
        task.search("age", k=0)
    with pytest.raises(ValueError, match="n_people must be at least 4"):
        RetrievalTask(n_people=2)
