"""The search core (rlxf.search): selection rules, backups, batched expansion, evaluators, the three
procedures, the JSONL tree and the training data walked out of a tree, on the arithmetic task.

Expectations are hand-computed; a scripted stand-in policy (fixed steps per state) makes the
procedures' choices predictable, and a tiny real GPT-2 checks that batched expansion records the
policy's exact log-probs and that MCTS's visit counts add up.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlxf.core.steps import Steps
from rlxf.lab.rlvr import arithmetic_tokenizer
from rlxf.policies.language import LanguagePolicy, Rollout
from rlxf.policies.logprobs import pad_tokens
from rlxf.policies.tiny import tiny_causal_lm, tiny_scorer
from rlxf.search import (PRM, Critique, Expander, First, ImplicitReward, Mix, ModelValue, Rollouts, SearchError,
                         TopTokens, Tree, Verifier, beam_search, best_first, delimiter_steps, evaluate, mcts, puct,
                         revisions, select_child, select_leaves, step_pairs, step_targets, token_steps, uct,
                         value_targets)
from rlxf.tasks.arithmetic import check_answer, check_steps

PROBLEM = "3+4*2="
RIGHT = ["4*2=8\n", "3+8=11\n", "answer: 11"]


@pytest.fixture(scope="module")
def tok():
    return arithmetic_tokenizer()


@pytest.fixture(scope="module")
def tiny(tok):
    return LanguagePolicy(tiny_causal_lm(tok, n_layer=2, n_embd=32, max_positions=128, seed=1), tok)


def hand_tree(tok, spec: list[tuple[int, str, int, float]]) -> Tree:
    """A tree from ``(parent, text, visits, value_sum)`` rows (node ids in order, root 0)."""
    tree = Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids)
    for parent, text, visits, total in spec:
        node = tree.add(tree.nodes[parent], text=text, ids=tok(text, add_special_tokens=False).input_ids)
        node.visits, node.value_sum = visits, total
    return tree


class Scripted:
    """A stand-in policy: ``script(response_so_far) -> k step texts`` (a text starting ``answer`` ends
    the response with EOS); every token has log-prob -1, so a step's prior follows its length."""

    device = torch.device("cpu")

    def __init__(self, tok, script):
        self.tokenizer, self.script, self.calls = tok, script, 0

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def sample(self, prompt_ids, n=1, max_new_tokens=16, stop_ids=(), **_):
        self.calls += 1
        responses, finished = [], []
        for p in prompt_ids:
            steps = self.script(self.decode(p).split("=", 1)[1])
            assert len(steps) == n
            for s in steps:
                done = s.startswith("answer")
                responses.append(self.tokenizer(s, add_special_tokens=False).input_ids
                                 + ([self.tokenizer.eos_token_id] if done else []))
                finished.append(done)
        _, mask = pad_tokens(responses, 0)
        steps = Steps(logps=-mask.float(), mask=mask.float())
        return Rollout([p for p in prompt_ids for _ in range(n)], responses, finished, steps)


def right_or_slip(response: str) -> list[str]:
    """At each state: the canonical next step, and the same step off by one."""
    done = response.count("\n")
    if done == len(RIGHT) - 1:
        value = int(RIGHT[-1].split()[-1]) + (response != "".join(RIGHT[:-1]))  # a slip upstream stays wrong
        return [f"answer: {value}", f"answer: {value + 1}"]
    line = RIGHT[done]
    lhs, rhs = line.strip().split("=")
    if response != "".join(RIGHT[:done]):  # off the canonical path: keep going consistently but wrong
        rhs = str(int(rhs) + 1)
    return [f"{lhs}={rhs}\n", f"{lhs}={int(rhs) + 1}\n"]


class StepCheck:
    """A stand-in process value: the share of valid steps so far (``check_steps``)."""

    source = "steps"

    def __call__(self, items):
        return [sum(check_steps(t.prompt, t.response_text(n))) / max(1, n.depth) for t, n in items]


def guided() -> First:
    """The verifier on terminal nodes, the share of valid steps elsewhere."""
    return First([Verifier(check_answer), StepCheck()])


# -- selection and backup --------------------------------------------------------------------


