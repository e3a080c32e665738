"""The hidden-preference language: a synthetic text task with a gold reward the learner never sees.

Words of a small vocabulary belong to topics. A prompt names a topic and three of its
words; the "fluent" base language is a hidden Markov chain over words, conditioned on
the topic, from which the SFT corpus is drawn. The gold reward gives, per word, a hidden
value, a bonus for staying on topic, a penalty for repeating words and a fluency term
under the hidden chain; the end-of-sequence step carries a penalty for straying from a
target length. Every term is per step, so the terms sum to the total.

A reward model fit on comparisons of fluent samples learns the word values and topic
bonus, but sees few long or repetitive answers, so it misjudges the penalties: optimising
it hard yields long, repetitive text whose gold reward falls (length and repetition
hacking, as with real models). The gold scale is calibrated so that a Bradley-Terry
labeler with beta = 1 agrees with gold on ``labeler_accuracy`` of pairs of corpus samples.

``harmful_words`` names words of the vocabulary that carry a cost apart from gold (gold is
unchanged): the cost of a response is how many times they occur in it. A run can hold the
expected cost under a threshold (the ``cost_constrained`` online method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

TOPIC_NAMES = ("sea", "sky", "wood", "fire", "stone", "song", "road", "snow", "salt", "wind")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
SEP = ":"


@dataclass(frozen=True)
class HiddenPrefConfig:
    """Settings of the hidden-preference task (the ``[task]`` config section)."""

    seed: int = 0
    n_topics: int = 6
    words_per_topic: int = 8
    min_len: int = 2
    max_len: int = 12
    target_len: int = 7
    value_weight: float = 1.0
    topic_bonus: float = 0.6
    repeat_penalty: float = 1.0
    fluency_weight: float = 0.3
    length_penalty: float = 0.5
    labeler_accuracy: float = 0.8
    test_fraction: float = 0.25
    # words with a cost (one per occurrence); at its default () it is left out of a run's identity
    harmful_words: tuple[str, ...] = field(default=(), metadata={"identity": "omit_default"})


@dataclass(frozen=True)
class Sample:
    prompt: str
    response: str


class HiddenPreferenceTask:
    """Prompts, a base corpus, and the gold reward of the hidden-preference language."""

    def __init__(self, cfg: HiddenPrefConfig = HiddenPrefConfig()):
        if not 1 <= cfg.n_topics <= len(TOPIC_NAMES):
            raise ValueError(f"task.n_topics must be in 1..{len(TOPIC_NAMES)}, got {cfg.n_topics}")
        if not 2 <= cfg.min_len <= cfg.max_len:
            raise ValueError(f"task needs 2 <= min_len <= max_len, got {cfg.min_len}, {cfg.max_len}")
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 7])
        self.topics = list(TOPIC_NAMES[: cfg.n_topics])
        self.words = _make_words(cfg.n_topics * cfg.words_per_topic, rng)
        self.index = {w: i for i, w in enumerate(self.words)}
        W, k = len(self.words), cfg.words_per_topic
        self.topic_of = np.repeat(np.arange(cfg.n_topics), k)  # topic id of each word
        self.values = rng.normal(0.0, 1.0, W)
        # hidden chain: sparse-ish transition preferences, pulled towards the prompt's topic
        self._trans_logits = rng.normal(0.0, 1.5, (W, W))
        self._topic_pull = 1.5
        unknown = [w for w in cfg.harmful_words if w not in self.index]
        if unknown:
            raise ValueError(f"task.harmful_words: {', '.join(map(repr, unknown))} not in the task's words "
                             f"(task.seed = {cfg.seed}; words: {', '.join(self.words)})")
        if len(set(cfg.harmful_words)) != len(cfg.harmful_words):
            raise ValueError(f"task.harmful_words lists a word twice: {list(cfg.harmful_words)}")
        self.scale = 1.0
        self.scale = self._calibrate_scale()

    # -- vocabulary and prompts ------------------------------------------
    def vocabulary(self) -> list[str]:
        return self.topics + self.words + [SEP]

    @cached_property
    def _prompt_table(self) -> dict[str, list[str]]:
        k = self.cfg.words_per_topic
        all_prompts = []
        for t, topic in enumerate(self.topics):
            cluster = self.words[t * k : (t + 1) * k]
            for a in cluster:
                for b in cluster:
                    for c in cluster:
                        all_prompts.append(f"{topic} {a} {b} {c} {SEP}")
        order = np.random.default_rng([self.cfg.seed, 11]).permutation(len(all_prompts))
        n_test = int(len(all_prompts) * self.cfg.test_fraction)
        return {
            "test": [all_prompts[i] for i in order[:n_test]],
            "train": [all_prompts[i] for i in order[n_test:]],
        }

    def prompts(self, split: str = "train") -> list[str]:
        """All prompts of a split ('train' or 'test'); the two are disjoint."""
        if split not in self._prompt_table:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self._prompt_table[split]

    def sample_prompts(self, n: int, split: str, rng: np.random.Generator) -> list[str]:
        pool = self.prompts(split)
        return [pool[i] for i in rng.integers(0, len(pool), n)]

    def _parse_prompt(self, prompt: str) -> tuple[int, int]:
        parts = prompt.split()
        if len(parts) < 2 or parts[0] not in self.topics:
            raise ValueError(f"not a prompt of this task: {prompt!r}")
        return self.topics.index(parts[0]), self.index.get(parts[-2], 0)

    # -- the hidden chain -------------------------------------------------
    def _next_logp(self, prev: int, topic: int) -> np.ndarray:
        logits = self._trans_logits[prev] + self._topic_pull * (self.topic_of == topic)
        return logits - np.logaddexp.reduce(logits)

    def sample_response(self, prompt: str, rng: np.random.Generator) -> str:
        """One fluent response to ``prompt`` drawn from the hidden chain."""
        topic, prev = self._parse_prompt(prompt)
        length = int(rng.integers(self.cfg.min_len, self.cfg.max_len + 1))
        words = []
        for _ in range(length):
            p = np.exp(self._next_logp(prev, topic))
            prev = int(rng.choice(len(p), p=p / p.sum()))
            words.append(self.words[prev])
        return " ".join(words)

    def corpus(self, n: int, seed: int, split: str = "train") -> list[Sample]:
        """``n`` fluent (prompt, response) pairs drawn from the hidden chain."""
        rng = np.random.default_rng([self.cfg.seed, seed, 13])
        return [Sample(p, self.sample_response(p, rng)) for p in self.sample_prompts(n, split, rng)]

    # -- gold reward ------------------------------------------------------
    def gold_terms(self, prompt: str, response: str, finished: bool = True) -> list[float]:
        """Per-step gold terms: one per word, plus one for the end-of-sequence step when
        ``finished``. They sum to :meth:`gold`. Unknown tokens score as the worst word."""
        c = self.cfg
        topic, prev = self._parse_prompt(prompt)
        tokens = response.split()
        seen: dict[str, int] = {}
        terms = []
        worst = float(self.values.min())
        log_w = math.log(len(self.words))
        for tok in tokens:
            i = self.index.get(tok)
            if i is None:
                term = c.value_weight * worst - c.topic_bonus + c.fluency_weight * -log_w
            else:
                fluency = float(self._next_logp(prev, topic)[i]) + log_w
                term = (c.value_weight * self.values[i] + c.topic_bonus * (self.topic_of[i] == topic)
                        + c.fluency_weight * fluency)
                prev = i
            term -= c.repeat_penalty * seen.get(tok, 0)
            seen[tok] = seen.get(tok, 0) + 1
            terms.append(float(term))
        length_term = -c.length_penalty * abs(len(tokens) - c.target_len)
        if finished or not terms:
            terms.append(length_term)
        else:
            terms[-1] += length_term
        return [self.scale * t for t in terms]

    def gold(self, prompt: str, response: str, finished: bool = True) -> float:
        return float(sum(self.gold_terms(prompt, response, finished)))

    def cost(self, prompt: str, response: str, finished: bool = True) -> float:
        """How many words of ``response`` are in ``harmful_words`` (0 when there are none)."""
        harmful = set(self.cfg.harmful_words)
        return float(sum(tok in harmful for tok in response.split()))

    def _calibrate_scale(self, n_pairs: int = 2000) -> float:
        """Find the scale at which a beta=1 Bradley-Terry labeler agrees with gold on
        ``labeler_accuracy`` of corpus pairs (the Bayes-optimal accuracy, by bisection)."""
        rng = np.random.default_rng([self.cfg.seed, 17])
        diffs = []
        for prompt in self.sample_prompts(n_pairs, "train", rng):
            a, b = self.sample_response(prompt, rng), self.sample_response(prompt, rng)
            diffs.append(abs(self.gold(prompt, a) - self.gold(prompt, b)))
        diffs = np.array(diffs)
        lo, hi = 1e-3, 100.0
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            acc = float(np.mean(1 / (1 + np.exp(-mid * diffs))))
            lo, hi = (mid, hi) if acc < self.cfg.labeler_accuracy else (lo, mid)
        return math.sqrt(lo * hi)


def _make_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pronounceable two-syllable words."""
    words: list[str] = []
    seen = set()
    while len(words) < n:
        w = "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(2))
        if w not in seen and w not in TOPIC_NAMES:
            seen.add(w)
            words.append(w)
    return words
