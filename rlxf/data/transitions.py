"""Datasets of control episodes: the Minari arrow layout on disk, flat transitions in memory, and the
dataset measures TQ and SACo.

On disk (what Minari's arrow storage writes, so either side can read the other's episodes)::

    DIR/data/metadata.json          dataset metadata (env id, spaces, totals, data_format "arrow")
    DIR/data/<episode_id>/part-0.arrow   one row per observation (L+1 rows for L steps): columns
        episode_id, observations (fixed-size list), actions, rewards, terminations, truncations;
        the last row's action/reward/flags are padding
    DIR/data/<episode_id>/metadata.json  {"id": ..., "total_steps": L}

Schweighofer et al., "A Dataset Perspective on Offline Reinforcement Learning" (CoLLAs 2022):
TQ = (g(D) - g(D_min)) / (g(D_max) - g(D_min)) with g the mean discounted episode return, and
SACo = u(D) / u(D_ref) with u the number of unique (state, action) pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import torch
from torch import Tensor

from rlxf.core.runs import atomic_dir


class DatasetError(ValueError):
    """A dataset that cannot be read or does not fit the environment it is used with."""


@dataclass
class Episode:
    """One episode: ``obs [L+1, d]`` (with the final observation), ``actions [L]`` (long) or
    ``[L, a]``, ``rewards [L]`` (the env's reward), how it ended, and the iteration that produced it."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    terminated: bool
    truncated: bool
    iteration: int = 0

    def __len__(self) -> int:
        return self.actions.shape[0]

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())

    def discounted_return(self, gamma: float) -> float:
        return float((self.rewards.double() * gamma ** torch.arange(len(self), dtype=torch.float64)).sum())


