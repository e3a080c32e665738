"""The diffusion core of rlxf's control side: an MLP denoiser with EDM preconditioning, its training on
``(x, condition)`` pairs through the shared training loop, and a few-step DDIM sampler with optional
classifier-free and gradient guidance. BESO (``beso.py``: actions given state and goal) and Policy-Guided
Diffusion (``pgd.py``: whole sub-trajectories, guided by a policy) both use it; the formulas are the named
functions of :mod:`rlxf.objectives.diffusion`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.objectives.diffusion import (classifier_free, ddim_step, denoising_loss, edm_scalings, karras_sigmas,
                                       log_logistic_sigmas, log_normal_sigmas)
from rlxf.policies.control import single_thread


@dataclass
class DiffusionConfig:
    optim: OptimConfig
    sigma_data: float = 0.5
    sigma_min: float = 0.005
    sigma_max: float = 1.0
    rho: float = 5.0
    steps: int = 3  # sampler steps (BESO: 3)
    train_sigmas: str = "loglogistic"  # or "lognormal" (EDM's P_mean, P_std)
    sigma_loc: float = -1.2  # log-logistic location / log-normal mean of log sigma
    sigma_scale: float = 0.5  # log-logistic scale / log-normal std of log sigma
    cond_drop: float = 0.0  # probability of dropping the droppable condition (classifier-free training)
    hidden: int = 128
    seed: int = 0


class Denoiser(nn.Module):
    """``D(x; sigma, c) = c_skip x + c_out F(c_in x, c_noise, c)`` with ``F`` a 3-layer MLP; ``x`` is ``[B, dx]``
    and ``c`` ``[B, dc]`` (``dc`` may be 0). ``droppable`` marks the condition dims that classifier-free
    training drops (set to 0, with a flag input saying so)."""

    def __init__(self, x_dim: int, cond_dim: int, hidden: int, sigma_data: float, droppable: Tensor | None = None):
        super().__init__()
        self.x_dim, self.cond_dim, self.sigma_data = x_dim, cond_dim, sigma_data
        self.register_buffer("droppable", torch.zeros(cond_dim, dtype=torch.bool) if droppable is None else droppable)
        self.net = nn.Sequential(nn.Linear(x_dim + cond_dim + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, x_dim))

    def raw(self, x: Tensor, sigma: Tensor, cond: Tensor, dropped: Tensor) -> Tensor:
        """``F`` at ``c_in x`` (``dropped [B]`` bool: the droppable condition is hidden for those rows)."""
        _, _, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        cond = torch.where(dropped[:, None] & self.droppable, torch.zeros_like(cond), cond)
        return self.net(torch.cat([c_in[:, None] * x, c_noise[:, None], dropped[:, None].float(), cond], dim=-1))

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor, dropped: Tensor | None = None) -> Tensor:
        dropped = torch.zeros(len(x), dtype=torch.bool) if dropped is None else dropped
        c_skip, c_out, _, _ = edm_scalings(sigma, self.sigma_data)
        return c_skip[:, None] * x + c_out[:, None] * self.raw(x, sigma, cond, dropped)


def train_denoiser(x: Tensor, cond: Tensor, cfg: DiffusionConfig, droppable: Tensor | None = None,
                   run: Run | None = None, stage: str = "diffusion", quiet: bool = True) -> Denoiser:
    """Fit a :class:`Denoiser` to samples ``x [N, dx]`` given ``cond [N, dc]`` with :func:`denoising_loss`
    (noise levels from the config's training density; the droppable condition hidden with prob ``cond_drop``)."""
    if len(x) != len(cond):
        raise ValueError(f"train_denoiser: {len(x)} samples but {len(cond)} conditions")
    torch.manual_seed(cfg.seed)
    model = Denoiser(x.shape[1], cond.shape[1], cfg.hidden, cfg.sigma_data, droppable)
    n = len(x)

    def make_batch(step: int) -> list[int]:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return torch.randint(0, n, (cfg.optim.batch_size,), generator=g).tolist()

    def loss_fn(micro: list[int], batch: list[int]):
        i = torch.tensor(micro)
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + micro[0] * 31 + len(micro))
        if cfg.train_sigmas == "lognormal":
            sigma = log_normal_sigmas(len(i), cfg.sigma_loc, cfg.sigma_scale, g)
        else:
            sigma = log_logistic_sigmas(len(i), cfg.sigma_loc, cfg.sigma_scale, cfg.sigma_min, cfg.sigma_max, g)
        noised = x[i] + sigma[:, None] * torch.randn(x[i].shape, generator=g)
        dropped = torch.rand(len(i), generator=g) < cfg.cond_drop
        loss = denoising_loss(model.raw(noised, sigma, cond[i], dropped), x[i], noised, sigma, cfg.sigma_data)
        loss = loss.sum() / len(batch)
        return loss, {"denoise": loss.item()}

    with single_thread(), tempfile.TemporaryDirectory() as tmp:
        run = run or Run(Path(tmp) / stage, f"seed = {cfg.seed}\n", fresh=True)
        train(run, stage, model, cfg.optim, make_batch, loss_fn, quiet=quiet)
    return model.eval()


def sample(model: Denoiser, cond: Tensor, cfg: DiffusionConfig, generator: torch.Generator | None = None,
           cfg_weight: float = 1.0, guide: Callable[[Tensor, int, int], Tensor] | None = None) -> Tensor:
    """One sample per row of ``cond``: ``cfg.steps`` DDIM steps on the Karras grid from ``sigma_max``.

    ``cfg_weight`` != 1 mixes the conditional and condition-dropped denoisers (:func:`classifier_free`);
    ``guide(x, k, K)`` (optional) returns the shift added to ``x`` after step ``k`` of ``K``."""
    sigmas = karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    x = sigmas[0] * torch.randn((len(cond), model.x_dim), generator=generator)
    drop = torch.ones(len(cond), dtype=torch.bool)
    for k in range(cfg.steps):
        s = sigmas[k].expand(len(cond))
        with torch.no_grad():
            d = model(x, s, cond)
            if cfg_weight != 1.0:
                d = classifier_free(model(x, s, cond, drop), d, cfg_weight)
        x = ddim_step(x, d, float(sigmas[k]), float(sigmas[k + 1]))
        if guide is not None:
            x = x + guide(x, k, cfg.steps)
    return x
