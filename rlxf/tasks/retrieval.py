"""Multi-hop fact retrieval: a generated world of fictional people, one short document per fact,
and questions whose answers only the documents hold (the task of CR-Planner).

World (seeded): ``n_people`` made-up names; each person has two numbers (``age``, ``height``) and
two links to other people (``mentor``, ``rival``). Every fact is one document, e.g. ``"the age of
zorvan is 37."``, and the documents are indexed with BM25 (``rank_bm25.BM25Okapi``). No model has
seen this world, so a question can only be answered from retrieved documents (or guessed).

Questions: one hop, ``"what is the age of zorvan?"``, or two, ``"what is the age of the mentor of
zorvan?"`` (find the mentor, then the mentor's age). Gold is the exact value. Train and test
questions ask about disjoint halves of the people (a two-hop question may pass through anyone).

A planner's trajectory is text, one step per line after the question (the format
:mod:`rlxf.algorithms.search.cr_planner` writes and :func:`final_answer` reads)::

    question: what is the age of the mentor of zorvan?
    query: mentor zorvan
    doc: the mentor of zorvan is kelmit.
    query: age kelmit
    doc: the age of kelmit is 37.
    reason: the answer is 37.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

from rank_bm25 import BM25Okapi

ATTRIBUTES = {"age": (20, 90), "height": (150, 200)}  # value ranges, upper bound excluded
LINKS = ("mentor", "rival")
STOPWORDS = frozenset({"the", "of", "is", "what", "who", "a", "answer"})
QUESTION = "question: "
_FACT = re.compile(r"the (\w+) of (\w+) is (\w+)\.")
_ANSWER = re.compile(r"the answer is (\w+)\.")


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    value: str

    @property
    def text(self) -> str:
        return f"the {self.relation} of {self.subject} is {self.value}."


@dataclass(frozen=True)
class Question:
    """``chain``: the relations to follow from ``subject``, innermost first (``("mentor", "age")``);
    ``facts``: the facts on the way, in the order they are needed; ``answer``: the gold value."""

    text: str
    subject: str
    chain: tuple[str, ...]
    facts: tuple[Fact, ...]
    answer: str

    @property
    def prompt(self) -> str:
        """The question as a trajectory's first line."""
        return f"{QUESTION}{self.text}\n"


def tokens(text: str) -> list[str]:
    """Lower-case words and numbers without stopwords: what BM25 indexes and queries match."""
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]


def parse_facts(text: str) -> list[Fact]:
    """Every ``"the R of S is V."`` sentence in ``text`` (documents and rationales alike), in order."""
    return [Fact(s, r, v) for r, s, v in _FACT.findall(text)]


def final_answer(text: str) -> str | None:
    """The value of the last ``"the answer is V."`` in ``text``, or None."""
    found = _ANSWER.findall(text)
    return found[-1] if found else None


def _names(n: int, rng: random.Random) -> list[str]:
    cons, vows = "bdfgklmnprstvz", "aeiou"
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(cons) + rng.choice(vows) for _ in range(2)) + rng.choice(cons))
    return sorted(out)


class RetrievalTask:
    """The world, its BM25-indexed documents and its questions (see the module docstring)."""

    def __init__(self, n_people: int = 60, seed: int = 0):
        if n_people < 4:
            raise ValueError(f"RetrievalTask: n_people must be at least 4 (two halves with links), got {n_people}")
        rng = random.Random(f"retrieval|{seed}")
        self.people = _names(n_people, rng)
        self.facts: dict[tuple[str, str], str] = {}
        for p in self.people:
            for attr, (lo, hi) in ATTRIBUTES.items():
                self.facts[p, attr] = str(rng.randrange(lo, hi))
            for link in LINKS:
                self.facts[p, link] = rng.choice([q for q in self.people if q != p])
        self.docs = [Fact(s, r, v).text for (s, r), v in self.facts.items()]
        self.index = BM25Okapi([tokens(d) for d in self.docs])
        self._questions = {q.text: q for q in self._make_questions()}
        self._search = lru_cache(maxsize=4096)(self._search_uncached)

    def _question(self, subject: str, chain: tuple[str, ...]) -> Question:
        facts, s = [], subject
        for rel in chain:
            facts.append(Fact(s, rel, self.facts[s, rel]))
            s = self.facts[s, rel]
        words = " of the ".join(reversed(chain))
        return Question(f"what is the {words} of {subject}?", subject, chain, tuple(facts), s)

    def _make_questions(self) -> list[Question]:
        out = []
        for p in self.people:
            out += [self._question(p, (attr,)) for attr in ATTRIBUTES]
            out += [self._question(p, (link, attr)) for link in LINKS for attr in ATTRIBUTES]
        return out

    def questions(self, split: str = "test", hops: int | None = None) -> list[Question]:
        """The questions about the first half of the people (``"train"``), the second (``"test"``) or
        everyone (``"all"``), optionally only those with ``hops`` hops, in a fixed order."""
        halves = {"train": self.people[: len(self.people) // 2], "test": self.people[len(self.people) // 2:],
                  "all": self.people}
        if split not in halves:
            raise ValueError(f"RetrievalTask.questions: split must be 'train', 'test' or 'all', got {split!r}")
        keep = set(halves[split])
        return [q for q in self._questions.values()
                if q.subject in keep and (hops is None or len(q.chain) == hops)]

    def question(self, text: str) -> Question:
        """The question asked by ``text``: the question itself or a trajectory starting with its line."""
        line = text.split("\n", 1)[0].removeprefix(QUESTION)
        if line not in self._questions:
            raise ValueError(f"RetrievalTask: {line!r} is not a question of this task "
                             "(expected e.g. 'what is the age of the mentor of <name>?')")
        return self._questions[line]

    def _search_uncached(self, query: str, k: int) -> tuple[str, ...]:
        scores = self.index.get_scores(tokens(query))
        order = sorted(range(len(self.docs)), key=lambda i: (-scores[i], i))
        return tuple(self.docs[i] for i in order[:k])

    def search(self, query: str, k: int = 3) -> list[str]:
        """The ``k`` documents BM25 ranks highest for ``query`` (ties in corpus order)."""
        if k < 1:
            raise ValueError(f"RetrievalTask.search: k must be >= 1, got {k}")
        return list(self._search(query, k))

    def check_answer(self, prompt: str, response: str) -> float:
        """Gold: 1.0 when the response's last ``"the answer is V."`` names the question's answer."""
        return float(final_answer(response) == self.question(prompt).answer)


__all__ = ["ATTRIBUTES", "LINKS", "QUESTION", "Fact", "Question", "RetrievalTask", "final_answer", "parse_facts",
           "tokens"]
