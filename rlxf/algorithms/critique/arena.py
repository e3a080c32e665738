"""Arena Learning (Luo et al. 2024): a simulated chatbot arena as a post-training data flywheel.

The target model battles several competitor models on instructions; a judge scores both answers of
each battle, once in each order (so a judge that favours the first answer it reads cannot decide a
battle alone), and the battle goes to the higher total. Elo ratings are fitted to the battles
(Bradley-Terry by maximum likelihood, ties as half a win each way, LMSYS-style) with bootstrap
confidence intervals. The flywheel: on each iteration's shard of instructions, where the target
loses, the winning answer becomes an SFT target; the decided battles become DPO pairs (winner
chosen, loser rejected); train SFT then DPO; evaluate; go on with the next shard.

Here the instructions are the arithmetic task's problems. Every contestant and the judge is a
:class:`~rlxf.labelers.roles.TextModel`: the target is a tiny LM (:class:`LMRole`), the competitors
are simulated models of set skill (the paper's stronger chatbots), and the judge is simulated from
gold with a set error profile (:func:`simulated_judge`); an LM judge plugs in the same way.
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass, field

import numpy as np

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import train_pairs
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.labelers.roles import LMRole, SimulatedRole, TextModel
from rlxf.objectives.preference import dpo_loss
from rlxf.policies.language import LanguagePolicy
from rlxf.tasks.arithmetic import check_answer, check_steps, corrupt, solve

ELO_SCALE, ELO_BASE = 400.0, 1000.0
_SCORES = re.compile(r"scores:\s*(\d+(?:\.\d+)?)\s+(\d+(?:\.\d+)?)", re.I)


# -- the judge ---------------------------------------------------------------------------------


def judge_request(question: str, first: str, second: str) -> str:
    """What the judge reads: the instruction and two answers; it replies ``scores: X Y`` (1-10 each)."""
    return f"question: {question}\nanswer 1:\n{first}\nanswer 2:\n{second}\nscore each answer from 1 to 10"


def parse_judge_request(request: str) -> tuple[str, str, str]:
    head, rest = request.split("\nanswer 1:\n", 1)
    first, rest = rest.split("\nanswer 2:\n", 1)
    second = rest.rsplit("\nscore each answer", 1)[0]
    return head.removeprefix("question: "), first, second


def parse_scores(reply: str) -> tuple[float, float] | None:
    """The judge's two scores, or None when the reply holds no ``scores: X Y`` line."""
    m = _SCORES.search(reply)
    return (float(m[1]), float(m[2])) if m else None


def gold_score(question: str, answer: str) -> int:
    """A perfect judge's 1-10 score of an arithmetic answer: 10 when the answer is right, else 1 plus
    up to 8 for the share of its worked lines that are valid (a near miss beats nonsense)."""
    if check_answer(question, answer):
        return 10
    steps = check_steps(question, answer)
    return 1 + round(8 * sum(steps) / len(steps)) if steps else 1


def _gold_reply(request: str) -> str:
    q, a, b = parse_judge_request(request)
    return f"scores: {gold_score(q, a)} {gold_score(q, b)}"


def _biased_reply(request: str, right: str, rng: random.Random) -> str:
    """A judge's mistake: half the time it prefers whichever answer it read first, half the time it
    scores at random."""
    if rng.random() < 0.5:
        return "scores: 9 2"
    return f"scores: {rng.randint(1, 10)} {rng.randint(1, 10)}"


def simulated_judge(error: float = 0.2, seed: int = 0) -> SimulatedRole:
    """A judge driven by :func:`gold_score` that errs (position bias or random scores) at rate ``error``."""
    return SimulatedRole(right=_gold_reply, wrong=_biased_reply, error=error, seed=seed)


def simulated_contestant(skill: float, seed: int = 0) -> SimulatedRole:
    """A competitor model that answers right (the canonical worked solution) with probability
    ``skill`` and otherwise writes a plausible wrong solution (one bad step, :func:`corrupt`)."""
    return SimulatedRole(right=solve, wrong=lambda q, ok, rng: corrupt(q, ok, rng), error=1.0 - skill, seed=seed)


def policy_contestant(policy: LanguagePolicy, max_new_tokens: int = 48, seed: int = 0) -> LMRole:
    """A tiny LM as a contestant: its greedy answer to the bare problem."""
    return LMRole(policy, max_new_tokens=max_new_tokens, temperature=0.0, chat=False, seed=seed)


def judge_totals(judge: TextModel, questions: list[str], first: list[str], second: list[str]) -> list[tuple[float, float]]:
    """Each model's score per battle, totalled over the judge's two readings (both orders, so a
    position bias cancels); an unparsable reply gives both answers 0 in that reading."""
    n = len(questions)
    replies = judge.complete([judge_request(q, a, b) for q, a, b in zip(questions, first, second)]
                             + [judge_request(q, b, a) for q, a, b in zip(questions, first, second)])
    out = []
    for i in range(n):
        s1, s2 = parse_scores(replies[i]) or (0.0, 0.0), parse_scores(replies[n + i]) or (0.0, 0.0)
        out.append((s1[0] + s2[1], s1[1] + s2[0]))
    return out


