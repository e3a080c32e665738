"""Twenty questions and guess-my-city: find a hidden item by asking an oracle questions (LMRL-Gym's dialogue
tasks, with a catalogue of 16 items instead of an open world).

The agent's actions are the catalogue's questions, word for word (``is it alive ?``, ``which continent is it
on ?``) or ``guess ITEM``. Questions go to an *oracle* behind the :class:`~rlxf.labelers.roles.TextModel`
interface: by default a :class:`~rlxf.labelers.roles.SimulatedRole` that answers from the secret with a set
error rate (a wrong reply is another of the question's answers); an :class:`~rlxf.labelers.roles.LMRole`
(e.g. SmolLM2) can stand in, its reply read as the first of the question's answers it names (``i do not
know`` if none); :func:`oracle_accuracy` measures how often a stand-in answers right.
Twenty questions asks only yes/no questions; guess-my-city also open ones (continent, language).

Reward (LMRL-Gym): -1 per turn that does not end the game, 0 for the correct guess, which ends it;
``max_turns`` 20. The expert is a halving questioner: it keeps the items whose answers disagree least with
the replies so far (the consistent ones when the oracle is right), asks the question leaving the fewest
expected candidates, and guesses once three or fewer remain. :func:`optimal_expected_turns` solves the
game exactly (expected turns under a uniform secret and a right oracle), the optimum tests hold it to.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from rlxf.agents.env import TextEnv
from rlxf.labelers.roles import SimulatedRole, TextModel

UNKNOWN = "i do not know"
SKILLS = {"expert": 1.0, "noisy": 0.5, "random": 0.0}
"""Skill levels of the scripted datasets (the probability of the expert's action each turn; see
:func:`rlxf.agents.episodes.scripted_dataset`)."""


@dataclass(frozen=True)
class Catalogue:
    """Items and questions: ``answers[question][i]`` is the true answer about ``items[i]``."""

    name: str
    intro: str
    items: tuple[str, ...]
    answers: dict  # question -> tuple of answers, one per item

    def __post_init__(self):
        for q, a in self.answers.items():
            if len(a) != len(self.items):
                raise ValueError(f"catalogue {self.name}: question {q!r} has {len(a)} answers for "
                                 f"{len(self.items)} items")
        rows: dict[tuple, str] = {}
        for i, item in enumerate(self.items):
            row = tuple(a[i] for a in self.answers.values())
            if row in rows and self.answers:
                raise ValueError(f"catalogue {self.name}: no question tells {rows[row]!r} from {item!r}")
            rows[row] = item

    def choices(self, question: str) -> list[str]:
        """The distinct answers of ``question``, in first-seen order."""
        return list(dict.fromkeys(self.answers[question]))


def _yes_no(items: tuple[str, ...], members: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """Yes/no questions from the items each is true of: ``{question: "item item ..."}``."""
    out = {}
    for question, names in members.items():
        chosen = set(names.split())
        if chosen - set(items):
            raise ValueError(f"question {question!r}: unknown items {sorted(chosen - set(items))}")
        out[question] = tuple("yes" if x in chosen else "no" for x in items)
    return out


_OBJECTS = ("dog", "cat", "horse", "eagle", "shark", "frog", "rose", "oak",
            "apple", "carrot", "car", "bicycle", "hammer", "guitar", "phone", "chair")

TWENTY_QUESTIONS = Catalogue(
    name="twenty_questions",
    intro="find the hidden object . ask yes or no questions or guess it",
    items=_OBJECTS,
    answers=_yes_no(_OBJECTS, {
        "is it alive ?": "dog cat horse eagle shark frog rose oak apple carrot",
        "is it an animal ?": "dog cat horse eagle shark frog",
        "is it a plant ?": "rose oak apple carrot",
        "can it fly ?": "eagle",
        "does it live in water ?": "shark frog",
        "is it a pet ?": "dog cat",
        "does it bark ?": "dog",
        "does it have four legs ?": "dog cat horse frog chair",
        "is it bigger than a person ?": "horse shark oak car",
        "can you eat it ?": "apple carrot",
        "is it red ?": "rose apple",
        "does it have wheels ?": "car bicycle",
        "is it made of metal ?": "car bicycle hammer phone",
        "is it electronic ?": "phone car",
        "is it used for music ?": "guitar",
        "is it a tool ?": "hammer",
        "is it furniture ?": "chair",
    }),
)

_CITIES = ("paris", "london", "berlin", "madrid", "rome", "moscow", "tokyo", "beijing",
           "mumbai", "cairo", "lagos", "nairobi", "sydney", "toronto", "chicago", "lima")

GUESS_MY_CITY = Catalogue(
    name="guess_my_city",
    intro="find the hidden city . ask questions or guess it",
    items=_CITIES,
    answers={
        "which continent is it on ?": ("europe",) * 6 + ("asia",) * 3 + ("africa",) * 3
        + ("oceania", "north america", "north america", "south america"),
        "what language do people speak there ?": ("french", "english", "german", "spanish", "italian", "russian",
                                                  "japanese", "chinese", "hindi", "arabic", "english", "swahili",
                                                  "english", "english", "english", "spanish"),
        **_yes_no(_CITIES, {
            "is it a capital city ?": "paris london berlin madrid rome moscow tokyo beijing cairo nairobi lima",
            "is it on the coast ?": "tokyo mumbai lagos sydney lima",
            "is it in the southern hemisphere ?": "nairobi sydney lima",
            "does it have more than ten million people ?": "moscow tokyo beijing mumbai cairo lagos",
            "is it in the united states ?": "chicago",
        }),
    },
)

CATALOGUES = {c.name: c for c in (TWENTY_QUESTIONS, GUESS_MY_CITY)}


def oracle_request(secret: str, question: str) -> str:
    """What the oracle is asked: the question about the secret by name (``Is dog alive? Answer with yes, no
    or one word.``), which even a small LM answers better than a question about "it"."""
    text = re.sub(r"\bthere\b", f"in {secret}", re.sub(r"\bit\b", secret, question)).replace(" ?", "?")
    return f"{text[0].upper()}{text[1:]} Answer with yes, no or one word."


def simulated_oracle(catalogue: Catalogue, error: float = 0.0, seed: int = 0) -> SimulatedRole:
    """An oracle answering from the secret named in the request; with probability ``error`` it gives
    another of the question's answers."""
    pairs = {oracle_request(x, q): (i, q) for i, x in enumerate(catalogue.items) for q in catalogue.answers}

    def parts(request: str) -> tuple[int, str]:
        if request not in pairs:
            raise ValueError(f"{catalogue.name} oracle: not a request about this catalogue: {request[:80]!r}")
        return pairs[request]

    def right(request: str) -> str:
        i, question = parts(request)
        return catalogue.answers[question][i]

    def wrong(request: str, reply: str, rng: random.Random) -> str:
        others = [a for a in catalogue.choices(parts(request)[1]) if a != reply]
        return rng.choice(others) if others else reply

    return SimulatedRole(right=right, wrong=wrong, error=error, seed=seed)


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9? ]", " ", text.lower()).split())


