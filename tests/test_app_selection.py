"""Query selection rules (hand-computed cases) and the per-labeler queue."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlxf.app.selection import (
    QueryQueue,
    choose_apohf,
    choose_disagreement,
    choose_randomized,
    choose_uniform,
    pair_disagreement,
)
from rlxf.data.label_store import Item, LabelStore, StoreError


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _items(n, k=3):
    return [Item(i + 1, f"p{i}", tuple(f"r{j}" for j in range(k)), {}) for i in range(n)]


def test_pair_disagreement_is_std_of_member_win_probabilities():
    s = np.array([[0.0, 1.0], [0.0, -1.0]])  # member 0 prefers response 1, member 1 prefers response 0
    d = pair_disagreement(s)
    assert d[0, 1] == pytest.approx((_sig(1) - _sig(-1)) / 2)
    assert d[0, 0] == pytest.approx(0.0)


def test_disagreement_picks_the_pair_members_dispute():
    agree = np.array([[0.0, 2.0, 4.0], [0.0, 2.0, 4.0]])  # all members rank it the same way
    dispute = np.array([[1.0, 3.0, -3.0], [1.0, -3.0, 3.0]])  # they disagree about responses 1 vs 2
    c = choose_disagreement(_items(2), [agree, dispute], np.random.default_rng(0))
    assert c.index == 1 and set(c.pair) == {1, 2}
    assert c.score == pytest.approx(abs(_sig(6) - _sig(-6)) / 2, abs=1e-6)


def test_apohf_duels_best_so_far_against_most_optimistic_challenger():
    # means [2, 0, 1]: response 0 is best so far; response 1's difference to it is uncertain
    # (member differences -4 and 0: std 2), response 2's is not (-1 and -1: std 0)
    s = np.array([[2.0, -2.0, 1.0], [2.0, 2.0, 1.0]])
    c = choose_apohf(_items(1), [s], np.random.default_rng(0), nu=1.0)
    assert c.pair == (0, 1) and c.score == pytest.approx(0 + 1 * 2 - 2)  # ucb 2 beats response 2's 1
    # with nu = 0 the challenger is simply the runner-up by mean (response 2)
    assert choose_apohf(_items(1), [s], np.random.default_rng(0), nu=0.0).pair == (0, 2)
    # the bonus is sqrt(nu * variance): variance 4, nu = 9 gives 6
    assert choose_apohf(_items(1), [s], np.random.default_rng(0), nu=9.0).score == pytest.approx(0 + 6 - 2)
    # nu = -1: a random pair, every pair in time
    pairs = {tuple(sorted(choose_apohf(_items(1), [s], np.random.default_rng(k), nu=-1.0).pair)) for k in range(40)}
    assert pairs == {(0, 1), (0, 2), (1, 2)}
    with pytest.raises(ValueError, match="nu"):
        choose_apohf(_items(1), [s], np.random.default_rng(0), nu=-0.5)


def test_randomized_compares_a_posterior_sample_with_the_greedy_choice_and_skips_certain_pairs():
    s = np.array([[0.0, 5.0, 1.0], [0.0, 1.0, 5.0]])  # member 0 picks 1, member 1 picks 2; mean ties 1/2
    rng = np.random.default_rng(3)
    picks = [choose_randomized(_items(1), [s], rng) for _ in range(60)]
    assert all(set(p.pair) == {1, 2} for p in picks)  # never the dominated response 0
    assert all(p.score == pytest.approx(4.0) for p in picks)  # std of the (new - old) difference over members
    assert choose_randomized(_items(1), [s], rng, eps=4.01) is None  # below the threshold: skip the query
    certain = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    assert choose_randomized(_items(1), [certain], rng, eps=1e-6) is None


def test_uniform_covers_every_pair():
    rng = np.random.default_rng(0)
    seen = {tuple(sorted(choose_uniform(_items(1, k=4), None, rng).pair)) for _ in range(400)}
    assert len(seen) == 6


@pytest.fixture
def store(tmp_path):
    s = LabelStore.open(tmp_path / "labels.sqlite")
    yield s
    s.close()


@pytest.mark.parametrize("rule", ["uniform", "disagreement", "apohf", "randomized", "learned"])
def test_queue_never_repeats_a_question_and_honours_overlap(store, rule):
    project, _ = store.create_project("p", "preference", overlap=2, selection=rule)
    store.add_items(project, [(f"p{i}", ["a", "b", "c"], {}) for i in range(6)])
    rng = np.random.default_rng(1)

    def scorer(items):
        return [rng.normal(size=(4, len(it.responses))) for it in items]

    queue = QueryQueue(store, project, None if rule == "uniform" else scorer)
    labelers = [store.labeler_for_token(project, store.add_labeler(project, n)) for n in ("a", "b", "c")]
    seen = {w.name: [] for w in labelers}
    for _ in range(8):
        for w in labelers:
            a = queue.next(w)
            if a is None:
                continue
            assert queue.next(w).id == a.id  # unanswered: the same assignment comes back
            assert len(a.shown) == 2 and len(set(a.shown)) == 2
            store.submit_label(project, w, a.id, a.item.id, {"choice": "a"})
            seen[w.name].append(a.item.id)
    for ids in seen.values():
        assert len(ids) == len(set(ids))  # no question twice for one labeler
    per_item = np.bincount(sum(seen.values(), []), minlength=7)[1:]
    assert list(per_item) == [2] * 6  # every item got exactly `overlap` labelers, then the queue ran dry
    assert all(queue.next(w) is None for w in labelers)


def test_active_rules_need_a_scorer(store):
    project, _ = store.create_project("p", "preference", selection="disagreement")
    with pytest.raises(StoreError, match="needs reward models"):
        QueryQueue(store, project, None)


def test_a_scorer_without_a_model_yet_gets_uniform_questions(store):
    project, _ = store.create_project("p", "preference", selection="disagreement")
    store.add_items(project, [("p", ["a", "b", "c"], {})])
    calls = []
    queue = QueryQueue(store, project, lambda items: calls.append(len(items)))  # returns None: no model yet
    a = queue.next(store.labeler_for_token(project, store.add_labeler(project, "ann")))
    assert calls == [1] and len(a.shown) == 2


@pytest.fixture(scope="module")
def reward_model(task):
    """A small, untrained reward model on the task's vocabulary: enough to check the plumbing."""
    from rlxf.policies.tiny import tiny_scorer, tiny_tokenizer
    from rlxf.rewards.model import RewardModel

    tok = tiny_tokenizer(task.vocabulary())
    return RewardModel(tiny_scorer(tok, n_layer=1, n_embd=32, seed=1), tok)


def test_reward_model_scorer_scores_each_response_like_the_model(reward_model, task):
    from rlxf.app.selection import reward_model_scorer

    rng = np.random.default_rng(0)
    prompts = task.sample_prompts(2, "train", rng)
    items = [Item(i + 1, p, tuple(task.sample_response(p, rng) for _ in range(3)), {}) for i, p in enumerate(prompts)]
    scores = reward_model_scorer([reward_model, reward_model])(items)
    assert [s.shape for s in scores] == [(2, 3), (2, 3)]
    tok = reward_model.tokenizer
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    alone = reward_model.score([tok(items[1].prompt, add_special_tokens=False).input_ids],
                               [tok(items[1].responses[2], add_special_tokens=False).input_ids + eos])
    assert scores[1][0, 2] == pytest.approx(float(alone[0]), abs=1e-4) and scores[1][1, 2] == scores[1][0, 2]
    assert len(set(np.round(scores[0][0], 5))) == 3  # distinct responses, distinct scores
    from rlxf.rewards.ensemble import RewardEnsemble

    again = reward_model_scorer(RewardEnsemble([reward_model, reward_model, reward_model]))(items)
    assert again[0].shape == (3, 3) and np.allclose(again[0][0], scores[0][0], atol=1e-5)
