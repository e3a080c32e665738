"""ReAd: an LM planner for several agents whose plans a learned advantage critic scores and sends back for refinement.

Zhang et al., "Towards Efficient LLM Grounding for Embodied Multi-Agent Collaboration" (ReAd, 2024). An LM
proposes each agent's next action. Instead of executing a plan to find out whether it was good (the
baseline: plain sequential planning, every proposal executed), a critic scores it and a plan whose
advantage is below ``eps`` goes back to the LM with its score, to be refined before anything is executed.

- The critic is a sequential Q-function on joint-action prefixes, ``Q(s, a^1..a^k)`` for k = 0..n
  (``k = 0`` is V(s)), fit by Monte Carlo regression (:func:`prefix_regression_loss`) on episodes the
  planner played alone, on the shared optimisation loop.
- ReAd-S scores agent k's proposal by its local advantage ``Q(s, a^1..a^k) - Q(s, a^1..a^(k-1))``, agent by
  agent; ReAd-J scores the joint plan by ``Q(s, a) - V(s)`` and re-asks for the whole plan.
- Refinement stops at ``max_refine`` rounds; the best-scored proposal is then executed.

The task is a two-agent cooperative grid (:class:`TwoKeys`): each agent must pick up its own key, and the
episode succeeds when both agents stand on the door holding their keys. The planner is any
:class:`~rlxf.labelers.roles.TextModel`; tests use :func:`simulated_planner`, which proposes the optimal
move with probability ``skill`` and otherwise a random move it has not been told is bad. Differences from
the paper: a toy grid instead of RoCoBench/Overcooked, a simulated planner, and MC regression targets
(the paper's choice of target is not pinned).
"""

from __future__ import annotations

import random
import re
import tempfile
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.labelers.roles import SimulatedRole, TextModel
from rlxf.policies.control import mlp, single_thread

MOVES = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0), "stay": (0, 0)}
ACTIONS = tuple(MOVES)
N_AGENTS = 2


