"""MultiCritique (Lan et al., 2024) on the arithmetic critique items: critiques from several critic
agents, a meta-critique that keeps the flaws a checker confirms, a critic LM fine-tuned on the
merged critiques, then DPO on pairs of its own critiques ranked by multi-agent revision (MARV).

- An agent's critique is a list of analytical critique units (ACUs), one line per step with the
  step worked again and the agent's judgment (``step 2: 4*2=8 wrong``), then the verdict that
  rejects at the first flagged step (or accepts when it flags none): :func:`flag_critique`. Agents are simulated from gold
  (:func:`critic_agent`), each with its own miss and false-alarm rates and a blind spot (a kind of
  step whose errors it nearly always misses), so different agents see different flaws.
- The meta-critique (:func:`meta_critique`) checks every ACU with a step checker
  (:func:`rlxf.tasks.arithmetic.check_steps`, the oracle standing in for the paper's validating
  model) and merges the valid ones of all agents into one critique per item.
- :func:`train_critic` fine-tunes a tiny character-level critic LM on (critic request, critique)
  rows; :func:`marv_pairs` samples critiques from it, scores each by the share of simulated
  correctors that fix the answer when following it, and pairs the best with the worst;
  :func:`train_marv` runs DPO on those pairs from the SFT critic.

The baseline is the same critic trained on one agent's raw critiques (same rows, same steps).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import train_pairs
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.critique.bench import CritiqueItem, arithmetic_items, gold_verdict
from rlxf.critique.format import CRITIC_CHARS, corrector_prompt, critic_prompt, parse_critique, render_critique
from rlxf.critique.simulated import simulated_corrector, split_request
from rlxf.lab.rlvr import sample_responses
from rlxf.labelers.roles import LMRole, SimulatedRole, TextModel
from rlxf.objectives.preference import dpo_loss
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.logprobs import Pair
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.tasks.arithmetic import check_steps, parse_problem, split_steps

_FLAG = re.compile(r"^\s*step\s+(\d+)\s*:.*\bwrong\s*$", re.M)
Checker = Callable[[str, str], list[bool]]  # (question, answer) -> one validity label per step


# -- critique units --------------------------------------------------------------------------


def recompute(question: str, answer: str) -> list[str]:
    """What a careful critic works out for each step before judging it: a working line's operation
    with its right result (``4*2=8``), or ``answer N`` with N the result the lines before lead to."""
    out, last = [], parse_problem(question)[0][0]
    for step in split_steps(answer):
        m = re.match(r"^(\d+)([+\-*])(\d+)=(-?\d+)$", step.replace(" ", ""))
        if m:
            a, op, b = int(m[1]), m[2], int(m[3])
            out.append(f"{a}{op}{b}={a + b if op == '+' else a - b if op == '-' else a * b}")
            last = int(m[4])
        else:
            out.append(f"answer {last}")
    return out


def flag_critique(notes: list[str], flags) -> str:
    """A critique made of ACUs: one line per step, ``step K: <note> ok`` or ``... wrong`` for the
    flagged steps, then the verdict that rejects at the first flagged step, or accepts when none is.
    The notes are the steps worked out again (:func:`recompute`), so a critic writes the right value
    just before judging the step."""
    flags = sorted({k for k in flags if 1 <= k <= len(notes)})
    lines = [f"step {k}: {note} {'wrong' if k in flags else 'ok'}" for k, note in enumerate(notes, 1)]
    return render_critique(not flags, flags[0] if flags else None, lines)


def flagged_steps(critique: str) -> list[int]:
    """The steps a critique's ACUs flag (``step K: wrong`` lines), ascending, without repeats."""
    return sorted({int(k) for k in _FLAG.findall(critique) if int(k) >= 1})


# -- the agents ------------------------------------------------------------------------------


def step_kind(step: str) -> str:
    """What a step does: ``"answer"`` for the answer line, else its operator (``"*"``, ``"+"``, ``"-"``)."""
    text = step.replace(" ", "")
    if text.startswith("answer"):
        return "answer"
    return next((c for c in text[1:] if c in "+-*"), "?")


