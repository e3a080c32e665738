"""RLGF (guided RL with a guide policy): roll-in/roll-out splicing and masks, the switch position,
beta = 0 as plain PPO, D2LOLS's switch, and the claim against PPO from the same start."""

import copy

import numpy as np
import pytest
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.controller import KLSettings, OnlineConfig, OnlineError, build_method, train_online
from rlxf.algorithms.online.ppo import Critic
from rlxf.algorithms.online.rlgf import GUIDE, PI, D2LOLS, AggreVaTeD, PPOPlusPlus, splice, switch_points
from rlxf.core.runs import Run
from rlxf.executors.local import LocalExecutor
from rlxf.lab.rlvr import arithmetic_tokenizer
from rlxf.lab.train import scalar_head
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm
from rlxf.rewards.scoring import Scorer, verifier_reward
from rlxf.tasks.arithmetic import ArithmeticTask, check_answer

T = 12


@pytest.fixture(scope="module")
def pair():
    """An untrained tiny learner and a differently initialised tiny guide on one tokenizer."""
    tok = arithmetic_tokenizer()
    pi = LanguagePolicy(tiny_causal_lm(tok, "gpt2", 1, 32, 2, 64, seed=0), tok)
    guide = LanguagePolicy(tiny_causal_lm(tok, "gpt2", 1, 32, 2, 64, seed=1), tok)
    prompts = pi.encode(ArithmeticTask(seed=0).prompts(6, "train"))
    return pi, guide, prompts


def critic_of(policy: LanguagePolicy) -> Critic:
    """PPO's value model from the policy's trunk, with a seeded new head."""
    torch.manual_seed(0)
    return Critic(scalar_head(policy.model, policy.tokenizer.pad_token_id), policy.tokenizer.pad_token_id)


def make(cls, pair, **kw):
    return cls(critic_of(pair[0]), pair[1], **kw)


def scorer_of(policy: LanguagePolicy) -> Scorer:
    """The verifier plus a length bonus, so an untrained policy's rewards vary too."""
    return Scorer({"verifier": (verifier_reward(policy.decode, check_answer), 1.0),
                   "len": (lambda s: torch.tensor([len(r) / T for r in s.response_ids]), 1.0)})


def cfg(k=4, **kw):
    return OnlineConfig(samples_per_prompt=k, max_new_tokens=T, kl=KLSettings(mode="none", monitor=False),
                        optim=OptimConfig(steps=2, batch_size=3, lr=1e-3, checkpoint_every=10**6), **kw)


def test_splice_joins_heads_and_tails_cuts_the_tail_and_names_owners():
    heads = [([1, 2], [-0.1, -0.2]), ([], []), ([3, 4, 5], [-0.3, -0.4, -0.5])]
    tails = [([7, 8, 9], [-0.7, -0.8, -0.9]), ([6], [-0.6]), ([], [])]
    responses, finished, logps, owner = splice(heads, tails, GUIDE, PI, [True, True, False], max_new_tokens=4)
    assert responses == [[1, 2, 7, 8], [6], [3, 4, 5]]
    assert finished == [False, True, False]  # row 0's tail was cut at 4 tokens
    assert owner.tolist() == [[GUIDE, GUIDE, PI, PI], [PI, 0, 0, 0], [GUIDE, GUIDE, GUIDE, 0]]
    assert torch.allclose(logps, torch.tensor([[-0.1, -0.2, -0.7, -0.8], [-0.6, 0, 0, 0], [-0.3, -0.4, -0.5, 0]]))


def test_switch_points_are_uniform_over_each_sequence():
    rng = np.random.default_rng(0)
    draws = np.array(switch_points([5] * 5000, rng))
    assert draws.min() == 0 and draws.max() == 4
    counts = np.bincount(draws, minlength=5)
    assert np.all(np.abs(counts - 1000) < 4 * np.sqrt(5000 * 0.2 * 0.8))
    assert switch_points([1, 1], rng) == [0, 0]


