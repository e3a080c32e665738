"""PromptAgent: prompt optimisation as Monte-Carlo tree search over edits written from error feedback,
with beam search, greedy search and random mutation as baselines at an equal number of eval calls.

A node of the search tree (:class:`rlxf.search.Tree`) is a whole prompt (``node.text``); its ``value``
is the prompt's metric on the eval split (one eval call). Expanding a node draws ``expand_width`` train
batches; for each, the frozen model's wrong answers become feedback lines, and the editor role
(:mod:`.editor`) writes one child prompt from the prompt, the feedback and the ancestor prompts. One
MCTS iteration:

1. **select** from the root by :func:`prompt_uct` (``Q + w_exp * sqrt(ln(N_parent + 1) / max(1, N))``,
   Q the mean backed-up return, the node's own value before any backup) until a leaf or terminal node;
2. **expand** it;
3. **simulate**: move to the highest-valued child and expand it, until a terminal node or an early
   stop (a node deeper than ``min_depth`` whose value beats every value seen before it);
4. **back up**: each node on the path adds the sum of the values from itself down to the leaf.

A node is terminal at ``depth_limit``, or deeper than ``min_depth`` with a value below the mean of the
root's and its parent's. The search runs until ``budget`` eval calls are spent. Its output is the node
with the highest value on the path (of those walked) with the highest mean value, which overfits the
50-question eval split less than the argmax over all nodes (``output="argmax"``).

Every method returns a :class:`Search`: the output prompt, ``trace`` (the output after each eval call,
``budget`` entries, what the prompt lab plots) and the tree.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from rlxf.algorithms.prompts import editor as E
from rlxf.labelers.roles import TextModel
from rlxf.search import Node, Tree, beam_search, select_child
from rlxf.tasks import prompt_tasks as pt


@dataclass
class Budget:
    """Eval calls allowed and spent, and the method's output after each (``trace``)."""

    limit: int
    trace: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.limit < 1:
            raise ValueError(f"budget must be >= 1 eval call, got {self.limit}")

    @property
    def left(self) -> int:
        return self.limit - len(self.trace)

    def padded(self) -> list[str]:
        """The trace, its last output repeated when the method stopped early."""
        return self.trace + [self.trace[-1]] * self.left


@dataclass
class Search:
    prompt: str
    trace: list[str]
    tree: Tree | None = None


@dataclass
class PromptEval:
    """The evaluator (:class:`rlxf.search.values.Evaluator`): each node's prompt scored on ``split``,
    one call each, charged to ``budget``; after each, ``output()`` is appended to the trace."""

    task: pt.PromptTask
    budget: Budget
    output: object  # () -> str
    split: str = "eval"
    source: str = "eval"

    def __call__(self, items) -> list[float]:
        values = self.task.score([n.text for _, n in items], self.split).tolist()
        for (_, node), v in zip(items, values):
            node.value = float(v)
            self.budget.trace.append(self.output())
        return values


@dataclass
class PromptExpander:
    """``width`` children per node, one per train batch of ``batch_size`` questions: the editor's
    prompt from the node's prompt, its errors on the batch and the ancestor prompts. Never makes more
    children than the budget has eval calls left (so a search stops there)."""

    task: pt.PromptTask
    editor: TextModel
    budget: Budget
    width: int = 3
    batch_size: int = 5
    seed: int = 0

    def __post_init__(self):
        if self.width < 1 or self.batch_size < 1:
            raise ValueError(f"expand_width and batch_size must be >= 1, got {self.width}, {self.batch_size}")
        self.rng = random.Random(f"prompt-expand|{self.seed}")
        self.n_train = len(self.task.split("train"))

    def request(self, tree: Tree, node: Node) -> str:
        batch = self.rng.sample(range(self.n_train), self.batch_size)
        feedback = E.feedback_lines(self.task.errors(node.text, "train", batch))
        return E.editor_request(node.text, feedback, [n.text for n in [tree.root] + tree.path(node)][:-1])

    def expand(self, items):
        todo, left = [], self.budget.left
        for tree, node in items:
            for _ in range(min(self.width, left - len(todo))):
                todo.append((tree, node, self.request(tree, node)))
        if not todo:
            return []
        replies = self.editor.complete([r for _, _, r in todo])
        return [(tree, tree.add(node, text=E.parse_prompt(reply))) for (tree, node, _), reply in zip(todo, replies)]


