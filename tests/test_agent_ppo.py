"""Multi-turn PPO: turn-level credit on hand numbers, the episode layout the controller trains on, the
rollout hook and errors. (No claim test yet: see docs/agents.md, LMRL Gym.)"""

from __future__ import annotations

import pytest
import torch

from rlxf.agents.episodes import run_episodes
from rlxf.agents.ppo import (
    EpisodeLayout,
    MultiTurnPPO,
    layout_episodes,
    seed_prompts,
    spread,
    turn_advantages,
    turn_rewards,
)
from rlxf.agents.render import agent_tokenizer, encode_episode, lm_actor
from rlxf.agents.tasks.corridor import Corridor
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.controller import KLSettings, OnlineConfig, OnlineError, train_online
from rlxf.algorithms.online.ppo import Critic
from rlxf.core.runs import Run
from rlxf.lab.train import scalar_head
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm
from rlxf.rewards.scoring import Scorer


@pytest.fixture(scope="module")
def policy():
    tok = agent_tokenizer(Corridor(length=3).words())
    return LanguagePolicy(tiny_causal_lm(tok, "gpt2", 1, 32, 2, 128, seed=0), tok)


def critic_of(policy: LanguagePolicy) -> Critic:
    torch.manual_seed(0)
    return Critic(scalar_head(policy.model, policy.tokenizer.pad_token_id), policy.tokenizer.pad_token_id)


def hand_layout(terminated_b: bool) -> EpisodeLayout:
    """Two episodes by hand: A has 3 turns of 2 tokens at columns 0-1, 3-4, 6-7 (terminated); B has 2 turns
    at 0-1 and 3-4, and its placeholder (last observation's value) at column 6."""
    turn = torch.tensor([[0, 0, -1, 1, 1, -1, 2, 2, -1], [0, 0, -1, 1, 1, -1, -1, -1, -1]])
    return EpisodeLayout(prompt_ids=[], response_ids=[], action_mask=(turn >= 0).float(), logps=torch.zeros(2, 9),
                         turn=turn, starts=torch.tensor([[0, 3, 6], [0, 3, 0]]),
                         turn_mask=torch.tensor([[1.0, 1, 1], [1, 1, 0]]), last=torch.tensor([8, 6]),
                         rewards=torch.tensor([[-1.0, -1, 0], [-1, -1, 0]]),
                         terminated=torch.tensor([True, terminated_b]))


def test_turn_rewards_add_each_tokens_penalty_to_its_own_turn():
    turn = torch.tensor([[0, 0, -1, 1, -1]])
    tok = torch.tensor([[0.1, 0.2, 5.0, 0.4, 7.0]])  # 5.0 and 7.0 sit on observation tokens: ignored
    assert torch.allclose(turn_rewards(torch.tensor([[-1.0, 2.0]]), tok, turn), torch.tensor([[-0.7, 2.4]]))


def test_spread_gives_every_action_token_its_turns_value():
    turn = torch.tensor([[0, 0, -1, 1, -1, 2]])
    assert spread(torch.tensor([[3.0, -1.0, 0.5]]), turn).tolist() == [[3.0, 3.0, 0.0, -1.0, 0.0, 0.5]]