def test_ppo_pp_rollout_trains_only_the_learners_tokens_after_a_guide_prefix(pair):
    pi, guide, prompts = pair
    method = make(PPOPlusPlus, pair, beta=0.6)
    ro = method.rollout(LocalExecutor(), pi, 0, prompts, cfg(), seed=5)
    n = len(prompts) * 4
    assert len(ro.response_ids) == n and ro.prompt_ids == [p for p in prompts for _ in range(4)]
    mask = ro.steps.mask
    prefix = [len(r) - int(m) for r, m in zip(ro.response_ids, mask.sum(1))]
    guided = [h > 0 for h in prefix]
    for r, h, m in zip(ro.response_ids, prefix, mask):
        assert 1 <= len(r) <= T and m[:h].sum() == 0 and m[h:len(r)].sum() == len(r) - h  # a prefix, then pi
    # the guided share and the prefixes: the guide's own samples cut at a uniform point (0 is possible)
    rng = np.random.default_rng(5)
    chosen = np.flatnonzero(rng.random(n) < 0.6)
    assert set(np.flatnonzero(guided)) <= set(chosen)
    g = method._guide_sample([ro.prompt_ids[i] for i in chosen], cfg(), 6)
    cuts = switch_points([len(r) for r in g.response_ids], rng)
    assert [prefix[i] for i in chosen] == cuts
    assert all(ro.response_ids[i][:h] == g.response_ids[j][:h] for j, (i, h) in enumerate(zip(chosen, cuts)))
    # behaviour log-probs of the trained tokens are the learner's, given the guide's prefix as context
    scored = pi.score(ro.prompt_ids, ro.response_ids).logps
    assert torch.allclose(ro.steps.logps * mask, scored[:, : mask.shape[1]] * mask, atol=1e-4)
    assert method._counts == (float(mask.sum()), float(sum(prefix)))


