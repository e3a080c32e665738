"""Diffusion core (EDM scalings, loss, Karras grid, DDIM step, guidance) by hand, and BESO's claim."""

import math

import numpy as np
import pytest
import torch

from rlxf.algorithms.control.diffusion import Denoiser, DiffusionConfig, sample
from rlxf.algorithms.loop import OptimConfig
from rlxf.objectives.diffusion import (classifier_free, ddim_step, denoising_loss, edm_scalings, karras_sigmas,
                                       log_logistic_sigmas, pgd_guidance_scale, unit_norm)


def test_edm_scalings_and_the_loss_weighting_by_hand():
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor([0.5]), 0.5)
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(0.25 / math.sqrt(0.5))
    assert c_in.item() == pytest.approx(1 / math.sqrt(0.5))
    assert c_noise.item() == pytest.approx(math.log(0.5) / 4)
    # x = 1, x_sigma = 1.5: target (1 - 0.5 * 1.5) / 0.35355 = 0.70711; F = 0 costs 0.5
    x, noised, sigma = torch.ones(1, 1), torch.full((1, 1), 1.5), torch.tensor([0.5])
    assert denoising_loss(torch.zeros(1, 1), x, noised, sigma, 0.5).item() == pytest.approx(0.5)
    exact = torch.full((1, 1), math.sqrt(0.5))
    assert denoising_loss(exact, x, noised, sigma, 0.5).item() == pytest.approx(0, abs=1e-12)
    # the same as ||D - x||^2 / c_out^2 with D = c_skip x_sigma + c_out F
    f = torch.tensor([[0.3]])
    d = 0.5 * 1.5 + (0.25 / math.sqrt(0.5)) * 0.3
    assert denoising_loss(f, x, noised, sigma, 0.5).item() == pytest.approx((d - 1) ** 2 / 0.125)


