"""Control policies produce Steps that the language-model losses train unchanged."""

import math

import torch

from rlxf.core.steps import Steps
from rlxf.objectives.preference import dpo_loss, dpo_margin
from rlxf.policies.control import CategoricalMLPPolicy, GaussianMLPPolicy, MLPCritic

NAN = float("nan")


def test_categorical_steps_are_log_softmax_gathered():
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(obs_dim=3, n_actions=4, hidden=8)
    obs = torch.randn(2, 3, 3)
    actions = torch.tensor([[0, 3, 1], [2, 2, -1]])  # -1 on padding must not break the gather
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    obs[1, 2] = NAN
    steps = policy.steps(obs, actions, mask)
    logits = policy.net(obs.nan_to_num()).tolist()
    for b in range(2):
        for t in range(3):
            if mask[b, t]:
                row = logits[b][t]
                by_hand = row[actions[b, t]] - math.log(sum(math.exp(x) for x in row))
                assert abs(steps.logps[b, t].item() - by_hand) < 1e-5
    steps.sum().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters())


def test_act_is_reproducible_with_a_generator():
    policy = CategoricalMLPPolicy(obs_dim=3, n_actions=5)
    obs = torch.randn(64, 3)
    a1, lp1 = policy.act(obs, generator=torch.Generator().manual_seed(1))
    a2, lp2 = policy.act(obs, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a1, a2) and a1.shape == (64,) and not lp1.requires_grad
    assert torch.allclose(lp1, policy.log_prob(obs, a1))


def test_gaussian_logp_is_the_normal_density():
    torch.manual_seed(1)
    policy = GaussianMLPPolicy(obs_dim=4, act_dim=2, hidden=8)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-0.5, 0.3]))
    obs, actions = torch.randn(2, 3, 4), torch.randn(2, 3, 2)
    steps = policy.steps(obs, actions, torch.ones(2, 3))
    mean = policy.mean(obs).tolist()
    for b in range(2):
        for t in range(3):
            by_hand = 0.0
            for d, log_s in enumerate([-0.5, 0.3]):
                z = (actions[b, t, d].item() - mean[b][t][d]) / math.exp(log_s)
                by_hand += -0.5 * z * z - log_s - 0.5 * math.log(2 * math.pi)
            assert abs(steps.logps[b, t].item() - by_hand) < 1e-5
    a, lp = policy.act(obs[:, 0], generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 2) and torch.allclose(lp, policy.log_prob(obs[:, 0], a))


def test_critic_values_shape_and_padding():
    critic = MLPCritic(obs_dim=3, hidden=8)
    obs = torch.randn(2, 4, 3)
    obs[0, 3] = NAN
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    v = critic.values(obs, mask)
    assert v.shape == (2, 4) and v[0, 3] == 0 and torch.isfinite(v).all()
    assert torch.allclose(v[1], critic.values(obs[1]))


def test_dpo_on_control_segments_increases_the_margin():
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(obs_dim=4, n_actions=3, hidden=32)
    ref = policy.frozen_copy()
    ref_weight_before = ref.net[0].weight.clone()
    obs_w, obs_l = torch.randn(16, 6, 4), torch.randn(16, 6, 4)
    act_w, act_l = torch.randint(0, 3, (16, 6)), torch.randint(0, 3, (16, 6))
    mask = torch.ones(16, 6)
    mask[::2, 4:] = 0  # segments of different lengths

    def pair():
        return policy.steps(obs_w, act_w, mask, ref=ref), policy.steps(obs_l, act_l, mask, ref=ref)

    chosen, rejected = pair()
    assert isinstance(chosen, Steps) and not chosen.ref_logps.requires_grad
    assert torch.allclose(chosen.logps, chosen.ref_logps)  # a fresh copy: margin starts at 0
    start = dpo_margin(chosen, rejected).mean().item()
    start_loss = dpo_loss(chosen, rejected, beta=0.5).mean().item()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(30):
        loss = dpo_loss(*pair(), beta=0.5).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    chosen, rejected = pair()
    assert dpo_margin(chosen, rejected).mean().item() > start + 2.0
    assert dpo_loss(chosen, rejected, beta=0.5).mean().item() < start_loss - 0.2
    assert torch.equal(ref.net[0].weight, ref_weight_before)  # the reference did not move
    assert not torch.equal(policy.net[0].weight, ref_weight_before)


def test_flat_parameters_train_exactly_like_separate_ones():
    """Views into one buffer: the same gradients, the same clipped norm and the same Adam steps
    as the per-tensor path, and state_dict / load_state_dict still read and write the modules."""
    from rlxf.policies.control import FlatParameters

    def build():
        torch.manual_seed(3)
        return CategoricalMLPPolicy(4, 2, hidden=8), MLPCritic(4, hidden=8)

    obs, act = torch.randn(32, 4), torch.randint(0, 2, (32,))
    a_pol, a_cri = build()
    b_pol, b_cri = build()
    flat = FlatParameters(b_pol, b_cri)
    params = list(a_pol.parameters()) + list(a_cri.parameters())
    opt_a = torch.optim.Adam(params, lr=1e-2)
    opt_b = torch.optim.Adam([flat.param], lr=1e-2)
    for _ in range(3):
        loss_a = -a_pol.log_prob(obs, act).mean() * 50 + a_cri.values(obs).pow(2).mean()
        loss_b = -b_pol.log_prob(obs, act).mean() * 50 + b_cri.values(obs).pow(2).mean()
        opt_a.zero_grad()
        flat.zero_grad()
        loss_a.backward()
        loss_b.backward()
        norm_a = torch.nn.utils.clip_grad_norm_(params, 0.5)
        norm_b = flat.clip_grad_norm(0.5)
        assert norm_a.item() > 0.5 and abs(norm_a.item() - norm_b.item()) < 1e-5  # clipping was active
        opt_a.step()
        opt_b.step()
    for x, y in zip(params, list(b_pol.parameters()) + list(b_cri.parameters())):
        assert torch.allclose(x, y, atol=1e-6)
    state = {k: v.clone() for k, v in b_pol.state_dict().items()}
    b_pol.load_state_dict({k: torch.zeros_like(v) for k, v in state.items()})
    assert flat.param.abs().sum() > 0 and b_pol.net[0].weight.abs().sum() == 0  # writes reach the buffer views
    assert torch.equal(flat.param[: b_pol.net[0].weight.numel()], torch.zeros(b_pol.net[0].weight.numel()))
