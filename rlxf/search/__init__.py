"""Search over a policy's partial responses, and training data walked out of the trees.

A :class:`Tree` holds a prompt and steps of partial responses; an :class:`Expander` samples ``k``
next steps for many nodes in one sampling call; evaluators (:mod:`rlxf.search.values`) value
nodes; :func:`mcts`, :func:`beam_search` and :func:`best_first` grow a tree; :mod:`rlxf.search.data`
turns it into step-level preference pairs, value targets and revision trajectories.

    from rlxf.search import Expander, First, Rollouts, Tree, Verifier, delimiter_steps, mcts, puct, step_pairs
    from rlxf.tasks.arithmetic import check_answer

    trees = [Tree(p, policy.encode([p])[0]) for p in ["3+4*2=", "7-2*3="]]
    expander = Expander(policy, delimiter_steps(policy.tokenizer, "\\n"), k=4, max_response_tokens=48)
    value = First([Verifier(check_answer), Rollouts(policy, check_answer, n=2)])  # gold at the end, rollouts before
    mcts(trees, expander, value, simulations=12, rule=puct(1.0), batch=4)  # one sampling call per round
    trees[0].save("tree.jsonl"); pairs = step_pairs(trees[0], min_gap=0.2); best = trees[0].best()
"""

from rlxf.search.data import revisions, step_pairs, step_targets, value_targets
from rlxf.search.expand import Expander, StepSplit, TopTokens, delimiter_steps, token_steps
from rlxf.search.procedures import beam_search, best_first, mcts, puct, select_child, select_leaves, uct
from rlxf.search.tree import Compute, Node, Tree
from rlxf.search.values import (PRM, Critique, First, ImplicitReward, Mix, ModelValue, Rollouts, SearchError,
                                Verifier, evaluate)

__all__ = ["PRM", "Compute", "Critique", "Expander", "First", "ImplicitReward", "Mix", "ModelValue", "Node",
           "Rollouts", "SearchError", "StepSplit", "TopTokens", "Tree", "Verifier", "beam_search", "best_first",
           "delimiter_steps", "evaluate", "mcts", "puct", "revisions", "select_child", "select_leaves",
           "step_pairs", "step_targets", "token_steps", "uct", "value_targets"]