def read_answer(catalogue: Catalogue, question: str, reply: str) -> str:
    """The answer of ``question`` that an oracle's free-text ``reply`` gives: the one it names first
    (``No, no.`` -> ``no``, ``Paris is in Europe`` -> ``europe``), or :data:`UNKNOWN` when it names none."""
    reply = f" {_normalise(reply)} "
    found = [(reply.find(f" {a} "), a) for a in catalogue.choices(question) if f" {a} " in reply]
    return min(found)[1] if found else UNKNOWN


def oracle_accuracy(oracle: TextModel, catalogue: Catalogue) -> float:
    """The fraction of (item, question) pairs ``oracle`` answers right, asked in one batch: how good a
    stand-in oracle (an LM) is."""
    pairs = [(x, q) for x in catalogue.items for q in catalogue.answers]
    replies = oracle.complete([oracle_request(x, q) for x, q in pairs])
    right = [read_answer(catalogue, q, r) == catalogue.answers[q][catalogue.items.index(x)]
             for (x, q), r in zip(pairs, replies)]
    return sum(right) / len(right)


class QuestionGame(TextEnv):
    """Find the secret item of a :class:`Catalogue` by questions to ``oracle`` (see the module docstring)."""

    max_turns = 20
    invalid_penalty = -1.0

    def __init__(self, catalogue: Catalogue, oracle: TextModel | None = None, oracle_error: float = 0.0,
                 max_turns: int = 20, invalid_penalty: float = -1.0, seed: int = 0):
        super().__init__(max_turns, invalid_penalty)
        self.catalogue = catalogue
        self.name = catalogue.name
        self.own_oracle = oracle is None
        self.oracle = oracle if oracle is not None else simulated_oracle(catalogue, oracle_error, seed)
        self.secret = ""
        self.history: list[tuple[str, str]] = []  # (question, reply)
        self.guessed: set[str] = set()
        self.solved = False

    def _reset(self) -> str:
        self.secret = self.rng.choice(self.catalogue.items)
        if self.own_oracle:  # the oracle's mistakes depend on the episode's seed alone
            self.oracle.rng = random.Random(self.rng.random())
        self.history, self.guessed, self.solved = [], set(), False
        return self.catalogue.intro

    def parse(self, action: str):
        text = _normalise(action).replace(" ?", "?").replace("?", " ?")
        if text in self.catalogue.answers:
            return ("ask", text)
        words = text.split()
        if len(words) == 2 and words[0] == "guess" and words[1] in self.catalogue.items:
            return ("guess", words[1])
        return None

    def _step(self, move):
        kind, what = move
        if kind == "guess":
            if what == self.secret:
                self.solved = True
                return "correct", 0.0, True, {}
            self.guessed.add(what)
            return f"no it is not {what}", -1.0, False, {}
        answer = read_answer(self.catalogue, what, self.oracle.complete([oracle_request(self.secret, what)])[0])
        self.history.append((what, answer))
        return answer, -1.0, False, {}

    def success(self) -> bool:
        return self.solved

    # -- reference policies -------------------------------------------------------------------------
    def candidates(self) -> list[int]:
        """Indices of the items not yet guessed whose answers disagree least with the replies so far."""
        cat = self.catalogue
        left = [i for i, x in enumerate(cat.items) if x not in self.guessed]
        misses = {i: sum(cat.answers[q][i] != a for q, a in self.history if a != UNKNOWN) for i in left}
        best = min(misses.values())
        return [i for i in left if misses[i] == best]

    def expert_action(self) -> str:
        cands = self.candidates()
        if len(cands) > 3:
            q = best_question(self.catalogue, tuple(cands))
            if q is not None:
                return q
        return f"guess {self.catalogue.items[cands[0]]}"

    def random_action(self, rng: random.Random) -> str:
        cat = self.catalogue
        return rng.choice(list(cat.answers) + [f"guess {x}" for x in cat.items])

    def words(self) -> list[str]:
        cat = self.catalogue
        text = " ".join([cat.intro, "guess correct no it is not", UNKNOWN, *cat.items, *cat.answers,
                         *(a for q in cat.answers for a in cat.choices(q))])
        return list(dict.fromkeys(text.split()))