def test_uct_and_puct_pick_the_hand_computed_child(tok):
    tree = hand_tree(tok, [(0, "a", 6, 3.6), (0, "b", 3, 1.5), (0, "c", 1, 0.2)])
    tree.root.visits = 10
    a, b, c = tree.nodes[1:]
    a.prior, b.prior, c.prior = 0.2, 0.5, 0.3
    # UCT c=1: a .6+sqrt(ln10/6)=1.2195, b .5+sqrt(ln10/3)=1.3761, c .2+sqrt(ln10)=1.7174
    assert uct(1.0)(tree.root, a) == pytest.approx(0.6 + math.sqrt(math.log(10) / 6))
    assert select_child(tree, tree.root, uct(1.0)) is c
    # UCT c=0.1: a .6619, b .5876, c .3517
    assert select_child(tree, tree.root, uct(0.1)) is a
    # PUCT c=1: a .6+.2*sqrt(10)/7=.6904, b .5+.5*sqrt(10)/4=.8953, c .2+.3*sqrt(10)/2=.6743
    assert puct(1.0)(tree.root, b) == pytest.approx(0.5 + 0.5 * math.sqrt(10) / 4)
    assert select_child(tree, tree.root, puct(1.0)) is b
    # PUCT c=0.1: a .6090, b .5395, c .2474
    assert select_child(tree, tree.root, puct(0.1)) is a
    # growing P-UCB (PG-TD/RethinkMCTS), c=4, c_base=10: (log(21/10) + 4) * P * sqrt(ln 10) / (1 + n):
    # a .6+4.7419*.2*1.5174/7=.8056, b .5+4.7419*.5*1.5174/4=1.3994, c .2+4.7419*.3*1.5174/2=1.2793
    grow = math.log(2.1) + 4
    assert puct(4.0, c_base=10)(tree.root, a) == pytest.approx(0.6 + grow * 0.2 * math.sqrt(math.log(10)) / 7)
    assert select_child(tree, tree.root, puct(4.0, c_base=10)) is b
    # "max" reads the best value backed up through a child: a's best is 1.0, b's .5, c's .2
    a.value_max, b.value_max, c.value_max = 1.0, 0.5, 0.2
    assert select_child(tree, tree.root, uct(0.0, stat="max")) is a
    assert select_child(tree, tree.root, uct(0.0)) is a and select_child(tree, tree.root, puct(0.0)) is a
    b.value_max = 1.5
    assert select_child(tree, tree.root, uct(0.0, stat="max")) is b
    with pytest.raises(ValueError, match="stat must be 'q' or 'max', got 'mean'"):
        uct(1.0, stat="mean")
    c.visits = 0
    assert select_child(tree, tree.root, uct(0.1)) is c  # UCT tries an unvisited child first


def test_backup_is_the_mean_of_every_evaluation_below(tok):
    tree = hand_tree(tok, [(0, "a", 0, 0.0), (1, "b", 0, 0.0), (1, "c", 0, 0.0)])
    root, a, b, c = tree.nodes
    tree.backup(a, 0.5)
    tree.backup(b, 1.0)
    tree.backup(c, 0.0)
    tree.backup(b, 1.0)
    assert (b.visits, b.q, b.value_max) == (2, 1.0, 1.0) and (a.value_max, root.value_max) == (1.0, 1.0)
    assert (c.visits, c.q) == (1, 0.0)
    assert (a.visits, a.q) == (4, pytest.approx((0.5 + 1 + 0 + 1) / 4))
    assert (root.visits, root.q) == (4, pytest.approx(0.625))


def test_a_batch_of_descents_is_spread_by_virtual_visits_and_leaves_no_trace(tok):
    tree = hand_tree(tok, [(0, "a", 1, 0.5), (0, "b", 1, 0.4)])
    tree.root.visits = 2
    # 1st descent: a (.5 > .4); a's virtual visit makes its q .25, so the 2nd goes to b (q .4 -> .2);
    # the 3rd returns to a (.25 > .2), a repeat, which ends the batch
    leaves = select_leaves(tree, uct(0.0), batch=3)
    assert [n.text for n in leaves] == ["a", "b"]
    assert [n.visits for n in tree.nodes] == [2, 1, 1]


# -- expansion -------------------------------------------------------------------------------


