"""Search over a policy's partial responses, and training data walked out of the trees.

A :class:`Tree` holds a prompt and steps of partial responses; an :class:`Expander` samples ``k``
next steps for many nodes in one sampling call; evaluators (:mod:`rlxf.search.values`) value
nodes; :func:`mcts`, :func:`beam_search` and :func:`best_first` grow a tree; :mod:`rlxf.search.data`
turns it into step-level preference pairs, value targets and revision trajectories.
"""

from rlxf.search.data import revisions, step_pairs, step_targets, value_targets
from rlxf.search.expand import Expander, StepSplit, delimiter_steps, token_steps
from rlxf.search.procedures import beam_search, best_first, mcts, puct, select_child, select_leaves, uct
from rlxf.search.tree import Compute, Node, Tree
from rlxf.search.values import (PRM, Critique, First, ImplicitReward, Mix, ModelValue, Rollouts, SearchError,
                                Verifier, evaluate)

__all__ = ["PRM", "Compute", "Critique", "Expander", "First", "ImplicitReward", "Mix", "ModelValue", "Node",
           "Rollouts", "SearchError", "StepSplit", "Tree", "Verifier", "beam_search", "best_first",
           "delimiter_steps", "evaluate", "mcts", "puct", "revisions", "select_child", "select_leaves",
           "step_pairs", "step_targets", "token_steps", "uct", "value_targets"]
