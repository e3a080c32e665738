"""iTool: iterative reinforced fine-tuning for tool use (Zeng et al., "Boosting Tool Use of LLMs via
Iterative Reinforced Fine-Tuning"), on the tool environment (:mod:`rlxf.agents.tasks.tools`).

1. **Easy-to-hard warm-up** (:func:`warmup`): behaviour cloning on gold tool-call episodes in stages,
   each stage adding the next difficulty level (the episode's number of gold calls).
2. **Deficiency mining** (:func:`mine`): the policy plays the training questions; in every episode it
   fails, the first turn whose call differs from the ground-truth call is its *fragment deficiency*
   (mostly a wrong argument value inside an otherwise right call).
3. **Fine-grained pairs**: at that turn, the ground-truth call is preferred to the deficient one; both
   share the conversation before it, so only the diverging fragment differs.
4. **Preference optimisation** (:func:`train_pairs`): SimPO on those pairs (plus the chosen call's NLL,
   ``nll_weight``), on the shared loop; steps 2-4 repeat for ``rounds``.

The baseline (:func:`experiment`) is plain SFT: the same warm-up, then as many further SFT steps on the
gold episodes, of as many rows, as iTool takes preference steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch

from rlxf.agents.episodes import TextEpisode, run_episodes, skill_actor, success_rate
from rlxf.agents.offline import Turns, episode_turns, window
from rlxf.agents.render import agent_tokenizer, context_ids, lm_actor
from rlxf.agents.tasks.tools import make
from rlxf.algorithms.batching import epoch_batches
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.objectives.preference import nll_loss, simpo_loss
from rlxf.policies.control import single_thread
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm

EVAL_SEED = 10**6  # held-out questions start here; training questions are seeds below it


@dataclass
class IToolConfig:
    """Settings of a run (SimPO's beta 2.5 and gamma 0.5 are the paper's; the rest are for a tiny model)."""

    warmup: OptimConfig = field(default_factory=lambda: OptimConfig(steps=300, batch_size=32, lr=3e-3,
                                                                     checkpoint_every=0))
    pref: OptimConfig = field(default_factory=lambda: OptimConfig(steps=40, batch_size=32, lr=1e-3,
                                                                   checkpoint_every=0))
    rounds: int = 2
    beta: float = 2.5
    gamma: float = 0.5
    nll_weight: float = 1.0
    temperature: float = 0.5  # of mining and evaluation
    n_train: int = 400  # gold training episodes
    n_mine: int = 400  # of their questions mined each round
    replay: bool = True  # mix gold turns into every pair step


@dataclass
class StepPair:
    """A fine-grained pair: the shared context before the diverging call, the ground-truth call's ids
    (``chosen``) and the policy's deficient call (``rejected``); ``level`` is the question's difficulty."""

    context: list[int]
    chosen: list[int]
    rejected: list[int]
    level: int


def make_policy(seed: int = 0, n_layer: int = 2, n_embd: int = 64) -> LanguagePolicy:
    """A fresh tiny GPT-2 over the tool environment's words."""
    tok = agent_tokenizer(make().words())
    return LanguagePolicy(tiny_causal_lm(tok, n_layer=n_layer, n_embd=n_embd, max_positions=96, seed=seed), tok)


def gold_episodes(seeds: list[int]) -> list[TextEpisode]:
    """The ground-truth tool-call episodes of the questions ``seeds`` (the synthetic SFT data)."""
    return run_episodes(make, skill_actor(1.0), seeds, "gold")


def gold_turns(policy: LanguagePolicy, episodes: list[TextEpisode]) -> tuple[Turns, list[int]]:
    """The turns of the gold episodes as token ids, and each turn's difficulty (its episode's number of
    gold calls). Encoded once: the warm-up stages and the SFT baseline share them."""
    return episode_turns(policy, episodes), [len(ep) for ep in episodes for _ in range(len(ep))]