def test_one_sampling_call_expands_every_node_and_records_the_policys_exact_log_probs(tiny, tok):
    """Five nodes at different depths expand in one call; each child's recorded log-probs equal a
    fresh scoring pass of its step after its own prefix (so sharing and batching change nothing),
    each step ends at the delimiter, at EOS or at the step limit, and sibling priors sum to 1."""
    tree = hand_tree(tok, [(0, "4*2=8\n", 0, 0), (1, "3+8=11\n", 0, 0), (0, "4*2=9\n", 0, 0), (0, "1", 0, 0)])
    split = delimiter_steps(tok, "\n", max_tokens=6)
    assert split.stop_ids == (tok.convert_tokens_to_ids("\n"),)
    calls = []
    real = tiny.sample
    tiny.sample = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        kids = Expander(tiny, split, k=4, seed=3).expand([(tree, n) for n in tree.nodes])
    finally:
        del tiny.sample
    assert len(calls) == 1 and tree.compute.sample_calls == 1 and tree.compute.generations == 20
    by_parent: dict[int, list] = {}
    for _, kid in kids:
        by_parent.setdefault(kid.parent, []).append(kid)
        fresh = tiny.score([tree.prefix_ids(tree.nodes[kid.parent])], [kid.ids]).logps[0, : len(kid.ids)]
        assert torch.allclose(fresh, torch.tensor(kid.logps), atol=1e-5)
        last = kid.ids[-1]
        assert last in split.stop_ids or (last == tok.eos_token_id) == kid.finished or len(kid.ids) == 6
        assert all(t not in split.stop_ids for t in kid.ids[:-1])
    assert sorted(by_parent) == [0, 1, 2, 3, 4]
    for sibs in by_parent.values():
        assert sum(s.count for s in sibs) == 4 and len({tuple(s.ids) for s in sibs}) == len(sibs)
        assert sum(s.prior for s in sibs) == pytest.approx(1.0)
        z = sum(math.exp(s.logp) for s in sibs)
        assert all(s.prior == pytest.approx(math.exp(s.logp) / z) for s in sibs)


def test_token_steps_sample_one_token_and_the_length_limit_makes_nodes_terminal(tiny, tok):
    tree = hand_tree(tok, [(0, "4*2=8\n", 0, 0)])
    kids = Expander(tiny, token_steps(), k=3, max_response_tokens=7).expand([(tree, tree.nodes[1])])
    assert all(len(k.ids) == 1 and k.terminal for _, k in kids)  # 6 tokens so far + 1 = the limit of 7


def test_top_tokens_propose_each_nodes_most_likely_next_tokens_deterministically(tiny, tok):
    """The children are the k highest-probability next tokens of a fresh forward on each prefix,
    with those log-probs; implicit-reward beam search on them gives the same tree twice."""
    tree = hand_tree(tok, [(0, RIGHT[0], 0, 0)])
    kids = TopTokens(tiny, k=3).expand([(tree, n) for n in tree.nodes])
    for node in tree.nodes[:2]:
        ids = torch.tensor([tree.prefix_ids(node)])
        with torch.no_grad():
            logp = tiny.model(input_ids=ids).logits[0, -1].log_softmax(-1)
        want = logp.topk(3)
        got = [k for _, k in kids if k.parent == node.id]
        assert [k.ids[0] for k in got] == want.indices.tolist()
        assert [k.logps[0] for k in got] == pytest.approx(want.values.tolist(), abs=1e-5)
        assert sum(k.prior for k in got) == pytest.approx(1.0)
    ref = LanguagePolicy(tiny_causal_lm(tok, n_layer=2, n_embd=32, max_positions=128, seed=2), tok)
    runs = []
    for _ in range(2):
        t = Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids)
        beam_search(t, TopTokens(tiny, k=3, max_response_tokens=4), ImplicitReward(ref, 1.0), width=2)
        runs.append([(n.parent, n.ids, n.value and round(n.value, 6)) for n in t.nodes])
    assert runs[0] == runs[1] and len(runs[0]) == 1 + 3 + 6 * 3  # depth 1: 3 kids; then 2 kept x 3, 3 levels


# -- evaluators ------------------------------------------------------------------------------


