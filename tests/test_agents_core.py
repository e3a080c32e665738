"""The agents core: the text-environment contract, plug-in loading, episodes on disk, and rendering."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlxf.agents.env import EnvError, TextEnv, VecTextEnv, make_env
from rlxf.agents.episodes import (
    EpisodeFileError,
    TextEpisode,
    read_episodes,
    run_episodes,
    scripted_dataset,
    skill_actor,
    success_rate,
    write_episodes,
)
from rlxf.agents.render import Contexts, agent_tokenizer, context_ids, encode_episode, lm_actor, observation_texts
from rlxf.agents.tasks.corridor import Corridor
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm


def test_invalid_action_is_a_penalised_event_not_an_exception():
    env = Corridor(length=3, max_turns=5)
    env.reset(0)
    obs, reward, term, trunc, info = env.step("fly away")
    assert info["invalid"] and reward == -2.0 and not term and not trunc and "invalid action" in obs
    obs, reward, term, trunc, info = env.step("right")
    assert not info["invalid"] and reward == -1.0 and obs == "at 1 goal 2"
    obs, reward, term, trunc, info = env.step(" RIGHT ")
    assert term and not trunc and reward == 0.0 and env.success()


def test_turn_limit_truncates_and_a_finished_episode_refuses_steps():
    env = Corridor(length=4, max_turns=2)
    env.reset(0)
    env.step("left")
    _, _, term, trunc, info = env.step("nonsense")  # invalid turns count towards the limit
    assert trunc and not term and info["turn"] == 2
    with pytest.raises(EnvError, match="finished episode"):
        env.step("right")
    with pytest.raises(EnvError, match="before reset"):
        Corridor().step("right")


def test_vectorised_envs_step_only_the_running_ones():
    vec = VecTextEnv([Corridor(length=2), Corridor(length=3)])
    vec.reset([0, 1])
    out = vec.step(["right", "right"])
    assert out[0][2] and not out[1][2] and vec.active() == [1]
    with pytest.raises(ValueError, match="1 running"):
        vec.step(["right", "right"])


def test_make_env_loads_builtins_and_user_files_and_names_bad_specs(tmp_path):
    assert isinstance(make_env("corridor", length=5), Corridor) and make_env("corridor", length=5).length == 5
    f = tmp_path / "my_envs.py"
    f.write_text("from rlxf.agents.tasks.corridor import Corridor\n"
                 "def make(n=3):\n    return Corridor(length=n)\n"
                 "def not_env():\n    return 42\n")
    assert make_env(f"{f}:make", n=6).length == 6
    with pytest.raises(EnvError, match="returned a int"):
        make_env(f"{f}:not_env")
    with pytest.raises(EnvError, match="has no 'missing'"):
        make_env(f"{f}:missing")
    with pytest.raises(EnvError, match="not a built-in"):
        make_env("no_such_env")
    with pytest.raises(EnvError, match="does not take these options"):
        make_env("corridor", colour="red")


def test_returns_to_go_bootstrap_only_truncated_episodes():
    ep = TextEpisode("x", 0, ["a", "b", "c"], ["l", "r"], [1.0, 2.0], truncated=True)
    assert ep.returns_to_go(0.5, bootstrap=4.0) == [1.0 + 0.5 * (2.0 + 0.5 * 4.0), 2.0 + 0.5 * 4.0]
    ep.truncated, ep.terminated = False, True
    assert ep.returns_to_go(0.5, bootstrap=4.0) == [2.0, 2.0]


def test_scripted_skill_levels_order_returns_and_the_expert_is_optimal():
    data = scripted_dataset(lambda: Corridor(length=4, max_turns=8), {"expert": 1.0, "random": 0.0}, 30)
    expert = [e for e in data if e.policy == "expert"]
    rand = [e for e in data if e.policy == "random"]
    assert all(e.ret == -2.0 and e.success and len(e) == 3 for e in expert)  # shortest path: 3 moves
    assert sum(e.ret for e in rand) / 30 < -2.0 and success_rate(expert) == (1.0, 0.0)
    assert len({e.seed for e in data}) == 60
    with pytest.raises(ValueError, match="skill"):
        skill_actor(1.5)


def test_episodes_round_trip_and_bad_files_name_line_and_field(tmp_path):
    data = scripted_dataset(lambda: Corridor(), {"noisy": 0.5}, 4, seed=3)
    path = write_episodes(tmp_path / "d" / "eps.jsonl", data)
    back = read_episodes(path)
    assert [(e.actions, e.rewards, e.success, e.policy, e.seed) for e in back] == \
           [(e.actions, e.rewards, e.success, e.policy, e.seed) for e in data]
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[2]["observations"] = rows[2]["observations"][:-1]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(EpisodeFileError, match=r"eps.jsonl:3: field 'observations'"):
        read_episodes(path)
    path.write_text('{"env": "x", "observations": ["a"], "actions": [], "rewards": [], "seed": "one"}')
    with pytest.raises(EpisodeFileError, match=r":1: field 'seed' should be a int"):
        read_episodes(path)
    with pytest.raises(EpisodeFileError, match="no such"):
        read_episodes(tmp_path / "none.jsonl")


@pytest.fixture(scope="module")
def corridor_policy():
    torch.manual_seed(0)
    tok = agent_tokenizer(Corridor().words())
    return LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=32), tok)


def test_encoding_masks_exactly_the_action_tokens(corridor_policy):
    pol, tok = corridor_policy, corridor_policy.tokenizer
    ep = run_episodes(lambda: Corridor(length=3), skill_actor(1.0), [0])[0]
    enc = encode_episode(pol, ep)
    words = tok.convert_ids_to_tokens(enc.ids)
    assert words == ["user:", "at", "0", "goal", "2", "assistant:", "right", "<eos>",
                     "user:", "at", "1", "goal", "2", "assistant:", "right", "<eos>"]
    assert [w for w, m in zip(words, enc.action_mask) if m] == ["right", "<eos>"] * 2
    assert enc.turn == [-1] * 6 + [0, 0] + [-1] * 6 + [1, 1] and enc.spans == [(6, 8), (14, 16)]
    # the prompt for a turn is the encoding of the turns before it plus the current observation
    partial = TextEpisode(ep.env, 0, ep.observations[:2], ep.actions[:1], ep.rewards[:1])
    assert context_ids(pol, partial) == enc.ids[:14]
    assert observation_texts(tok, ep.observations, ep.actions)[1] == "user: at 1 goal 2\nassistant:"


def test_contexts_grow_by_a_turn_to_the_ids_of_the_whole_history(corridor_policy):
    pol = corridor_policy
    full = run_episodes(lambda: Corridor(length=3, max_turns=4), skill_actor(0.5, seed=1), [5])[0]
    ep = TextEpisode(full.env, full.seed, full.observations[:1])
    contexts = Contexts(pol)
    for t in range(len(full) + 1):
        assert contexts([ep]) == [context_ids(pol, ep)]
        if t < len(full):
            ep.actions.append(full.actions[t])
            ep.observations.append(full.observations[t + 1])
    assert len(full) >= 2 and contexts([TextEpisode(ep.env, 0, ep.observations[:1])]) == [
        context_ids(pol, TextEpisode(ep.env, 0, ep.observations[:1]))]  # a new episode starts over


def test_lm_actor_keeps_what_it_sampled_and_training_sees_the_same_ids(corridor_policy):
    pol = corridor_policy
    g = torch.Generator().manual_seed(0)
    eps = run_episodes(lambda: Corridor(length=3, max_turns=3), lm_actor(pol, 3, generator=g), [0, 1])
    for ep in eps:
        assert len(ep.action_ids) == len(ep.actions) == len(ep.action_logps)
        enc = encode_episode(pol, ep)
        assert [enc.ids[a:b] for a, b in enc.spans] == ep.action_ids
        # the sampler's log-probs are the policy's log-probs of those tokens in that context
        ctx = TextEpisode(ep.env, ep.seed, ep.observations[:1])
        steps = pol.steps([context_ids(pol, ctx)], [ep.action_ids[0]])
        n = len(ep.action_ids[0])
        assert torch.allclose(steps.logps[0, :n], torch.tensor(ep.action_logps[0]), atol=1e-4)
