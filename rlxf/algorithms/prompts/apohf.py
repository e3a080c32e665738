"""APOHF (Lin, Dai, Verma, Ng, Jaillet & Low 2024, "Prompt Optimization with Human Feedback"): find a
good prompt among fixed candidates when the only feedback is which of two prompts' answers a person
prefers.

Each candidate prompt has a feature vector (an embedding). A small network h (an MLP with two hidden
ReLU layers of 32, weights and biases drawn from N(0, 1)) estimates each prompt's utility. After every
duel it is trained again from the same initial weights: full-batch Adam on the Bradley-Terry
cross-entropy of h(x1) - h(x2) against the answer (:func:`duel_bce`), weight decay lambda / (n + 50)
for n duels. The next duel follows :func:`rlxf.algorithms.dueling.duel_pair`: arm 1 is the argmax of
h over all candidates, arm 2 maximises h(x) + sqrt(nu * sum_p (g_p(x) - g_p(x1))^2 / U_p), where
g = dh/dtheta and U = lambda + sum over past duels (a, b) of (g(a) - g(b))^2 (a diagonal
approximation, :func:`exploration_variance`). nu = -1 asks random pairs. The prompt reported after
each duel is the argmax of h over the prompts queried so far.

The first ``n_init`` duels are random pairs. The linear dueling bandit is the same loop with a linear
h (no bias, PyTorch's default uniform initialisation) and lambda ~ 0 (:func:`linear_bandit`).

The networks are plain numpy arrays with a leading axis over independent runs, so that several seeds
and methods train in one batched Adam step (each run's loss is its own; Adam is elementwise, so the
runs do not interact). Training steps per duel: ``ApohfConfig.steps``; the authors use 1000 at
lr 1e-3, which would cost minutes per 150-duel run on a 2-core CPU; rlxf's default is 50 steps at
lr 2e-2 (close to 100 at 1e-2 on tuning seeds 0-2 of the synthetic problem, which no reported figure
uses). The exploration weight nu is the authors' 1 by default; on the synthetic problem (32-dim
features, far fewer network parameters than the authors' 768-dim embeddings give, so a smaller
summed bonus) nu = 100 was best of 1, 3, 10, 30, 100 on the tuning seeds (:data:`SYNTHETIC_NU`).

Run ``python -m rlxf.algorithms.prompts.apohf --help`` for the synthetic comparison table.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from rlxf.algorithms.dueling import RANDOM_PAIRS, check_nu, duel_pair
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.labelers.simulated import BradleyTerryLabeler

Params = list[np.ndarray]  # [W1, b1, W2, b2, ..., W_L, (b_L)], each with a leading axis over runs


# -- the utility networks -------------------------------------------------------------------------
def init_mlp(n_runs: int, dim: int, hidden: Sequence[int], rngs: Sequence[np.random.Generator],
             kind: str = "normal") -> Params:
    """Initial parameters of ``n_runs`` MLPs dim -> hidden... -> 1, run r drawn from ``rngs[r]``.
    ``normal``: every weight and bias ~ N(0, 1) (APOHF). ``linear``: no hidden layer, no bias, weights
    ~ U(-1/sqrt(dim), 1/sqrt(dim)) (PyTorch's default for a linear layer; the linear dueling bandit)."""
    if kind == "linear":
        if hidden:
            raise ValueError("a linear utility has no hidden layers")
        bound = 1.0 / math.sqrt(dim)
        return [np.stack([g.uniform(-bound, bound, (dim, 1)) for g in rngs]).astype(np.float32)]
    if kind != "normal":
        raise ValueError(f"init kind must be 'normal' or 'linear', got {kind!r}")
    sizes = [dim, *hidden, 1]
    params: Params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params.append(np.stack([g.standard_normal((fan_in, fan_out)) for g in rngs]).astype(np.float32))
        params.append(np.stack([g.standard_normal((1, fan_out)) for g in rngs]).astype(np.float32))
    return params


def _layers(params: Params) -> list[tuple[np.ndarray, np.ndarray | None]]:
    if len(params) == 1:
        return [(params[0], None)]
    return list(zip(params[0::2], params[1::2]))


def forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """h ``[R, N]`` of inputs ``x`` ``[R, N, dim]`` (or ``[N, dim]``, shared by every run), and the
    activations backprop needs (each layer's input; a hidden layer's input is relu of the previous)."""
    layers = _layers(params)
    a = np.broadcast_to(x, (layers[0][0].shape[0], *x.shape[-2:])) if x.ndim == 2 else x
    inputs = []
    for k, (w, b) in enumerate(layers):
        inputs.append(a)
        z = a @ w if b is None else a @ w + b
        a = np.maximum(z, 0.0) if k < len(layers) - 1 else z
    return a[..., 0], inputs


def backprop(params: Params, inputs: list[np.ndarray], dh: np.ndarray, per_example: bool = False) -> Params:
    """Gradients of sum_n dh[r, n] * h(x_n) for each run ``r`` (``per_example=False``: shaped like
    ``params``), or of each h(x_n) alone (``per_example=True``: ``[R, N, *shape]`` per parameter)."""
    layers = _layers(params)
    delta = dh[..., None]  # [R, N, 1]: d/dz of the output layer
    grads: Params = []
    for k in range(len(layers) - 1, -1, -1):
        w, b = layers[k]
        a = inputs[k]
        if per_example:
            gw, gb = a[..., :, None] * delta[..., None, :], delta[..., None, :]
        else:
            gw, gb = np.swapaxes(a, 1, 2) @ delta, delta.sum(1, keepdims=True)
        grads[:0] = [gw] if b is None else [gw, gb]
        if k:
            delta = (delta @ np.swapaxes(w, 1, 2)) * (inputs[k] > 0)
    return grads


def gradient_features(params: Params, x: np.ndarray) -> np.ndarray:
    """g(x) = dh(x)/dtheta for every input, flattened: ``[R, N, n_params]``."""
    h, inputs = forward(params, x)
    grads = backprop(params, inputs, np.ones_like(h), per_example=True)
    return np.concatenate([g.reshape(*h.shape, -1) for g in grads], axis=-1)


def duel_bce(h1: np.ndarray, h2: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per run, the mean Bradley-Terry cross-entropy of the logits h1 - h2 against y (1: the first
    prompt won, 0: the second, 0.5: a tie), ``[R]``, and its derivative in the logits ``[R, n]``."""
    logit = h1 - h2
    loss = np.logaddexp(0.0, logit) - y * logit  # softplus(l) - y l, stable for large |l|
    p = 0.5 * (1.0 + np.tanh(0.5 * logit))  # sigmoid without overflow
    return loss.mean(-1), (p - y) / logit.shape[-1]


def fit_duels(init: Params, x: np.ndarray, first: np.ndarray, second: np.ndarray, y: np.ndarray, steps: int,
              lr: float, weight_decay: float) -> Params:
    """Train from ``init`` for ``steps`` full-batch Adam steps (PyTorch's Adam: betas 0.9, 0.999,
    eps 1e-8, L2 ``weight_decay`` added to the gradient) on every run's duels: run r's duel k compared
    candidate ``first[r, k]`` with ``second[r, k]`` of ``x`` ``[R, n_candidates, dim]``, answer y[r, k]."""
    params = [p.copy() for p in init]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    n = first.shape[1]
    rows = np.arange(len(first))[:, None]
    sides = np.concatenate([x[rows, first], x[rows, second]], axis=1)  # [R, 2n, dim]
    y = y.astype(np.float32)
    for t in range(1, steps + 1):
        h, inputs = forward(params, sides)
        _, dlogit = duel_bce(h[:, :n], h[:, n:], y)
        grads = backprop(params, inputs, np.concatenate([dlogit, -dlogit], axis=1).astype(np.float32))
        c1, c2 = 1 - 0.9**t, 1 - 0.999**t
        for p, g, mk, vk in zip(params, grads, m, v):
            g = g + weight_decay * p
            mk *= 0.9
            mk += 0.1 * g
            vk *= 0.999
            vk += 0.001 * g * g
            p -= lr * (mk / c1) / (np.sqrt(vk / c2) + 1e-8)
    return params


def exploration_variance(g: np.ndarray, history: np.ndarray, arm1: int, lam: float) -> np.ndarray:
    """sum_p (g_p(x) - g_p(arm1))^2 / U_p for every candidate x, ``[N]``, from the gradient features
    ``g`` ``[N, P]`` and the past duels ``history`` ``[n, 2]``: U = lam + sum_duels (g(a) - g(b))^2."""
    diff = g[history[:, 0]] - g[history[:, 1]] if len(history) else np.zeros((0, g.shape[1]), g.dtype)
    u = lam + (diff.astype(np.float64) ** 2).sum(0)
    return (((g - g[arm1]).astype(np.float64) ** 2) / u).sum(-1)


# -- the loop ---------------------------------------------------------------------------------------
@dataclass
class ApohfConfig:
    """APOHF's settings; the defaults are the authors' released script's except ``steps`` and ``lr``
    (see the module docstring). ``model="linear"`` is the linear dueling bandit's utility."""

    nu: float = 1.0  # exploration weight; -1: random pairs
    lam: float = 0.1  # lambda: U's ridge and the weight decay lambda / (n + 50)
    hidden: tuple[int, ...] = (32, 32)
    model: str = "neural"  # or "linear"
    steps: int = 50  # Adam steps per refit
    lr: float = 2e-2
    n_init: int = 5  # random duels before the rule starts

    def check(self) -> ApohfConfig:
        check_nu(self.nu)
        if self.model not in ("neural", "linear"):
            raise ValueError(f"model must be 'neural' or 'linear', got {self.model!r}")
        if self.lam < 0 or self.steps < 1 or self.lr <= 0 or self.n_init < 1:
            raise ValueError(f"APOHF needs lam >= 0, steps >= 1, lr > 0 and n_init >= 1; got lam={self.lam}, "
                             f"steps={self.steps}, lr={self.lr}, n_init={self.n_init}")
        return self


def linear_bandit(cfg: ApohfConfig | None = None) -> ApohfConfig:
    """The linear dueling bandit baseline: a linear utility without bias, U's ridge and the weight
    decay ~ 0 (1e-10, as in the authors' baseline), the same rule and reporting."""
    return replace(cfg or ApohfConfig(), model="linear", hidden=(), lam=1e-10)


Oracle = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(first ``[R]``, second ``[R]``) candidate indices, one duel per run -> answers ``[R]``: 1.0 the
first won, 0.0 the second, 0.5 a tie (``rlxf.labelers.simulated``'s encoding)."""


@dataclass
class DuelRuns:
    """The state of R independent APOHF runs over candidates ``x`` ``[R, N, dim]``: their initial
    weights, the duels so far (``first``, ``second``, ``y``: ``[R, n]``) and the current weights."""

    x: np.ndarray
    cfgs: list[ApohfConfig]
    rngs: list[np.random.Generator]
    init: Params
    params: Params
    first: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), int))
    second: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), int))
    y: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @classmethod
    def start(cls, x: np.ndarray, cfgs: Sequence[ApohfConfig], seeds: Sequence[int]) -> DuelRuns:
        """Runs over candidates ``x`` (``[R, N, dim]``, or ``[N, dim]`` for all), one per config and
        seed; run r's initial weights and random choices come from ``seeds[r]``. All runs share the
        utility architecture (their configs may differ in nu and n_init only)."""
        cfgs = [c.check() for c in cfgs]
        if len(cfgs) != len(seeds):
            raise ValueError(f"one seed per config: got {len(cfgs)} configs and {len(seeds)} seeds")
        shape = {(c.model, c.hidden, c.lam, c.steps, c.lr) for c in cfgs}
        if len(shape) != 1:
            raise ValueError(f"runs trained together must share model, hidden, lam, steps and lr; got {sorted(shape)}")
        x = np.asarray(x, dtype=np.float32)
        x = np.broadcast_to(x, (len(cfgs), *x.shape)) if x.ndim == 2 else x
        if x.shape[0] != len(cfgs) or x.shape[1] < 2:
            raise ValueError(f"candidates must be [runs={len(cfgs)}, N >= 2, dim], got {list(x.shape)}")
        rngs = [np.random.default_rng(s) for s in seeds]
        c = cfgs[0]
        init = init_mlp(len(cfgs), x.shape[-1], c.hidden, rngs, "linear" if c.model == "linear" else "normal")
        empty = np.zeros((len(cfgs), 0), int)
        return cls(x, cfgs, rngs, init, [p.copy() for p in init], empty, empty.copy(), np.zeros((len(cfgs), 0)))

    @property
    def n_duels(self) -> int:
        return self.first.shape[1]

    def utility(self) -> np.ndarray:
        """h of every candidate under the current weights, ``[R, N]``."""
        return forward(self.params, self.x)[0]

    def next_pairs(self) -> np.ndarray:
        """Each run's next duel ``[R, 2]``: random for the first ``n_init`` duels, then APOHF's rule."""
        h, g = self.utility(), None
        out = np.zeros((len(self.cfgs), 2), int)
        for r, (c, rng) in enumerate(zip(self.cfgs, self.rngs)):
            nu = RANDOM_PAIRS if self.n_duels < c.n_init else c.nu
            if nu != RANDOM_PAIRS and g is None:
                g = gradient_features(self.params, self.x)
            history = np.stack([self.first[r], self.second[r]], 1)
            out[r, :2] = duel_pair(h[r], lambda a, r=r: exploration_variance(g[r], history, a, c.lam), nu, rng)[:2]
        return out

    def add(self, pairs: np.ndarray, y: np.ndarray) -> None:
        """Record one duel per run and refit every run's utility from its initial weights."""
        self.set_duels(np.concatenate([self.first, pairs[:, :1]], 1), np.concatenate([self.second, pairs[:, 1:2]], 1),
                       np.concatenate([self.y, np.asarray(y, dtype=float).reshape(-1, 1)], 1))

    def set_duels(self, first: np.ndarray, second: np.ndarray, y: np.ndarray) -> None:
        """Replace the duels (``[R, n]`` each) and refit every run's utility from its initial weights."""
        if not first.shape == second.shape == y.shape or first.shape[0] != len(self.cfgs):
            raise ValueError(f"duels must be [runs={len(self.cfgs)}, n] each; got {first.shape}, {second.shape}, {y.shape}")
        self.first, self.second, self.y = first.astype(int), second.astype(int), y.astype(float)
        c = self.cfgs[0]
        self.params = fit_duels(self.init, self.x, self.first, self.second, self.y, c.steps, c.lr,
                                c.lam / (self.n_duels + 50))

    def reported(self) -> np.ndarray:
        """Each run's reported prompt ``[R]``: the argmax of h over the candidates it has queried."""
        h = self.utility()
        out = np.zeros(len(h), int)
        for r in range(len(h)):
            asked = np.unique(np.concatenate([self.first[r], self.second[r]]))
            out[r] = asked[np.argmax(h[r, asked])] if len(asked) else int(np.argmax(h[r]))
        return out


