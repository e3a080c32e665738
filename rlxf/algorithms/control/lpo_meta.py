"""Meta-learning LPO / TA-LPO drifts with OpenAI-ES, on uniform or regret-prioritised (GROOVE) levels.

The drift's weights ``phi`` start as a distillation of PPO's clip (:func:`distil_clip`: regress the
network on ``ReLU((r - clip(r)) A)`` over sampled ratios, advantages and progress), so ES starts from
PPO's objective. Each generation draws ``pairs`` antithetic perturbations ``phi +- sigma eps`` and one
level per pair; both members of a pair train an agent from the same initial weights on the same level
(:func:`rlxf.algorithms.control.lpo.train_agents`), and the fitness is the agent's final greedy return.
The gradient estimate is ``sum_i (f+_i - f-_i) eps_i / (2 n sigma)`` with the differences divided by
their standard deviation (pairs on hard and easy levels count alike), applied by Adam.

Levels (:data:`LEVEL_RANGES`) are CartPole physics drawn log-uniformly. ``levels = "uniform"`` draws
new ones every generation (LPO, TA-LPO). ``levels = "groove"`` is GROOVE's curriculum (Jackson et al.,
NeurIPS 2023; notes section C8): a level's score is its algorithmic regret, the return of an antagonist
(PPO-clip trained for the agents' lifetime on the level, computed once per level) minus the
learned-objective agents' return there; each pair replays a buffer level with probability
``replay_prob`` (rank prioritisation, temperature 1) once the buffer holds ``pairs`` levels, otherwise
takes a new random level; a new level enters the buffer when it is not full or beats the lowest score.

    .venv/bin/python -m rlxf.algorithms.control.lpo_meta train            # the shipped drifts (see docs/meta_rl.md)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from rlxf.algorithms.control.lpo import InnerConfig, NeuralDrift, clip, drift_net, train_agents
from rlxf.objectives.mirror import clip_drift
from rlxf.policies.control import single_thread

LEVEL_RANGES: dict[str, tuple[float, float]] = {"length": (0.1, 1.5), "force_mag": (3.0, 20.0),
                                                 "masspole": (0.05, 0.5), "masscart": (0.5, 2.0)}
SHIPPED_DIR = Path(__file__).parent / "drifts"


def sample_levels(n: int, gen: torch.Generator, widen: float = 1.0) -> dict[str, Tensor]:
    """``n`` CartPole levels, each parameter log-uniform in its range (``widen`` > 1 stretches every range
    by that factor at both ends in log space: held-out levels outside the training box)."""
    out = {}
    for k, (lo, hi) in LEVEL_RANGES.items():
        llo, lhi = math.log(lo), math.log(hi)
        mid, half = (llo + lhi) / 2, (lhi - llo) / 2 * widen
        out[k] = torch.exp(mid - half + 2 * half * torch.rand(n, generator=gen))
    return out


def held_out_levels(n: int = 16, seed: int = 7_000_000) -> dict[str, dict[str, Tensor]]:
    """Levels no meta-training draws (a seed far from theirs): ``inside`` the training box and ``outside``
    it (every range widened 2x in log space, so most levels have some parameter outside the box)."""
    gen = torch.Generator().manual_seed(seed)
    inside = sample_levels(n, gen)
    wide = sample_levels(4 * n, gen, widen=2.0)
    out_box = torch.zeros(4 * n, dtype=torch.bool)
    for k, (lo, hi) in LEVEL_RANGES.items():
        out_box |= (wide[k] < lo) | (wide[k] > hi)
    keep = out_box.nonzero().squeeze(1)[:n]
    return {"inside": inside, "outside": {k: v[keep] for k, v in wide.items()}}


def distil_clip(hidden: int = 32, temporal: bool = False, steps: int = 1500, eps: float = 0.2, seed: int = 0) -> Tensor:
    """``phi`` of a drift network regressed (MSE, Adam) on PPO's clip drift over ratios ``exp(U(-0.7, 0.7))``,
    advantages ``N(0, 1)`` and progress ``U(0, 1)``: ES's starting point, PPO's objective in LPO's form."""
    gen = torch.Generator().manual_seed(seed)
    net = drift_net(hidden, temporal)
    phi = net.init(1, gen, out_gain=1.0)[0].mul_(0.5).requires_grad_(True)
    opt = torch.optim.Adam([phi], lr=3e-3)
    with single_thread():
        for _ in range(steps):
            r = torch.exp((torch.rand(1, 1024, generator=gen) - 0.5) * 1.4)
            a = torch.randn(1, 1024, generator=gen)
            target = clip_drift(r, a, eps=eps)
            pred = NeuralDrift(phi, hidden, temporal)(r, a, float(torch.rand(1, generator=gen)))
            loss = ((pred - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return phi.detach()


@dataclass
class ESConfig:
    generations: int = 100
    pairs: int = 16  # population 2 * pairs
    sigma: float = 0.03
    lr: float = 0.01
    hidden: int = 32
    temporal: bool = False  # TA-LPO
    levels: str = "uniform"  # "default" (CartPole-v1's physics), "uniform" or "groove"
    replay_prob: float = 0.5
    buffer_size: int = 64
    antagonist_updates: int = 0  # 0: the inner lifetime (the levels' only lifetime here)
    seed: int = 0

    def __post_init__(self):
        if self.levels not in ("default", "uniform", "groove"):
            raise ValueError(f"ESConfig.levels: unknown {self.levels!r}; expected default, uniform or groove")


class LevelBuffer:
    """GROOVE's PLR-style buffer: levels with their regret scores, rank-prioritised replay."""

    def __init__(self, size: int):
        self.size = size
        self.levels: list[dict[str, float]] = []
        self.scores: list[float] = []
        self.antagonist: list[float] = []

    def replay_probs(self) -> Tensor:
        """``P(i) ∝ 1 / rank(i)`` (rank 1 = highest regret; temperature 1)."""
        order = torch.argsort(torch.tensor(self.scores), descending=True)
        ranks = torch.empty(len(self.scores))
        ranks[order] = torch.arange(1, len(self.scores) + 1, dtype=torch.float)
        w = 1.0 / ranks
        return w / w.sum()

    def sample(self, gen: torch.Generator) -> int:
        return int(torch.multinomial(self.replay_probs(), 1, generator=gen))

    def update(self, index: int | None, level: dict[str, float], score: float, antagonist: float) -> None:
        """Rescore a replayed level (``index``), or offer a new one (``index`` None)."""
        if index is not None:
            self.scores[index] = score
        elif len(self.levels) < self.size:
            self.levels.append(level), self.scores.append(score), self.antagonist.append(antagonist)
        else:
            low = min(range(len(self.scores)), key=self.scores.__getitem__)
            if score > self.scores[low]:
                self.levels[low], self.scores[low], self.antagonist[low] = level, score, antagonist


def _stack(levels: list[dict[str, float]]) -> dict[str, Tensor]:
    return {k: torch.tensor([lv[k] for lv in levels]) for k in LEVEL_RANGES}


def antagonist_returns(levels: list[dict[str, float]], inner: InnerConfig, updates: int, seed: int) -> Tensor:
    """Final greedy return of a PPO-clip agent trained ``updates`` updates on each level, ``[len(levels)]``."""
    return train_agents(clip(0.2), len(levels), replace(inner, updates=updates), seed=seed, levels=_stack(levels))["final"]


def meta_train(es: ESConfig, inner: InnerConfig, phi0: Tensor | None = None, progress: bool = True,
               checkpoint=None) -> tuple[Tensor, list[dict]]:
    """Run OpenAI-ES from ``phi0`` (default: the distilled clip); returns the final mean ``phi`` and one
    history row per generation (mean fitness, the pair's mean regret under GROOVE, wall time).
    ``checkpoint(phi, history)`` is called every 10 generations."""
    gen = torch.Generator().manual_seed(es.seed)
    phi = (distil_clip(es.hidden, es.temporal, seed=es.seed) if phi0 is None else phi0.clone()).requires_grad_(True)
    opt = torch.optim.Adam([phi], lr=es.lr)
    buffer = LevelBuffer(es.buffer_size) if es.levels == "groove" else None
    ant_updates = es.antagonist_updates or inner.updates
    history: list[dict] = []
    t0 = time.time()
    for g in tqdm(range(es.generations), desc=f"ES ({'TA-' if es.temporal else ''}LPO, {es.levels} levels)",
                  disable=not progress):
        n = es.pairs
        eps = torch.randn(n, phi.numel(), generator=gen)
        phis = torch.cat([phi.detach() + es.sigma * eps, phi.detach() - es.sigma * eps])
        levels, replayed = _choose_levels(es, buffer, gen)
        stacked = None if levels is None else {k: torch.cat([v, v]) for k, v in _stack(levels).items()}
        seed = int(torch.randint(2**31, (1,), generator=gen))
        out = train_agents(NeuralDrift(phis, es.hidden, es.temporal), 2 * n, inner, seed=seed, levels=stacked, init_pairs=True)
        f = out["final"]
        f_plus, f_minus = f[:n], f[n:]
        opt.zero_grad()
        phi.grad = -es_gradient(eps, f_plus, f_minus, es.sigma)  # Adam minimises; ES ascends the fitness
        opt.step()
        row = {"generation": g, "fitness": float(f.mean()), "seconds": round(time.time() - t0, 1)}
        if buffer is not None:
            row.update(_score_levels(buffer, levels, replayed, (f_plus + f_minus) / 2, inner, ant_updates, seed))
        history.append(row)
        if checkpoint is not None and (g + 1) % 10 == 0:
            checkpoint(phi.detach(), history)
    return phi.detach(), history


def es_gradient(eps: Tensor, f_plus: Tensor, f_minus: Tensor, sigma: float) -> Tensor:
    """Antithetic OpenAI-ES estimate ``sum_i (f+_i - f-_i) eps_i / (2 n sigma)``, the differences divided by
    their standard deviation (so the step does not scale with the task's return units)."""
    diff = f_plus - f_minus
    return (diff / (diff.std() + 1e-8))[:, None].mul(eps).sum(0) / (2 * len(diff) * sigma)


def _choose_levels(es: ESConfig, buffer: LevelBuffer | None, gen: torch.Generator):
    if es.levels == "default":
        return None, None
    fresh = sample_levels(es.pairs, gen)
    levels = [{k: float(v[i]) for k, v in fresh.items()} for i in range(es.pairs)]
    replayed: list[int | None] = [None] * es.pairs
    if buffer is not None and len(buffer.levels) >= es.pairs:
        for i in range(es.pairs):
            if float(torch.rand(1, generator=gen)) < es.replay_prob:
                replayed[i] = buffer.sample(gen)
                levels[i] = buffer.levels[replayed[i]]
    return levels, replayed


def _score_levels(buffer: LevelBuffer, levels, replayed, agent_return: Tensor, inner: InnerConfig,
                  ant_updates: int, seed: int) -> dict:
    """Algorithmic regret of each pair's level; antagonists train only for levels new to the buffer."""
    new = [i for i, r in enumerate(replayed) if r is None]
    ant = dict(zip(new, antagonist_returns([levels[i] for i in new], inner, ant_updates, seed + 1).tolist())) if new else {}
    regrets = []
    for i, r in enumerate(replayed):
        a = buffer.antagonist[r] if r is not None else ant[i]
        regret = a - float(agent_return[i])
        regrets.append(regret)
        buffer.update(r, levels[i], regret, a)
    return {"regret": sum(regrets) / len(regrets), "replayed": sum(r is not None for r in replayed),
            "buffer_mean_score": sum(buffer.scores) / len(buffer.scores)}


# -- shipped drifts ------------------------------------------------------------------------------------
def save_drift(path: Path, phi: Tensor, es: ESConfig, inner: InnerConfig, history: list[dict], command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"phi": phi, "es": asdict(es), "inner": asdict(inner), "command": command}, path)
    path.with_suffix(".json").write_text(json.dumps({"es": asdict(es), "inner": asdict(inner), "command": command,
                                                     "history": history}, indent=1))


def load_drift(name_or_path: str | Path) -> NeuralDrift:
    """A shipped drift by name (``lpo``, ``ta_lpo``, ``groove``) or a file written by :func:`save_drift`."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SHIPPED_DIR / f"{name_or_path}.pt"
    if not path.is_file():
        known = sorted(p.stem for p in SHIPPED_DIR.glob("*.pt"))
        raise FileNotFoundError(f"drift {name_or_path!r}: no file {path}; shipped drifts: {known}")
    blob = torch.load(path)
    return NeuralDrift(blob["phi"], blob["es"]["hidden"], blob["es"]["temporal"])


RECIPES = {  # name -> ES settings of a shipped drift (all meta-trained at InnerConfig() on CartPole levels)
    "lpo": {"levels": "uniform", "temporal": False},
    "ta_lpo": {"levels": "uniform", "temporal": True},
    "groove": {"levels": "groove", "temporal": False},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Meta-train LPO / TA-LPO / GROOVE drifts with OpenAI-ES on torch CartPole levels.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train drifts and save them")
    tr.add_argument("--which", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    tr.add_argument("--generations", type=int, default=ESConfig.generations)
    tr.add_argument("--pairs", type=int, default=ESConfig.pairs)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", default=str(SHIPPED_DIR))
    args = ap.parse_args(argv)
    command = "python -m rlxf.algorithms.control.lpo_meta " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    inner = InnerConfig()
    for name in args.which:
        es = ESConfig(generations=args.generations, pairs=args.pairs, seed=args.seed, **RECIPES[name])
        path = Path(args.out) / f"{name}.pt"
        phi, history = meta_train(es, inner, checkpoint=lambda p, h: save_drift(path, p, es, inner, h, command + " (partial)"))
        save_drift(path, phi, es, inner, history, command)
        k = min(10, len(history))
        print(f"{name}: mean fitness of the first {k} generations {sum(h['fitness'] for h in history[:k]) / k:.1f}, "
              f"of the last {k} {sum(h['fitness'] for h in history[-k:]) / k:.1f}, {history[-1]['seconds']} s")


if __name__ == "__main__":
    main()
