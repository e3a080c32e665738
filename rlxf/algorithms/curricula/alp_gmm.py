"""Teachers that pick the next task's continuous parameters: ALP-GMM and uniform sampling.

ALP-GMM (Portelas, Colas, Hofmann, Oudeyer, "Teacher algorithms for curriculum learning of Deep RL
in continuously parameterized environments", CoRL 2019). Each finished episode reports its task
parameters p and return r. The absolute learning progress of p is |r - r_old|, where r_old is the
return of the nearest task among those seen before (:class:`ALPHistory`). Every ``fit_rate``
episodes the teacher fits Gaussian mixtures with k = ``ks`` components to the last ``fit_rate``
points [p, ALP] (parameters scaled to [0, 1]) and keeps the one with the lowest AIC. A new task is
drawn uniformly with probability ``random_ratio`` (and always before the first fit); otherwise from
one Gaussian, picked with probability proportional to its mean ALP, its ALP coordinate dropped and
the parameters clipped to the box.

The mixture is fitted here by EM with full covariances (:func:`fit_gmm`), as numpy has no library
for it in this environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class UniformTeacher:
    """The baseline: every task drawn uniformly from the box ``[low, high]``."""

    def __init__(self, low, high, seed: int = 0):
        self.low, self.high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
        if self.low.shape != self.high.shape or np.any(self.high <= self.low):
            raise ValueError(f"task box: every low must be below its high, got {self.low} and {self.high}")
        self.rng = np.random.default_rng(seed)
        self.sampled: list[np.ndarray] = []  # every task handed out, in order

    def sample(self) -> np.ndarray:
        task = self.low + self.rng.random(self.low.shape) * (self.high - self.low)
        self.sampled.append(task)
        return task

    def update(self, task, episode_return: float) -> None:
        """Uniform sampling ignores outcomes."""


class ALPHistory:
    """Every (task, return) seen so far; :meth:`add` returns the new task's absolute learning progress
    against its nearest earlier task (Euclidean, in the scaled parameters); the first task has ALP 0."""

    def __init__(self, dim: int):
        self.n = 0
        self._tasks, self._returns = np.zeros((1024, dim)), np.zeros(1024)

    @property
    def tasks(self) -> np.ndarray:
        return self._tasks[: self.n]

    @property
    def returns(self) -> np.ndarray:
        return self._returns[: self.n]

    def add(self, task: np.ndarray, episode_return: float) -> float:
        alp = 0.0
        if self.n:
            nearest = int(np.argmin(((self.tasks - task) ** 2).sum(1)))
            alp = abs(float(episode_return) - float(self.returns[nearest]))
        if self.n == len(self._returns):  # grow by doubling
            self._tasks = np.concatenate([self._tasks, np.zeros_like(self._tasks)])
            self._returns = np.concatenate([self._returns, np.zeros_like(self._returns)])
        self._tasks[self.n], self._returns[self.n] = task, float(episode_return)
        self.n += 1
        return alp


@dataclass
class GMM:
    """A Gaussian mixture: ``weights`` [k], ``means`` [k, d], ``covs`` [k, d, d]."""

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    def log_densities(self, x: np.ndarray) -> np.ndarray:
        """log(weight_j * N(x_i; mean_j, cov_j)), ``[n, k]``."""
        d = x.shape[1]
        chol = np.linalg.cholesky(self.covs)  # [k, d, d]
        diff = x[None, :, :] - self.means[:, None, :]  # [k, n, d]
        z = diff @ np.linalg.inv(chol).transpose(0, 2, 1)  # [k, n, d]: L^-1 (x - mean) per row
        maha = (z**2).sum(2)  # [k, n]
        log_det = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)  # [k]
        return (np.log(self.weights)[:, None] - 0.5 * (maha + log_det[:, None] + d * np.log(2 * np.pi))).T

    def log_likelihood(self, x: np.ndarray) -> float:
        return float(logsumexp(self.log_densities(x)).sum())

    def aic(self, x: np.ndarray) -> float:
        """Akaike's criterion 2 * (free parameters) - 2 * log-likelihood."""
        k, d = self.means.shape
        free = (k - 1) + k * d + k * d * (d + 1) // 2
        return 2 * free - 2 * self.log_likelihood(x)


def logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(1, keepdims=True)))[:, 0]


def fit_gmm(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 100, reg: float = 1e-6,
            tol: float = 1e-4) -> GMM:
    """EM for a k-component full-covariance mixture, means started at k distinct points drawn from
    ``x``, covariances at the data's; ``reg`` is added to every covariance's diagonal."""
    n, d = x.shape
    if n < k:
        raise ValueError(f"fit_gmm: {n} points cannot fit {k} components")
    base = np.cov(x.T).reshape(d, d) + reg * np.eye(d)
    g = GMM(np.full(k, 1 / k), x[rng.choice(n, k, replace=False)].copy(), np.repeat(base[None], k, 0))
    last = -np.inf
    for _ in range(iters):
        logp = g.log_densities(x)
        total = logsumexp(logp)
        resp = np.exp(logp - total[:, None])  # [n, k]
        mass = resp.sum(0) + 1e-10
        means = (resp.T @ x) / mass[:, None]
        diff = x[None] - means[:, None]  # [k, n, d]
        covs = (resp.T[:, :, None] * diff).transpose(0, 2, 1) @ diff / mass[:, None, None] + reg * np.eye(d)
        g = GMM(mass / n, means, covs)
        ll = total.sum()
        if ll - last < tol * n:
            break
        last = ll
    return g


class ALPGMMTeacher:
    """The ALP-GMM teacher over the box ``[low, high]`` (defaults as the paper's code, except
    ``fit_rate`` and ``ks`` which small budgets need smaller). ``alp_scale`` divides every ALP (e.g.
    the return range), so the ALP coordinate is on the scale of the [0, 1] parameters."""

    def __init__(self, low, high, seed: int = 0, fit_rate: int = 250, ks: tuple[int, ...] = tuple(range(2, 11)),
                 random_ratio: float = 0.2, alp_scale: float = 1.0):
        self.uniform = UniformTeacher(low, high, seed)
        self.low, self.high, self.rng = self.uniform.low, self.uniform.high, self.uniform.rng
        if fit_rate < max(ks) or min(ks) < 1:
            raise ValueError(f"ALP-GMM: fit_rate ({fit_rate}) must be at least the largest k ({max(ks)}), ks >= 1")
        if not 0 <= random_ratio <= 1:
            raise ValueError(f"ALP-GMM: random_ratio must be in [0, 1], got {random_ratio}")
        self.fit_rate, self.ks, self.random_ratio, self.alp_scale = fit_rate, tuple(ks), random_ratio, alp_scale
        self.history = ALPHistory(len(self.low))
        self.points: list[np.ndarray] = []  # [scaled task, ALP] of every finished episode
        self.gmm: GMM | None = None
        self.sampled = self.uniform.sampled

    def scaled(self, task) -> np.ndarray:
        return (np.asarray(task, dtype=float) - self.low) / (self.high - self.low)

    def sample(self) -> np.ndarray:
        if self.gmm is None or self.rng.random() < self.random_ratio:
            return self.uniform.sample()
        mean_alp = np.maximum(self.gmm.means[:, -1], 0.0)
        p = mean_alp / mean_alp.sum() if mean_alp.sum() > 0 else np.full(len(mean_alp), 1 / len(mean_alp))
        j = self.rng.choice(len(p), p=p)
        x = (self.gmm.means[j] + self._chol[j] @ self.rng.standard_normal(self.gmm.means.shape[1]))[:-1]
        task = self.low + np.clip(x, 0.0, 1.0) * (self.high - self.low)
        self.sampled.append(task)
        return task

    def update(self, task, episode_return: float) -> None:
        """Record a finished episode; refit the mixture every ``fit_rate`` episodes."""
        s = self.scaled(task)
        alp = self.history.add(s, episode_return) / self.alp_scale
        self.points.append(np.append(s, alp))
        if len(self.points) % self.fit_rate == 0:
            x = np.array(self.points[-self.fit_rate:])
            fits = [fit_gmm(x, k, self.rng) for k in self.ks]
            self.gmm = min(fits, key=lambda g: g.aic(x))
            self._chol = np.linalg.cholesky(self.gmm.covs)
