"""LLM archetypes in a tensorised epidemic ABM (AgentTorch, "On the limits of agency in agent-based models").

A population of ``n_agents`` on a random contact graph goes through SIR stages, one vectorised torch
step per week. Each week every agent decides whether to isolate; an isolating agent neither infects nor
gets infected that week. Where the decision comes from is what the paper compares, at a fixed budget of
LM queries per week:

- ``archetype``: one prompt per attribute group (age x occupation, 8 groups), asked ``queries_per_group``
  times; the parsed probabilities are averaged and broadcast to every agent of the group (8.4M agents
  from ~400 queries in the paper; 10^4 agents from 24 queries here).
- ``agent``: LLM-as-agent, one prompt per agent, which the budget allows only for a subsample of
  ``subsample`` agents; the subsample is simulated on its own graph and its counts scaled up to N.
- ``heuristic``: a fixed isolation rule at full N, no LM at all.

Infection is drawn with a straight-through Bernoulli (:func:`straight_through_bernoulli`), so the
transmission rate ``beta`` is calibrated by gradient descent through the simulator on the shared loop
(:func:`calibrate`), to the first weeks of observed infections; then each variant forecasts the rest.
The observed data come from a "world" run of the same simulator whose agents decide by the true
behaviour; the mock LM (:func:`mock_llm`, a :class:`~rlxf.labelers.roles.SimulatedRole`) answers
from that true behaviour with noise, and any :class:`~rlxf.labelers.roles.TextModel` can replace it.
"""

from __future__ import annotations

import math
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, replace

import torch

from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.labelers.roles import SimulatedRole, TextModel

AGES = ("18-29", "30-49", "50-64", "65+")
JOBS = ("essential worker", "remote worker")
GROUPS = [(a, j) for a in AGES for j in JOBS]
SUSCEPTIBILITY = (0.8, 1.0, 1.2, 1.5)  # by age group, known to the modeller
# The true behaviour: logit of isolating = age term + occupation term + CASE_SLOPE * log1p(cases per 10k).
AGE_LOGIT = (-4.0, -3.6, -3.0, -2.2)
JOB_LOGIT = (-0.5, 0.5)
CASE_SLOPE = 0.5
PROMPT = ("You are {age} years old and work as a {job} in a city during an epidemic. It is week {week}. "
          "Last week there were {cases:.1f} new infections per 10,000 people. What is the probability that "
          "you stay home and isolate this week? Answer with one number between 0 and 1.")
_PROMPT_RE = re.compile(r"You are (\S+) years old and work as a (.+?) in a city.*?Last week there were "
                        r"([0-9.]+) new infections", re.S)
_NUMBER_RE = re.compile(r"(?<![\d.])(0?\.\d+|[01](?:\.\d+)?)(?![\d.])")


