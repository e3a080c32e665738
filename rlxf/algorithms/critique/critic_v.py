"""Critic-V, text-only: a critic trained by DPO on critiques ranked by a rule-based reward, and a
reasoner that answers again after reading the critic's critique.

- **VEST-text** (:func:`vest_items`): correct worked solutions of the arithmetic task with ``k``
  steps made wrong (``k = 1, 2``: like the paper's VEST, every item has errors inserted); the gold
  set of corrupted steps is what :func:`~rlxf.tasks.arithmetic.check_steps` flags.
- **Critiques** list the steps they flag (``step 2: wrong``) and end in the shared verdict line
  (:func:`flag_critique`, :func:`flagged_steps`).
- **RBR** (:func:`rbr`) = Jaccard(flagged steps, corrupted steps): 1 for exactly the corrupted steps.
- Candidate critiques of each training item come from noisy critic variants: the SFT critic sampled
  at several temperatures (and, optionally, gold-driven simulated critics that drop, add or move
  flags, :func:`noisy_critic`); the best and worst by RBR form a (chosen, rejected) pair
  (:func:`rank_pairs`), and DPO trains the critic from its SFT start (:func:`train_critic_dpo`).
- **The reasoner** (:class:`LMReasoner`): a frozen tiny arithmetic LM that answers, and answers
  again from the step a rejecting critique names (keeping the steps before it), for up to a few
  rounds or until the critic accepts (RealCritic's :func:`~rlxf.critique.evaluate.closed_loop`).
  Self-refine's critic (:class:`SelfCritic`) is the reasoner re-solving the question itself.

The critic is a tiny character-level GPT-2 fine-tuned on ``critic_prompt`` -> gold critique rows
(:func:`train_critic_sft`), then a copy of it is trained by DPO.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import train_pairs
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.critique.bench import CritiqueItem, gold_verdict
from rlxf.critique.format import CRITIC_CHARS, critic_prompt, parse_critique, render_critique
from rlxf.critique.simulated import split_request
from rlxf.lab.rlvr import sample_responses
from rlxf.labelers.roles import LMRole, SimulatedRole, TextModel
from rlxf.objectives.preference import dpo_loss
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.tasks.arithmetic import OPS, ArithmeticTask, _apply, check_steps, corrupt, parse_problem, solve, split_steps

_FLAG = re.compile(r"^\s*step\s+(\d+)\s*:\s*wrong\s*$", re.I | re.M)
CRITIC_TOKENS = 64  # longest critique: two flags and the verdict line
ANSWER_TOKENS = 48  # longest worked solution


# -- VEST-text ------------------------------------------------------------------------------


def insert_errors(problem: str, k: int, rng: random.Random) -> str:
    """The canonical solution of ``problem`` with ``k`` of its steps made wrong, each continued
    consistently (so each wrong step, and only it, is flagged by ``check_steps``). ``k = 1`` uses the
    task's :func:`~rlxf.tasks.arithmetic.corrupt` (slips, wrong operators, precedence errors, a
    mis-copied answer); ``k >= 2`` makes each chosen working line an arithmetic slip or a wrong
    operator, or the answer line a mis-copy."""
    n_steps = len(parse_problem(problem)[1]) + 1
    if not 0 <= k <= n_steps:
        raise ValueError(f"insert_errors: k must be in 0..{n_steps} for {problem!r}, got {k}")
    if k == 0:
        return solve(problem)
    if k == 1:
        return corrupt(problem, solve(problem), rng)
    wrong = set(rng.sample(range(n_steps), k))
    nums, ops = parse_problem(problem)
    lines = []
    for step in range(n_steps - 1):
        i = ops.index("*") if "*" in ops else 0
        a, op, b = nums[i], ops[i], nums[i + 1]
        value = _apply(a, op, b)
        if step in wrong:
            options = {value + d for d in (-2, -1, 1, 2)} | {_apply(a, o, b) for o in OPS if o != op}
            value = rng.choice(sorted(options - {value}))
        lines.append(f"{a}{op}{b}={value}")
        nums, ops = nums[:i] + [value] + nums[i + 2:], ops[:i] + ops[i + 1:]
    answer = nums[0]
    if n_steps - 1 in wrong:
        answer += rng.choice((-1, 1)) if answer > 0 else 1
    return "\n".join([*lines, f"answer: {answer}"])


def corrupted_steps(question: str, answer: str) -> frozenset[int]:
    """The 1-based steps ``check_steps`` flags as wrong (the gold set RBR compares against)."""
    return frozenset(i + 1 for i, ok in enumerate(check_steps(question, answer)) if not ok)


def vest_items(n: int, seed: int = 0, split: str = "train", ks: tuple[int, ...] = (1, 2), *,
               task_seed: int | None = None, start: int = 0) -> list[CritiqueItem]:
    """``n`` VEST-text items on the distinct ``split`` problems ``start .. start + n - 1`` of
    ``ArithmeticTask(task_seed)`` (``task_seed`` defaults to ``seed``), the error count ``k`` and
    the errors drawn with ``seed``, ``k`` uniformly from ``ks`` per item; ``meta["corrupted"]``
    holds the gold set of wrong steps and ``difficulty`` is ``max(1, k)``. The default has no
    uncorrupted items, as in the paper: with them, Jaccard rewards a critic that accepts everything
    on their share of the data."""
    if not ks:
        raise ValueError("vest_items: ks (the error counts to draw from) must not be empty")
    if start < 0:
        raise ValueError(f"vest_items: start must be >= 0, got {start}")
    rng = random.Random(f"vest|{seed}|{split}")
    items = []
    task = ArithmeticTask(seed if task_seed is None else task_seed)
    for q in task.prompts(start + n, split)[start:]:
        k = rng.choice(ks)
        answer = insert_errors(q, k, rng)
        wrong = corrupted_steps(q, answer)
        v = gold_verdict("arithmetic", q, answer)
        items.append(CritiqueItem("arithmetic", q, answer, bool(v.correct), v.first_wrong_step, max(1, k),
                                  {"corrupted": tuple(sorted(wrong)), "k": k}))
    return items


# -- critiques and the rule-based reward ---------------------------------------------------


def jaccard(a: set[int] | frozenset[int], b: set[int] | frozenset[int]) -> float:
    """|a & b| / |a | b|, and 1 when both are empty (a critique that flags nothing in a correct answer)."""
    union = set(a) | set(b)
    return 1.0 if not union else len(set(a) & set(b)) / len(union)


def flag_critique(flagged) -> str:
    """A critique flagging ``flagged`` steps (1-based): one ``step K: wrong`` line each, then the
    verdict (incorrect at the first flagged step, or correct when none is flagged)."""
    flagged = sorted(set(flagged))
    return render_critique(not flagged, flagged[0] if flagged else None, [f"step {k}: wrong" for k in flagged])


def flagged_steps(text: str) -> frozenset[int]:
    """The steps a critique flags: its ``step K: wrong`` lines, plus the step its verdict names; none
    when its verdict accepts the answer (the verdict is the judgment, so flags under ``verdict:
    correct`` do not count)."""
    verdict = parse_critique(text)
    if verdict.accepts:
        return frozenset()
    extra = {verdict.first_wrong_step} if verdict.first_wrong_step else set()
    return frozenset({int(k) for k in _FLAG.findall(text)} | extra)


def rbr(item: CritiqueItem, critique: str) -> float:
    """The rule-based reward of ``critique`` on ``item``: Jaccard(flagged steps, corrupted steps)."""
    return jaccard(flagged_steps(critique), set(item.meta["corrupted"]))


def gold_critique(item: CritiqueItem) -> str:
    return flag_critique(item.meta["corrupted"])


# -- noisy critics --------------------------------------------------------------------------


def _gold_from_request(request: str) -> str:
    question, answer, _ = split_request("arithmetic", request)
    return flag_critique(corrupted_steps(question, answer))


def _perturb(request: str, right: str, rng: random.Random) -> str:
    """Gold flags with one flag dropped, one false flag added, or one flag moved to an unflagged
    neighbour: always a different set of flags."""
    n_steps = len(split_steps(split_request("arithmetic", request)[1]))
    flags = set(flagged_steps(right))
    free = [k for k in range(1, n_steps + 1) if k not in flags]
    shifts = [(k, j) for k in sorted(flags) for j in (k - 1, k + 1) if j in free]
    move = rng.choice([m for m, ok in (("drop", flags), ("add", free), ("shift", shifts)) if ok])
    if move == "drop":
        flags.discard(rng.choice(sorted(flags)))
    elif move == "add":
        flags.add(rng.choice(free))
    else:
        k, j = rng.choice(shifts)
        flags = (flags - {k}) | {j}
    return flag_critique(flags)


def noisy_critic(error: float, seed: int = 0) -> SimulatedRole:
    """A gold-driven critic on ``critic_prompt`` texts (arithmetic) whose flags are perturbed
    (:func:`_perturb`) with probability ``error``."""
    return SimulatedRole(_gold_from_request, _perturb, error=error, seed=seed)


def critiques_of(critic: TextModel, items: list[CritiqueItem]) -> list[str]:
    return critic.complete([critic_prompt(it.question, it.answer) for it in items])


def rank_pairs(items: list[CritiqueItem], candidates: list[list[str]]) -> list[tuple[str, str, str]]:
    """One (prompt, chosen, rejected) per item whose candidates differ in RBR: the first best and
    the first worst candidate."""
    pairs = []
    for it, cands in zip(items, candidates):
        scores = [rbr(it, c) for c in cands]
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[best] > scores[worst]:
            pairs.append((critic_prompt(it.question, it.answer), cands[best], cands[worst]))
    return pairs


def mean_jaccard(critic: TextModel, items: list[CritiqueItem]) -> np.ndarray:
    """Per-item RBR of ``critic``'s critiques (its mean is the critic's mean Jaccard)."""
    return np.array([rbr(it, c) for it, c in zip(items, critiques_of(critic, items))])


# -- training -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CriticVConfig:
    """The toy run's sizes. ``sft_items``: VEST items whose gold critiques the SFT critic learns;
    ``dpo_items``: fresh items whose candidate critiques are ranked; ``temperatures`` x ``samples``:
    the SFT critic's candidates per item (the noisy critic variants); ``simulated``: error rates of
    gold-driven simulated critics adding one candidate each (none by default: their off-policy
    critiques made DPO worse here, see docs/critique.md); ``task_seed``: the ``ArithmeticTask`` whose
    train problems both stages use (SFT the first ``sft_items``, DPO the next ``dpo_items``), the
    same for every training seed, so that its test split stays held out (keep it equal to the
    reasoner's task seed)."""

    sft_items: int = 6000
    sft: OptimConfig = field(default_factory=lambda: OptimConfig(steps=600, batch_size=32, lr=3e-3,
                                                                 checkpoint_every=10**6))
    dpo_items: int = 800
    temperatures: tuple[float, ...] = (0.7, 1.0, 1.3)
    samples: int = 2
    simulated: tuple[float, ...] = ()
    dpo: OptimConfig = field(default_factory=lambda: OptimConfig(steps=150, batch_size=32, lr=5e-4,
                                                                 checkpoint_every=10**6))
    beta: float = 0.1
    n_layer: int = 2
    n_embd: int = 64
    task_seed: int = 0


def critic_tokenizer():
    return tiny_tokenizer(CRITIC_CHARS, split="chars")


def sft_rows(items: list[CritiqueItem]) -> list[tuple[str, str]]:
    """The critic's SFT rows: (``critic_prompt``, gold critique)."""
    return [(critic_prompt(it.question, it.answer), gold_critique(it)) for it in items]


def train_critic_sft(run: Run, cfg: CriticVConfig, seed: int = 0, quiet: bool = True) -> LanguagePolicy:
    """The SFT critic: a tiny char-level GPT-2 fine-tuned on ``cfg.sft_items`` VEST items' gold critiques."""
    tok = critic_tokenizer()
    policy = LanguagePolicy(tiny_causal_lm(tok, "gpt2", cfg.n_layer, cfg.n_embd, 4, 192, seed=seed), tok)
    rows = sft_rows(vest_items(cfg.sft_items, seed, "train", task_seed=cfg.task_seed))
    train_sft(run, "critic_v_sft", policy, policy.encode([p for p, _ in rows]),
              policy.encode_responses([c for _, c in rows]), cfg.sft, seed, quiet)
    policy.model.eval()
    return policy


def critic_role(policy: LanguagePolicy, temperature: float = 0.0, seed: int = 0) -> LMRole:
    return LMRole(policy, max_new_tokens=CRITIC_TOKENS, temperature=temperature, chat=False, seed=seed)


def reasoner_role(policy: LanguagePolicy, seed: int = 0) -> LMRole:
    return LMRole(policy, max_new_tokens=ANSWER_TOKENS, temperature=0.0, chat=False, seed=seed)


def candidate_critiques(sft: LanguagePolicy, items: list[CritiqueItem], cfg: CriticVConfig,
                        seed: int = 0) -> list[list[str]]:
    """Per item: ``samples`` SFT-critic samples at each temperature, then one critique from each
    simulated critic."""
    critics: list[TextModel] = [critic_role(sft, t, seed + 1000 * j + s) for j, t in enumerate(cfg.temperatures)
                                for s in range(cfg.samples)]
    critics += [noisy_critic(e, seed + j) for j, e in enumerate(cfg.simulated)]
    outs = [critiques_of(c, items) for c in critics]
    return [list(col) for col in zip(*outs)]


def train_critic_dpo(run: Run, sft: LanguagePolicy, cfg: CriticVConfig, seed: int = 0,
                     quiet: bool = True) -> LanguagePolicy:
    """A copy of the SFT model trained by DPO on RBR-ranked pairs of candidate critiques of
    ``cfg.dpo_items`` fresh training items (the train problems after the SFT critic's)."""
    items = vest_items(cfg.dpo_items, seed + 1, "train", task_seed=cfg.task_seed, start=cfg.sft_items)
    ranked = rank_pairs(items, candidate_critiques(sft, items, cfg, seed))
    policy = sft.copy()
    pairs = [(p, c, r) for p, c, r in zip(sft.encode([p for p, _, _ in ranked]),
                                          sft.encode_responses([c for _, c, _ in ranked]),
                                          sft.encode_responses([r for _, _, r in ranked]))]
    policy.model.train()
    train_pairs(run, "critic_v_dpo", policy, sft.reference(), pairs, dpo_loss, {"beta": cfg.beta}, cfg.dpo, seed,
                quiet=quiet)
    policy.model.eval()
    run.log("critic_v_pairs", 0, pairs=len(pairs), items=len(items))
    return policy


# -- the reasoner ---------------------------------------------------------------------------


@dataclass
class _ReasonerLM:
    """A frozen tiny arithmetic LM sampled one answer per prompt at ``temperature``; each call draws
    with a new seed."""

    policy: LanguagePolicy
    temperature: float = 1.0
    seed: int = 0
    calls: int = 0

    def _sample(self, prompts: list[str]) -> list[str]:
        self.calls += 1
        groups = sample_responses(self.policy, prompts, 1, self.seed + self.calls, temperature=self.temperature,
                                  max_new_tokens=ANSWER_TOKENS)
        return [g[0] for g in groups]


@dataclass
class LMReasoner(_ReasonerLM):
    """A frozen tiny arithmetic LM (e.g. :func:`rlxf.lab.rlvr.train_prover`'s) as the reasoner that
    answers again after a critique. It reads ``corrector_prompt`` requests: when the critique
    accepts it keeps the answer; when it rejects at step ``K`` (step 1 when none is named) it keeps
    the answer's first ``K - 1`` steps and samples the rest at ``temperature``. An empty answer
    rejected at step 1 is a first answer, so RealCritic's ``direct_answers`` gives its single shot."""

    def complete(self, requests: list[str]) -> list[str]:
        out, redo = [], []
        for r in requests:
            question, answer, critique = split_request("arithmetic", r)
            verdict = parse_critique(critique or "")
            if verdict.accepts:
                out.append(answer)
                continue
            kept = split_steps(answer)[:(verdict.first_wrong_step or 1) - 1] if answer.strip() else []
            redo.append((len(out), kept))
            out.append(question + "".join(f"{line}\n" for line in kept))
        if redo:
            for (i, kept), text in zip(redo, self._sample([out[i] for i, _ in redo])):
                out[i] = "\n".join([*kept, text])
        return out


@dataclass
class SelfCritic(_ReasonerLM):
    """Self-refine's critic: the reasoner checks an answer by solving the question again itself (one
    sample at ``temperature``) and flags the first step where its own solution differs, or accepts
    when both reach the same final line. It sees no gold."""

    def complete(self, requests: list[str]) -> list[str]:
        asked = [split_request("arithmetic", r)[:2] for r in requests]
        out = []
        for (_, answer), mine in zip(asked, self._sample([q for q, _ in asked])):
            theirs, ours = split_steps(answer), split_steps(mine)
            if theirs[-1] == ours[-1]:
                out.append(flag_critique(()))
                continue
            first = next((k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)) - 1)
            out.append(flag_critique({min(first, len(theirs) - 1) + 1}))
        return out