def test_turn_level_gae_on_hand_numbers_bootstraps_only_truncated_episodes():
    """gamma 0.9, lambda 0.5. A (terminated): V = -2, -1, -0.5 at its turn starts, rewards -1, -1, 0:
    deltas 0.1, -0.45, 0.5 -> A_2 = 0.5, A_1 = -0.45 + 0.45 * 0.5 = -0.225, A_0 = 0.1 + 0.45 * -0.225 = -0.00125.
    B (truncated): V = -4, -3.5, bootstrap V(last obs) = -3: deltas -1 + 0.9 * -3.5 + 4 = -0.15 and
    -1 + 0.9 * -3 + 3.5 = -0.2 -> A_1 = -0.2, A_0 = -0.15 + 0.45 * -0.2 = -0.24."""
    values = torch.zeros(2, 9)
    values[0, [0, 3, 6, 8]] = torch.tensor([-2.0, -1.0, -0.5, 99.0])  # 99: A's placeholder, never read
    values[1, [0, 3, 6]] = torch.tensor([-4.0, -3.5, -3.0])
    values[:, 1] = 50.0  # a value inside a turn (not its first token) is never read
    adv, ret = turn_advantages(hand_layout(False), values, torch.zeros(2, 9), 0.9, 0.5)
    assert torch.allclose(adv, torch.tensor([[-0.00125, -0.225, 0.5], [-0.24, -0.2, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, adv + torch.tensor([[-2.0, -1.0, -0.5], [-4.0, -3.5, 0.0]]), atol=1e-6)
    # B terminated instead: no bootstrap, so its last delta is -1 + 3.5 = 2.5
    adv_t, _ = turn_advantages(hand_layout(True), values, torch.zeros(2, 9), 0.9, 0.5)
    assert adv_t[1, 1].item() == pytest.approx(2.5)
    # KL penalties on a turn's tokens count in its reward: -0.3 on turn 2 of A lowers A_2 by 0.3
    tok = torch.zeros(2, 9)
    tok[0, 6], tok[0, 7] = -0.1, -0.2
    adv_k, _ = turn_advantages(hand_layout(False), values, tok, 0.9, 0.5)
    assert adv_k[0, 2].item() == pytest.approx(0.2)


def test_layout_masks_the_agents_tokens_and_keeps_its_sampled_logprobs(policy):
    eps = run_episodes(lambda: Corridor(length=3, max_turns=3), lm_actor(policy, 4, generator=torch.Generator().manual_seed(0)),
                       [0, 1, 2])
    lay = layout_episodes(policy, eps)
    eos = policy.tokenizer.eos_token_id
    for i, ep in enumerate(eps):
        enc = encode_episode(policy, ep, final_observation=True)
        assert lay.prompt_ids[i] + lay.response_ids[i] == enc.ids + [eos]
        head = len(lay.prompt_ids[i])
        assert lay.action_mask[i, : len(lay.response_ids[i])].bool().tolist() == enc.action_mask[head:] + [False]
        assert lay.starts[i, : len(ep)].tolist() == [a - head for a, _ in enc.spans]
        assert lay.last[i].item() == len(lay.response_ids[i]) - 1
        assert lay.terminated[i].item() == ep.terminated
    # the behaviour log-probs the actor kept are the policy's own log-probs of those tokens in the whole episode
    scored = policy.score(lay.prompt_ids, lay.response_ids).logps
    W = scored.shape[1]
    m = lay.action_mask[:, :W] > 0
    assert torch.allclose(scored[m], lay.logps[:, :W][m], atol=1e-4)


def test_layout_refuses_episodes_longer_than_the_model_and_scripted_ones(policy):
    tok = policy.tokenizer
    short = LanguagePolicy(tiny_causal_lm(tok, "gpt2", 1, 32, 2, 16, seed=0), tok)
    eps = run_episodes(lambda: Corridor(length=3, max_turns=6), lm_actor(short, 2, generator=torch.Generator().manual_seed(0)),
                       [0])
    with pytest.raises(OnlineError, match="positions"):
        layout_episodes(short, eps)
    scripted = run_episodes(lambda: Corridor(length=3), lambda envs, _eps: ["right"] * len(envs), [0])
    with pytest.raises(ValueError, match="lm_actor"):
        layout_episodes(policy, scripted)


def cfg(steps=2, k=2, batch=2):
    return OnlineConfig(samples_per_prompt=k, max_new_tokens=4, kl=KLSettings(mode="reward", coef=0.01),
                        optim=OptimConfig(steps=steps, batch_size=batch, lr=1e-3, checkpoint_every=10**6))


def test_the_controller_trains_on_whole_episodes_with_ratio_one_at_the_first_update(policy, tmp_path):
    import copy

    pi = LanguagePolicy(copy.deepcopy(policy.model), policy.tokenizer)
    method = MultiTurnPPO(critic_of(pi), make=lambda: Corridor(length=3, max_turns=3))
    seen = []
    run = Run(tmp_path / "r", "r")
    train_online(run, "ppo", pi, policy, seed_prompts([10, 11, 12]), Scorer({}), cfg(), 0,
                 method=method, quiet=True, on_rollout=seen.append)
    batch = seen[0]
    assert len(batch.samples) == 4 and batch.k == 2  # 2 seeds x 2 episodes
    assert {e.seed for e in method.episodes} <= {10, 11, 12}
    assert "success" in batch.stats and "env_return" in batch.stats
    # value loss only on each turn's first token, advantages only on action tokens
    assert bool((batch.extra["value_mask"] <= batch.steps.mask).all())
    assert float(batch.extra["value_mask"].sum()) == sum(len(e) for e in method.episodes)  # one per turn
    assert bool((batch.extra["adv"][batch.steps.mask == 0] == 0).all())
    first = run.metrics("ppo")[0]
    assert abs(first["approx_kl"]) < 1e-5 and first["clip_frac"] == 0.0  # behaviour log-probs = the learner's


def test_bad_prompts_and_a_missing_env_are_named(policy):
    with pytest.raises(OnlineError, match="needs an environment"):
        MultiTurnPPO(critic_of(policy))
    method = MultiTurnPPO(critic_of(policy), env="corridor", env_args={"length": 3})
    with pytest.raises(OnlineError, match="seed_prompts"):
        method.rollout(None, policy, 0, [[1, 2]], cfg(), 0)