@dataclass
class Transitions:
    """Flat ``(s, a, r, s', terminal)`` tensors over every step of a dataset, ``[N, ...]``."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    terminals: Tensor  # 1.0 where the step terminated (a truncation still bootstraps)


@dataclass
class TransitionDataset:
    """Episodes from one environment, plus where they came from."""

    episodes: list[Episode]
    env_id: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.episodes:
            raise DatasetError("a transition dataset needs at least one episode")

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.episodes[0].obs.shape[1:])

    @property
    def discrete(self) -> bool:
        return not self.episodes[0].actions.is_floating_point()

    @property
    def n_steps(self) -> int:
        return sum(len(e) for e in self.episodes)

    def transitions(self) -> Transitions:
        obs = torch.cat([e.obs[:-1] for e in self.episodes]).float()
        nxt = torch.cat([e.obs[1:] for e in self.episodes]).float()
        term = torch.cat([torch.zeros(len(e)).index_fill_(0, torch.tensor([len(e) - 1]), float(e.terminated))
                          for e in self.episodes])
        return Transitions(obs, torch.cat([e.actions for e in self.episodes]),
                           torch.cat([e.rewards for e in self.episodes]).float(), nxt, term)

    # -- disk ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the Minari arrow layout atomically (the whole directory appears at once)."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            data = tmp / "data"
            for i, ep in enumerate(self.episodes):
                (data / str(i)).mkdir(parents=True)
                feather.write_feather(_episode_table(i, ep), data / str(i) / "part-0.arrow", compression="uncompressed")
                (data / str(i) / "metadata.json").write_text(json.dumps({"id": i, "total_steps": len(ep)}))
            meta = {**self.meta, "env_spec": self.env_id, "data_format": "arrow", "total_episodes": len(self.episodes),
                    "total_steps": self.n_steps, "observation_shape": list(self.obs_shape),
                    "action_type": "discrete" if self.discrete else "continuous"}
            (data / "metadata.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, obs_shape: tuple[int, ...] | None = None) -> "TransitionDataset":
        """Read a dataset written by :meth:`save` or by Minari's arrow storage.

        ``obs_shape`` (the environment's) is checked against the stored observations.
        """
        data = Path(directory) / "data"
        if not (data / "metadata.json").is_file():
            raise DatasetError(f"{directory}: no data/metadata.json; expected a Minari-layout dataset directory")
        meta = json.loads((data / "metadata.json").read_text())
        ids = sorted((int(p.name) for p in data.iterdir() if p.is_dir() and p.name.isdigit()))
        if not ids:
            raise DatasetError(f"{data}: no episode directories (data/0, data/1, ...)")
        episodes = [_read_episode(data / str(i)) for i in ids]
        ds = cls(episodes, meta.get("env_spec", ""), meta)
        if obs_shape is not None and ds.obs_shape != tuple(obs_shape):
            raise DatasetError(f"{directory}: observations have shape {ds.obs_shape}, but the environment "
                               f"{ds.env_id or ''} expects {tuple(obs_shape)}")
        return ds


def _episode_table(i: int, ep: Episode) -> pa.Table:
    n = len(ep) + 1
    obs = ep.obs.numpy().astype(np.float32).reshape(n, -1)
    acts = ep.actions.numpy()
    pad = lambda x: np.concatenate([x, np.zeros((1,) + x.shape[1:], x.dtype)])  # noqa: E731
    if ep.actions.is_floating_point():
        a = pad(acts.astype(np.float32).reshape(len(ep), -1))
        actions = pa.FixedSizeListArray.from_arrays(a.reshape(-1), a.shape[1])
    else:
        actions = pa.array(pad(acts.astype(np.int32)))
    term = np.zeros(len(ep), bool)
    trunc = np.zeros(len(ep), bool)
    term[-1], trunc[-1] = ep.terminated, ep.truncated
    return pa.table({
        "episode_id": np.full(n, i, np.int32),
        "observations": pa.FixedSizeListArray.from_arrays(obs.reshape(-1), obs.shape[1]),
        "actions": actions,
        "rewards": pad(ep.rewards.numpy().astype(np.float64)),
        "terminations": pad(term),
        "truncations": pad(trunc),
    })


def _read_episode(path: Path) -> Episode:
    files = sorted(path.glob("*.arrow"))
    if not files:
        raise DatasetError(f"{path}: no .arrow file for this episode")
    table = pa.concat_tables([feather.read_table(f) for f in files])
    for col in ("observations", "actions", "rewards", "terminations", "truncations"):
        if col not in table.column_names:
            raise DatasetError(f"{path}: column {col!r} is missing; expected observations, actions, rewards, "
                               f"terminations, truncations")
    obs = torch.as_tensor(np.stack(table["observations"].to_numpy(zero_copy_only=False)).astype(np.float32))
    if not torch.isfinite(obs).all():
        row = int((~torch.isfinite(obs)).any(-1).nonzero()[0])
        raise DatasetError(f"{path}: observation row {row} is not finite; expected finite observations")
    raw = table["actions"].to_numpy(zero_copy_only=False)[:-1]
    if pa.types.is_fixed_size_list(table["actions"].type):
        actions = torch.as_tensor(np.stack(raw).astype(np.float32))
    else:
        actions = torch.as_tensor(raw.astype(np.int64))
    rewards = torch.as_tensor(table["rewards"].to_numpy()[:-1].astype(np.float32))
    term, trunc = table["terminations"].to_numpy()[:-1], table["truncations"].to_numpy()[:-1]
    return Episode(obs, actions, rewards, bool(term.any()), bool(trunc.any()))


# -- dataset measures (Schweighofer et al. 2022) --------------------------------------------


def average_return(episodes: list[Episode], gamma: float = 1.0) -> float:
    """``g(D)``: mean discounted return over the dataset's episodes."""
    return float(np.mean([e.discounted_return(gamma) for e in episodes]))


def trajectory_quality(dataset: list[Episode], random_data: list[Episode], expert_data: list[Episode],
                       gamma: float = 1.0) -> float:
    """TQ = (g(D) - g(D_min)) / (g(D_max) - g(D_min)): 0 for random-policy data, 1 for expert data."""
    lo, hi = average_return(random_data, gamma), average_return(expert_data, gamma)
    if hi == lo:
        raise DatasetError("trajectory_quality: the random and expert datasets have the same return; TQ is undefined")
    return (average_return(dataset, gamma) - lo) / (hi - lo)


def unique_state_actions(episodes: list[Episode], decimals: int | None = None) -> int:
    """``u(D)``: number of distinct (state, action) pairs (states rounded to ``decimals`` if given)."""
    seen = set()
    for e in episodes:
        obs = e.obs[:-1].double().numpy()
        if decimals is not None:
            obs = np.round(obs, decimals)
        acts = e.actions.double().numpy().reshape(len(e), -1)
        seen.update(map(bytes, np.ascontiguousarray(np.concatenate([obs, acts], axis=1))))
    return len(seen)


def state_action_coverage(dataset: list[Episode], reference: list[Episode], decimals: int | None = None) -> float:
    """SACo = u(D) / u(D_ref), with ``D_ref`` the replay data of a whole online training run."""
    return unique_state_actions(dataset, decimals) / unique_state_actions(reference, decimals)