def run_duels(x: np.ndarray, oracle: Oracle, cfgs: Sequence[ApohfConfig], seeds: Sequence[int], rounds: int,
              progress: bool = False) -> tuple[np.ndarray, DuelRuns]:
    """``rounds`` duels in each run, answered by ``oracle``; returns the reported prompt after each
    duel, ``[R, rounds]``, and the final state."""
    runs = DuelRuns.start(x, cfgs, seeds)
    reported = np.zeros((len(cfgs), rounds), int)
    steps = range(rounds)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="duels", leave=False, disable=None)  # off when not a terminal
    for t in steps:
        pairs = runs.next_pairs()
        runs.add(pairs, oracle(pairs[:, 0], pairs[:, 1]))
        reported[:, t] = runs.reported()
    return reported, runs


# -- the simulated person and the synthetic check -----------------------------------------------------
def standardise(score: np.ndarray, rng: np.random.Generator, n_ref: int = 50, magnitude: float = 10.0) -> np.ndarray:
    """The simulated person's utility: ``magnitude`` * (score - mean) / std, mean and std taken over
    ``n_ref`` candidates drawn at random (with replacement), as the authors' simulation does."""
    ref = np.asarray(score, dtype=float)[..., rng.integers(score.shape[-1], size=n_ref)]
    std = ref.std(-1, keepdims=True)
    return magnitude * (score - ref.mean(-1, keepdims=True)) / np.where(std > 0, std, 1.0)


