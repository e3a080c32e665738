"""Episodes as token ids, through the chat template: observations are user turns, actions assistant turns.

A context for turn ``t`` is the template's rendering of the first ``t`` turns (each action as the ids the
agent wrote, ending in EOS) followed by observation ``t`` and the generation prompt. The text the template
puts between turns (``"user: ... assistant:"`` for the tiny models, ``<|im_start|>user ...`` for SmolLM2)
belongs to the observation segment; the action segment is exactly the action's ids plus EOS, the same ids
an LM actor samples. So :func:`encode_episode` gives one sequence per episode with a mask of the tokens the
agent chose, and the turn each belongs to: what BC, value learning and multi-turn PPO train on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlxf.agents.env import TextEnv
from rlxf.agents.episodes import Actor, TextEpisode
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_tokenizer

ROLE_WORDS = ["user:", "assistant:"]


def agent_tokenizer(words: list[str]):
    """A tiny word-level tokenizer for an environment's ``words()`` plus the chat template's role words."""
    return tiny_tokenizer(ROLE_WORDS + list(words))


def _render(tokenizer, messages: list[dict], generation: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:  # no template: one line per message
        text = "".join(m["content"] + "\n" for m in messages)
        return text
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _messages(observations: list[str], actions: list[str]) -> list[dict]:
    """Observations as user turns and the actions between them as assistant turns."""
    msgs = []
    for t, obs in enumerate(observations):
        msgs.append({"role": "user", "content": obs})
        if t < len(actions):
            msgs.append({"role": "assistant", "content": actions[t]})
    return msgs


def last_observation_text(tokenizer, observations: list[str], actions: list[str]) -> str:
    """The template text of the last observation's segment: what the template writes after the content of
    the action before it up to and including that turn's generation prompt (two renderings)."""
    t = len(observations) - 1
    before = _render(tokenizer, _messages(observations[:t], actions[:t]), False) if t else ""
    upto = _render(tokenizer, _messages(observations, actions[:t]), True)
    if not upto.startswith(before):
        raise ValueError("the chat template renders a conversation's prefix differently inside the whole "
                         "conversation; multi-turn rendering needs a prefix-stable template")
    return upto[len(before):]


def observation_texts(tokenizer, observations: list[str], actions: list[str]) -> list[str]:
    """The template text of each observation segment: segment ``t`` is what the template writes after
    action ``t-1``'s content up to and including the generation prompt of turn ``t``."""
    return [last_observation_text(tokenizer, observations[: t + 1], actions) for t in range(len(observations))]


@dataclass
class EncodedEpisode:
    """``ids`` of the whole episode, ``action_mask`` (True on tokens the agent wrote), ``turn`` (the turn
    index of each action token, -1 elsewhere) and ``spans`` (``[start, end)`` of each action's tokens)."""

    ids: list[int]
    action_mask: list[bool]
    turn: list[int]
    spans: list[tuple[int, int]]


def action_ids(policy: LanguagePolicy, episode: TextEpisode) -> list[list[int]]:
    """The ids of each action: the sampled ones when the episode kept them, else its text plus EOS."""
    if episode.action_ids is not None:
        return episode.action_ids
    return policy.encode_responses(episode.actions)


def encode_episode(policy: LanguagePolicy, episode: TextEpisode, upto: int | None = None,
                   final_observation: bool = False) -> EncodedEpisode:
    """Token ids of ``episode``'s first ``upto`` turns (default all); with ``final_observation`` the
    observation after the last action is appended (masked out), for a value of the state it reached."""
    upto = len(episode.actions) if upto is None else upto
    n_obs = upto + 1 if final_observation else upto
    obs = observation_texts(policy.tokenizer, episode.observations[: max(n_obs, 1)], episode.actions[:upto])
    acts = action_ids(policy, episode)[:upto]
    ids: list[int] = []
    mask: list[bool] = []
    turn: list[int] = []
    spans = []
    for t in range(max(upto, n_obs)):
        if t < n_obs:
            o = policy.encode([obs[t]])[0]
            ids += o
            mask += [False] * len(o)
            turn += [-1] * len(o)
        if t < upto:
            spans.append((len(ids), len(ids) + len(acts[t])))
            ids += acts[t]
            mask += [True] * len(acts[t])
            turn += [t] * len(acts[t])
    return EncodedEpisode(ids, mask, turn, spans)


def context_ids(policy: LanguagePolicy, episode: TextEpisode) -> list[int]:
    """The prompt for the episode's next action: every turn so far and the current observation."""
    return encode_episode(policy, episode, final_observation=True).ids


class Contexts:
    """:func:`context_ids` of running episodes, one turn longer on each call: each episode's ids are kept
    and extended by its last action's ids and its new observation's segment, so a turn renders two
    templates instead of the whole history (the ids are the same). Episodes must only grow between calls;
    only the episodes of the latest call are kept."""

    def __init__(self, policy: LanguagePolicy):
        self.policy = policy
        self.rows: dict[int, tuple[TextEpisode, int, list[int]]] = {}

    def __call__(self, episodes: list[TextEpisode]) -> list[list[int]]:
        rows, out = {}, []
        for ep in episodes:
            kept, n, ids = self.rows.get(id(ep), (None, 0, []))
            if kept is not ep or n > len(ep):
                ids = context_ids(self.policy, ep)
            elif n < len(ep):
                new = (ep.action_ids[n:] if ep.action_ids is not None
                       else self.policy.encode_responses(ep.actions[n:]))
                for t, act in enumerate(new, n):
                    seg = last_observation_text(self.policy.tokenizer, ep.observations[: t + 2], ep.actions)
                    ids = ids + act + self.policy.encode([seg])[0]
            rows[id(ep)] = (ep, len(ep), ids)
            out.append(ids)
        self.rows = rows
        return out


def lm_actor(policy: LanguagePolicy, max_new_tokens: int = 16, temperature: float = 1.0,
             generator: torch.Generator | None = None, max_context: int | None = None) -> Actor:
    """An actor that samples each action from ``policy`` given the episode's text so far. The sampled ids
    and their log-probs are kept on the episode (``action_ids``/``action_logps``) so training sees exactly
    what was sampled. ``max_context`` keeps only the last tokens of a long context (default: the model's
    positions less ``max_new_tokens``)."""
    if max_context is None:
        cfg = policy.model.config
        positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        max_context = positions - max_new_tokens if positions else None

    contexts = Contexts(policy)

    def act(envs: list[TextEnv], episodes: list[TextEpisode]) -> list[str]:
        prompts = contexts(episodes)
        if max_context is not None:
            prompts = [p[-max_context:] for p in prompts]
        with torch.no_grad():
            ro = policy.sample(prompts, 1, max_new_tokens=max_new_tokens, temperature=temperature,
                               generator=generator)
        texts = []
        for i, ep in enumerate(episodes):
            ids = list(ro.response_ids[i])
            n = len(ids)
            if ep.action_ids is None:
                ep.action_ids, ep.action_logps = [], []
            ep.action_ids.append(ids)
            ep.action_logps.append([float(x) for x in ro.steps.logps[i, :n]])
            texts.append(policy.decode(ids))
        return texts

    return act