def test_verifier_scores_terminal_nodes_only_and_search_refuses_a_node_without_value(tok):
    tree = hand_tree(tok, [(0, RIGHT[0], 0, 0), (1, RIGHT[1], 0, 0), (2, RIGHT[2], 0, 0), (2, "answer: 12", 0, 0)])
    for n in tree.nodes[3:]:
        n.terminal = n.finished = True
    items = [(tree, n) for n in tree.nodes[1:]]
    assert Verifier(check_answer)(items) == [None, None, 1.0, 0.0]
    with pytest.raises(SearchError, match="evaluator 'verifier' gave no value for node 1"):
        evaluate(items, Verifier(check_answer))


def test_rollouts_average_the_verifier_over_completions(tok):
    """Completions from "4*2=8\\n3+8=11\\n": "answer: 11" and "answer: 12" -> 0.5; from the slip
    "4*2=9\\n": both wrong -> 0; a terminal node is checked as it is -> 1."""
    tree = hand_tree(tok, [(0, RIGHT[0], 0, 0), (1, RIGHT[1], 0, 0), (0, "4*2=9\n", 0, 0), (2, RIGHT[2], 0, 0)])
    tree.nodes[4].terminal = tree.nodes[4].finished = True
    policy = Scripted(tok, lambda r: ["answer: 11", "answer: 12"] if r == "".join(RIGHT[:2])
                      else ["3+9=12\nanswer: 12"] * 2)
    out = Rollouts(policy, check_answer, n=2)([(tree, tree.nodes[i]) for i in (2, 3, 4)])
    assert out == [0.5, 0.0, 1.0] and policy.calls == 1 and tree.compute.rollouts == 4


def test_mix_weighs_the_parts_that_give_a_value_and_first_takes_the_first(tok):
    tree = hand_tree(tok, [(0, "a", 0, 0), (0, "b", 0, 0)])
    items = [(tree, n) for n in tree.nodes[1:]]

    class Fixed:
        def __init__(self, source, values):
            self.source, self.values, self.seen = source, values, []

        def __call__(self, its):
            self.seen.append([n.text for _, n in its])
            return [self.values[n.text] for _, n in its]

    a, b = Fixed("a", {"a": 1.0, "b": None}), Fixed("b", {"a": 0.0, "b": 2.0})
    mix = Mix([(a, 1.0), (b, 3.0)])
    evaluate(items, mix)
    assert [(n.value, n.source) for _, n in items] == [(0.25, "a+b"), (2.0, "b")]
    a.seen, b.seen = [], []
    evaluate(items, First([a, b]))
    assert [(n.value, n.source) for _, n in items] == [(1.0, "a"), (2.0, "b")]
    assert b.seen == [["b"]]  # the second part sees only what the first left open


def test_implicit_reward_is_beta_times_the_policy_reference_log_ratio(tiny, tok):
    """The value of a sampled node is beta * (log pi - log pi_ref) summed over its response, both
    scored afresh; only the reference's tokens are spent."""
    ref = LanguagePolicy(tiny_causal_lm(tok, n_layer=2, n_embd=32, max_positions=128, seed=2), tok)
    tree = hand_tree(tok, [])
    kids = Expander(tiny, delimiter_steps(tok, "\n", 6), k=3, seed=0).expand([(tree, tree.root)])
    grand = Expander(tiny, delimiter_steps(tok, "\n", 6), k=2, seed=1).expand([kids[0]])
    items = kids + grand
    values = ImplicitReward(ref, beta=0.5)(items)
    for (t, n), v in zip(items, values):
        p, r = [t.root.ids], [t.response_ids(n)]
        want = 0.5 * (tiny.score(p, r).logps.sum() - ref.score(p, r).logps.sum())
        assert v == pytest.approx(want.item(), abs=1e-4)
    assert tree.compute.reference_tokens == sum(len(tree.prefix_ids(n)) for _, n in items)
    hand = hand_tree(tok, [(0, RIGHT[0], 0, 0)])
    with pytest.raises(SearchError, match="node 1 has 6 response tokens but 0 recorded log-probs"):
        ImplicitReward(ref)([(hand, hand.nodes[1])])


def test_critique_reads_p_yes_against_p_no_after_the_question(tiny, tok):
    tree = hand_tree(tok, [(0, RIGHT[0], 0, 0)])
    critic = Critique(tiny, template="{prompt}{response}answer:", yes="1", no="0")
    got = critic([(tree, tree.nodes[1])])[0]
    ids = torch.tensor([tok("3+4*2=4*2=8\nanswer:", add_special_tokens=False).input_ids])
    with torch.no_grad():
        last = tiny.model(input_ids=ids).logits[0, -1]
    y, n = tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("0")
    assert got == pytest.approx((last[y].exp() / (last[y].exp() + last[n].exp())).item(), abs=1e-5)
    with pytest.raises(SearchError, match="must start with different tokens"):
        Critique(tiny, yes="1", no="1")([(tree, tree.nodes[1])])


