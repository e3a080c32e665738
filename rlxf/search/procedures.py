"""Search procedures: MCTS (UCT or PUCT selection), beam search and best-first search, over one
tree or several side by side (one per prompt).

All three expand through an :class:`Expander` (one sampling call per round, every node of the
round in every tree together) and value the new nodes through one evaluator call per round. Each new node's
value is backed up to the root as one visit (mean backup), so ``q`` is defined everywhere.
"""

from __future__ import annotations

import math
from typing import Callable

from rlxf.search.expand import Expander, Item, TopTokens
from rlxf.search.tree import Node, Tree
from rlxf.search.values import Evaluator, evaluate

Rule = Callable[[Node, Node], float]  # (parent, child) -> selection score; the highest is chosen
Backup = Callable[[Tree, Node, float], None]  # adds one evaluation of a node to the statistics up to the root


def _exploit(child: Node, stat: str) -> float:
    """The child's value term: its mean backup ``q`` or (``stat="max"``) the best value below it."""
    if stat == "max":
        return child.value_max if child.value_max is not None else 0.0
    return child.q


def _stat(stat: str) -> str:
    if stat not in ("q", "max"):
        raise ValueError(f"selection stat must be 'q' or 'max', got {stat!r}")
    return stat


def uct(c: float = 1.0, stat: str = "q") -> Rule:
    """UCB1 (Kocsis & Szepesvari 2006): ``V + c * sqrt(ln N_parent / N_child)``; unvisited first.
    ``V`` is ``q`` or, with ``stat="max"``, the best value backed up through the child."""
    stat = _stat(stat)

    def score(parent: Node, child: Node) -> float:
        if child.visits == 0:
            return math.inf
        return _exploit(child, stat) + c * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)

    return score


def puct(c: float = 1.0, stat: str = "q", c_base: float | None = None) -> Rule:
    """PUCT with the policy as prior (AlphaZero): ``V + c * P * sqrt(N_parent) / (1 + N_child)``.
    With ``c_base`` the exploration grows with the parent's visits and the square root takes a log,
    as in PG-TD and RethinkMCTS: ``V + (log((N_parent + c_base + 1) / c_base) + c) * P *
    sqrt(log N_parent) / (1 + N_child)``. ``stat`` as in :func:`uct`."""
    stat = _stat(stat)

    def score(parent: Node, child: Node) -> float:
        if c_base is None:
            return _exploit(child, stat) + c * child.prior * math.sqrt(parent.visits) / (1 + child.visits)
        grow = math.log((parent.visits + c_base + 1) / c_base) + c
        return _exploit(child, stat) + grow * child.prior * math.sqrt(math.log(max(parent.visits, 1))) / (
            1 + child.visits)

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


Trees = Tree | list[Tree]


def _grow(items: list[Item], expander: Expander | TopTokens, evaluator: Evaluator,
          backup: Backup = Tree.backup) -> list[Item]:
    """Expand ``items`` in one sampling call, value the children in one evaluator call, back them up."""
    kids = expander.expand(items)
    evaluate(kids, evaluator)
    for tree, child in kids:
        backup(tree, child, child.value)
    return kids


def _many(trees: Trees) -> list[Tree]:
    return trees if isinstance(trees, list) else [trees]


def mcts(trees: Trees, expander: Expander | TopTokens, evaluator: Evaluator, simulations: int = 16,
         rule: Rule | None = None, batch: int = 1, backup: Backup | None = None) -> Trees:
    """Monte-Carlo tree search for ``simulations`` selected leaves per tree (or until every leaf is
    terminal). Each round selects up to ``batch`` leaves of every tree (virtual visits keep them
    apart), expands the open ones of all trees in one sampling call, values their children and
    backs the values up; a selected terminal leaf backs up its own value again. ``rule`` defaults
    to ``uct(1.0)``, ``backup`` to the mean backup :meth:`Tree.backup` (MedS³'s "comp" backup is
    another). ``trees``: one tree or a list searched side by side."""
    rule = rule or uct(1.0)
    backup = backup or Tree.backup
    done = {id(t): 0 for t in _many(trees)}
    while True:
        active = [t for t in _many(trees) if done[id(t)] < simulations and not all(n.terminal for n in t.leaves())]
        if not active:
            return trees
        picked = [(t, leaf) for t in active for leaf in select_leaves(t, rule, min(batch, simulations - done[id(t)]))]
        _grow([(t, n) for t, n in picked if not n.terminal], expander, evaluator, backup)
        for tree, leaf in picked:
            if leaf.terminal:
                backup(tree, leaf, leaf.value)
            done[id(tree)] += 1


def beam_search(trees: Trees, expander: Expander | TopTokens, evaluator: Evaluator, width: int = 4,
                max_depth: int = 64) -> Trees:
    """Keep the ``width`` best children (by value) of each tree's beam at every level, all trees'
    beams expanded in one sampling call; terminal nodes among the kept leave the beam as
    candidates, and :meth:`Tree.best` picks the answer."""
    beams = {id(t): [t.root] for t in _many(trees)}
    while True:
        items = [(t, n) for t in _many(trees) for n in beams[id(t)] if n.depth < max_depth]
        if not items:
            return trees
        kids = _grow(items, expander, evaluator)
        for tree in _many(trees):
            top = sorted((c for t, c in kids if t is tree), key=lambda n: -n.value)[:width]
            beams[id(tree)] = [n for n in top if not n.terminal]


def best_first(trees: Trees, expander: Expander | TopTokens, evaluator: Evaluator, expansions: int = 16,
               batch: int = 1) -> Trees:
    """Expand each tree's ``batch`` highest-valued open nodes at a time (all trees in one sampling
    call) until its best node is a finished response or ``expansions`` of its nodes have been
    expanded. Cut-off (unfinished terminal) nodes are dropped."""
    frontier = {id(t): [t.root] for t in _many(trees)}
    done = {id(t): 0 for t in _many(trees)}
    while True:
        items = []
        for tree in _many(trees):
            front = frontier[id(tree)]
            front.sort(key=lambda n: -(math.inf if n.value is None else n.value))  # the root has no value
            if not front or front[0].finished or done[id(tree)] >= expansions:
                continue
            pick = [n for n in front if not n.terminal][: expansions - done[id(tree)]][:batch]
            frontier[id(tree)] = [n for n in front if not any(n is p for p in pick)]
            done[id(tree)] += len(pick)
            items += [(tree, n) for n in pick]
        if not items:
            return trees
        for tree, child in _grow(items, expander, evaluator):
            if child.finished or not child.terminal:
                frontier[id(tree)].append(child)
