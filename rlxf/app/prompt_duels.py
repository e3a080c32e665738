"""Prompt optimisation with people in the loop: a preference project whose questions are duels between
two candidate prompts, each shown with the model's answers, picked by APOHF.

The project directory holds ``prompt_duels.json`` (written by :func:`add_prompts`, ``rlxf label
add-prompts``): the candidates (prompt text, what a labeler sees of its answers, a feature vector),
the duel budget and APOHF's number of initial random duels. When a labeler asks for work,
:class:`PromptDuels` reads every duel answered so far from the label store, refits APOHF's utility
network from its initial weights, picks the next pair by the duel rule (nu and seed from the project's
settings; selection ``uniform`` asks random pairs) and adds it as a new item. The reported prompt is
the argmax of the utility over the prompts asked about (:meth:`PromptDuels.reported`, ``rlxf label
best-prompt``).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from rlxf.algorithms.dueling import RANDOM_PAIRS
from rlxf.algorithms.prompts.apohf import ApohfConfig, DuelRuns
from rlxf.core.runs import atomic_write_text
from rlxf.data.io import DataError, _jsonl_rows
from rlxf.data.label_store import Item, Label, LabelStore, Project, StoreError

DUELS_FILE = "prompt_duels.json"
QUESTION = "Two candidate prompts for the same task, each with the model's answers. Which prompt works better?"
FEATURE_DIM = 64


def word_features(text: str, dim: int = FEATURE_DIM) -> np.ndarray:
    """A prompt's feature vector when none is given: counts of its lower-cased words hashed into
    ``dim`` buckets (CRC32), scaled to unit length."""
    v = np.zeros(dim)
    for w in text.lower().split():
        v[zlib.crc32(w.encode()) % dim] += 1.0
    n = np.linalg.norm(v)
    return v / n if n else v


def read_candidates(path: str | Path) -> list[dict]:
    """Candidates from a JSONL file: ``prompt`` (the text), ``shown`` (what a labeler sees of its
    answers; optional) and ``embedding`` (a list of numbers, all of one length; optional, else
    :func:`word_features`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL with 'prompt', 'shown', 'embedding')")
    rows = []
    for where, row in _jsonl_rows(path):  # the data layer's JSONL reader: errors name the line
        if not isinstance(row.get("prompt"), str):
            raise DataError(path, where, "field 'prompt' is missing (expected a string)", "prompt")
        if not isinstance(row.get("shown", ""), str):
            raise DataError(path, where, "field 'shown' must be a string", "shown")
        emb = row.get("embedding")
        if emb is not None and (not isinstance(emb, list) or not emb
                                or not all(isinstance(v, (int, float)) for v in emb)):
            raise DataError(path, where, "field 'embedding' must be a non-empty list of numbers", "embedding")
        rows.append({"prompt": row["prompt"], "shown": row.get("shown", ""), "embedding": emb})
    if len(rows) < 2:
        raise DataError(path, None, f"holds {len(rows)} candidate(s); a duel needs at least 2")
    given = {len(r["embedding"]) for r in rows if r["embedding"] is not None}
    if len(given) > 1 or (given and any(r["embedding"] is None for r in rows)):
        raise DataError(path, None, "field 'embedding': give every candidate one, all of the same length, or none",
                        "embedding")
    if not given:
        for r in rows:
            r["embedding"] = word_features(r["prompt"]).tolist()
    return rows


def add_prompts(directory: str | Path, candidates: list[dict], max_duels: int = 150, n_init: int = 5) -> Path:
    """Make the project in ``directory`` a prompt-duel project over ``candidates`` (see
    :func:`read_candidates`); refused once any duel was asked."""
    from rlxf.app.project import open_project

    if max_duels < 1 or n_init < 1:
        raise StoreError(f"--max-duels and --n-init must be >= 1, got {max_duels} and {n_init}")
    store, project = open_project(directory)
    try:
        if project.kind != "preference":
            raise StoreError(f"prompt duels need a preference project; {project.name!r} is a {project.kind} project")
        if project.settings["selection"] not in ("apohf", "uniform"):
            raise StoreError(f"prompt duels are picked by selection 'apohf' (or 'uniform': random pairs); "
                             f"project {project.name!r} has {project.settings['selection']!r}")
        if store.counts(project)["items"]:
            raise StoreError(f"project {project.name!r} already has items; prompt duels need a project of their own")
    finally:
        store.close()
    path = Path(directory) / DUELS_FILE
    atomic_write_text(path, json.dumps({"max_duels": max_duels, "n_init": n_init, "candidates": candidates}))
    return path