@dataclass
class ABMConfig:
    """The epidemic, the behaviour variants and the calibration. ``beta`` is the true transmission rate
    per infectious, non-isolating contact and week (the world's); calibration starts from ``beta_init``."""

    n_agents: int = 10_000
    degree: int = 10
    weeks: int = 12
    train_weeks: int = 6
    initial_infected: float = 0.01
    recovery: float = 0.5
    beta: float = 2.0
    beta_init: float = 1.0
    queries_per_group: int = 3
    subsample: int = 300
    heuristic_isolation: float = 0.2
    calibration_steps: int = 20
    lr: float = 0.15

    def __post_init__(self):
        for name in ("n_agents", "degree", "weeks", "train_weeks", "queries_per_group", "subsample"):
            if getattr(self, name) < 1:
                raise ValueError(f"ABMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.train_weeks >= self.weeks:
            raise ValueError(f"ABMConfig.train_weeks ({self.train_weeks}) must be < weeks ({self.weeks})")
        for name in ("initial_infected", "recovery", "heuristic_isolation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ABMConfig.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class Population:
    """Agents' groups (index into :data:`GROUPS`) and the undirected contact graph as a symmetric sparse
    matrix (entry i, j = the number of contacts between i and j)."""

    group: torch.Tensor  # (N,) long
    adjacency: torch.Tensor  # (N, N) sparse CSR

    @property
    def n(self) -> int:
        return len(self.group)


def make_population(n: int, degree: int, generator: torch.Generator) -> Population:
    """``n`` agents with uniformly drawn groups on an Erdos-Renyi-like graph of mean degree ``degree``."""
    group = torch.randint(len(GROUPS), (n,), generator=generator)
    pairs = torch.randint(n, (2, n * degree // 2), generator=generator)
    pairs = pairs[:, pairs[0] != pairs[1]]
    both = torch.cat([pairs, pairs.flip(0)], dim=1)
    coo = torch.sparse_coo_tensor(both, torch.ones(both.shape[1]), (n, n), check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return Population(group, coo.to_sparse_csr())


def straight_through_bernoulli(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A 0/1 sample of Bernoulli(p) whose gradient is that of ``p`` (the straight-through estimator)."""
    hard = (torch.rand(p.shape, generator=generator) < p.detach()).to(p.dtype)
    return hard + (p - p.detach())  # exactly 0 or 1 forward


def true_isolation(group: int, cases_per_10k: float) -> float:
    """The world's probability that an agent of ``group`` isolates, given last week's cases."""
    age, job = divmod(group, len(JOBS))
    logit = AGE_LOGIT[age] + JOB_LOGIT[job] + CASE_SLOPE * math.log1p(cases_per_10k)
    return 1.0 / (1.0 + math.exp(-logit))


def render_prompt(group: int, week: int, cases_per_10k: float) -> str:
    age, job = GROUPS[group]
    return PROMPT.format(age=age, job=job, week=week, cases=cases_per_10k)


def parse_probability(reply: str) -> float | None:
    """The first number in [0, 1] in an LM's reply, or None when there is none (never raises)."""
    m = _NUMBER_RE.search(reply)
    return float(m.group(1)) if m else None


def mock_llm(noise: float = 0.5, seed: int = 0) -> SimulatedRole:
    """A simulated LM that reads the group and the case count back from a :func:`render_prompt` prompt and
    answers the true isolation probability with Gaussian noise of sd ``noise`` on its logit (every reply)."""

    def right(request: str) -> str:
        m = _PROMPT_RE.search(request)
        if m is None:
            return "I cannot say."
        group = GROUPS.index((m.group(1), m.group(2)))
        return f"{true_isolation(group, float(m.group(3))):.4f}"

    def wrong(request: str, reply: str, rng) -> str:
        p = parse_probability(reply)
        if p is None:
            return reply
        p = min(max(p, 1e-4), 1 - 1e-4)
        logit = math.log(p / (1 - p)) + rng.gauss(0.0, noise)
        return f"{1.0 / (1.0 + math.exp(-logit)):.4f}"

    return SimulatedRole(right=right, wrong=wrong, error=1.0 if noise > 0 else 0.0, seed=seed)


class Behaviour:
    """Where each week's isolation probabilities come from. ``probs(pop, week, cases)`` returns one per agent;
    ``queries`` counts LM requests made so far."""

    queries = 0

    def probs(self, pop: Population, week: int, cases_per_10k: float) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class TrueBehaviour(Behaviour):
    """The world's agents: each follows :func:`true_isolation` for its group (used to make the observations)."""

    def probs(self, pop, week, cases_per_10k):
        table = torch.tensor([true_isolation(g, cases_per_10k) for g in range(len(GROUPS))])
        return table[pop.group]


@dataclass
class HeuristicBehaviour(Behaviour):
    """A fixed rule: every agent isolates with the same probability, whatever the epidemic does."""

    isolation: float = 0.2

    def probs(self, pop, week, cases_per_10k):
        return torch.full((pop.n,), self.isolation)


def _ask(llm: TextModel, prompts: list[str], fallback: float) -> list[float]:
    """One parsed probability per prompt; an unparsable reply counts as ``fallback``."""
    out = []
    for reply in llm.complete(prompts):
        p = parse_probability(reply)
        out.append(fallback if p is None else p)
    return out


@dataclass
class ArchetypeBehaviour(Behaviour):
    """One prompt per group, asked ``m`` times; the mean parsed probability is broadcast to the group."""

    llm: TextModel
    m: int = 3
    fallback: float = 0.0

    def probs(self, pop, week, cases_per_10k):
        prompts = [render_prompt(g, week, cases_per_10k) for g in range(len(GROUPS)) for _ in range(self.m)]
        self.queries += len(prompts)
        table = torch.tensor(_ask(self.llm, prompts, self.fallback)).view(len(GROUPS), self.m).mean(1)
        return table[pop.group]


@dataclass
class AgentBehaviour(Behaviour):
    """LLM-as-agent: one prompt per agent of the (sub)population it runs on."""

    llm: TextModel
    fallback: float = 0.0

    def probs(self, pop, week, cases_per_10k):
        prompts = [render_prompt(int(g), week, cases_per_10k) for g in pop.group]
        self.queries += len(prompts)
        return torch.tensor(_ask(self.llm, prompts, self.fallback))


def _spmv(adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``adjacency @ x`` on one thread: each row's sum is sequential either way (same bits), and torch's
    threaded sparse product waited ~50 ms per call for its second thread on a busy 2-core machine (0.02 ms alone)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return adjacency @ x
    finally:
        torch.set_num_threads(threads)


class _Spread(torch.autograd.Function):
    """``A @ x`` for a symmetric sparse ``A``, whose gradient is therefore ``A @ grad`` (torch's own
    sparse backward builds the transpose on every call, ten times slower here)."""

    @staticmethod
    def forward(ctx, x, adjacency):
        ctx.adjacency = adjacency
        return _spmv(adjacency, x)

    @staticmethod
    def backward(ctx, grad):
        return _spmv(ctx.adjacency, grad), None


def simulate(pop: Population, behaviour: Behaviour, beta: torch.Tensor, cfg: ABMConfig, weeks: int,
             generator: torch.Generator) -> torch.Tensor:
    """Run ``weeks`` weekly SIR steps; returns new infections per week per 10k people (shape ``(weeks,)``),
    differentiable in ``beta`` through the straight-through infection draws. Counting per 10k is what
    scales a subsample up to the whole population; the agents see last week's figure in their prompts."""
    n = pop.n
    susceptibility = torch.tensor(SUSCEPTIBILITY)[pop.group // len(JOBS)]
    seed = (torch.rand(n, generator=generator) < cfg.initial_infected).float()
    infected, susceptible = seed, 1.0 - seed
    per_10k = 1e4 / n
    last = float(seed.sum()) * per_10k
    weekly = []
    for week in range(weeks):
        out = 1.0 - (torch.rand(n, generator=generator) < behaviour.probs(pop, week, last)).float()
        pressure = _Spread.apply(infected * out, pop.adjacency)
        p = (1.0 - torch.exp(-beta * susceptibility * pressure / cfg.degree)) * susceptible * out
        new = straight_through_bernoulli(p, generator)
        recovered = infected * (torch.rand(n, generator=generator) < cfg.recovery).float()
        susceptible = susceptible - new
        infected = infected + new - recovered
        weekly.append(new.sum() * per_10k)
        last = float(weekly[-1].detach())
    return torch.stack(weekly)


class _Beta(torch.nn.Module):
    def __init__(self, beta: float):
        super().__init__()
        self.log_beta = torch.nn.Parameter(torch.tensor(math.log(beta)))


def calibrate(pop: Population, behaviour: Behaviour, observed: torch.Tensor, cfg: ABMConfig, seed: int,
              run: Run | None = None) -> float:
    """Fit ``beta`` by gradient descent through the simulator (straight-through infections) to the
    ``observed`` weekly infections per 10k, on the shared loop; each step simulates with its own seed."""
    model = _Beta(cfg.beta_init)
    weeks = len(observed)

    def loss_fn(micro, batch):
        g = torch.Generator().manual_seed(seed * 100_003 + micro[0])
        sim = simulate(pop, behaviour, model.log_beta.exp(), cfg, weeks, g)
        loss = ((sim - observed) ** 2).mean() / observed.pow(2).mean().clamp_min(1.0)
        return loss, {"loss": float(loss.detach()), "beta": math.exp(float(model.log_beta.detach()))}

    optim = OptimConfig(steps=cfg.calibration_steps, batch_size=1, lr=cfg.lr, max_grad_norm=0.0,
                        checkpoint_every=0)
    if run is None:
        with tempfile.TemporaryDirectory() as tmp:
            train(Run(tmp, "abm calibration", fresh=True), "abm_calibrate", model, optim, lambda step: [step],
                  loss_fn, quiet=True)
    else:
        train(run, "abm_calibrate", model, optim, lambda step: [step], loss_fn, quiet=True)
    return math.exp(float(model.log_beta.detach()))


VARIANTS = ("archetype", "heuristic", "agent")


@dataclass
class Forecast:
    """One variant's calibrated ``beta``, its forecast and the truth over the forecast weeks, its MSE
    there, the LM queries per simulated week and the wall time of calibration plus forecast."""

    variant: str
    beta: float
    forecast: list[float]
    truth: list[float]
    mse: float
    queries_per_week: float
    seconds: float


def observe(cfg: ABMConfig, seed: int) -> tuple[Population, torch.Tensor]:
    """The world for ``seed``: its population and its weekly infections per 10k over all ``cfg.weeks``."""
    g = torch.Generator().manual_seed(seed)
    pop = make_population(cfg.n_agents, cfg.degree, g)
    with torch.no_grad():
        truth = simulate(pop, TrueBehaviour(), torch.tensor(cfg.beta), cfg, cfg.weeks, g)
    return pop, truth.detach()


def forecast(variant: str, cfg: ABMConfig, seed: int, llm: TextModel | None = None,
             world: tuple[Population, torch.Tensor] | None = None) -> Forecast:
    """Calibrate ``variant`` on the world's first ``train_weeks`` weeks and forecast the remaining ones."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ABM variant {variant!r}; expected one of {VARIANTS}")
    pop, truth = world or observe(cfg, seed)
    llm = llm if llm is not None else mock_llm(seed=seed)
    start = time.perf_counter()
    if variant == "archetype":
        behaviour: Behaviour = ArchetypeBehaviour(llm, cfg.queries_per_group)
    elif variant == "heuristic":
        behaviour = HeuristicBehaviour(cfg.heuristic_isolation)
    else:
        behaviour = AgentBehaviour(llm)
        g = torch.Generator().manual_seed(seed + 7919)
        sample = torch.randperm(pop.n, generator=g)[: cfg.subsample]
        sub = make_population(cfg.subsample, cfg.degree, g)
        pop = Population(pop.group[sample], sub.adjacency)
    beta = calibrate(pop, behaviour, truth[: cfg.train_weeks], cfg, seed)
    with torch.no_grad():
        sim = simulate(pop, behaviour, torch.tensor(beta), cfg, cfg.weeks,
                       torch.Generator().manual_seed(seed + 104_729))
    weeks_simulated = cfg.train_weeks * cfg.calibration_steps + cfg.weeks
    tail, gold = sim[cfg.train_weeks:], truth[cfg.train_weeks:]
    return Forecast(variant, beta, tail.tolist(), gold.tolist(), float(((tail - gold) ** 2).mean()),
                    behaviour.queries / weeks_simulated, time.perf_counter() - start)


def compare(cfg: ABMConfig, seeds: list[int], llm_for_seed=None) -> dict[str, list[Forecast]]:
    """Every variant on every seed's world (paired: one world per seed)."""
    out: dict[str, list[Forecast]] = {v: [] for v in VARIANTS}
    for seed in seeds:
        world = observe(cfg, seed)
        for v in VARIANTS:
            llm = llm_for_seed(seed) if llm_for_seed else None
            out[v].append(forecast(v, cfg, seed, llm, world))
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Archetype vs heuristic vs LLM-as-agent forecasts of a toy epidemic.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--agents", type=int, default=ABMConfig.n_agents)
    ap.add_argument("--steps", type=int, default=ABMConfig.calibration_steps)
    args = ap.parse_args(argv)
    cfg = replace(ABMConfig(), n_agents=args.agents, calibration_steps=args.steps)
    results = compare(cfg, args.seeds)
    print(f"{'variant':<10} {'forecast MSE':>16} {'log MSE':>14} {'queries/week':>13} {'seconds':>8}")
    for v, runs in results.items():
        mse = torch.tensor([r.mse for r in runs])
        logs = mse.log()
        se = lambda x: float(x.std() / math.sqrt(len(x))) if len(x) > 1 else float("nan")  # noqa: E731
        print(f"{v:<10} {float(mse.mean()):>9.1f} ± {se(mse):<5.1f} {float(logs.mean()):>7.2f} ± {se(logs):<4.2f} "
              f"{runs[0].queries_per_week:>13.0f} {sum(r.seconds for r in runs) / len(runs):>8.2f}")


if __name__ == "__main__":
    main()
