"""Search procedures over one tree: MCTS (UCT or PUCT selection), beam search and best-first search.

All three expand through an :class:`Expander` (one sampling call per round, every node of the
round together) and value the new nodes through one evaluator call per round. Each new node's
value is backed up to the root as one visit (mean backup), so ``q`` is defined everywhere.
"""

from __future__ import annotations

import math
from typing import Callable

from rlxf.search.expand import Expander
from rlxf.search.tree import Node, Tree
from rlxf.search.values import Evaluator, evaluate

Rule = Callable[[Node, Node], float]  # (parent, child) -> selection score; the highest is chosen


def uct(c: float = 1.0) -> Rule:
    """UCB1 (Kocsis & Szepesvari 2006): ``q + c * sqrt(ln N_parent / N_child)``; unvisited first."""

    def score(parent: Node, child: Node) -> float:
        if child.visits == 0:
            return math.inf
        return child.q + c * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)

    return score


def puct(c: float = 1.0) -> Rule:
    """PUCT with the policy as prior (AlphaZero): ``q + c * P * sqrt(N_parent) / (1 + N_child)``."""

    def score(parent: Node, child: Node) -> float:
        return child.q + c * child.prior * math.sqrt(parent.visits) / (1 + child.visits)

    return score


def select_child(tree: Tree, node: Node, rule: Rule) -> Node:
    """The child with the highest score; ties go to the earliest child."""
    kids = tree.children(node)
    scores = [rule(node, k) for k in kids]
    return kids[scores.index(max(scores))]


def select_leaves(tree: Tree, rule: Rule, batch: int = 1) -> list[Node]:
    """Up to ``batch`` distinct leaves (unexpanded or terminal nodes), each by descending from the
    root with ``rule``. Each descent adds a virtual visit of value 0 along its path (undone before
    returning), so the next descent is steered elsewhere; selection stops at a repeat."""
    leaves: list[Node] = []
    touched: list[Node] = []
    for _ in range(batch):
        node, path = tree.root, [tree.root]
        while node.children and not node.terminal:
            node = select_child(tree, node, rule)
            path.append(node)
        if any(node is leaf for leaf in leaves):
            break
        leaves.append(node)
        for n in path:
            n.visits += 1
        touched += path
    for n in touched:
        n.visits -= 1
    return leaves


def _grow(tree: Tree, nodes: list[Node], expander: Expander, evaluator: Evaluator) -> list[Node]:
    """Expand ``nodes`` in one sampling call, value the children in one evaluator call, back them up."""
    items = expander.expand([(tree, n) for n in nodes])
    evaluate(items, evaluator)
    for _, child in items:
        tree.backup(child, child.value)
    return [child for _, child in items]


def mcts(tree: Tree, expander: Expander, evaluator: Evaluator, simulations: int = 16, rule: Rule | None = None,
         batch: int = 1) -> Tree:
    """Monte-Carlo tree search for ``simulations`` selected leaves (or until every leaf is terminal).
    Each round selects up to ``batch`` leaves (virtual visits keep them apart), expands the open
    ones together, values their children and backs the values up; a selected terminal leaf backs
    up its own value again. ``rule`` defaults to ``uct(1.0)``."""
    rule = rule or uct(1.0)
    done = 0
    while done < simulations and not all(n.terminal for n in tree.leaves()):
        leaves = select_leaves(tree, rule, min(batch, simulations - done))
        _grow(tree, [n for n in leaves if not n.terminal], expander, evaluator)
        for leaf in leaves:
            if leaf.terminal:
                tree.backup(leaf, leaf.value)
        done += len(leaves)
    return tree


def beam_search(tree: Tree, expander: Expander, evaluator: Evaluator, width: int = 4,
                max_depth: int = 64) -> Tree:
    """Keep the ``width`` best children (by value) of the current beam at every level; terminal
    ones among them leave the beam as candidates, :meth:`Tree.best` picks the answer."""
    beam = [tree.root]
    while beam and beam[0].depth < max_depth:
        children = _grow(tree, beam, expander, evaluator)
        top = sorted(children, key=lambda n: -n.value)[:width]
        beam = [n for n in top if not n.terminal]
    return tree


def best_first(tree: Tree, expander: Expander, evaluator: Evaluator, expansions: int = 16,
               batch: int = 1) -> Tree:
    """Expand the ``batch`` highest-valued open nodes at a time until the best node overall is a
    finished response or ``expansions`` nodes have been expanded. Cut-off (unfinished terminal)
    nodes are dropped."""
    frontier = [tree.root]
    done = 0
    while frontier and done < expansions:
        frontier.sort(key=lambda n: -(math.inf if n.value is None else n.value))  # the root has no value
        if frontier[0].finished:
            break
        pick = [n for n in frontier if not n.terminal][: min(batch, expansions - done)]
        frontier = [n for n in frontier if not any(n is p for p in pick)]
        children = _grow(tree, pick, expander, evaluator)
        done += len(pick)
        frontier += [c for c in children if c.finished or not c.terminal]
    return tree