def test_prm_and_model_values_read_the_models_scores(tok):
    from rlxf.rewards.model import RewardModel
    from rlxf.rewards.process import ProcessRewardModel

    tree = hand_tree(tok, [(0, RIGHT[0], 0, 0), (1, RIGHT[1], 0, 0)])
    prm = ProcessRewardModel(tiny_scorer(tok, max_positions=128, seed=4), tok)
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    resp = enc(RIGHT[0]) + enc(RIGHT[1])
    direct = prm.step_scores([enc(PROBLEM)], [resp], [[len(enc(RIGHT[0])) - 1, len(resp) - 1]])[0]
    got = PRM(prm)([(tree, tree.nodes[1]), (tree, tree.nodes[2])])
    assert got == pytest.approx([prm.step_scores([enc(PROBLEM)], [enc(RIGHT[0])], [[5]])[0][0], direct[1]], abs=1e-5)
    rm = RewardModel(tiny_scorer(tok, max_positions=128, seed=5), tok)
    want = rm.score_texts([PROBLEM], ["".join(RIGHT[:2])], add_eos=False).item()
    assert ModelValue(rm)([(tree, tree.nodes[2])])[0] == pytest.approx(want, abs=1e-5)


# -- procedures ------------------------------------------------------------------------------


def test_beam_search_of_width_one_follows_the_valid_steps_to_the_right_answer(tok):
    """Each state offers the right step and a slip; valued by the share of valid steps (a verifier
    at the end), a width-1 beam keeps the right one: 3 levels, 3 sampling calls, 6 generations."""
    policy = Scripted(tok, right_or_slip)
    tree = Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids)
    beam_search(tree, Expander(policy, delimiter_steps(tok), k=2), guided(), width=1)
    assert tree.response_text(tree.best()) == "".join(RIGHT) and tree.best().value == 1.0
    assert (policy.calls, tree.compute.sample_calls, tree.compute.generations) == (3, 3, 6)


def test_best_first_stops_when_the_best_node_is_a_finished_answer(tok):
    policy = Scripted(tok, right_or_slip)
    tree = Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids)
    best_first(tree, Expander(policy, delimiter_steps(tok), k=2), First([Verifier(check_answer), StepCheck()]),
               expansions=10)
    # root, then the right step at each level (value 1 beats the slip's 0.5 or 0): 3 expansions
    assert policy.calls == 3 and len(tree.nodes) == 7
    assert tree.response_text(tree.best()) == "".join(RIGHT)


def test_several_trees_search_side_by_side_with_one_sampling_call_per_level(tok):
    """Two problems' beams expand together: still 3 sampling calls in all, the same answers as alone."""
    policy = Scripted(tok, right_or_slip)
    trees = [Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids) for _ in range(2)]
    beam_search(trees, Expander(policy, delimiter_steps(tok), k=2), First([Verifier(check_answer), StepCheck()]),
                width=2)
    assert policy.calls == 3 and all(t.response_text(t.best()) == "".join(RIGHT) for t in trees)
    calls = []
    for n_trees in (1, 3):  # identical trees take the same rounds: 3 trees cost the calls of one
        policy.calls = 0
        trees = [Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids) for _ in range(n_trees)]
        mcts(trees, Expander(policy, delimiter_steps(tok), k=2), First([Verifier(check_answer), StepCheck()]),
             simulations=5, batch=2)
        calls.append(policy.calls)
        assert all(t.compute.sample_calls == policy.calls for t in trees)
        assert [n.visits for n in trees[-1].nodes] == [n.visits for n in trees[0].nodes]
    assert calls[0] == calls[1] < 5  # fewer rounds than simulations: batches of leaves