def bt_oracle(utility: np.ndarray, seed: int = 0) -> Oracle:
    """A Bradley-Terry person per run (rationality 1) on the utilities ``[R, N]``."""
    labeler = BradleyTerryLabeler(1.0, seed)
    rows = np.arange(len(utility))

    def answer(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return labeler.prefers_first(utility[rows, first], utility[rows, second]).astype(float)

    return answer


def synthetic_prompts(seed: int, n: int = 200, dim: int = 32, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """C3's toy problem: ``n`` unit-norm random ``dim``-dim prompt embeddings ``[n, dim]`` and their
    hidden score ``[n]`` from a fixed random MLP (one tanh layer of ``width``, N(0, 1) weights)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w1, b1, w2 = rng.standard_normal((dim, width)), rng.standard_normal(width), rng.standard_normal(width)
    return x.astype(np.float32), np.tanh(x @ w1 + b1) @ w2


SYNTHETIC_NU = 100.0  # picked on tuning seeds 0-2 among 1, 3, 10, 30, 100 (see the module docstring)
LAB_CONFIG = ApohfConfig()
"""APOHF's settings in the prompt lab (``rlxf.lab.prompts``)."""

METHODS = {"apohf": ApohfConfig(nu=SYNTHETIC_NU), "random_pairs": ApohfConfig(nu=RANDOM_PAIRS),
           "linear_bandit": linear_bandit()}


def synthetic_comparison(seeds: Sequence[int], rounds: int = 150, n: int = 200, dim: int = 32,
                         methods: dict[str, ApohfConfig] | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """The hidden score (z-scored over the seed's pool) of each method's reported prompt after each
    duel, ``{method: [n_seeds, rounds]}``; on seed s every method sees the same pool, person and
    initial-weight seed. Methods sharing a utility architecture train together."""
    methods = methods or METHODS
    pools = [synthetic_prompts(s, n, dim) for s in seeds]
    z = np.stack([(sc - sc.mean()) / sc.std() for _, sc in pools])
    out: dict[str, np.ndarray] = {}
    groups: dict[tuple, list[str]] = {}
    for name, c in methods.items():
        groups.setdefault((c.model, c.hidden, c.lam, c.steps, c.lr), []).append(name)
    for names in groups.values():
        x = np.concatenate([np.stack([p[0] for p in pools])] * len(names))
        people = np.concatenate([np.stack([standardise(sc, np.random.default_rng(s)) for (_, sc), s
                                           in zip(pools, seeds)])] * len(names))
        seeds_all = [s for _ in names for s in seeds]
        answer = bt_oracle(people, seed=10_000 + seeds[0])
        reported, _ = run_duels(x, answer, [methods[m] for m in names for _ in seeds], seeds_all, rounds, progress)
        for k, name in enumerate(names):
            rows = reported[k * len(seeds):(k + 1) * len(seeds)]
            out[name] = np.take_along_axis(z, rows, 1)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="APOHF against random pairs and the linear dueling bandit on C3's "
                                "synthetic prompts (hidden score of the reported prompt, z-scored over the pool).")
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    a = p.parse_args(argv)
    if a.rounds < 6 or a.candidates < 2 or a.dim < 1:
        p.error("need --rounds >= 6, --candidates >= 2 and --dim >= 1")
    res = synthetic_comparison(a.seeds, a.rounds, a.candidates, a.dim, progress=True)
    marks = [r for r in (10, 25, 50, 100, 150) if r <= a.rounds] + ([a.rounds] if a.rounds not in (10, 25, 50, 100, 150) else [])
    print(f"{a.candidates} synthetic prompts, dim {a.dim}, seeds {a.seeds}: z-score of the reported prompt after n duels")
    print(f"{'method':<14}" + "".join(f"{'n=' + str(r):>15}" for r in marks) + f"{'mean over n':>15}")
    for name, v in res.items():
        cells = [mean_se(v[:, r - 1]) for r in marks] + [mean_se(v.mean(1))]
        print(f"{name:<14}" + "".join(f"{m:>8.3f} ±{s:>5.3f}" for m, s in cells))
    for base in ("random_pairs", "linear_bandit"):
        gain, se = paired_gain(res["apohf"][:, -1], res[base][:, -1])
        print(f"apohf minus {base} after {a.rounds} duels: {gain:+.3f} (paired SE {se:.3f}, "
              f"{gain / se if se else math.inf:.1f} SE)")


if __name__ == "__main__":
    main()
