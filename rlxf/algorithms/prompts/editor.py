"""The editor role of prompt optimisers: text in (the current prompt and error feedback), text out (an
edited prompt wrapped in ``<START>`` ... ``<END>``), behind :class:`rlxf.labelers.roles.TextModel`.

A request is built by :func:`editor_request`; feedback lines read ``- [error_type] xN: text`` (N
failures of that type; ``xN`` may be left out for one). :func:`simulated_editor` plays the role from a
library of rewrites: it counts the error types in the request, takes the most frequent one and applies
one of the rewrites listed for it (add or remove a fragment), with probability ``error`` a random
edit instead. A real model plays it through :class:`rlxf.labelers.roles.LMRole` and the same
:func:`parse_prompt`:

    from rlxf.labelers.roles import LMRole
    from rlxf.policies.loading import ModelSettings, load_policy
    editor = LMRole(load_policy(ModelSettings(path="smollm2")), max_new_tokens=48)
    new = parse_prompt(editor.complete([editor_request("be helpful", ["- [format] x3: answered maybe"])])[0])
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter

from rlxf.labelers.roles import SimulatedRole
from rlxf.tasks import prompt_tasks as pt

Edit = tuple[str, str]  # ("add" | "remove", fragment name)

REWRITES: dict[str, list[Edit]] = {
    "format": [("add", "digit"), ("add", "fast"), ("remove", "words"), ("remove", "work")],
    "refusal": [("add", "know"), ("add", "fast"), ("remove", "short")],
    "sign": [("add", "sign"), ("add", "careful")],
    "arith": [("add", "add"), ("add", "steps"), ("remove", "steps"), ("add", "check")],
    "scale": [("add", "scale"), ("add", "expert")],
}
"""The prompt task's rewrite library: error type -> edits a capable editor might suggest for it."""

_LINE = re.compile(r"^\s*-\s*\[(?P<type>[\w-]+)\](?:\s*x(?P<n>\d+))?", re.M)
_PROMPT = re.compile(r"<START>(.*?)<END>", re.S)


def feedback_lines(records) -> list[str]:
    """One feedback line per error record of the prompt task."""
    return [f"- [{r.error}] {r.question} answered {r.answer}, expected {r.gold}" for r in records]


def editor_request(prompt: str, feedback: list[str], trajectory: list[str] = ()) -> str:
    """The request sent to the editor: the current prompt, the feedback, and the ancestor prompts."""
    past = "".join(f"{i}. <START>{p}<END>\n" for i, p in enumerate(trajectory, 1))
    return ("You improve instructions for a model.\n"
            + (f"Earlier prompts:\n{past}" if past else "")
            + f"Current prompt: <START>{prompt}<END>\n"
            + "Errors it made:\n" + "\n".join(feedback) + "\n"
            + "Write one improved prompt between <START> and <END>.")


def parse_prompt(reply: str) -> str:
    """The prompt in an editor's reply: the text between the first ``<START>`` and ``<END>``, else the
    whole reply, stripped."""
    m = _PROMPT.search(reply)
    return (m.group(1) if m else reply).strip()


def current_prompt(request: str) -> str:
    m = re.search(r"Current prompt: <START>(.*?)<END>", request, re.S)
    if m is None:
        raise ValueError("editor request has no 'Current prompt: <START>...<END>' line")
    return m.group(1)


def error_counts(request: str) -> Counter:
    """Failures per error type in a request's feedback lines (``xN`` counts N, else 1)."""
    counts: Counter = Counter()
    for m in _LINE.finditer(request.split("Errors it made:", 1)[-1]):
        counts[m["type"]] += int(m["n"] or 1)
    return counts


def apply_edit(names: list[str], edit: Edit, max_fragments: int) -> list[str] | None:
    """``names`` after ``edit``, or None when the edit changes nothing. Adding to a full prompt drops
    its first fragment."""
    op, frag = edit
    if op == "add":
        return None if frag in names else (names + [frag])[-max_fragments:]
    return [n for n in names if n != frag] if frag in names else None


def random_edit(names: list[str], library: dict[str, str], rng: random.Random, max_fragments: int) -> list[str]:
    """Add a random fragment not in the prompt or remove a random one (a coin decides when both are possible)."""
    absent = [f for f in library if f not in names]
    if names and (not absent or rng.random() < 0.5):
        return apply_edit(names, ("remove", rng.choice(names)), max_fragments)
    return apply_edit(names, ("add", rng.choice(absent)), max_fragments)


def steered_edit(names: list[str], counts: Counter, rewrites: dict[str, list[Edit]], rng: random.Random,
                 max_fragments: int) -> list[str] | None:
    """One rewrite for the most frequent error type that changes the prompt (ties and the choice among
    its rewrites drawn by ``rng``); the next type when none does; None when no listed rewrite applies."""
    types = sorted(counts, key=lambda t: (-counts[t], rng.random()))
    for t in types:
        options = [e for e in rewrites.get(t, []) if apply_edit(names, e, max_fragments) is not None]
        if options:
            return apply_edit(names, rng.choice(options), max_fragments)
    return None


def simulated_editor(rewrites: dict[str, list[Edit]] = REWRITES, library: dict[str, str] = pt.FRAGMENTS,
                     error: float = 0.2, seed: int = 0, max_fragments: int = pt.MAX_FRAGMENTS) -> SimulatedRole:
    """The editor played from the rewrite library: the steered edit (its random draws seeded by the
    request text and ``seed``), or with probability ``error`` a random edit. Without feedback, or
    when no rewrite applies, the right reply is a random edit too."""

    def names_of(request: str) -> list[str]:
        return pt.fragments_of(current_prompt(request), library)

    def right(request: str) -> str:
        names = names_of(request)
        rng = random.Random(zlib.crc32(f"{seed}|{request}".encode()))
        new = steered_edit(names, error_counts(request), rewrites, rng, max_fragments)
        return f"<START>{pt.join(new if new is not None else random_edit(names, library, rng, max_fragments), library)}<END>"

    def wrong(request: str, _reply: str, rng: random.Random) -> str:
        return f"<START>{pt.join(random_edit(names_of(request), library, rng, max_fragments), library)}<END>"

    return SimulatedRole(right, wrong, error=error, seed=seed)


__all__ = ["REWRITES", "apply_edit", "editor_request", "error_counts", "feedback_lines", "parse_prompt",
           "random_edit", "simulated_editor", "steered_edit"]