def test_karras_grid_ddim_step_and_guidance_terms_by_hand():
    s = karras_sigmas(3, 0.005, 1.0, 5.0)
    mid = (1 + 0.5 * (0.005 ** 0.2 - 1)) ** 5  # 0.13836
    assert s.tolist() == pytest.approx([1.0, mid, 0.005, 0.0], rel=1e-5)
    with pytest.raises(ValueError, match="sampler steps"):
        karras_sigmas(0, 0.005, 1.0, 5.0)
    assert ddim_step(torch.tensor(1.0), torch.tensor(0.2), 1.0, 0.5).item() == pytest.approx(0.6)
    assert ddim_step(torch.tensor(1.0), torch.tensor(0.2), 0.5, 0.0).item() == pytest.approx(0.2)  # last step: D
    assert classifier_free(torch.tensor(1.0), torch.tensor(3.0), 1.5).item() == 4.0
    assert pgd_guidance_scale(0, 4, 1.0) == pytest.approx(1 + 0.3 * math.sin(math.pi / 4))
    assert pgd_guidance_scale(2, 4, 2.0) == pytest.approx(2 * (0.5 + 0.3 * math.sin(3 * math.pi / 4)))
    assert pgd_guidance_scale(3, 4, 2.0) == 0.0  # no guidance at the last step
    assert torch.allclose(unit_norm(torch.tensor([[3.0, 4.0], [0.0, 0.5]])), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_training_noise_levels_stay_in_bounds_and_centre_on_the_location():
    g = torch.Generator().manual_seed(0)
    s = log_logistic_sigmas(20_000, -1.0, 0.5, 0.005, 1.0, g)
    assert s.min() >= 0.005 and s.max() <= 1.0
    wide = log_logistic_sigmas(20_000, -1.0, 0.5, 1e-6, 1e6, g)
    assert wide.log().median().item() == pytest.approx(-1.0, abs=0.03)


def test_denoiser_preconditioning_and_the_sampler_land_on_the_denoised_point():
    model = Denoiser(2, 1, 8, 0.5)
    torch.nn.init.zeros_(model.net[-1].weight)
    torch.nn.init.zeros_(model.net[-1].bias)
    x, sigma = torch.ones(3, 2), torch.full((3,), 0.5)
    assert torch.allclose(model(x, sigma, torch.zeros(3, 1)), 0.5 * x)  # D = c_skip x when F = 0

    class Constant(torch.nn.Module):  # the exact denoiser of data concentrated on (0.3, -0.7)
        x_dim = 2

        def forward(self, x, sigma, cond, dropped=None):
            return torch.tensor([0.3, -0.7]).expand_as(x)

    cfg = DiffusionConfig(OptimConfig(), steps=3)
    out = sample(Constant(), torch.zeros(5, 1), cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(out, torch.tensor([0.3, -0.7]).expand(5, 2))
    shift = sample(Constant(), torch.zeros(5, 1), cfg, guide=lambda x, k, n: torch.full_like(x, 0.1 * (k == n - 1)))
    assert torch.allclose(shift, torch.tensor([0.4, -0.6]).expand(5, 2))


# -- BESO's claim ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def beso_runs():
    from rlxf.algorithms.control.beso import study

    return [study(seed) for seed in (0, 1, 2)]


@pytest.mark.slow
def test_beso_beats_bc_mlp_and_keeps_both_routes(beso_runs):
    """Pre-registered (committed before its first run): on rlxf/GoalReach2D-v0 with 100 scripted demonstrations
    (half "up", half "right"), seeds 0, 1, 2, 100 held-out starts and goals per seed, BESO (2000 steps, 3 DDIM
    steps, chunks of 4) beats BC-MLP's success by >= 2 paired standard errors over the 300 paired episodes, and
    each route's share among BESO's successful episodes is >= 0.2."""
    from rlxf.algorithms.control.beso import route_shares
    from rlxf.algorithms.evaluate import paired_gain

    beso = np.concatenate([r["beso"] for r in beso_runs])
    bc = np.concatenate([r["bc_mlp"] for r in beso_runs])
    gain, se = paired_gain(beso, bc)
    shares = route_shares(beso, sum((r["beso_routes"] for r in beso_runs), []))
    print(f"BESO {beso.mean():.3f} BC-MLP {bc.mean():.3f} gain {gain:.3f} +- {se:.3f} shares {shares}")
    assert gain >= 2 * se, (gain, se)
    assert min(shares.values()) >= 0.2, shares


# -- Policy-guided diffusion -------------------------------------------------------------------------------

def test_windows_round_trip_and_guidance_moves_only_actions_toward_the_policy():
    from rlxf.algorithms.control.pgd import WindowCodec, policy_guide, windows
    from rlxf.data.transitions import Episode, TransitionDataset
    from rlxf.policies.control import GaussianMLPPolicy

    ep = Episode(torch.arange(12.0).view(4, 3), torch.tensor([[0.5], [-0.5], [1.0]]), torch.tensor([1.0, 2.0, 3.0]),
                 False, True)
    raw = windows(TransitionDataset([ep]), 2)
    assert raw.shape == (2, 2 * 5 + 3)
    assert raw[1].tolist() == [3, 4, 5, -0.5, 2, 6, 7, 8, 1.0, 3, 9, 10, 11]
    codec = WindowCodec(3, 1, 2, torch.zeros(13), torch.ones(13))
    obs, acts, rew = codec.split(raw)
    assert obs[1].tolist() == ep.obs[1:4].tolist() and acts[1].flatten().tolist() == [-0.5, 1.0]
    assert rew[1].tolist() == [2.0, 3.0]
    policy = GaussianMLPPolicy(3, 1, 8)
    guide = policy_guide(policy, codec, coef=2.0)
    shift = guide(raw, 0, 4)  # lambda_0 = 2 (1 + 0.3 sin(pi/4))
    assert torch.count_nonzero(shift[:, ~codec.action_mask()]) == 0
    assert shift.norm(dim=1).tolist() == pytest.approx([2 * (1 + 0.3 * math.sin(math.pi / 4))] * 2, rel=1e-5)
    with torch.no_grad():
        before = policy.log_prob(obs[:, :-1].reshape(-1, 3), acts.reshape(-1, 1)).sum()
        o2, a2, _ = codec.split(raw + 0.01 * shift)
        after = policy.log_prob(o2[:, :-1].reshape(-1, 3), a2.reshape(-1, 1)).sum()
    assert after > before
    assert torch.count_nonzero(guide(raw, 3, 4)) == 0  # no guidance at the last step


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.xfail(strict=True, reason="measured 2026-12-07: IQL -1178.4, IQL+PGD -1169.9, paired gain +8.6 +- 24.9 "
                   "over 90 episodes (per seed -1185.7/-1187.2, -1130.8/-1115.0, -1218.8/-1207.3); IQL at 3000 steps "
                   "learns little from such data (on tuning seed 100: data mean return -502, greedy SAC episodes "
                   "about -125), so there is no better target policy for the guidance to pull toward")
def test_policy_guided_synthetic_data_improves_iql_on_pendulum_medium_replay():
    """Pre-registered (committed before its first run on these seeds): named task = Pendulum-v1, a
    medium-replay-style dataset of 20 episodes recorded with ``record_dataset`` from SAC trained 5000 steps,
    exploration rates (0, 0.25, 0.5, 1). Seeds 0, 1, 2; IQL 3000 steps on real data vs IQL 3000 steps on real
    plus 500 policy-guided 8-step windows (guidance 1.0, 16 DDIM steps, guided by the real-data IQL policy);
    30 held-out episodes per seed, the same starts for both. Claim: the paired return gain is >= 2 standard
    errors over the 90 paired episodes. Took 914 s with the machine shared (slow + long)."""
    from rlxf.algorithms.control.pgd import study
    from rlxf.algorithms.evaluate import paired_gain

    runs = [study(seed) for seed in (0, 1, 2)]
    real = np.concatenate([r["iql"] for r in runs])
    pgd = np.concatenate([r["iql_pgd"] for r in runs])
    gain, se = paired_gain(pgd, real)
    print(f"IQL {real.mean():.1f} IQL+PGD {pgd.mean():.1f} gain {gain:.1f} +- {se:.1f}; "
          f"per seed {[(round(r['iql'].mean(), 1), round(r['iql_pgd'].mean(), 1)) for r in runs]}")
    assert gain >= 2 * se, (gain, se)