def prompt_uct(w_exp: float):
    """PromptAgent's selection rule: ``Q + w_exp * sqrt(ln(N_parent + 1) / max(1, N_child))``."""

    def score(parent: Node, child: Node) -> float:
        q = child.q if child.visits else (child.value or 0.0)
        return q + w_exp * math.sqrt(math.log(parent.visits + 1) / max(1, child.visits))

    return score


def cumulative_backup(tree: Tree, path: list[Node]) -> None:
    """Each node on ``path`` (root first) adds the sum of the values from itself to the path's end."""
    total = 0.0
    for node in reversed(path):
        total += node.value
        node.visits += 1
        node.value_sum += total


def best_on_best_path(paths: list[list[Node]]) -> Node:
    """PromptAgent's output: the highest-valued node of the path with the highest mean value."""
    scored = [p for p in paths if p and all(n.value is not None for n in p)]
    path = max(scored, key=lambda p: float(np.mean([n.value for n in p])))
    return max(path, key=lambda n: n.value)


def best_node(tree: Tree) -> Node:
    return max((n for n in tree.nodes if n.value is not None), key=lambda n: n.value)


def _start(task: pt.PromptTask, budget: int, init: str | None, output) -> tuple[Tree, Budget, PromptEval]:
    tree = Tree(task.hand_written if init is None else init, [])
    spend = Budget(budget)
    evaluator = PromptEval(task, spend, lambda: output(tree))
    evaluator([(tree, tree.root)])
    return tree, spend, evaluator


def prompt_agent(task: pt.PromptTask, editor: TextModel, budget: int, seed: int = 0, init: str | None = None,
                 expand_width: int = 3, depth_limit: int = 5, min_depth: int = 2, w_exp: float = 2.5,
                 batch_size: int = 5, output: str = "path") -> Search:
    """PromptAgent's MCTS from ``init`` (default: the task's hand-written prompt) for ``budget`` eval calls
    (the root's included)."""
    if output not in ("path", "argmax"):
        raise ValueError(f"prompt_agent output must be 'path' or 'argmax', got {output!r}")
    paths: list[list[Node]] = []
    current: list[Node] = []

    def out(tree: Tree) -> str:
        if output == "argmax" or not tree.root.children:
            return best_node(tree).text
        return best_on_best_path(paths + [current]).text

    tree, spend, evaluator = _start(task, budget, init, out)
    expander = PromptExpander(task, editor, spend, expand_width, batch_size, seed)
    rule, best_seen = prompt_uct(w_exp), tree.root.value

    def expand(node: Node) -> list[Node]:
        kids = [k for _, k in expander.expand([(tree, node)])]
        evaluator([(tree, k) for k in kids])
        for k in kids:
            k.source = "eval"
            k.terminal = k.depth >= depth_limit or (
                k.depth > min_depth and k.value < (tree.root.value + node.value) / 2)
        return kids

    stale = 0  # iterations in a row that spent nothing (they only revisit terminal nodes)
    while spend.left > 0 and stale < 20:
        before = spend.left
        current = [tree.root]
        node = tree.root
        while node.children and not node.terminal:  # select
            node = select_child(tree, node, rule)
            current.append(node)
        while not node.terminal and spend.left > 0:  # expand, then simulate greedily
            kids = tree.children(node) or expand(node)
            if not kids:
                break
            node = max(kids, key=lambda n: n.value)
            current.append(node)
            stop = node.depth > min_depth and node.value > best_seen
            best_seen = max(best_seen, node.value)
            if stop:
                break
        cumulative_backup(tree, current)
        paths.append(current)
        stale = stale + 1 if spend.left == before else 0
    return Search(out(tree), spend.padded(), tree)


def beam(task: pt.PromptTask, editor: TextModel, budget: int, seed: int = 0, init: str | None = None,
         width: int = 3, expand_width: int = 3, batch_size: int = 5) -> Search:
    """Beam search (:func:`rlxf.search.beam_search`): the ``width`` best children of each level's
    beam, each beam node expanded ``expand_width`` times, until the budget is spent; the output is the
    best-valued prompt seen. ``width=1`` is greedy search."""
    tree, spend, evaluator = _start(task, budget, init, lambda t: best_node(t).text)
    expander = PromptExpander(task, editor, spend, expand_width, batch_size, seed)
    beam_search(tree, expander, evaluator, width=width, max_depth=budget)
    return Search(best_node(tree).text, spend.padded(), tree)


