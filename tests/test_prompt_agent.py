"""PromptAgent (MCTS over prompt edits from error feedback) and its baselines at equal eval calls."""

import math

import numpy as np
import pytest

from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.algorithms.prompts import prompt_agent as P
from rlxf.search import Tree
from rlxf.tasks import prompt_tasks as pt


@pytest.fixture
def task():
    """The task answered by its hidden rule (no model training: the fast tests)."""
    return pt.PromptTask(respond=pt.rule_respond)


@pytest.fixture(scope="module")
def trained():
    return pt.prompt_task()


def _chain(values):
    tree = Tree("root", [])
    nodes = [tree.root]
    tree.root.value = values[0]
    for v in values[1:]:
        nodes.append(tree.add(nodes[-1], text=f"n{len(nodes)}", value=v))
    return tree, nodes


def test_uct_backup_and_output_by_hand():
    tree, (r, a, b) = _chain([0.2, 0.5, 0.3])
    P.cumulative_backup(tree, [r, a, b])
    assert (r.visits, r.value_sum) == (1, pytest.approx(1.0)) and a.value_sum == pytest.approx(0.8)
    assert b.value_sum == pytest.approx(0.3)
    c = tree.add(r, text="c", value=0.9)  # never backed up: Q is its own value, N counts as 1
    rule = P.prompt_uct(2.5)
    assert rule(r, c) == pytest.approx(0.9 + 2.5 * math.sqrt(math.log(2)))
    assert rule(r, a) == pytest.approx(0.8 + 2.5 * math.sqrt(math.log(2)))
    # output: the best-mean path [r, c] (0.55) beats [r, a, b] (0.333); its best node is c
    assert P.best_on_best_path([[r, a, b], [r, c]]) is c
    d = tree.add(b, text="d", value=0.95)  # a lone high node on a weak path is not the output
    assert P.best_on_best_path([[r, a, b, d], [r, c]]) is c and P.best_node(tree) is d


@pytest.mark.parametrize("name", ["prompt_agent", "beam", "greedy", "random_mutation"])
def test_methods_spend_exactly_the_budget(task, name):
    before = task.calls["eval"]
    res = P.run(name, task, 25, seed=0)
    assert task.calls["eval"] - before == 25 and len(res.trace) == 25
    assert res.trace[0] == task.hand_written and res.prompt == res.trace[-1]
    vals = task.score(res.trace, "eval")  # the output never gets worse on eval for the argmax methods
    if name != "prompt_agent":
        assert np.all(np.diff(vals) >= 0)
    assert task.calls["test"] >= 0


def test_prompt_agent_tree_rules(task):
    from rlxf.algorithms.prompts import editor as E

    res = P.prompt_agent(task, E.simulated_editor(error=0.2, seed=1), 40, seed=1, depth_limit=3, min_depth=1)
    tree = res.tree
    counts = [len(n.children) for n in tree.nodes]  # expand_width children per expansion (the last may be cut)
    assert sum(c not in (0, 3) for c in counts) <= 1 and counts[0] == 3
    assert max(n.depth for n in tree.nodes) <= 3
    for n in tree.nodes[1:]:
        parent = tree.nodes[n.parent]
        assert n.terminal == (n.depth >= 3 or (n.depth > 1 and n.value < (tree.root.value + parent.value) / 2))
    with pytest.raises(ValueError, match="output must be"):
        P.prompt_agent(task, E.simulated_editor(), 5, output="best")
    with pytest.raises(ValueError, match="budget must be"):
        P.prompt_agent(task, E.simulated_editor(), 0)
    with pytest.raises(ValueError, match="unknown prompt search"):
        P.run("mcts", task, 5, 0)


CLAIM_SEEDS = list(range(100, 108))


@pytest.mark.slow
def test_claim_prompt_agent_beats_hand_written_and_random_mutation(trained):
    """Pre-registered (committed before its first run) claim, PromptAgent (C1): at an equal 60 eval calls,
    with the simulated editor at error rate 0.2, MCTS's output prompt has a higher test accuracy (500
    test questions) than the hand-written prompt and than random-mutation hill climbing, each by at
    least 2 paired standard errors over the fresh seeds 100-107 (a zero SE counts as passing when the gain
    is positive). Settings (budget 60, expand_width 3, depth_limit 5, min_depth 2, w_exp 2.5) are C1's
    defaults and the lab's budget; tried only on seeds 0-2 (prompt_agent 0.937, random mutation 0.757,
    hand-written 0.438 there)."""
    res = P.compare(trained, 60, CLAIM_SEEDS, methods=("prompt_agent", "random_mutation"))
    for base in ("hand_written", "random_mutation"):
        gain, se = paired_gain(res["prompt_agent"], res[base])
        assert gain > 0 and gain >= 2 * se, (base, gain, se, {k: mean_se(v) for k, v in res.items()})


@pytest.mark.parametrize("name", ["prompt_agent", "beam", "greedy", "random_mutation", "promst",
                                  "promst_score_model", "ape"])
def test_registered_in_the_prompt_lab(name):
    """Each method runs through the prompt lab's registry (the task answered by its rule: seconds)."""
    from rlxf.lab import prompts as L
    from rlxf.lab.registry import resolve

    task = pt.PromptTask(respond=pt.rule_respond)
    problem = L.PromptProblem(task, 0, [], np.zeros((0, 1)), task.hand_written)
    best = resolve(L.METHODS[name], name).optimise(problem, 12, 0)
    assert len(best) == 12 and task.calls["eval"] == 12
    assert task.rule_score(best[-1], "eval") >= task.rule_score(task.hand_written, "eval")