def duel_of(label: Label) -> tuple[int, int, float] | None:
    """(candidate i, candidate j, y) of a prompt-duel label: y = 1 when i won, 0 when j won, 0.5 for a
    tie; None for a skip or an item that is not a prompt duel."""
    pair = label.item.meta.get("prompt_duel")
    choice = label.value.get("choice")
    if pair is None or choice not in ("a", "b", "tie"):
        return None
    if choice == "tie":
        return pair[0], pair[1], 0.5
    winner = label.shown[0 if choice == "a" else 1]  # the response index the labeler picked
    return pair[0], pair[1], 1.0 if winner == 0 else 0.0


class PromptDuels:
    """The APOHF loop behind a prompt-duel project (see the module docstring)."""

    def __init__(self, directory: str | Path, project: Project):
        spec = json.loads((Path(directory) / DUELS_FILE).read_text())
        self.candidates = spec["candidates"]
        self.max_duels = int(spec["max_duels"])
        rule = project.settings["selection"]
        nu = RANDOM_PAIRS if rule == "uniform" else float(project.settings.get("nu", 1.0))
        self.cfg = ApohfConfig(nu=nu, n_init=int(spec["n_init"])).check()
        self.seed = int(project.settings.get("seed", 0))
        self.x = np.array([c["embedding"] for c in self.candidates], dtype=np.float32)

    @classmethod
    def of(cls, directory: str | Path, project: Project) -> PromptDuels | None:
        """The project's prompt duels, or None when the directory has no ``prompt_duels.json``."""
        return cls(directory, project) if (Path(directory) / DUELS_FILE).is_file() else None

    def duels(self, store: LabelStore, project: Project) -> list[tuple[int, int, float]]:
        """Every answered duel, oldest first."""
        return [d for d in map(duel_of, store.labels(project)) if d is not None]

    def fitted(self, store: LabelStore, project: Project) -> DuelRuns:
        """APOHF's state after the answered duels (the network refit from its initial weights)."""
        runs = DuelRuns.start(self.x, [self.cfg], [self.seed])
        duels = self.duels(store, project)
        if duels:
            runs.set_duels(np.array([[d[0] for d in duels]]), np.array([[d[1] for d in duels]]),
                           np.array([[d[2] for d in duels]]))
        return runs

    def next_item(self, store: LabelStore, project: Project) -> Item | None:
        """A new item for the next duel, or None once ``max_duels`` duels were asked."""
        if store.counts(project)["items"] >= self.max_duels:
            return None
        runs = self.fitted(store, project)
        runs.rngs[0] = np.random.default_rng([self.seed, store.counts(project)["items"]])  # a fresh draw per duel
        i, j = (int(v) for v in runs.next_pairs()[0])
        (item_id,) = store.add_items(project, [(QUESTION, [self.render(i), self.render(j)], {"prompt_duel": [i, j]})])
        return store.items_by_id(project, [item_id])[0]

    def render(self, k: int) -> str:
        c = self.candidates[k]
        return f"Prompt: {c['prompt'] or '(empty)'}" + (f"\n\n{c['shown']}" if c["shown"] else "")

    def reported(self, store: LabelStore, project: Project) -> dict:
        """The reported prompt (argmax of the utility over the prompts asked about) and the duel count."""
        runs = self.fitted(store, project)
        if runs.n_duels == 0:
            return {"duels": 0, "index": None, "prompt": None}
        k = int(runs.reported()[0])
        return {"duels": runs.n_duels, "index": k, "prompt": self.candidates[k]["prompt"]}
