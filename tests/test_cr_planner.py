"""CR-Planner (rlxf.algorithms.search.cr_planner) on the retrieval task: the simulated generator's
replies, tree growth over sub-goals and executions, the planner values and pairs the critics learn
from, the pairwise critic loss, the critic-free baselines, the lab symbols, and (slow) the paper's
claim: critics trained on MCTS data beat the same generator without critics at equal generator calls."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.search import cr_planner
from rlxf.algorithms.search.cr_planner import (CR_PLANNER, CRITICS, N_FEATURES, NO_CRITIC, Critic, Critics,
                                               PlanExpander, _guess, chosen_path, critic_loss, critic_of,
                                               critic_pairs, featurize, gold_of, lab_setup, plan, planner_values,
                                               request, rollout, search_trees, simulated_generator, state_of,
                                               train_critics, valid_subgoals, vote)
from rlxf.core.runs import Run
from rlxf.search import Tree
from rlxf.tasks.retrieval import RetrievalTask

FAST = OptimConfig(steps=5, batch_size=64, lr=1e-2, checkpoint_every=0)


@pytest.fixture(scope="module")
def task():
    return RetrievalTask(n_people=12, seed=5)


@pytest.fixture(scope="module")
def two_hop(task):
    return task.questions("test", hops=2)[0]


@pytest.fixture(scope="module")
def small_critics(task, tmp_path_factory):
    trees = search_trees(task, task.questions("train"), simulated_generator(task, 0.3, 0), simulations=20,
                         c=0.5)
    run = Run(tmp_path_factory.mktemp("crp") / "run", "x")
    return train_critics(run, "critics", critic_pairs(trees), FAST, 0)


def test_generator_without_errors_reads_its_state(task, two_hop):
    gen = simulated_generator(task, error=0.0)
    q, (hop, last) = two_hop, two_hop.facts
    s0 = q.prompt
    assert gen.complete([request("plan", s0), request("query", s0)]) == ["query", f"{hop.relation} {q.subject}"]
    s1 = s0 + f"query: {hop.relation} {q.subject}\n"
    assert gen.complete([request("plan", s1)]) == ["retrieve"]
    s2 = s1 + f"doc: {hop.text}\n"
    assert gen.complete([request("plan", s2), request("query", s2), request("reason", s2)]) == [
        "query", f"{last.relation} {last.subject}", hop.text]  # the rationale states the hop just taken
    s3 = s2 + f"query: {last.relation} {last.subject}\ndoc: {last.text}\n"
    assert gen.complete([request("plan", s3), request("reason", s3)]) == ["reason", f"the answer is {q.answer}."]
    assert gen.complete([request("reason", s0)]) == [f"the answer is {_guess(q)}."]  # no evidence: a guess
    with pytest.raises(ValueError, match="unknown action"):
        gen.complete([request("dance", s0)])


def test_generator_errors_replace_the_right_reply(task, two_hop):
    right, wrong = simulated_generator(task, error=0.0), simulated_generator(task, error=1.0, seed=1)
    s = two_hop.prompt + f"query: {two_hop.facts[0].relation} {two_hop.subject}\ndoc: {two_hop.facts[0].text}\n"
    asks = [request(a, s) for a in ("plan", "query", "reason")] * 5
    assert all(w != r for w, r in zip(wrong.complete(asks), right.complete(asks)))
    assert wrong.requests == 15 and wrong.calls == 1


def test_valid_subgoals_retrieve_only_after_a_query(two_hop):
    assert valid_subgoals(two_hop.prompt) == ["reason", "query"]
    assert valid_subgoals(two_hop.prompt + "query: age x\n") == ["reason", "query", "retrieve"]
    assert valid_subgoals(two_hop.prompt + "query: age x\ndoc: the age of x is 1.\n") == ["reason", "query"]


def test_rollouts_without_errors_reach_gold_with_the_expected_calls(task, two_hop):
    gen = simulated_generator(task, error=0.0)
    end, calls = rollout(task, gen, two_hop.prompt, "generator")
    assert task.check_answer(two_hop.prompt, end) == 1.0
    assert calls == 5 + 3  # plans: query, retrieve, query, retrieve, reason; executions: query, query, reason
    end, calls = rollout(task, gen, two_hop.prompt, "always")  # query retrieve reason(hop) query retrieve reason
    assert task.check_answer(two_hop.prompt, end) == 1.0 and calls == 4 and end.count("\n") == 7
    end, calls = rollout(task, gen, two_hop.prompt, "never")
    assert end.endswith(f"reason: the answer is {_guess(two_hop)}.\n") and calls == 1
    answer, spent = vote(task, gen, two_hop, "always", calls=10)
    assert answer == two_hop.answer and spent == 12  # three trajectories of 4 calls reach 10
    with pytest.raises(ValueError, match="order must be one of"):
        rollout(task, gen, two_hop.prompt, "sometimes")


def test_expander_grows_subgoals_then_executions_in_one_generator_call(task, two_hop):
    gen = simulated_generator(task, error=0.0)
    tree = Tree(two_hop.prompt, [])
    exp = PlanExpander(task, gen, n=3, docs=2, max_steps=2)
    goals = exp.expand([(tree, tree.root)])
    assert [n.text for _, n in goals] == ["reason: ", "query: "] and gen.calls == 0
    execs = exp.expand(goals)
    assert gen.calls == 1 and gen.requests == 6 and tree.compute.generations == 6
    by_parent = {tree.nodes[n.parent].text: n for _, n in execs}
    assert by_parent["reason: "].text == f"the answer is {_guess(two_hop)}.\n" and by_parent["reason: "].count == 3
    assert by_parent["reason: "].finished and by_parent["reason: "].terminal
    query = by_parent["query: "]
    assert not query.terminal and query.prior == 1.0
    retrieve = [n for _, n in exp.expand([(tree, query)]) if n.text == "doc: "][0]
    docs = exp.expand([(tree, retrieve)])
    assert [n.text for _, n in docs] == [d + "\n" for d in task.search(query.text, 2)] and gen.calls == 1
    assert all(n.terminal and not n.finished for _, n in docs)  # step 2 of max_steps=2: cut
    with pytest.raises(ValueError, match="PlanExpander.n must be >= 1"):
        PlanExpander(task, gen, n=0)


def test_planner_values_take_the_best_execution_discounted_per_step(two_hop):
    tree = Tree(two_hop.prompt, [])
    q = tree.add(tree.root, text="query: ", value=0.5)
    a = tree.add(q, text="age x\n", value=0.2)
    b = tree.add(q, text="age y\n", value=0.4)
    r = tree.add(a, text="reason: ", value=0.3)
    tree.add(r, text="the answer is 1.\n", value=1.0, finished=True, terminal=True)
    planner_values(tree, discount=0.9)
    assert (r.value, a.value, b.value, q.value) == (1.0, 0.9, 0.4, 0.9)
    assert a.source == "planner" and b.source == ""
    rows = critic_pairs([tree], min_gap=0.05)
    assert rows["query"] == [(two_hop.prompt + "query: ", "age x\n", "age y\n")]
    assert critic_of(two_hop.prompt) == "subgoal" and critic_of(two_hop.prompt + "x\ndoc: ") == "retrieve"


def test_critic_loss_is_the_pairwise_ranking_loss():
    model = Critic(seed=3)
    xc, xr = torch.randn(4, N_FEATURES), torch.randn(4, N_FEATURES)
    g_c, g_r = model(xc).tolist(), model(xr).tolist()
    want = sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(g_c, g_r))
    assert critic_loss(model, xc, xr).item() == pytest.approx(want, rel=1e-5)


def test_features_see_whether_a_document_answers_the_last_query(two_hop):
    state = two_hop.prompt + f"query: {two_hop.facts[0].relation} {two_hop.subject}\ndoc: "
    right, other = featurize(state, two_hop.facts[0].text + "\n"), featurize(state, "the age of nobody is 3.\n")
    assert len(right) == len(other) == N_FEATURES and right != other


def test_critics_route_each_node_to_its_critic(two_hop):
    class Fixed:
        def __init__(self, v):
            self.v = v

        def score(self, pairs):
            return [self.v] * len(pairs)

    tree = Tree(two_hop.prompt, [])
    g = tree.add(tree.root, text="query: ")
    e = tree.add(g, text="age x\n")
    d = tree.add(tree.add(e, text="doc: "), text="the age of x is 1.\n")
    r = tree.add(tree.add(d, text="reason: "), text="the answer is 1.\n")
    values = Critics({k: Fixed(float(i)) for i, k in enumerate(CRITICS)})([(tree, n) for n in (g, e, d, r)])
    assert values == [0.0, 2.0, 3.0, 1.0]
    fixed = Critics({k: Fixed(9.0) for k in CRITICS}, order="always")  # query first, then retrieve
    assert fixed([(tree, g), (tree, tree.add(tree.root, text="reason: ")), (tree, e)]) == [1.0, 0.0, 9.0]


def test_train_critics_names_a_critic_without_pairs(tmp_path):
    with pytest.raises(ValueError, match="no training pairs for the reason critic"):
        train_critics(Run(tmp_path / "r", "x"), "c", {"subgoal": [("q\n", "query: ", "reason: ")]}, FAST, 0)


def test_plan_end_to_end_counts_n_generator_calls_per_executed_step(task, small_critics):
    qs = task.questions("test")[:6]
    trees = plan(task, qs, simulated_generator(task, 0.3, 1), small_critics, n=2, max_steps=6)
    for tree in trees:
        end = chosen_path(tree)
        assert end.terminal and gold_of(task, tree) in (0.0, 1.0)
        steps = [n for n in tree.path(end) if n.text in ("reason: ", "query: ")]
        assert tree.compute.generations == 2 * len(steps)
        assert state_of(tree, end).startswith(tree.prompt)


def test_lab_symbols(task, small_critics, tmp_path, monkeypatch):
    monkeypatch.setattr(cr_planner, "CRITIC_OPTIM", FAST)  # a smoke test of prepare: few steps
    run = Run(tmp_path / "lab", "x")
    setup = lab_setup(run, seed=5, n_prompts=4)
    assert setup.name == "retrieval" and setup.policy is None and len(setup.prompts) == 4
    out = CR_PLANNER.search(setup, small_critics, 2, 0)
    assert 0.0 <= out["gold"] <= 1.0 and out["generations"] >= 2 * 4
    out = NO_CRITIC.search(setup, None, 2, 0)
    assert 0.0 <= out["gold"] <= 1.0 and out["generations"] >= 2 * 4
    setup.extras["train"] = setup.extras["train"][:8]
    assert set(CR_PLANNER.prepare(setup, run, 0)) == set(CRITICS)


@pytest.mark.slow
def test_claim_critics_beat_the_same_generator_without_critics(tmp_path):
    """CR-Planner's claim at toy scale: critics trained on MCTS sibling pairs, choosing the sub-goal
    and the best of n = 3 executions, answer more retrieval-needing questions than the same generator
    without critics.

    Setup: three worlds (seeds 1, 2, 3; seed 0 was used while building the method), 60 people each;
    the critics learn from MCTS (40 simulations, UCT c = 0.5, 2 gold-judged rollouts per node) on the
    90 training questions of a world, and are measured on its 180 test questions (one or two hops;
    every one needs retrieval, since the generator knows no fact of the world): 540 paired questions.
    Generator: simulated_generator with error 0.3, the same for every arm.
    Compute: on each question every baseline spends at least as many generator calls as the planner
    did (self-consistency votes over whole trajectories until it has); BM25 and critic calls are not
    generator calls. Baselines: the generator choosing its own sub-goals, always retrieve (query,
    retrieve, reason, repeated) and never retrieve (reason only).
    Threshold (set before the first run): for each baseline the mean paired gold difference
    (planner - baseline) over the 540 questions exceeds 2 standard errors, and is positive in each world.
    Also printed, not asserted (added after the first run): the planner with a fixed query -> retrieve
    -> reason order instead of the sub-goal critic (the paper's ablation).
    """
    diffs = {order: [] for order in ("generator", "always", "never")}
    per_world = {order: [] for order in diffs}
    golds, ablation = [], []
    for seed in (1, 2, 3):
        setup = lab_setup(Run(tmp_path / f"w{seed}", "x"), seed, n_prompts=1000)
        task = setup.extras["task"]
        critics = CR_PLANNER.prepare(setup, Run(tmp_path / f"r{seed}", "x"), seed)
        qs = [task.question(p) for p in setup.prompts]
        trees = plan(task, qs, simulated_generator(task, 0.3, seed + 100), critics, n=3)
        mine = [gold_of(task, t) for t in trees]
        golds += mine
        fixed = plan(task, qs, simulated_generator(task, 0.3, seed + 100), critics, n=3, order="always")
        ablation += [gold_of(task, t) for t in fixed]
        for order in diffs:
            gen = simulated_generator(task, 0.3, seed + 200)
            theirs = []
            for q, t in zip(qs, trees):
                answer, spent = vote(task, gen, q, order, calls=t.compute.generations)
                assert spent >= t.compute.generations
                theirs.append(float(answer == q.answer))
            d = [a - b for a, b in zip(mine, theirs)]
            diffs[order] += d
            per_world[order].append(statistics.mean(d))
    report = {o: (statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d)), per_world[o]) for o, d in diffs.items()}
    print(f"planner gold {statistics.mean(golds):.3f}, without the sub-goal critic {statistics.mean(ablation):.3f}; "
          f"planner - baseline (mean, se, per world): {report}")
    for order, (mean, se, worlds) in report.items():
        assert len(diffs[order]) >= 500
        assert mean > 2 * se, (order, mean, se)
        assert all(w > 0 for w in worlds), (order, worlds)