class TwoKeys:
    """``size`` x ``size`` grid, two agents, a key per agent and one door; reward ``key_reward`` when an
    agent picks up its key, 1 (terminated) when both agents are on the door with their keys, 0 otherwise;
    truncated after ``max_steps`` joint steps."""

    def __init__(self, size: int = 5, max_steps: int = 20, key_reward: float = 0.5):
        if size < 3 or max_steps < 1:
            raise ValueError(f"two_keys: size must be >= 3 and max_steps >= 1, got {size}, {max_steps}")
        self.size, self.max_steps, self.key_reward = size, max_steps, key_reward
        self.pos: list[tuple[int, int]] = []
        self.keys: list[tuple[int, int]] = []
        self.has = [False] * N_AGENTS
        self.door = (size // 2, size // 2)
        self.t = 0

    def reset(self, seed: int) -> None:
        rng = random.Random(seed)
        cells = [(x, y) for x in range(self.size) for y in range(self.size) if (x, y) != self.door]
        picks = rng.sample(cells, 2 * N_AGENTS)
        self.pos, self.keys = picks[:N_AGENTS], picks[N_AGENTS:]
        self.has = [False] * N_AGENTS
        self.t = 0

    def step(self, actions: list[str]) -> tuple[float, bool, bool]:
        """Apply one move per agent (a move off the grid stays put); returns (reward, terminated, truncated)."""
        if len(actions) != N_AGENTS or any(a not in MOVES for a in actions):
            raise ValueError(f"two_keys: expected {N_AGENTS} actions from {ACTIONS}, got {actions}")
        reward = 0.0
        for i, a in enumerate(actions):
            dx, dy = MOVES[a]
            x, y = self.pos[i][0] + dx, self.pos[i][1] + dy
            if 0 <= x < self.size and 0 <= y < self.size:
                self.pos[i] = (x, y)
            if self.pos[i] == self.keys[i] and not self.has[i]:
                self.has[i] = True
                reward += self.key_reward
        self.t += 1
        done = self.success()
        return reward + float(done), done, not done and self.t >= self.max_steps

    def success(self) -> bool:
        return all(self.has) and all(p == self.door for p in self.pos)

    def expert(self, i: int) -> str:
        """Agent ``i``'s optimal move: toward its key, then toward the door, then stay."""
        tx, ty = self.door if self.has[i] else self.keys[i]
        x, y = self.pos[i]
        if x != tx:
            return "right" if tx > x else "left"
        if y != ty:
            return "down" if ty > y else "up"
        return "stay"

    def features(self) -> Tensor:
        """Per agent: its position, the offsets to its key and to the door (scaled by the grid size) and its
        key flag: the critic's view of the state."""
        out: list[float] = []
        for (x, y), (kx, ky), has in zip(self.pos, self.keys, self.has):
            out += [x, y, kx - x, ky - y, self.door[0] - x, self.door[1] - y]
            out = out[:-6] + [v / (self.size - 1) for v in out[-6:]] + [float(has)]
        return torch.tensor(out)

    def describe(self) -> str:
        parts = [f"agent {i} at {p[0]} {p[1]} key {k[0]} {k[1]} {'holding' if h else 'missing'}"
                 for i, (p, k, h) in enumerate(zip(self.pos, self.keys, self.has))]
        return f"door {self.door[0]} {self.door[1]}; " + "; ".join(parts)


# -- the planner --------------------------------------------------------------------------------------
def planner_prompt(env: TwoKeys, agent: int, prefix: list[str], feedback: list[tuple[str, float]]) -> str:
    """What the planner reads: the state, whose move it is, earlier agents' moves, and rejected moves."""
    lines = [f"Grid: {env.describe()}.", f"Plan the move of agent {agent}."]
    if prefix:
        lines.append("Moves already chosen: " + ", ".join(f"agent {i} {a}" for i, a in enumerate(prefix)) + ".")
    for move, score in feedback:
        lines.append(f"Rejected: {move} (advantage {score:+.3f}).")
    lines.append(f"Answer with one of: {', '.join(ACTIONS)}.")
    return "\n".join(lines)


def parse_move(reply: str) -> str | None:
    words = re.findall(r"[a-z]+", reply.lower())
    return next((w for w in words if w in MOVES), None)


def simulated_planner(skill: float = 0.5, seed: int = 0) -> SimulatedRole:
    """Proposes the optimal move with probability ``skill``, else a uniformly random move among those not
    rejected in the prompt (never the optimal one by mistake, so ``skill`` is the planner's quality)."""
    def right(prompt: str) -> str:
        env = _env_from_prompt(prompt)
        return env.expert(int(re.search(r"Plan the move of agent (\d+)", prompt).group(1)))

    def wrong(prompt: str, best: str, rng: random.Random) -> str:
        rejected = set(re.findall(r"Rejected: (\w+)", prompt))
        options = [a for a in ACTIONS if a != best and a not in rejected] or [a for a in ACTIONS if a != best]
        return rng.choice(options)

    return SimulatedRole(right, wrong, error=1.0 - skill, seed=seed)


def _env_from_prompt(prompt: str) -> TwoKeys:
    """Rebuild the grid a prompt describes (what a simulated planner reads instead of the real env)."""
    nums = [int(n) for n in re.findall(r"door (\d+) (\d+)", prompt)[0]]
    env = TwoKeys(size=2 * nums[0] + 1)
    env.door = (nums[0], nums[1])
    agents = re.findall(r"agent \d+ at (\d+) (\d+) key (\d+) (\d+) (holding|missing)", prompt)
    env.pos = [(int(a[0]), int(a[1])) for a in agents]
    env.keys = [(int(a[2]), int(a[3])) for a in agents]
    env.has = [a[4] == "holding" for a in agents]
    return env


def propose(planner: TextModel, env: TwoKeys, agent: int, prefix: list[str],
            feedback: list[tuple[str, float]]) -> str:
    """One planner query; an unparseable reply means ``stay``."""
    return parse_move(planner.complete([planner_prompt(env, agent, prefix, feedback)])[0]) or "stay"


# -- the critic ---------------------------------------------------------------------------------------
class PrefixCritic(nn.Module):
    """``Q(s, a^1..a^k)``: an MLP on the state features and one slot per agent (a one-hot move, all zero
    while that agent's move is not yet chosen)."""

    def __init__(self, state_dim: int, hidden: int = 64):
        super().__init__()
        self.net = mlp(state_dim + N_AGENTS * len(ACTIONS), 1, hidden, 1.0)

    @staticmethod
    def encode(prefixes: list[list[str]]) -> Tensor:
        x = torch.zeros(len(prefixes), N_AGENTS * len(ACTIONS))
        for r, prefix in enumerate(prefixes):
            for i, a in enumerate(prefix):
                x[r, i * len(ACTIONS) + ACTIONS.index(a)] = 1.0
        return x

    def forward(self, states: Tensor, prefixes: list[list[str]]) -> Tensor:
        return self.net(torch.cat([states, self.encode(prefixes)], dim=1)).squeeze(-1)


def prefix_regression_loss(critic: PrefixCritic, states: Tensor, joint: list[list[str]], returns: Tensor) -> Tensor:
    """Monte Carlo regression of every prefix: mean over rows and k = 0..n of ``(Q(s, a^1..a^k) - G)^2``."""
    losses = [(critic(states, [a[:k] for a in joint]) - returns).pow(2) for k in range(N_AGENTS + 1)]
    return torch.stack(losses).mean()


@dataclass
class ReAdConfig:
    size: int = 5
    max_steps: int = 20
    key_reward: float = 0.5
    skill: float = 0.5  # the planner's chance of the optimal move
    gamma: float = 0.8
    eps: float = 0.0  # accept a proposal whose advantage is at least this
    max_refine: int = 3  # re-asks per agent (ReAd-S) or per plan (ReAd-J) before executing the best seen
    data_episodes: int = 400  # planner-alone episodes the critic is fit on
    critic_steps: int = 1500
    batch_size: int = 256
    lr: float = 3e-3
    hidden: int = 64
    seed: int = 0


@dataclass
class Outcome:
    """One evaluation episode: success, joint env steps taken, planner queries asked."""

    success: bool
    steps: int
    queries: int


def play(env: TwoKeys, seed: int, planner: TextModel, mode: str = "plain", critic: PrefixCritic | None = None,
         cfg: ReAdConfig = ReAdConfig(), record: list | None = None) -> Outcome:
    """One episode. ``mode``: ``plain`` (every proposal executed), ``read_s`` or ``read_j`` (proposals
    scored by ``critic`` and refined below ``eps``). ``record`` collects (state, joint action, reward) rows."""
    if mode not in ("plain", "read_s", "read_j"):
        raise ValueError(f"read: unknown mode {mode!r}; expected plain, read_s or read_j")
    if mode != "plain" and critic is None:
        raise ValueError(f"read: mode {mode!r} needs a critic")
    env.reset(seed)
    start = getattr(planner, "requests", 0)
    while True:
        state = env.features()
        if mode == "read_s":
            joint = _refine_sequential(env, state, planner, critic, cfg)
        elif mode == "read_j":
            joint = _refine_joint(env, state, planner, critic, cfg)
        else:
            joint = _plan(env, planner, [])
        reward, term, trunc = env.step(joint)
        if record is not None:
            record.append((state, joint, reward))
        if term or trunc:
            return Outcome(term, env.t, getattr(planner, "requests", 0) - start)


def _plan(env: TwoKeys, planner: TextModel, feedback: list[tuple[str, float]]) -> list[str]:
    """Every agent's move in turn, each query seeing the earlier agents' moves and ``feedback``."""
    joint: list[str] = []
    for i in range(N_AGENTS):
        joint.append(propose(planner, env, i, joint, feedback))
    return joint


@torch.no_grad()
def _refine_sequential(env, state, planner, critic, cfg) -> list[str]:
    joint: list[str] = []
    for i in range(N_AGENTS):
        base = float(critic(state[None], [joint])[0])
        feedback: list[tuple[str, float]] = []
        while True:
            move = propose(planner, env, i, joint, feedback)
            score = float(critic(state[None], [joint + [move]])[0]) - base
            feedback.append((move, score))
            if score >= cfg.eps or len(feedback) > cfg.max_refine:
                break
        joint.append(max(feedback, key=lambda f: f[1])[0])
    return joint


@torch.no_grad()
def _refine_joint(env, state, planner, critic, cfg) -> list[str]:
    v = float(critic(state[None], [[]])[0])
    tried: list[tuple[list[str], float]] = []
    while True:
        feedback = [("plan " + ", ".join(f"agent {i} {a}" for i, a in enumerate(j)), s) for j, s in tried]
        joint = _plan(env, planner, feedback)
        tried.append((joint, float(critic(state[None], [joint])[0]) - v))
        if tried[-1][1] >= cfg.eps or len(tried) > cfg.max_refine:
            break
    return max(tried, key=lambda t: t[1])[0]


def fit_critic(cfg: ReAdConfig, planner: TextModel, run: Run | None = None) -> PrefixCritic:
    """Play ``data_episodes`` planner-alone episodes and fit the prefix critic on their discounted returns."""
    env, rows = TwoKeys(cfg.size, cfg.max_steps, cfg.key_reward), []
    for e in range(cfg.data_episodes):
        episode: list = []
        play(env, 1_000_000 + cfg.seed * 10_000 + e, planner, "plain", record=episode)
        g = 0.0
        for state, joint, reward in reversed(episode):
            g = reward + cfg.gamma * g
            rows.append((state, joint, g))
    states = torch.stack([r[0] for r in rows])
    joints = [r[1] for r in rows]
    returns = torch.tensor([r[2] for r in rows])
    torch.manual_seed(cfg.seed)
    critic = PrefixCritic(states.shape[1], cfg.hidden)

    def make_batch(step: int) -> list[int]:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return torch.randint(0, len(rows), (cfg.batch_size,), generator=g).tolist()

    def loss_fn(micro: list[int], batch: list[int]):
        i = torch.tensor(micro)
        loss = prefix_regression_loss(critic, states[i], [joints[j] for j in micro], returns[i])
        return loss * len(micro) / len(batch), {"mse": loss.item()}

    optim = OptimConfig(steps=cfg.critic_steps, batch_size=cfg.batch_size, lr=cfg.lr, checkpoint_every=0)
    with single_thread():
        if run is None:
            with tempfile.TemporaryDirectory() as tmp:
                train(Run(tmp, "read critic", fresh=True), "read_critic", critic, optim, make_batch, loss_fn, quiet=True)
        else:
            train(run, "read_critic", critic, optim, make_batch, loss_fn, quiet=True)
    critic.eval()
    return critic


__all__ = ["Outcome", "PrefixCritic", "ReAdConfig", "TwoKeys", "fit_critic", "parse_move", "planner_prompt", "play",
           "prefix_regression_loss", "propose", "simulated_planner"]
