"""Training data walked out of a search tree.

- :func:`step_pairs`: step-level preference pairs, siblings whose scores differ by at least a gap
  (Agent Q: the score mixes the backed-up q with the node's own evaluation, e.g. a critique);
  each row carries the behaviour policy's log-prob of both steps, the reference of off-policy DPO.
- :func:`value_targets`: a target per node for a value model, the backed-up q or the
  Monte-Carlo mean of the terminal values below it; :func:`step_targets` the same per step of
  each root-to-leaf path, as a PRM trains on them.
- :func:`revisions`: Agent-R's revision trajectories: the shared prefix of a good and a bad
  terminal path, the bad path up to its first bad step, a reflection marker, then the good
  path's continuation. The prefix takes no loss; the completion does.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable

from rlxf.search.tree import Node, Tree

REVISION_MARKER = "I realize my approach was flawed. I need to revise it.\n"


def _score(node: Node, alpha: float) -> float:
    own = node.q if node.value is None else node.value
    return alpha * node.q + (1 - alpha) * own


def step_pairs(tree: Tree, min_gap: float = 0.0, alpha: float = 1.0) -> list[dict]:
    """Every pair of siblings whose score ``alpha * q + (1 - alpha) * value`` differs by more than
    0 and at least ``min_gap``: ``{prompt (prompt + steps so far), chosen, rejected, *_score,
    *_logp, node, depth, chosen_node, rejected_node}`` (``node`` is the parent), in node order."""
    rows = []
    for node in tree.nodes:
        kids = tree.children(node)
        for a, b in combinations(kids, 2):
            sa, sb = _score(a, alpha), _score(b, alpha)
            if sa == sb or abs(sa - sb) < min_gap:
                continue
            win, lose = (a, b) if sa > sb else (b, a)
            rows.append({"prompt": tree.prompt + tree.response_text(node), "chosen": win.text, "rejected": lose.text,
                         "chosen_score": max(sa, sb), "rejected_score": min(sa, sb), "chosen_logp": win.logp,
                         "rejected_logp": lose.logp, "node": node.id, "depth": node.depth,
                         "chosen_node": win.id, "rejected_node": lose.id})
    return rows


def _terminal_values(tree: Tree, node: Node) -> list[float]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if n.terminal and n.value is not None:
            out.append(n.value)
        stack += tree.children(n)
    return out


def _target(tree: Tree, node: Node, kind: str) -> float | None:
    if kind == "q":
        return node.q if node.visits else None
    values = _terminal_values(tree, node)
    return sum(values) / len(values) if values else None


def _check_kind(kind: str) -> None:
    if kind not in ("q", "mc"):
        raise ValueError(f"value target kind must be 'q' or 'mc', got {kind!r}")


def value_targets(tree: Tree, kind: str = "q") -> list[dict]:
    """``{prompt, response (so far), target, node, depth, finished}`` per visited non-root node:
    ``kind="q"`` the backed-up mean, ``kind="mc"`` the mean value of the terminal nodes in its
    subtree (nodes without one are skipped)."""
    _check_kind(kind)
    rows = []
    for node in tree.nodes[1:]:
        target = _target(tree, node, kind)
        if target is not None:
            rows.append({"prompt": tree.prompt, "response": tree.response_text(node), "target": target,
                         "node": node.id, "depth": node.depth, "finished": node.finished})
    return rows


def step_targets(tree: Tree, kind: str = "q") -> list[dict]:
    """Per leaf, its path as a PRM training row: ``{prompt, steps (texts), targets (one per step,
    as in value_targets), leaf}``; paths with a step without a target are skipped."""
    _check_kind(kind)
    rows = []
    for leaf in tree.leaves():
        path = tree.path(leaf)
        targets = [_target(tree, n, kind) for n in path]
        if path and None not in targets:
            rows.append({"prompt": tree.prompt, "steps": [n.text for n in path], "targets": targets, "leaf": leaf.id})
    return rows


def _common_ancestor(tree: Tree, a: Node, b: Node) -> Node:
    ids = {n.id for n in tree.path(a)}
    for n in reversed(tree.path(b)):
        if n.id in ids:
            return n
    return tree.root


def revisions(tree: Tree, marker: str = REVISION_MARKER, good_min: float = 1.0, min_gap: float = 0.5,
              cut: str = "first_bad", is_bad: Callable[[Tree, Node], bool] | None = None,
              partial: bool = False) -> list[dict]:
    """Agent-R revision trajectories from terminal pairs (good value >= ``good_min``, bad value at
    least ``min_gap`` lower; with ``partial`` a bad path may also end at an unexpanded leaf, valued
    e.g. by rollouts): ``{prompt, prefix, completion, good, bad, cut}`` where ``prefix`` is
    the shared steps plus the bad branch up to the cut and ``completion`` is ``marker`` plus the
    good branch from the common ancestor. ``cut="end"`` splices after the whole bad branch;
    ``cut="first_bad"`` after its first step where ``is_bad(tree, node)`` holds (default: the
    step's backed-up q is no better than the bad leaf's value, i.e. nothing below it recovered)."""
    if cut not in ("first_bad", "end"):
        raise ValueError(f"revisions cut must be 'first_bad' or 'end', got {cut!r}")
    ends = [n for n in tree.nodes if n.terminal and n.value is not None]
    bads = ends + [n for n in tree.nodes if partial and not n.terminal and not n.children and n.value is not None]
    rows = []
    for good in (n for n in ends if n.value >= good_min):
        for bad in (n for n in bads if n is not good and good.value - n.value >= min_gap):
            top = _common_ancestor(tree, good, bad)
            branch = tree.path(bad)[top.depth:]
            if cut == "first_bad":
                flag = is_bad or (lambda t, n, v=bad.value: n.q <= v + 1e-12)
                stop = next(i for i, n in enumerate(branch) if flag(tree, n) or n is bad)
                branch = branch[: stop + 1]
            rows.append({"prompt": tree.prompt,
                         "prefix": tree.response_text(top) + "".join(n.text for n in branch),
                         "completion": marker + "".join(n.text for n in tree.path(good)[top.depth:]),
                         "good": good.id, "bad": bad.id, "cut": branch[-1].id})
    return rows