def outcome(a: float, b: float) -> float:
    """A battle's result for the first model from the two totals: 1 win, 0 loss, 0.5 tie."""
    return 1.0 if a > b else 0.0 if a < b else 0.5


def battles(judge: TextModel, questions: list[str], first: list[str], second: list[str]) -> list[float]:
    """The outcome of each battle for the ``first`` model (:func:`judge_totals`, :func:`outcome`)."""
    return [outcome(a, b) for a, b in judge_totals(judge, questions, first, second)]


# -- ratings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Games:
    """Battles as arrays: models ``a[k]`` and ``b[k]`` (indices) and the outcome for ``a[k]`` (1 win,
    0 loss, 0.5 tie)."""

    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray

    def __len__(self) -> int:
        return len(self.outcome)

    def take(self, idx: np.ndarray) -> "Games":
        return Games(self.a[idx], self.b[idx], self.outcome[idx])

    @staticmethod
    def of(rows: list[tuple[int, int, float]]) -> "Games":
        a, b, o = zip(*rows) if rows else ((), (), ())
        return Games(np.asarray(a, dtype=int), np.asarray(b, dtype=int), np.asarray(o, dtype=float))


def elo_ratings(games: Games, n_models: int, prior: float = 0.5, iters: int = 2000, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry maximum-likelihood ratings on the Elo scale (400 points = 10x odds), mean 1000.

    A tie counts half a win each way. ``prior`` adds that many tied games between every pair of
    models, which keeps the ratings finite when a model wins or loses every game (and barely moves
    them otherwise). Fitted by the minorise-maximise iteration of Hunter (2004)."""
    wins = np.full((n_models, n_models), prior / 2)
    np.fill_diagonal(wins, 0.0)
    np.add.at(wins, (games.a, games.b), games.outcome)
    np.add.at(wins, (games.b, games.a), 1.0 - games.outcome)
    played = wins + wins.T
    p = np.ones(n_models)
    for _ in range(iters):
        new = wins.sum(1) / (played / (p[:, None] + p[None, :])).sum(1)
        new /= np.exp(np.log(new).mean())
        done = np.abs(new - p).max() < tol
        p = new
        if done:
            break
    r = ELO_SCALE * np.log10(p)
    return r - r.mean() + ELO_BASE


@dataclass
class Ratings:
    names: list[str]
    elo: np.ndarray  # [n]
    low: np.ndarray  # 95% bootstrap interval
    high: np.ndarray
    samples: np.ndarray  # [rounds, n] bootstrap ratings (for the SE of a difference)

    def se_of_difference(self, i: int, j: int) -> float:
        return float((self.samples[:, i] - self.samples[:, j]).std(ddof=1))

    def table(self) -> list[dict]:
        order = np.argsort(-self.elo)
        return [{"model": self.names[i], "elo": round(float(self.elo[i]), 1),
                 "ci": [round(float(self.low[i]), 1), round(float(self.high[i]), 1)]} for i in order]


def bootstrap_elo(games: Games, names: list[str], rounds: int = 200, seed: int = 0) -> Ratings:
    """Ratings of all battles plus ``rounds`` refits on battles resampled with replacement."""
    rng = np.random.default_rng(seed)
    n = len(names)
    samples = np.stack([elo_ratings(games.take(rng.integers(0, len(games), len(games))), n) for _ in range(rounds)])
    return Ratings(names, elo_ratings(games, n), np.percentile(samples, 2.5, 0), np.percentile(samples, 97.5, 0),
                   samples)


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def arena(models: dict[str, list[str]], questions: list[str], judge: TextModel, rounds: int = 200,
          seed: int = 0) -> Ratings:
    """A round robin: every pair of models battles on every question (``models`` maps a name to its
    answers to ``questions``), then :func:`bootstrap_elo`."""
    names = list(models)
    games = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            games += [(i, j, o) for o in battles(judge, questions, models[names[i]], models[names[j]])]
    return bootstrap_elo(Games.of(games), names, rounds, seed)


def gold(questions: list[str], answers: list[str]) -> np.ndarray:
    """Exact-answer correctness per question (0/1)."""
    return np.array([check_answer(q, a) for q, a in zip(questions, answers)], dtype=float)


# -- the flywheel -------------------------------------------------------------------------------


@dataclass
class ArenaConfig:
    """One flywheel: ``iterations`` shards of ``shard`` instructions; per iteration SFT on the won
    answers of lost instructions (``sft``), then DPO on the battle pairs (``dpo``; ``dpo.steps = 0``,
    the default, skips it: on the arithmetic toy it lowered gold, see docs/critique.md)."""

    iterations: int = 3
    shard: int = 800  # training instructions per iteration
    max_new_tokens: int = 48
    beta: float = 0.1  # DPO
    sft: OptimConfig = field(default_factory=lambda: OptimConfig(steps=200, batch_size=32, lr=3e-3, warmup_steps=10,
                                                                 checkpoint_every=10**6))
    dpo: OptimConfig = field(default_factory=lambda: OptimConfig(steps=0, batch_size=32, lr=1e-4, warmup_steps=5,
                                                                 checkpoint_every=10**6))


@dataclass
class Harvest:
    """What one iteration's battles yield: SFT rows where the target lost, and battle pairs."""

    sft: list[tuple[str, str]] = field(default_factory=list)  # (question, winning answer)
    pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (question, winner, loser)
    lost: int = 0
    difficulty: float = 0.0  # mean operator count of the lost instructions


def harvest(questions: list[str], target: list[str], competitors: dict[str, list[str]],
            judge: TextModel) -> Harvest:
    """Battle the target's answers against each competitor's. An instruction the target loses to at
    least one competitor gives one SFT row: the answer of the competitor that beat it by most (the
    judge's own scores decide, first listed on a tie). Every decided battle gives a DPO pair."""
    out = Harvest()
    best: dict[int, tuple[float, str]] = {}
    for answers in competitors.values():
        for i, (q, (mine, theirs)) in enumerate(zip(questions, judge_totals(judge, questions, target, answers))):
            r = outcome(mine, theirs)
            if r == 0.5:
                continue
            win, lose = (target[i], answers[i]) if r == 1.0 else (answers[i], target[i])
            out.pairs.append((q, win, lose))
            if r == 0.0 and (i not in best or theirs - mine > best[i][0]):
                best[i] = (theirs - mine, answers[i])
    out.sft = [(questions[i], a) for i, (_, a) in sorted(best.items())]
    out.lost = len(best)
    if best:
        out.difficulty = float(np.mean([sum(c in "+-*" for c in questions[i]) for i in best]))
    return out


def train_round(run: Run, it: int, policy: LanguagePolicy, got: Harvest, cfg: ArenaConfig, seed: int) -> None:
    """SFT on the lost instructions' winning answers, then (with ``cfg.dpo.steps > 0``) DPO against
    the post-SFT model on the battle pairs."""
    if got.sft:
        qs, ans = zip(*got.sft)
        train_sft(run, f"arena_sft_{it}", policy, policy.encode(list(qs)), policy.encode_responses(list(ans)),
                  cfg.sft, seed, quiet=True)
    if got.pairs and cfg.dpo.steps > 0:
        ref = copy.deepcopy(policy)
        ref.model.eval()
        pairs = [(p, w, l) for p, w, l in zip(policy.encode([q for q, _, _ in got.pairs]),
                                              policy.encode_responses([w for _, w, _ in got.pairs]),
                                              policy.encode_responses([l for _, _, l in got.pairs]))]
        train_pairs(run, f"arena_dpo_{it}", policy, ref, pairs, dpo_loss, {"beta": cfg.beta}, cfg.dpo, seed,
                    quiet=True)
    policy.model.eval()


def flywheel(run: Run, policy: LanguagePolicy, competitors: dict[str, TextModel], judge: TextModel,
             train_questions: list[str], cfg: ArenaConfig, seed: int = 0) -> list[tuple[LanguagePolicy, dict]]:
    """Run ``cfg.iterations`` rounds on consecutive shards of ``train_questions``; trains ``policy``
    in place. Returns the target before training and after each round (copies), each with that
    round's log: instructions lost, SFT rows, DPO pairs, mean difficulty of the lost ones."""
    if len(train_questions) < cfg.iterations * cfg.shard:
        raise ValueError(f"flywheel: {cfg.iterations} iterations of {cfg.shard} instructions need "
                         f"{cfg.iterations * cfg.shard} training questions, got {len(train_questions)}")
    snapshots = [(copy.deepcopy(policy), {"iteration": 0})]
    for it in range(cfg.iterations):
        qs = train_questions[it * cfg.shard:(it + 1) * cfg.shard]
        mine = policy_contestant(policy, cfg.max_new_tokens, seed + it).complete(qs)
        theirs = {name: m.complete(qs) for name, m in competitors.items()}
        got = harvest(qs, mine, theirs, judge)
        train_round(run, it, policy, got, cfg, seed + it)
        snapshots.append((copy.deepcopy(policy), {"iteration": it + 1, "lost": got.lost, "sft_rows": len(got.sft),
                                                  "dpo_pairs": len(got.pairs), "lost_difficulty": got.difficulty}))
    return snapshots


__all__ = ["ArenaConfig", "Games", "Harvest", "Ratings", "arena", "battles", "bootstrap_elo", "elo_ratings",
           "flywheel", "gold", "gold_score", "harvest", "judge_request", "judge_totals", "outcome", "parse_scores", "policy_contestant",
           "simulated_contestant", "simulated_judge", "spearman", "train_round"]