def test_token_level_implicit_reward_beam_keeps_the_top_width_at_every_depth(tiny, tok):
    """From r to Q*: per-token beam search valued by beta * log pi/pi_ref. At every depth the
    nodes expanded next are exactly the `width` highest-valued children that are not terminal."""
    ref = LanguagePolicy(tiny_causal_lm(tok, n_layer=2, n_embd=32, max_positions=128, seed=2), tok)
    tree = Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids)
    beam_search(tree, Expander(tiny, token_steps(), k=3, max_response_tokens=6, seed=5), ImplicitReward(ref, 1.0),
                width=2)
    assert tree.compute.reference_tokens > 0 and max(n.depth for n in tree.nodes) == 6
    for depth in range(1, 6):
        level = [n for n in tree.nodes if n.depth == depth]
        top = sorted(level, key=lambda n: -n.value)[:2]
        assert {n.id for n in level if n.children} == {n.id for n in top if not n.terminal}


def test_mcts_visits_add_up_and_each_round_is_one_sampling_call(tiny, tok):
    """On the tiny real policy: every round samples once for all its leaves, and every expanded
    node's visits are its own evaluation plus its children's visits (plus terminal revisits)."""
    tree = Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids)
    ev = First([Verifier(check_answer), StepCheck()])
    mcts(tree, Expander(tiny, delimiter_steps(tok, "\n", 8), k=3, max_response_tokens=24), ev, simulations=13,
         rule=puct(1.0), batch=4)
    rounds = 1 + math.ceil(12 / 4)  # the root alone, then batches of at most 4 leaves
    assert tree.compute.sample_calls <= rounds and tree.compute.generations == 3 * (len(
        [n for n in tree.nodes if n.children]))
    for n in tree.nodes:
        if n.children and n.parent is not None:
            assert n.visits == 1 + sum(k.visits for k in tree.children(n))
        assert n is tree.root or n.value is not None
    assert tree.root.visits >= sum(k.visits for k in tree.children(tree.root))


def test_mcts_with_uct_finds_the_right_answer_on_the_scripted_task(tok):
    policy = Scripted(tok, right_or_slip)
    tree = Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids)
    mcts(tree, Expander(policy, delimiter_steps(tok), k=2), First([Verifier(check_answer), StepCheck()]),
         simulations=12, rule=uct(0.5), batch=2)
    assert tree.best().value == 1.0 and tree.response_text(tree.best()) == "".join(RIGHT)
    first = tree.children(tree.root)
    assert first[0].text == RIGHT[0] and first[0].q > first[1].q  # the right first step is valued higher


# -- the tree as JSONL and as training data --------------------------------------------------


def test_tree_round_trips_through_jsonl_one_node_per_line(tmp_path, tok):
    policy = Scripted(tok, right_or_slip)
    tree = Tree(PROBLEM, tok(PROBLEM, add_special_tokens=False).input_ids)
    beam_search(tree, Expander(policy, delimiter_steps(tok), k=2), guided(), width=2)
    tree.save(tmp_path / "t.jsonl")
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == len(tree.nodes)
    row = json.loads(lines[1])
    assert {"parent", "text", "visits", "value", "q", "source"} <= set(row) and row["parent"] == 0
    back = Tree.load(tmp_path / "t.jsonl")
    assert [vars(n) for n in back.nodes] == [vars(n) for n in tree.nodes]
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + lines[2] + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 has id 2, expected 1"):
        Tree.load(tmp_path / "bad.jsonl")


def test_step_pairs_take_siblings_whose_scores_differ_by_the_gap(tok):
    tree = hand_tree(tok, [(0, "a", 4, 3.2), (0, "b", 2, 0.6), (0, "c", 1, 0.3), (1, "d", 1, 1.0), (1, "e", 1, 1.0)])
    a, b, c = tree.nodes[1:4]
    a.value, b.value, c.value = 0.0, 0.9, 0.3
    a.logps = [-0.5, -0.25]
    rows = step_pairs(tree)  # q: a .8, b .3, c .3; d and e tie
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a", "b"), ("a", "c")]
    assert rows[0]["prompt"] == PROBLEM and rows[0]["chosen_logp"] == -0.75
    assert step_pairs(tree, min_gap=0.6) == []
    # alpha .5 mixes the own values: a .4, b .6, c .3 -> (b, a) .2, (a, c) .1, (b, c) .3
    mixed = step_pairs(tree, alpha=0.5, min_gap=0.15)
    assert [(r["chosen"], r["rejected"]) for r in mixed] == [("b", "a"), ("b", "c")]
    assert mixed[0]["chosen_score"] == pytest.approx(0.6)