@dataclass(frozen=True)
class AgentProfile:
    """How a simulated critic agent flags steps: a wrong step goes unflagged with probability ``miss``
    (``blind_miss`` when its kind, see :func:`step_kind`, is in ``blind_spot``); a right step is
    flagged with probability ``false_alarm``."""

    miss: float = 0.15
    false_alarm: float = 0.08
    blind_spot: tuple[str, ...] = ()
    blind_miss: float = 0.9

    def __post_init__(self):
        for name in ("miss", "false_alarm", "blind_miss"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AgentProfile: {name} must be in [0, 1], got {getattr(self, name)}")
        if unknown := set(self.blind_spot) - {"answer", "*", "+", "-"}:
            raise ValueError(f"AgentProfile: blind_spot kinds must be among 'answer', '*', '+', '-', got {unknown}")


AGENTS = {
    "times_blind": AgentProfile(blind_spot=("*",)),
    "sums_blind": AgentProfile(blind_spot=("+", "-")),
    "answer_blind": AgentProfile(blind_spot=("answer",)),
}
"""The default panel: three agents of equal skill, each nearly blind to one kind of error."""


def noisy_flags(profile: AgentProfile, labels: list[bool], steps: list[str], rng: random.Random) -> list[int]:
    """The steps an agent with ``profile`` flags, given each step's validity ``labels``."""
    flags = []
    for k, (ok, step) in enumerate(zip(labels, steps), 1):
        miss = profile.blind_miss if step_kind(step) in profile.blind_spot else profile.miss
        if rng.random() < (profile.false_alarm if ok else 1.0 - miss):
            flags.append(k)
    return flags


def critic_agent(profile: AgentProfile, seed: int = 0, checker: Checker = check_steps) -> SimulatedRole:
    """A simulated critic agent on critic requests: its ``right`` reply flags exactly the steps
    ``checker`` finds wrong; every reply is that one passed through the profile's per-step misses
    and false alarms (``error=1``; a profile with no misses and no false alarms is the checker)."""

    def gold(request: str) -> str:
        q, a, _ = split_request("arithmetic", request)
        return flag_critique(recompute(q, a), [k for k, ok in enumerate(checker(q, a), 1) if not ok])

    def noisy(request: str, _reply: str, rng: random.Random) -> str:
        q, a, _ = split_request("arithmetic", request)
        return flag_critique(recompute(q, a), noisy_flags(profile, checker(q, a), split_steps(a), rng))

    return SimulatedRole(right=gold, wrong=noisy, error=1.0, seed=seed)


def gather(agents: dict[str, TextModel], items: list[CritiqueItem]) -> dict[str, list[str]]:
    """Every agent's critique of every item (one batch per agent)."""
    requests = [critic_prompt(it.question, it.answer) for it in items]
    return {name: agent.complete(requests) for name, agent in agents.items()}


# -- meta-critique ---------------------------------------------------------------------------


def valid_units(question: str, answer: str, critique: str, checker: Checker = check_steps) -> list[int]:
    """The ACUs of ``critique`` that ``checker`` confirms: flagged steps that exist and are wrong."""
    labels = checker(question, answer)
    return [k for k in flagged_steps(critique) if k <= len(labels) and not labels[k - 1]]


def meta_critique(question: str, answer: str, critiques: list[str], checker: Checker = check_steps) -> str:
    """One merged critique: the union of every critique's confirmed ACUs (:func:`flag_critique`)."""
    return flag_critique(recompute(question, answer),
                         [k for c in critiques for k in valid_units(question, answer, c, checker)])


def merged_critiques(gathered: dict[str, list[str]], items: list[CritiqueItem],
                     checker: Checker = check_steps) -> list[str]:
    """:func:`meta_critique` of each item over all agents' critiques."""
    return [meta_critique(it.question, it.answer, [c[i] for c in gathered.values()], checker)
            for i, it in enumerate(items)]


def unit_precision(gathered: dict[str, list[str]], items: list[CritiqueItem], checker: Checker = check_steps) -> dict:
    """Per agent, the share of its ACUs that the checker confirms (None when it flagged nothing)."""
    out = {}
    for name, critiques in gathered.items():
        flags = sum(len(flagged_steps(c)) for c in critiques)
        valid = sum(len(valid_units(it.question, it.answer, c, checker)) for it, c in zip(items, critiques))
        out[name] = valid / flags if flags else None
    return out


# -- the critic LM ---------------------------------------------------------------------------


def new_critic(seed: int = 0, n_layer: int = 2, n_embd: int = 64, max_positions: int = 192) -> LanguagePolicy:
    """A freshly initialised character-level critic LM over :data:`CRITIC_CHARS`."""
    tok = tiny_tokenizer(CRITIC_CHARS, split="chars")
    return LanguagePolicy(tiny_causal_lm(tok, "gpt2", n_layer, n_embd, 4, max_positions, seed=seed), tok)


def train_critic(run: Run, stage: str, items: list[CritiqueItem], critiques: list[str], cfg: OptimConfig,
                 seed: int = 0, quiet: bool = True) -> LanguagePolicy:
    """SFT a new critic LM on one critique per item (request :func:`critic_prompt`, target the critique)."""
    if len(items) != len(critiques):
        raise ValueError(f"{stage}: {len(items)} items but {len(critiques)} critiques")
    policy = new_critic(seed)
    prompts = policy.encode([critic_prompt(it.question, it.answer) for it in items])
    train_sft(run, stage, policy, prompts, policy.encode_responses(critiques), cfg, seed, quiet)
    return policy


def as_role(policy: LanguagePolicy, max_new_tokens: int = 96, seed: int = 0) -> LMRole:
    """The critic LM as a greedy text model on critic requests."""
    return LMRole(policy, max_new_tokens=max_new_tokens, chat=False, seed=seed)


# -- MARV: critiques ranked by the revisions they lead to ------------------------------------


def marv_score(item: CritiqueItem, critiques: list[str], correctors: list[TextModel]) -> list[float]:
    """For each critique, the share of ``correctors`` whose revision of the answer, following it, is
    gold-correct (multi-agent revision validation)."""
    requests = [corrector_prompt(item.question, item.answer, c) for c in critiques]
    fixed = [[bool(gold_verdict(item.task, item.question, r, item.meta).correct) for r in corr.complete(requests)]
             for corr in correctors]
    return [sum(col) / len(correctors) for col in zip(*fixed)]


def best_and_worst(scores: list[float]) -> tuple[int, int] | None:
    """The indices of the first highest and the first lowest score, or None when all are equal."""
    best, worst = max(range(len(scores)), key=scores.__getitem__), min(range(len(scores)), key=scores.__getitem__)
    return (best, worst) if scores[best] > scores[worst] else None


def preferred(items: list[CritiqueItem], groups: list[list[str]], correctors: list[TextModel]) -> list[tuple]:
    """``(item, chosen, rejected)`` per item whose critiques (one group per item) differ in
    :func:`marv_score`: the highest scored chosen, the lowest rejected."""
    out = []
    for it, texts in zip(items, groups):
        if (pick := best_and_worst(marv_score(it, texts, correctors))) is not None:
            out.append((it, texts[pick[0]], texts[pick[1]]))
    return out


def marv_pairs(policy: LanguagePolicy, items: list[CritiqueItem], correctors: list[TextModel], k: int = 4,
               seed: int = 0, temperature: float = 1.0, max_new_tokens: int = 96) -> tuple[list[Pair], dict]:
    """DPO pairs from ``k`` critiques sampled from ``policy`` per item (:func:`preferred`), as token
    ids; also returns the counts of items and pairs."""
    groups = sample_responses(policy, [critic_prompt(it.question, it.answer) for it in items], k, seed,
                              temperature=temperature, max_new_tokens=max_new_tokens)
    pairs: list[Pair] = []
    for it, chosen, rejected in preferred(items, groups, correctors):
        prompt = policy.encode([critic_prompt(it.question, it.answer)])[0]
        pairs.append((prompt, *policy.encode_responses([chosen, rejected])))
    return pairs, {"items": len(items), "pairs": len(pairs)}


def train_marv(run: Run, stage: str, sft: LanguagePolicy, pairs: list[Pair], cfg: OptimConfig, beta: float = 0.1,
               seed: int = 0, quiet: bool = True) -> LanguagePolicy:
    """DPO from the SFT critic (its frozen copy is the reference) on MARV pairs; returns the new critic."""
    policy = sft.copy()
    train_pairs(run, stage, policy, sft, pairs, dpo_loss, {"beta": beta}, cfg, seed, quiet=quiet)
    return policy


# -- the whole method and its baseline -------------------------------------------------------


@dataclass
class MultiCritiqueConfig:
    """Sizes of one MultiCritique run on arithmetic items (half of them wrong)."""

    n_train: int = 3000
    difficulties: tuple[int, ...] = (1, 2)
    agents: dict[str, AgentProfile] = field(default_factory=lambda: dict(AGENTS))
    sft: OptimConfig = field(default_factory=lambda: OptimConfig(steps=400, batch_size=32, lr=3e-3,
                                                                 warmup_steps=20, checkpoint_every=10**6))
    dpo: OptimConfig = field(default_factory=lambda: OptimConfig(steps=50, batch_size=32, lr=3e-4,
                                                                 checkpoint_every=10**6))
    dpo_items: int = 200
    samples: int = 4
    beta: float = 0.1
    corrector_skills: tuple[float, ...] = (0.9, 0.8, 0.7)


def training_data(cfg: MultiCritiqueConfig, seed: int = 0) -> tuple[list[CritiqueItem], dict[str, list[str]], list[str]]:
    """The training items, every agent's raw critiques of them and the merged meta-critiques."""
    items = arithmetic_items(cfg.n_train, seed=1000 + seed, difficulties=cfg.difficulties)
    agents = {name: critic_agent(p, seed=hash_seed(name, seed)) for name, p in cfg.agents.items()}
    gathered = gather(agents, items)
    return items, gathered, merged_critiques(gathered, items)


def hash_seed(name: str, seed: int) -> int:
    """A stable per-agent seed."""
    return sum(ord(c) * 31 ** i for i, c in enumerate(name)) % 10**6 + 7919 * seed


def raw_accuracy(items: list[CritiqueItem], critiques: list[str]) -> float:
    """Share of critiques whose verdict matches gold (their own, untrained: a data-quality figure)."""
    return sum(parse_critique(c).accepts == it.correct for it, c in zip(items, critiques)) / len(items)


def best_single_agent(items: list[CritiqueItem], gathered: dict[str, list[str]]) -> str:
    """The agent whose raw critiques match gold most often: the strongest single-agent baseline."""
    return max(gathered, key=lambda name: raw_accuracy(items, gathered[name]))


def marv_critic(run: Run, stage: str, sft: LanguagePolicy, cfg: MultiCritiqueConfig, seed: int = 0,
                quiet: bool = True) -> tuple[LanguagePolicy, dict]:
    """The RL stage: MARV pairs from the SFT critic's samples on fresh items (simulated correctors of
    ``cfg.corrector_skills``), then DPO. Returns the DPO critic and the pair counts (when no item's
    samples differ in score there is nothing to learn from: the SFT critic comes back, copied)."""
    items = arithmetic_items(cfg.dpo_items, seed=2000 + seed, difficulties=cfg.difficulties)
    correctors = [simulated_corrector(s, seed=seed * 10 + i) for i, s in enumerate(cfg.corrector_skills)]
    pairs, counts = marv_pairs(sft, items, correctors, cfg.samples, seed)
    if not pairs:
        return sft.copy(), counts
    return train_marv(run, stage, sft, pairs, cfg.dpo, cfg.beta, seed, quiet), counts


KINDS = ("multicritique_sft", "single_agent_sft", "multicritique_dpo")


def build_critic(run: Run, kind: str, cfg: MultiCritiqueConfig, seed: int = 0, quiet: bool = True) -> LanguagePolicy:
    """One critic LM: ``multicritique_sft`` (SFT on the merged meta-critiques), ``single_agent_sft``
    (SFT on the raw critiques of :func:`best_single_agent`, same items and steps) or
    ``multicritique_dpo`` (the first, then :func:`marv_critic`). Stages are named ``<kind>_s<seed>``."""
    if kind not in KINDS:
        raise ValueError(f"multicritique: critic kind must be one of {KINDS}, got {kind!r}")
    items, gathered, merged = training_data(cfg, seed)
    targets = gathered[best_single_agent(items, gathered)] if kind == "single_agent_sft" else merged
    policy = train_critic(run, f"{kind}_s{seed}", items, targets, cfg.sft, seed, quiet)
    if kind == "multicritique_dpo":
        policy, _ = marv_critic(run, f"{kind}_s{seed}_marv", policy, cfg, seed, quiet)
    return policy


LAB_CONFIG = MultiCritiqueConfig()
"""The lab's sizes (each critic trains in about 40 s on a quiet 2-core machine)."""


def lab_critic(kind: str, cfg: MultiCritiqueConfig = LAB_CONFIG) -> Callable[[Run, int], TextModel]:
    """A lab builder: ``(run, seed) ->`` the trained critic of ``kind`` as a greedy text model (room for
    the notes of a 3-operator answer: up to 128 characters)."""
    return lambda run, seed: as_role(build_critic(run, kind, cfg, seed), max_new_tokens=128)


LAB_CRITICS: dict[str, Callable[[Run, int], TextModel]] = {kind: lab_critic(kind) for kind in KINDS}
"""The critics this method gives the critique lab, by name."""


def held_out(cfg: MultiCritiqueConfig, trained: list[CritiqueItem], n: int = 600, seed: int = 7,
             pool: int = 1500) -> list[CritiqueItem]:
    """The first ``n`` of ``pool`` items of ``cfg.difficulties`` whose (question, answer) pair is not
    in ``trained``."""
    seen = {(it.question, it.answer) for it in trained}
    out = [it for it in arithmetic_items(pool, seed=seed, difficulties=cfg.difficulties)
           if (it.question, it.answer) not in seen][:n]
    if len(out) < n:
        raise ValueError(f"held_out: only {len(out)} unseen items of difficulties {cfg.difficulties}, asked {n}")
    return out


def measure(run: Run, cfg: MultiCritiqueConfig | None = None, seed: int = 1, test_seed: int = 7,
            n_test: int = 600) -> dict[str, dict]:
    """The guide's table: the merged and single-agent SFT critics and the merged critic after MARV DPO,
    each scored on the same held-out items (:func:`rlxf.critique.evaluate.score_verdicts`, plus
    ``hits``, per-item verdict agreement, for paired comparisons)."""
    from rlxf.critique.evaluate import critique_items, score_verdicts

    cfg = cfg or MultiCritiqueConfig()
    items, gathered, merged = training_data(cfg, seed)
    test = held_out(cfg, items, n_test, test_seed)
    sft = train_critic(run, "multicritique_sft", items, merged, cfg.sft, seed)
    single = train_critic(run, "single_agent_sft", items, gathered[best_single_agent(items, gathered)], cfg.sft, seed)
    dpo, counts = marv_critic(run, "multicritique_dpo", sft, cfg, seed)
    out = {}
    for name, policy in (("multicritique_sft", sft), ("single_agent_sft", single), ("multicritique_dpo", dpo)):
        verdicts = critique_items(as_role(policy), test)
        out[name] = {**score_verdicts(test, verdicts), "hits": [v.accepts == it.correct for v, it in zip(verdicts, test)]}
    out["multicritique_dpo"]["pairs"] = counts["pairs"]
    return out


if __name__ == "__main__":
    import argparse
    import tempfile
    from dataclasses import replace

    from rlxf.critique.evaluate import paired_se

    parser = argparse.ArgumentParser(description="MultiCritique's table: merged vs single-agent critics, and DPO")
    parser.add_argument("run_dir", nargs="?", default=None, help="where the run goes (default: a temporary folder)")
    parser.add_argument("--sft-steps", type=int, default=MultiCritiqueConfig().sft.steps, help="SFT steps per critic")
    args = parser.parse_args()
    base = MultiCritiqueConfig()
    cfg = replace(base, sft=replace(base.sft, steps=args.sft_steps))
    table = measure(Run(args.run_dir or tempfile.mkdtemp(), f"multicritique guide {args.sft_steps}", fresh=True), cfg)
    print(f"{'critic':<18} {'accuracy':>8} {'accept right':>12} {'reject wrong':>12} {'localisation':>12}")
    for name, s in table.items():
        print(f"{name:<18} {s['accuracy']:8.3f} {s['accept_right']:12.3f} {s['reject_wrong']:12.3f} "
              f"{s['localisation']:12.3f}")
    hits = {name: s["hits"] for name, s in table.items()}
    for label, a, b in (("merged - single", "multicritique_sft", "single_agent_sft"),
                        ("dpo - sft", "multicritique_dpo", "multicritique_sft")):
        print(f"{label:<18} {table[a]['accuracy'] - table[b]['accuracy']:+.3f} "
              f"(paired SE {paired_se(hits[a], hits[b]):.3f})")
    print(f"MARV pairs: {table['multicritique_dpo']['pairs']}")