def greedy(task, editor, budget, seed=0, init=None, expand_width=3, batch_size=5) -> Search:
    return beam(task, editor, budget, seed, init, 1, expand_width, batch_size)


def random_mutation(task: pt.PromptTask, budget: int, seed: int = 0, init: str | None = None,
                    library: dict[str, str] = pt.FRAGMENTS) -> Search:
    """Hill climbing by random edits (add or remove one library fragment, no feedback): a mutant
    replaces the current prompt when its eval value is at least as high."""
    rng = random.Random(f"random-mutation|{seed}")
    tree, spend, evaluator = _start(task, budget, init, lambda t: best_node(t).text)
    node = tree.root
    while spend.left > 0:
        names = pt.fragments_of(node.text, library)
        kid = tree.add(node, text=pt.join(E.random_edit(names, library, rng, pt.MAX_FRAGMENTS), library))
        evaluator([(tree, kid)])
        if kid.value >= node.value:
            node = kid
    return Search(best_node(tree).text, spend.padded(), tree)


METHODS = {"prompt_agent": prompt_agent, "beam": beam, "greedy": greedy}
"""The editor-driven methods by name (random mutation takes no editor)."""


def run(name: str, task: pt.PromptTask, budget: int, seed: int, editor_error: float = 0.2) -> Search:
    """One method by name (:data:`ALL`) with the
    simulated editor (error rate ``editor_error``, seeded by ``seed``)."""
    if name == "random_mutation":
        return random_mutation(task, budget, seed)
    if name == "prompt_agent_argmax":  # the same search, reporting the best-valued node of the whole tree
        return prompt_agent(task, E.simulated_editor(error=editor_error, seed=seed), budget, seed, output="argmax")
    if name not in METHODS:
        raise ValueError(f"unknown prompt search {name!r}; known: "
                         f"{', '.join([*METHODS, 'prompt_agent_argmax', 'random_mutation'])}")
    return METHODS[name](task, E.simulated_editor(error=editor_error, seed=seed), budget, seed)


ALL = ("prompt_agent", "prompt_agent_argmax", "beam", "greedy", "random_mutation")


def compare(task: pt.PromptTask, budget: int, seeds, methods=ALL,
            editor_error: float = 0.2) -> dict[str, np.ndarray]:
    """Test accuracy of each method's output prompt per seed (and ``hand_written``), at ``budget`` eval calls."""
    out = {"hand_written": np.repeat(task.score([task.hand_written], "test"), len(seeds))}
    for name in methods:
        prompts = [run(name, task, budget, s, editor_error).prompt for s in tqdm(seeds, desc=name, leave=False)]
        out[name] = task.score(prompts, "test")
    return out


def main(argv=None) -> None:
    import argparse

    from rlxf.algorithms.evaluate import mean_se, paired_gain

    ap = argparse.ArgumentParser(description="PromptAgent against beam, greedy and random mutation at equal eval calls")
    ap.add_argument("--budget", type=int, default=60, help="eval calls per method and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    ap.add_argument("--editor-error", type=float, default=0.2)
    args = ap.parse_args(argv)
    res = compare(pt.prompt_task(), args.budget, args.seeds, editor_error=args.editor_error)
    print(f"test accuracy at {args.budget} eval calls, seeds {args.seeds}, editor error {args.editor_error}")
    for name, acc in res.items():
        m, se = mean_se(acc)
        print(f"{name:16s} {m:.4f} +- {se:.4f}   {' '.join(f'{a:.3f}' for a in acc)}")
    for base in res:
        if base != "prompt_agent":
            g, se = paired_gain(res["prompt_agent"], res[base])
            print(f"prompt_agent - {base}: {g:+.4f} (paired SE {se:.4f})")


__all__ = ["Budget", "PromptEval", "PromptExpander", "Search", "beam", "best_on_best_path", "cumulative_backup",
           "greedy", "prompt_agent", "prompt_uct", "random_mutation", "run"]


if __name__ == "__main__":
    main()