def _two_paths(tok) -> Tree:
    """Root -> right first step -> {right second step -> right answer (1), slip "3+8=12" -> "answer: 12" (0)};
    root -> slip "4*2=9" -> "3+9=12" -> "answer: 12" (0). Terminal values backed up once each."""
    tree = hand_tree(tok, [(0, RIGHT[0], 0, 0), (1, RIGHT[1], 0, 0), (2, RIGHT[2], 0, 0), (1, "3+8=12\n", 0, 0),
                           (4, "answer: 12", 0, 0), (0, "4*2=9\n", 0, 0), (6, "3+9=12\n", 0, 0),
                           (7, "answer: 12", 0, 0)])
    for i, v in ((3, 1.0), (5, 0.0), (8, 0.0)):
        n = tree.nodes[i]
        n.terminal = n.finished = True
        n.value = v
        tree.backup(n, v)
    return tree


def test_draw_shows_each_step_with_its_visits_q_and_value(tok):
    tree = _two_paths(tok)
    tree.nodes[1].value, tree.nodes[1].source = 0.5, "prm"
    assert tree.draw(max_depth=1) == "\n".join([
        "3+4*2=  [N=3 q=0.33]",
        "|- 4*2=8\\n  [N=2 q=0.50 v=0.50 prm]",
        "|  ... 2 children",
        "`- 4*2=9\\n  [N=1 q=0.00]",
        "   ... 1 children"])
    assert tree.draw().splitlines()[3] == "|  |  `- answer: 11  [N=1 q=1.00 v=1.00]"


def test_value_targets_are_the_backed_up_mean_or_the_terminal_mean(tok):
    tree = _two_paths(tok)
    q = {r["node"]: r["target"] for r in value_targets(tree, "q")}
    mc = {r["node"]: r["target"] for r in value_targets(tree, "mc")}
    assert q[1] == pytest.approx(0.5) and q[2] == 1.0 and q[6] == 0.0
    assert mc == {1: 0.5, 2: 1.0, 3: 1.0, 4: 0.0, 5: 0.0, 6: 0.0, 7: 0.0, 8: 0.0}
    paths = {r["leaf"]: r for r in step_targets(tree, "q")}
    assert paths[3]["steps"] == RIGHT and paths[3]["targets"] == [pytest.approx(0.5), 1.0, 1.0]
    assert paths[8]["targets"] == [0.0, 0.0, 0.0] and sorted(paths) == [3, 5, 8]
    with pytest.raises(ValueError, match="kind must be 'q' or 'mc', got 'td'"):
        step_targets(tree, "td")
    tree.backup(tree.nodes[3], 1.0)  # a revisit moves q (2 of 3 below node 1 succeed) but not mc
    assert {r["node"]: r["target"] for r in value_targets(tree, "q")}[1] == pytest.approx(2 / 3)
    assert {r["node"]: r["target"] for r in value_targets(tree, "mc")}[1] == 0.5


def test_revisions_splice_the_bad_branch_at_its_first_bad_step_then_the_good_continuation(tok):
    tree = _two_paths(tok)
    rows = {(r["good"], r["bad"]): r for r in revisions(tree, marker="WAIT\n")}
    assert sorted(rows) == [(3, 5), (3, 8)]
    deep = rows[(3, 5)]  # common ancestor: the right first step; cut at the slip (q 0)
    assert deep["prefix"] == "4*2=8\n3+8=12\n" and deep["completion"] == "WAIT\n3+8=11\nanswer: 11"
    top = rows[(3, 8)]  # common ancestor: the root; the first slip already has q 0
    assert top["prefix"] == "4*2=9\n" and top["completion"] == "WAIT\n" + "".join(RIGHT)
    ends = {(r["good"], r["bad"]): r for r in revisions(tree, marker="WAIT\n", cut="end")}
    assert ends[(3, 8)]["prefix"] == "4*2=9\n3+9=12\nanswer: 12"
    # a model-guided cut: the first step that check_steps calls wrong
    judged = revisions(tree, marker="WAIT\n", is_bad=lambda t, n: not check_steps(t.prompt, t.response_text(n))[-1])
    assert {(r["good"], r["bad"]): r["cut"] for r in judged} == {(3, 5): 4, (3, 8): 6}
