"""The search tree: a prompt at the root, one step of a partial response per node.

A node holds its step's token ids and text, the policy's per-token log-probs of them (recorded
when the step was sampled, so off-policy methods need no second pass), its own evaluation
(``value`` and the ``source`` that gave it) and the statistics backed up through it (``visits``,
``value_sum``, ``value_max``; ``q = value_sum / visits``). A node's response is the concatenation of the steps
on its path from the root. The tree saves as JSONL, one node per line, the root (the prompt) first.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Node:
    """One step. ``finished``: the step ended with EOS; ``terminal``: nothing follows it (finished,
    or the response hit its length limit). ``count``: how many samples drew this same step."""

    id: int
    parent: int | None
    depth: int
    ids: list[int] = field(default_factory=list)
    text: str = ""
    logps: list[float] = field(default_factory=list)
    prior: float = 1.0
    count: int = 1
    finished: bool = False
    terminal: bool = False
    value: float | None = None
    source: str = ""
    visits: int = 0
    value_sum: float = 0.0
    value_max: float | None = None  # the best evaluation backed up through this node
    children: list[int] = field(default_factory=list)

    @property
    def q(self) -> float:
        """The backed-up value: the mean of every evaluation backed up through this node (0 if none)."""
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def logp(self) -> float:
        """log pi(step | prefix) at temperature 1."""
        return float(sum(self.logps))


@dataclass
class Compute:
    """What a search spent: ``generations`` (sampled steps, duplicates included), ``rollouts``
    (completions sampled to evaluate nodes), ``sample_calls`` (calls into the sampler),
    ``sampled_tokens`` (generated), ``prefill_tokens`` (prefixes, run once per sampling group),
    ``scored_tokens`` (policy forward tokens of evaluators) and ``reference_tokens``
    (reference-model forward tokens, e.g. for implicit rewards)."""

    generations: int = 0
    rollouts: int = 0
    sample_calls: int = 0
    sampled_tokens: int = 0
    prefill_tokens: int = 0
    scored_tokens: int = 0
    reference_tokens: int = 0

    @property
    def forward_tokens(self) -> int:
        """Every policy and reference forward token."""
        return self.sampled_tokens + self.prefill_tokens + self.scored_tokens + self.reference_tokens


def count_call(items) -> None:
    """One more sampling call for each distinct tree among ``items`` ((tree, node) pairs)."""
    for tree in {id(t): t for t, _ in items}.values():
        tree.compute.sample_calls += 1


class Tree:
    """Nodes by id; node 0 is the root, whose ``text`` is the prompt and ``ids`` its token ids."""

    def __init__(self, prompt: str, prompt_ids: list[int]):
        self.nodes: list[Node] = [Node(id=0, parent=None, depth=0, ids=list(prompt_ids), text=prompt)]
        self.compute = Compute()

    @property
    def root(self) -> Node:
        return self.nodes[0]

    @property
    def prompt(self) -> str:
        return self.root.text

    def add(self, parent: Node, **fields) -> Node:
        node = Node(id=len(self.nodes), parent=parent.id, depth=parent.depth + 1, **fields)
        self.nodes.append(node)
        parent.children.append(node.id)
        return node

    def children(self, node: Node) -> list[Node]:
        return [self.nodes[i] for i in node.children]

    def path(self, node: Node) -> list[Node]:
        """The steps from the root's first child down to ``node`` (empty for the root)."""
        out = []
        while node.parent is not None:
            out.append(node)
            node = self.nodes[node.parent]
        return out[::-1]

    def response_ids(self, node: Node) -> list[int]:
        return [t for n in self.path(node) for t in n.ids]

    def response_text(self, node: Node) -> str:
        return "".join(n.text for n in self.path(node))

    def prefix_ids(self, node: Node) -> list[int]:
        """Prompt and response so far: what the policy continues from."""
        return self.root.ids + self.response_ids(node)

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if not n.children]

    def best(self) -> Node | None:
        """The finished node with the highest own value (then the highest q), or None."""
        done = [n for n in self.nodes if n.finished and n.value is not None]
        return max(done, key=lambda n: (n.value, n.q)) if done else None

    def backup(self, node: Node, value: float) -> None:
        """Add one evaluation ``value`` to ``node`` and every ancestor (mean backup)."""
        while True:
            node.visits += 1
            node.value_sum += value
            node.value_max = value if node.value_max is None else max(node.value_max, value)
            if node.parent is None:
                return
            node = self.nodes[node.parent]

    def draw(self, max_depth: int | None = None) -> str:
        """The tree as indented text, one node per line: its step (newlines shown as ``\\n``),
        visits, q and its own value with the value's source, children in order."""
        lines: list[str] = []

        def walk(node: Node, lead: str, last: bool) -> None:
            text = node.text.replace("\n", "\\n")
            stats = f"N={node.visits} q={node.q:.2f}" + (
                f" v={node.value:.2f} {node.source}".rstrip() if node.value is not None else "")
            mark = "" if node.parent is None else ("`- " if last else "|- ")
            lines.append(f"{lead}{mark}{text}  [{stats}]")
            kids = self.children(node)
            inner = lead if node.parent is None else lead + ("   " if last else "|  ")
            if kids and max_depth is not None and node.depth >= max_depth:
                lines.append(f"{inner}... {len(kids)} children")
                return
            for i, kid in enumerate(kids):
                walk(kid, inner, i == len(kids) - 1)

        walk(self.root, "", True)
        return "\n".join(lines)

    # -- JSONL ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """One node per line: id, parent, depth, text, visits, value, q, source and the rest."""
        with open(path, "w") as f:
            for n in self.nodes:
                row = asdict(n)
                row.pop("children")
                row["q"] = n.q
                f.write(json.dumps(row) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Tree":
        names = set(Node.__dataclass_fields__) - {"children"}
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if not rows or rows[0].get("parent") is not None:
            raise ValueError(f"{path}: line 1 must be the root node (parent null)")
        tree = cls(rows[0].get("text", ""), rows[0].get("ids", []))
        tree.nodes = []
        for k, row in enumerate(rows, 1):
            missing = {"id", "parent", "depth"} - set(row)
            if missing:
                raise ValueError(f"{path}: line {k} lacks field(s) {sorted(missing)}")
            if row["id"] != k - 1:
                raise ValueError(f"{path}: line {k} has id {row['id']}, expected {k - 1} (nodes in id order)")
            node = Node(**{key: v for key, v in row.items() if key in names})
            if node.parent is not None:
                if not 0 <= node.parent < node.id:
                    raise ValueError(f"{path}: line {k}: parent {node.parent} must be an earlier node")
                tree.nodes[node.parent].children.append(node.id)
            tree.nodes.append(node)
        return tree