def test_beta_zero_is_plain_ppo(pair, tmp_path):
    """PPO++ with beta = 0 samples plain PPO's rollout and, from the same start, trains the same weights."""
    pi, _, prompts = pair
    method = make(PPOPlusPlus, pair, beta=0.0)
    got = method.rollout(LocalExecutor(), pi, 0, prompts, cfg(), seed=9)
    want = LocalExecutor().sample(pi, 0, prompts, 4, T, 1.0, 1.0, 9)
    assert got.response_ids == want.response_ids and torch.equal(got.steps.logps, want.steps.logps)
    scorer = scorer_of(pi)
    weights = []
    for name in ("ppo", "ppo_pp"):
        policy = copy.deepcopy(pi)
        c = cfg(method=name, method_args={} if name == "ppo" else {"beta": 0.0})
        m = build_method(c, critic=critic_of(policy), guide=pair[1])
        train_online(Run(tmp_path / name, name), "rl", policy, policy, prompts, scorer, c, 0, method=m, quiet=True)
        weights.append(torch.cat([p.detach().flatten() for p in policy.model.parameters()]))
    assert not torch.equal(weights[0], torch.cat([p.detach().flatten() for p in pi.model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_aggrevated_rollout_trains_the_switch_action_on_the_guides_continuation(pair):
    pi, guide, prompts = pair
    method = make(AggreVaTeD, pair, beta=1.0)
    ro = method.rollout(LocalExecutor(), pi, 0, prompts, cfg(), seed=3)
    own = LocalExecutor().sample(pi, 0, prompts, 4, T, 1.0, 1.0, 3)  # the learner's roll-in, same seed
    policy_mask, value_mask = method._masks
    for i, r in enumerate(ro.response_ids):
        (switch,) = torch.nonzero(policy_mask[i]).flatten().tolist()  # exactly one trained token
        assert r[: switch + 1] == own.response_ids[i][: switch + 1]
        assert ro.steps.logps[i, switch] == own.steps.logps[i, switch]
        # the value is fitted on the guide's states only; GAE runs from the switch onward
        assert value_mask[i, : switch + 1].sum() == 0 and value_mask[i, switch + 1:].sum() == len(r) - switch - 1
        assert ro.steps.mask[i, :switch].sum() == 0 and ro.steps.mask[i, switch:].sum() == len(r) - switch
    assert method._counts[0] == float(policy_mask.sum() + sum(int(m.argmax()) for m in policy_mask))


def test_prepare_whitens_advantages_over_the_trained_tokens_only(pair, tmp_path):
    pi, _, prompts = pair
    scorer = scorer_of(pi)
    policy = copy.deepcopy(pi)
    method = make(AggreVaTeD, (policy, pair[1], prompts), beta=1.0)
    seen = []
    train_online(Run(tmp_path / "a", "a"), "rl", policy, policy, prompts, scorer, cfg(), 0, method=method, quiet=True,
                 on_rollout=seen.append)
    batch = seen[0]
    trained = batch.extra["policy_mask"] > 0
    adv = batch.extra["adv"]
    assert torch.all(adv[~trained] == 0)
    assert abs(float(adv[trained].mean())) < 1e-5 and abs(float(adv[trained].std()) - 1) < 1e-4
    assert batch.stats["guide_tokens"] > 0 and batch.stats["policy_tokens"] > 0


def test_d2lols_rolls_out_with_the_guide_before_tau_and_in_after(pair):
    pi, _, prompts = pair
    method = make(D2LOLS, pair, tau=2, beta=1.0, out_beta=1.0)
    assert [method.phase(i) for i in range(4)] == ["aggrevated", "aggrevated", "ppo++", "ppo++"]
    for index in range(4):
        ro = method.rollout(LocalExecutor(), pi, index, prompts, cfg(), seed=index)
        policy_mask, _ = method._masks
        lengths = torch.tensor([len(r) for r in ro.response_ids], dtype=torch.float)
        if index < 2:  # one trained token per row
            assert torch.equal(policy_mask.sum(1), torch.ones(len(lengths)))
        else:  # the learner's tokens after the guide's prefix: a suffix of each row
            trained = policy_mask.sum(1)
            assert torch.all((trained >= 1) & (trained <= lengths))
            assert all(policy_mask[i, len(r) - 1] == 1 for i, r in enumerate(ro.response_ids))


def test_d2lols_trains_through_both_phases_on_the_controller(pair, tmp_path):
    pi, _, prompts = pair
    policy = copy.deepcopy(pi)
    c = cfg(method="d2lols", method_args={"tau": 1, "beta": 0.5})
    seen = []
    train_online(Run(tmp_path / "d", "d"), "rl", policy, policy, prompts, scorer_of(pi), c, 0,
                 method=build_method(c, critic=critic_of(policy), guide=pair[1]), quiet=True, on_rollout=seen.append)
    first, second = (b.extra["policy_mask"] for b in seen)
    assert torch.all(first.sum(1) == 1) and bool((second.sum(1) > 1).any())  # one switch action, then suffixes
    assert not torch.equal(torch.cat([p.flatten() for p in policy.model.parameters()]),
                           torch.cat([p.flatten() for p in pi.model.parameters()]))


def test_bad_settings_name_the_option(pair):
    with pytest.raises(ValueError, match="beta must be in"):
        make(PPOPlusPlus, pair, beta=1.5)
    with pytest.raises(ValueError, match="tau must be >= 0"):
        make(D2LOLS, pair, tau=-1)
    with pytest.raises(OnlineError, match="method: ppo_pp needs guide"):
        build_method(cfg(method="ppo_pp"), critic=critic_of(pair[0]))


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured 2026-12-06 (seed 1): start 0.265, guide 0.567, PPO 0.278, PPO++ "
                   "0.283; PPO++ - PPO = +0.0050 +- 0.0077 se over 500 paired problems (0.65 se < 2 se); learner + "
                   "guide tokens 80265 + 25982 vs PPO's 106073, 3840 trajectories each")
def test_ppo_pp_beats_ppo_from_the_same_start_at_equal_samples(arith_prover, tmp_path):
    """The claim, at toy scale. Start: the weak ``arith_prover`` (~27% exact at T=1); guide: a copy
    SFT'd 600 more steps on 8000 fresh worked solutions (~57% exact at T=1). The guided variant,
    chosen before this test's first run: PPO++ with beta = 0.5 (PPO++ beta 0.8/0.5 and AggreVaTeD
    were tried once each on a development seed, 0; this test uses seed 1 and other eval samples).
    Both arms: the binary verifier reward (``check_answer``, no step weight), the same critic init,
    lam = 1, lr 1e-4, 60 rollouts of 16 prompts x 4 sequences (48 tokens at most), one update per
    rollout. Equal: the number of trajectories (3840), rollouts and optimiser steps; a PPO++
    trajectory's tokens are the guide's prefix plus the learner's continuation, and both counts are
    reported beside PPO's. Gold: exact match at T=1, 4 samples on each of 500 held-out problems.
    Threshold (set before the first run): PPO++ minus PPO, paired over the 500 problems, is above 0
    and at least 2 standard errors."""
    from rlxf.algorithms.sft import train_sft
    from rlxf.lab.rlvr import sample_responses

    task = ArithmeticTask(seed=0)
    guide = copy.deepcopy(arith_prover)
    corpus = task.corpus(8000)
    train_sft(Run(tmp_path / "guide", "guide"), "sft", guide, guide.encode([c["prompt"] for c in corpus]),
              guide.encode_responses([c["completion"] for c in corpus]),
              OptimConfig(steps=600, batch_size=32, lr=2e-3, checkpoint_every=10**6), 1, True)
    guide.model.eval()
    prompts = arith_prover.encode(task.prompts(2000, "train"))
    test = task.prompts(500, "test")

    def gold(policy) -> np.ndarray:
        groups = sample_responses(policy, test, 4, seed=7)
        return np.array([np.mean([check_answer(q, t) for t in ts]) for q, ts in zip(test, groups)])

    scores, tokens = {}, {}
    for name, args in (("ppo", {"lam": 1.0}), ("ppo_pp", {"lam": 1.0, "beta": 0.5})):
        policy = copy.deepcopy(arith_prover)
        c = OnlineConfig(method=name, method_args=args, samples_per_prompt=4, max_new_tokens=48,
                         kl=KLSettings(mode="none", monitor=False),
                         optim=OptimConfig(steps=60, batch_size=16, lr=1e-4, checkpoint_every=10**6))
        counts = []
        train_online(Run(tmp_path / name, name), "rl", policy, policy, prompts,
                     Scorer({"verifier": (verifier_reward(policy.decode, check_answer), 1.0)}), c, 1,
                     method=build_method(c, critic=critic_of(policy), guide=guide), quiet=True,
                     on_rollout=lambda b: counts.append((len(b.samples), b.stats.get("policy_tokens", float(
                         b.steps.mask.sum())), b.stats.get("guide_tokens", 0.0))))
        scores[name], tokens[name] = gold(policy), np.sum(counts, 0)
    diff = scores["ppo_pp"] - scores["ppo"]
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    print(f"start {gold(arith_prover).mean():.3f} guide {gold(guide).mean():.3f} ppo {scores['ppo'].mean():.3f} "
          f"ppo++ {scores['ppo_pp'].mean():.3f} diff {diff.mean():+.4f} se {se:.4f}; trajectories/learner/guide "
          f"tokens ppo {tokens['ppo'].tolist()} ppo++ {tokens['ppo_pp'].tolist()}")
    assert tokens["ppo"][0] == tokens["ppo_pp"][0] == 60 * 16 * 4
    assert diff.mean() > 0 and diff.mean() >= 2 * se