def best_question(catalogue: Catalogue, cands: tuple[int, ...]) -> str | None:
    """The question leaving the fewest expected candidates (sum of squared answer-group sizes), or None
    when no question splits ``cands``; ties go to the catalogue's order."""
    best, best_score = None, len(cands) ** 2
    for q, ans in catalogue.answers.items():
        groups: dict[str, int] = {}
        for i in cands:
            groups[ans[i]] = groups.get(ans[i], 0) + 1
        score = sum(n * n for n in groups.values())
        if score < best_score:
            best, best_score = q, score
    return best


def optimal_expected_turns(catalogue: Catalogue) -> float:
    """The fewest expected turns (the correct guess included) any policy needs to find a uniformly drawn
    secret with a right oracle: exact dynamic programming over all candidate sets (bitmasks), solved for
    every set of ``k`` candidates at once from the smaller sets, ``k = 1..n``."""
    n = len(catalogue.items)
    if n > 20:
        raise ValueError(f"optimal_expected_turns: {n} items is too many for the exact search (max 20)")
    groups = []  # per question: the bitmask of the items giving each answer
    for ans in catalogue.answers.values():
        by_answer: dict[str, int] = {}
        for i, a in enumerate(ans):
            by_answer[a] = by_answer.get(a, 0) | (1 << i)
        groups.append(np.array(list(by_answer.values()), dtype=np.int64))
    masks = np.arange(1 << n, dtype=np.int64)
    size = np.zeros(1 << n, dtype=np.int64)
    for i in range(n):
        size += (masks >> i) & 1
    cost = np.zeros(1 << n)  # the empty set costs nothing; it only appears with weight 0
    for k in range(1, n + 1):
        m = masks[size == k]
        if k == 1:
            cost[m] = 1.0
            continue
        # guess an item: right with probability 1/k, else go on without it
        after_guess = np.full(len(m), np.inf)
        for i in range(n):
            has = ((m >> i) & 1).astype(bool)
            after_guess[has] = np.minimum(after_guess[has], cost[m[has] & ~(1 << i)])
        best = 1.0 + (k - 1) / k * after_guess
        for g in groups:  # ask a question that splits the set: the answer's part, weighted by its size
            parts = m[:, None] & g[None, :]
            splits = (parts > 0).sum(1) > 1
            value = 1.0 + (size[parts] * cost[parts]).sum(1) / k
            best = np.where(splits, np.minimum(best, value), best)
        cost[m] = best
    return float(cost[-1])


def make_twenty_questions(oracle_error: float = 0.0, max_turns: int = 20, oracle: TextModel | None = None,
                          seed: int = 0) -> QuestionGame:
    return QuestionGame(TWENTY_QUESTIONS, oracle, oracle_error, max_turns, seed=seed)


def make_guess_my_city(oracle_error: float = 0.0, max_turns: int = 20, oracle: TextModel | None = None,
                       seed: int = 0) -> QuestionGame:
    return QuestionGame(GUESS_MY_CITY, oracle, oracle_error, max_turns, seed=seed)