# -- the lab --------------------------------------------------------------------------------


_LAB_SFT: dict[tuple[str, int], LanguagePolicy] = {}


def _lab_sft_policy(run: Run, seed: int) -> LanguagePolicy:
    """The lab's SFT critic, trained once per run and seed (the DPO critic starts from it)."""
    key = (str(run.dir), seed)
    if key not in _LAB_SFT:
        _LAB_SFT[key] = train_critic_sft(run, CriticVConfig(), seed)
    return _LAB_SFT[key]


def _lab_sft(run: Run, seed: int) -> TextModel:
    return critic_role(_lab_sft_policy(run, seed))


def _lab_dpo(run: Run, seed: int) -> TextModel:
    return critic_role(train_critic_dpo(run, _lab_sft_policy(run, seed), CriticVConfig(), seed))


LAB_CRITICS: dict[str, Callable[[Run, int], TextModel]] = {"critic_v_sft": _lab_sft, "critic_v_dpo": _lab_dpo}
"""Critic-V's critics for the critique lab: name -> builder(run, seed) that trains it and returns an
``LMRole`` reading ``critic_prompt`` texts."""

__all__ = ["LAB_CRITICS", "CriticVConfig", "candidate_critiques", "corrupted_steps", "critic_role", "LMReasoner", "SelfCritic", "critiques_of",
           "flag_critique", "flagged_steps", "gold_critique", "insert_errors", "jaccard", "mean_jaccard",
           "noisy_critic", "rank_pairs", "rbr", "reasoner_role", "sft_rows", "train_critic_sft", "train_critic_dpo",
           "vest_items"]
