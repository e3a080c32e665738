"""Active query selection: which item, and which pair of its responses, to ask about next.

A *scorer* maps items to ensemble scores, one ``[K, n_responses]`` array per item (K
reward models, or K bootstrap fits of one), or to None while it has no model yet (the
queue then asks uniformly: a warm start). Every rule here reads only those arrays:

- ``uniform``: a random item and a random pair (the baseline).
- ``disagreement``: the pair on which the ensemble members disagree most about which
  response wins (the standard deviation over members of sigma(r_k(a) - r_k(b))), as
  in ensemble-based active reward learning (e.g. Christiano et al. 2017, PEBBLE).
- ``apohf``: the dueling rule of APOHF (Lin et al. 2024, "Prompt Optimization with
  Human Feedback"), shared with the APOHF prompt loop (:mod:`rlxf.algorithms.dueling`):
  arm 1 is the best-so-far response (highest mean score), arm 2 maximises
  mean + sqrt(nu * variance of its difference to arm 1); nu = -1 asks a random pair.
  APOHF measures that variance with the gradients of a small network; here the
  ensemble's variance of the difference stands in for it. Across items, the item whose
  challenger has the largest optimistic margin over its incumbent is asked.
- ``randomized``: the rule of Wu & Sun 2024 ("Making RL with Preference-based Feedback
  Efficient via Randomization"): compare the choice of a *randomised* reward estimate (one
  ensemble member drawn at random, a posterior sample) with the choice of the previous
  greedy estimate (the ensemble mean), and ask only when that pair is uncertain enough
  (std of the difference >= ``eps``); otherwise skip the query.
- ``learned``: a learned query policy (``rlxf.policies.query.LearnedRule``; Zhang, Jain & Jamieson 2020,
  "Learning to Actively Learn") scores every (item, pair) from the pair's ensemble features
  (``pair_features`` of the members' ``P_k(a beats b)``), and the highest-scoring one is asked. Without
  a rule passed in, the project's ``query_policy`` file or else the pair policy shipped with
  :mod:`rlxf.algorithms.active.pairs`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rlxf.algorithms.active.pairs import pair_rule
from rlxf.algorithms.dueling import duel_pair
from rlxf.data.label_store import Assignment, Item, Labeler, LabelStore, Project, StoreError
from rlxf.policies.query import pair_features

Scorer = Callable[[list[Item]], "list[np.ndarray] | None"]
SELECTIONS = ("uniform", "disagreement", "apohf", "randomized", "learned")


@dataclass(frozen=True)
class Choice:
    index: int  # which candidate item
    pair: tuple[int, int]  # which two of its responses
    score: float  # the rule's value for this choice (higher = more informative)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def choose_uniform(items: list[Item], scores: list[np.ndarray] | None, rng: np.random.Generator) -> Choice:
    i = int(rng.integers(len(items)))
    a, b = rng.choice(len(items[i].responses), size=2, replace=False)
    return Choice(i, (int(a), int(b)), 0.0)


def pair_disagreement(s: np.ndarray) -> np.ndarray:
    """``[n, n]``: std over the K members of P_k(row beats column) = sigma(s_k[row] - s_k[col])."""
    p = _sigmoid(s[:, :, None] - s[:, None, :])
    return p.std(axis=0)


def choose_disagreement(items: list[Item], scores: list[np.ndarray], rng: np.random.Generator) -> Choice:
    best = None
    for i, s in enumerate(scores):
        d = pair_disagreement(s)
        np.fill_diagonal(d, -1.0)
        d = d + 1e-9 * rng.random(d.shape)  # random tie-break
        a, b = np.unravel_index(int(np.argmax(d)), d.shape)
        if best is None or d[a, b] > best.score:
            best = Choice(i, (int(a), int(b)), float(d[a, b]))
    return best


def choose_apohf(items: list[Item], scores: list[np.ndarray], rng: np.random.Generator, nu: float = 1.0) -> Choice:
    """APOHF's duel (:func:`rlxf.algorithms.dueling.duel_pair`) within each item, with the ensemble
    mean as utility and the ensemble variance of a difference as its uncertainty; the item with the
    largest optimistic margin wins."""
    best = None
    for i, s in enumerate(scores):
        x1, x2, value = duel_pair(s.mean(axis=0), lambda a, s=s: (s - s[:, [a]]).var(axis=0), nu, rng)
        if best is None or value > best.score:
            best = Choice(i, (x1, x2), value)
    return best


def choose_randomized(items: list[Item], scores: list[np.ndarray], rng: np.random.Generator,
                      eps: float = 0.0) -> Choice | None:
    """First item (in random order) whose (randomised choice, greedy choice) pair has
    uncertainty >= eps; None when no item qualifies (the query is skipped)."""
    for i in rng.permutation(len(items)):
        s = scores[i]
        k = int(rng.integers(s.shape[0]))
        new = int(np.argmax(s[k]))
        mean = s.mean(axis=0)
        # the greedy choice; when both estimates pick the same response, the greedy runner-up
        old = next(int(j) for j in np.argsort(-mean, kind="stable") if j != new)
        u = float((s[:, new] - s[:, old]).std())
        if u >= eps:
            return Choice(int(i), (new, old), u)
    return None


def choose_learned(items: list[Item], scores: list[np.ndarray], rule) -> Choice:
    """The (item, pair) that the learned ``rule`` (a ``LearnedRule``) scores highest."""
    owners, feats = [], []
    for i, s in enumerate(scores):
        a, b = np.triu_indices(s.shape[1], k=1)
        feats.append(pair_features(_sigmoid(s[:, a] - s[:, b])))
        owners += [(i, int(x), int(y)) for x, y in zip(a, b)]
    logits = rule.scores(np.concatenate(feats))
    j = int(np.argmax(logits))
    return Choice(owners[j][0], owners[j][1:], float(logits[j]))


class QueryQueue:
    """Hands each labeler their next assignment, picked by the project's selection rule.

    A labeler's unfinished assignment is returned again (a reload does not skip it). In a
    prompt-duel project (``duels``) each question is a new item the APOHF loop makes;
    otherwise a fresh item is chosen among those the labeler never saw and that have
    fewer than ``overlap`` labelers, so no labeler is asked the same question twice.
    """

    def __init__(self, store: LabelStore, project: Project, scorer: Scorer | None = None,
                 seed: int = 0, pool: int = 256, duels=None, learned=None):
        rule = project.settings.get("selection", "uniform")
        if rule not in SELECTIONS:
            raise StoreError(f"selection {rule!r} is not one of {', '.join(SELECTIONS)}")
        if rule != "uniform" and scorer is None and duels is None:
            raise StoreError(f"selection {rule!r} needs reward models to score items (serve --reward-model DIR ...)")
        if rule == "learned" and learned is None:  # the project's policy file, or the shipped pair policy
            try:
                learned = pair_rule(project.settings.get("query_policy"), "query_policy (label init --query-policy)")
            except ValueError as e:
                raise StoreError(str(e)) from None
        self.store, self.project, self.scorer, self.rule = store, project, scorer, rule
        self.learned = learned  # a LearnedRule, for selection "learned"
        self.duels = duels  # a rlxf.app.prompt_duels.PromptDuels: it makes each question itself
        self.pool = pool
        self.rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # one choice at a time, so two labelers never race for the last slot

    def next(self, labeler: Labeler) -> Assignment | None:
        with self._lock:
            current = self.store.open_assignment(self.project, labeler)
            if current is not None:
                return current
            if self.duels is not None:
                item = self.duels.next_item(self.store, self.project)
                return None if item is None else self.store.assign(self.project, labeler, item, self._shown(item, (0, 1)))
            items = self.store.candidates(self.project, labeler, self.pool, self.rng)
            if not items:
                return None
            choice = self._choose(items)
            if choice is None:
                return None
            item = items[choice.index]
            return self.store.assign(self.project, labeler, item, self._shown(item, choice.pair))

    def _choose(self, items: list[Item]) -> Choice | None:
        scores = None if self.rule == "uniform" else self.scorer(items)
        if scores is None:
            return choose_uniform(items, None, self.rng)
        scores = [np.asarray(s, dtype=float) for s in scores]
        if self.rule == "disagreement":
            return choose_disagreement(items, scores, self.rng)
        if self.rule == "learned":
            return choose_learned(items, scores, self.learned)
        if self.rule == "apohf":
            return choose_apohf(items, scores, self.rng, float(self.project.settings.get("nu", 1.0)))
        return choose_randomized(items, scores, self.rng, float(self.project.settings.get("eps", 0.0)))

    def _shown(self, item: Item, pair: tuple[int, int]) -> list[int]:
        """Preference shows the pair (in random order); ranking and rating show every
        response; a critique shows one response of the pair."""
        kind = self.project.kind
        if kind == "preference":
            return [int(i) for i in self.rng.permutation(list(pair))]
        if kind in ("ranking", "rating"):
            return list(range(len(item.responses)))
        return [int(pair[0])]


def reward_model_scorer(models) -> Scorer:
    """A scorer from K ``RewardModel``s (a list, or a ``rlxf.rewards.ensemble.RewardEnsemble``):
    each scores prompt + response token ids. Scores are cached per item, since items do
    not change while the server runs."""
    models = list(getattr(models, "members", models))
    cache: dict[int, np.ndarray] = {}
    lock = threading.Lock()

    def score(items: list[Item]) -> list[np.ndarray]:
        with lock:
            todo = [it for it in items if it.id not in cache]
            if todo:
                prompts, responses, owners = [], [], []
                for it in todo:
                    for r in it.responses:
                        prompts.append(it.prompt)
                        responses.append(r)
                        owners.append(it.id)
                rows = []
                for m in models:
                    tok = m.tokenizer
                    p_ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
                    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
                    r_ids = [tok(r, add_special_tokens=False).input_ids + eos for r in responses]
                    rows.append(m.score(p_ids, r_ids).numpy())
                all_scores = np.stack(rows)  # [K, total responses]
                start = 0
                for it in todo:
                    n = len(it.responses)
                    cache[it.id] = all_scores[:, start:start + n]
                    start += n
            return [cache[it.id] for it in items]

    return score
