"""ShortVideo: a simulated user watching a session of short videos, for recommendation RL.

Each step the user is shown ``n_candidates`` candidate videos and the action picks one (a discrete
index). Every video has a topic, a quality ``q``, a likeability ``l`` and a shareability ``h`` (each in
[0, 1]); a user has a latent taste ``u`` over topics (drawn per session) and a :class:`UserModel` that
says how they respond. With ``m = u[topic]`` the taste match and ``rep`` 1 if the video repeats the
previous one's topic, the fraction of the video watched is

    watch = sigmoid(bias + taste_weight * m + quality_weight * (q - 0.5) + repeat_bonus * rep),

and it is the reward. The auxiliary signals are expected interactions, mostly set by the video and
partly by how much of it was watched: likes ``like_rate * l * (1 + watch) / 2`` and shares
``share_rate * h * (1 + watch) / 2``, reported each step as ``info["likes"]``
and ``info["shares"]`` beside ``info["watch"]`` (read them with ``make_env(..., reward_terms=TERMS)``). After each video the user leaves (the episode
terminates) with probability ``leave_base + leave_gain * (1 - watch)``; a session that lasts
``horizon`` videos is truncated. Watch time, likes and shares pull towards different videos, so
constraints on the interactions cost watch time.

The observation (:func:`obs_dim`): the session's progress ``t / horizon``; per candidate
``[m, q, l, h, rep]``; and the last ``history`` interactions, newest first, as ``[rep, m, q - 0.5,
watch, 1]`` (zeros before the session has that many), from which a policy can infer the user model.
``models`` is a set of user models: each session draws one uniformly, so a single env is a set of
simulators (Sim2Rec). Registered as ``rlxf/ShortVideo-v0`` with the default user model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import gymnasium as gym
import numpy as np

SIGNALS = ("likes", "shares")
TERMS = ("watch",) + SIGNALS  # the info keys of every step: the reward, then the auxiliary signals
CANDIDATE_FEATURES = 5  # m, q, l, h, rep
HISTORY_FEATURES = 5  # rep, m, q - 0.5, watch, present


@dataclass(frozen=True)
class UserModel:
    """How a simulated user responds; every field may vary across a set of simulators."""

    taste_weight: float = 3.0  # watch-time gain per unit taste match (m in [-1, 1])
    quality_weight: float = 2.0  # watch-time gain per unit quality above 0.5
    repeat_bonus: float = 0.0  # watch-time logit added when a video repeats the last topic (< 0: fatigue)
    bias: float = 0.0  # watch-time logit offset
    like_rate: float = 1.0  # expected likes = like_rate * l * (1 + watch) / 2
    share_rate: float = 0.5  # expected shares = share_rate * h * (1 + watch) / 2
    leave_base: float = 0.05  # leave probability after a fully watched video
    leave_gain: float = 0.3  # extra leave probability per unit of the video not watched

    def __post_init__(self):
        for name in ("leave_base", "leave_gain"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"UserModel.{name} = {v}: expected a probability in [0, 1]")
        if self.leave_base + self.leave_gain > 1.0:
            raise ValueError(f"UserModel: leave_base + leave_gain = {self.leave_base + self.leave_gain} > 1")
        if self.like_rate < 0 or self.share_rate < 0:
            raise ValueError("UserModel: like_rate and share_rate must be >= 0")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def obs_dim(n_candidates: int, history: int) -> int:
    return 1 + n_candidates * CANDIDATE_FEATURES + history * HISTORY_FEATURES


def respond(model: UserModel, match, quality, like, share, repeat) -> tuple:
    """``(watch, likes, shares, leave_probability)`` of a user with ``model`` shown a video (vectorised)."""
    watch = sigmoid(model.bias + model.taste_weight * match + model.quality_weight * (quality - 0.5)
                    + model.repeat_bonus * repeat)
    engaged = (1.0 + watch) / 2
    return watch, engaged * like * model.like_rate, engaged * share * model.share_rate, \
        model.leave_base + model.leave_gain * (1.0 - watch)


class ShortVideo(gym.Env):
    """One user's session; see the module docstring. ``models`` (default one :class:`UserModel`) is the
    set of simulators a session's user model is drawn from."""

    metadata = {"render_modes": []}

    def __init__(self, models: tuple[UserModel, ...] | UserModel | None = None, n_candidates: int = 5,
                 n_topics: int = 4, history: int = 6, horizon: int = 20):
        if models is None:
            models = (UserModel(),)
        elif isinstance(models, UserModel):
            models = (models,)
        models = tuple(models)
        if not models or not all(isinstance(m, UserModel) for m in models):
            raise ValueError(f"ShortVideo: models must be one or more UserModel, got {models!r}")
        if n_candidates < 2 or n_topics < 2 or history < 0 or horizon < 1:
            raise ValueError(f"ShortVideo: need n_candidates >= 2, n_topics >= 2, history >= 0, horizon >= 1; got "
                             f"{n_candidates}, {n_topics}, {history}, {horizon}")
        self.models, self.k, self.n_topics, self.h, self.horizon = models, n_candidates, n_topics, history, horizon
        dim = obs_dim(n_candidates, history)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)
        self.action_space = gym.spaces.Discrete(n_candidates)
        self.model = models[0]

    # -- session state ---------------------------------------------------
    def _draw_candidates(self) -> None:
        r = self.np_random
        self.topics = r.integers(0, self.n_topics, self.k)
        self.cand = r.uniform(0.0, 1.0, (self.k, 3))  # q, l, h

    def _obs(self) -> np.ndarray:
        match = self.taste[self.topics]
        rep = (self.topics == self.last_topic).astype(float)
        cands = np.column_stack([match, self.cand, rep]).reshape(-1)
        hist = np.asarray(self.hist, dtype=float).reshape(-1)
        return np.concatenate([[self.t / self.horizon], cands, hist]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        r = self.np_random
        self.model = self.models[int(r.integers(len(self.models)))]
        taste = r.normal(0.0, 1.0, self.n_topics)
        self.taste = taste / np.abs(taste).max()  # in [-1, 1], the favourite topic at +-1
        self.t, self.last_topic = 0, -1
        self.hist = [[0.0] * HISTORY_FEATURES for _ in range(self.h)]
        self._draw_candidates()
        return self._obs(), {}

    def step(self, action):
        a = int(action)
        if not 0 <= a < self.k:
            raise ValueError(f"ShortVideo: action {action} outside 0..{self.k - 1}")
        topic, (q, l, h) = self.topics[a], self.cand[a]
        m, rep = float(self.taste[topic]), float(topic == self.last_topic)
        watch, likes, shares, leave = respond(self.model, m, q, l, h, rep)
        self.t += 1
        self.last_topic = topic
        if self.h:
            self.hist = [[rep, m, q - 0.5, watch, 1.0]] + self.hist[:-1]
        left = bool(self.np_random.uniform() < leave)
        self._draw_candidates()
        info = {"watch": float(watch), "likes": float(likes), "shares": float(shares)}
        return self._obs(), float(watch), left, (not left) and self.t >= self.horizon, info


def best_watch_action(obs: np.ndarray, model: UserModel, n_candidates: int = 5) -> np.ndarray:
    """The myopic watch-time maximiser (knowing ``model``): a scripted baseline, ``obs [B, D] -> [B]``."""
    c = np.asarray(obs)[:, 1 : 1 + n_candidates * CANDIDATE_FEATURES].reshape(len(obs), n_candidates, CANDIDATE_FEATURES)
    watch = respond(model, c[..., 0], c[..., 1], c[..., 2], c[..., 3], c[..., 4])[0]
    return watch.argmax(-1)