def sft(run: Run, stage: str, policy: LanguagePolicy, turns: Turns, keep: list[int], cfg: OptimConfig,
        seed: int) -> None:
    """Behaviour cloning (the NLL of each action given its context) on the turns ``keep``."""
    train_sft(run, stage, policy, [turns.contexts[i] for i in keep], [turns.actions[i] for i in keep], cfg, seed,
              quiet=True)


def warmup(run: Run, policy: LanguagePolicy, turns: Turns, difficulty: list[int], cfg: OptimConfig,
           seed: int = 0) -> None:
    """Easy-to-hard SFT: one stage per difficulty, each on the turns up to that difficulty, the steps
    split evenly."""
    levels = sorted(set(difficulty))
    per = max(1, cfg.steps // len(levels))
    for k, level in enumerate(levels):
        keep = [i for i, d in enumerate(difficulty) if d <= level]
        sft(run, f"itool_warmup{k}", policy, turns, keep, replace(cfg, steps=per), seed)


def first_deficiency(episode: TextEpisode) -> tuple[int, str] | None:
    """Replay ``episode`` and return ``(turn, ground-truth call)`` at its first call that differs from the
    gold plan's, or None when every call matched."""
    env = make()
    env.reset(episode.seed)
    for t, action in enumerate(episode.actions):
        gold = env.expert_action()
        if action.strip() != gold:
            return t, gold
        env.step(action)
    return None


def mine(policy: LanguagePolicy, seeds: list[int], generator: torch.Generator,
         temperature: float = 1.0) -> tuple[list[StepPair], float]:
    """Play the questions ``seeds`` and turn each failure into a :class:`StepPair` at its first deficiency;
    also returns the success rate on them."""
    episodes = run_episodes(make, lm_actor(policy, max_new_tokens=6, temperature=temperature,
                                           generator=generator), seeds, "itool")
    pairs = []
    for ep in episodes:
        if ep.success:
            continue
        found = first_deficiency(ep)
        if found is None:
            continue
        t, gold = found
        pairs.append(StepPair(context_ids(policy, window(ep, t, None)), policy.encode_responses([gold])[0],
                              ep.action_ids[t], level_of(ep.seed)))
    return pairs, success_rate(episodes)[0]


def train_pairs(run: Run, stage: str, policy: LanguagePolicy, pairs: list[StepPair], cfg: OptimConfig,
                beta: float, gamma: float, nll_weight: float, seed: int = 0, replay: Turns | None = None) -> None:
    """SimPO on fine-grained pairs plus ``nll_weight`` times the chosen call's mean NLL, on the shared loop.
    With ``replay``, each step also adds the mean NLL of as many gold turns (so the narrow pair set does not
    make the policy forget the turns it already gets right)."""
    order = epoch_batches(len(pairs), cfg.batch_size, seed)
    gold = epoch_batches(len(replay), cfg.batch_size, seed + 1) if replay is not None else None

    def make_batch(step: int) -> list[tuple]:
        rows = [("pair", i) for i in order(step)]
        return rows + ([("gold", i) for i in gold(step)] if gold else [])

    def loss_fn(micro: list[tuple], batch: list[tuple]):
        n = sum(kind == "pair" for kind, _ in batch)
        rows = [pairs[i] for kind, i in micro if kind == "pair"]
        loss, stats = torch.zeros(()), {}
        if rows:
            ctx = [p.context for p in rows]
            chosen = policy.steps(ctx, [p.chosen for p in rows])
            pref, nll = simpo_loss(chosen, policy.steps(ctx, [p.rejected for p in rows]), beta, gamma), nll_loss(chosen)
            loss = (pref + nll_weight * nll).sum() / n
            stats = {"simpo": pref.sum().item() / n, "nll": nll.sum().item() / n}
        turns = [i for kind, i in micro if kind == "gold"]
        if turns:
            steps = policy.steps([replay.contexts[i] for i in turns], [replay.actions[i] for i in turns])
            loss = loss + nll_loss(steps).sum() / (len(batch) - n)
        return loss, stats

    train(run, stage, policy.model, cfg, make_batch, loss_fn, quiet=True)


def itool(run: Run, policy: LanguagePolicy, cfg: IToolConfig, seed: int = 0, replay: Turns | None = None) -> list[dict]:
    """Rounds of mining and pair training from a warmed-up ``policy`` (``replay``: gold turns mixed into
    every step, see :func:`train_pairs`); one log row per round."""
    log = []
    seeds = list(range(seed * cfg.n_train, seed * cfg.n_train + cfg.n_mine))
    for r in range(cfg.rounds):
        pairs, rate = mine(policy, seeds, torch.Generator().manual_seed(7919 * seed + r), cfg.temperature)
        log.append({"round": r, "train_success": rate, "pairs": len(pairs)})
        if pairs:
            train_pairs(run, f"itool_round{r}", policy, pairs, cfg.pref, cfg.beta, cfg.gamma, cfg.nll_weight,
                        seed=seed * 100 + r, replay=replay)
    return log


def evaluate(policy: LanguagePolicy, n: int = 200, seed: int = 0, temperature: float = 0.5) -> list[TextEpisode]:
    """Play ``n`` held-out questions (seeds from :data:`EVAL_SEED`, the same for every method)."""
    actor = lm_actor(policy, max_new_tokens=6, temperature=temperature,
                     generator=torch.Generator().manual_seed(EVAL_SEED + seed))
    return run_episodes(make, actor, list(range(EVAL_SEED, EVAL_SEED + n)), "eval")


def experiment(run_dir: str, seed: int = 0, cfg: IToolConfig | None = None, n_eval: int = 500) -> dict:
    """The claim's measurement for one seed: a shared easy-to-hard warm-up, then (a) plain SFT for
    ``rounds * pref.steps`` more steps on the gold episodes and (b) iTool's rounds, with as many rows per
    step (an iTool step reads ``pref.batch_size`` pairs and as many gold turns, the SFT step twice as many
    gold turns); both played on the same held-out questions. Returns per-episode success of each."""
    cfg = cfg or IToolConfig()
    run = Run(run_dir, f"itool {seed} {cfg}", fresh=True)
    data = gold_episodes(list(range(seed * cfg.n_train, (seed + 1) * cfg.n_train)))
    with single_thread():
        base = make_policy(seed)
        turns, difficulty = gold_turns(base, data)
        warmup(run, base, turns, difficulty, cfg.warmup, seed)
        more = copy.deepcopy(base)
        rows = cfg.pref.batch_size * (2 if cfg.replay else 1)  # what an iTool step reads: pairs (+ gold turns)
        sft(run, "itool_sft_more", more, turns, list(range(len(turns))),
            replace(cfg.pref, steps=cfg.rounds * cfg.pref.steps, batch_size=rows), seed + 1)
        log = itool(run, base, cfg, seed, turns if cfg.replay else None)
        out = {}
        for name, pol in (("sft", more), ("itool", base)):
            eps = evaluate(pol, n_eval, seed, cfg.temperature)
            out[name] = [float(ep.success) for ep in eps]
        out["level"] = [level_of(ep.seed) for ep in eps]
        out["log"] = log
        return out


def level_of(seed: int) -> int:
    """The difficulty of question ``seed``."""
    env = make()
    env.reset(seed)
    return env.difficulty()


def main(seeds: tuple[int, ...] = (0,), run_root: str = "runs/itool") -> None:
    """Print the claim's figures: success of more SFT and of iTool on 500 held-out questions, per level,
    with the paired difference."""
    from rlxf.agents.perf import paired

    for seed in seeds:
        out = experiment(f"{run_root}/seed{seed}", seed)
        for name in ("sft", "itool"):
            by_level = [[s for s, lv in zip(out[name], out["level"]) if lv == k] for k in range(3)]
            print(f"seed {seed} {name:5} success {sum(out[name]) / len(out[name]):.3f}  by level "
                  + " ".join(f"{sum(b) / max(1, len(b)):.3f}" for b in by_level), flush=True)
        d, se = paired(out["sft"], out["itool"])
        print(f"seed {seed} itool - sft {d:+.3f} (paired se {se:.3f}); rounds {out['log']}", flush=True)


if __name__ == "__main__":
    main()
