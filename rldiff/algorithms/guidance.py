"""Shared machinery of the guidance baselines: a denoiser wrapper that adds a gradient to eps.

For a Gaussian policy, guidance towards log p(y | .) adds its gradient to the score:
    eps_guided(x_t, t) = eps(x_t, t) - scale * sqrt(1 - a_t) * grad_{x_t} g(x_t, t)
(Dhariwal & Nichol 2021, eq. 14). Classifier guidance uses g = log p(y | x_t, t) of a classifier
trained on noisy inputs; DPS / reconstruction guidance uses g = log p(y | x0_hat(x_t)).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rldiff.core.gaussian import GaussianPolicy
from rldiff.core.rollout import rollout

#: (x_t [B, ...] requiring grad, t [B], eps [B, ...], cond) -> objective [B] whose gradient guides.
GuidanceObjective = Callable[[Tensor, Tensor, Tensor, Any], Tensor]


class GuidedEps:
    """eps(x_t, t, cond) - scale * sqrt(1 - a_t) * grad_{x_t} objective(x_t, t, eps, cond)."""

    def __init__(self, denoiser: Callable[..., Tensor], alphas_cumprod: Tensor, objective: GuidanceObjective,
                 scale: float, differentiate_denoiser: bool) -> None:
        self.denoiser = denoiser
        self.sqrt_1m_a = (1 - torch.as_tensor(alphas_cumprod, dtype=torch.float64)).sqrt().float()
        self.objective, self.scale = objective, scale
        self.differentiate_denoiser = differentiate_denoiser

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            if self.differentiate_denoiser:
                eps = self.denoiser(x, t, cond)
            else:
                with torch.no_grad():
                    eps = self.denoiser(x_t, t, cond)
            obj = self.objective(x, t, eps, cond)
            (grad,) = torch.autograd.grad(obj.sum(), x)
        s = self.sqrt_1m_a.to(x_t.device)[t.long()].view(-1, *[1] * (x_t.ndim - 1))
        return (eps - self.scale * s * grad).detach()


def guided_policy(policy: GaussianPolicy, objective: GuidanceObjective, scale: float,
                  differentiate_denoiser: bool) -> GaussianPolicy:
    """A shallow copy of `policy` whose denoiser is guided (the original is untouched)."""
    if not isinstance(policy, GaussianPolicy):
        raise TypeError("gradient guidance (classifier guidance, DPS) is defined for Gaussian policies; "
                        "for masked diffusion use SVDD or classifier-free guidance")
    out = copy.copy(policy)
    out.denoiser = GuidedEps(policy.denoiser, policy.alphas_cumprod, objective, scale, differentiate_denoiser)
    return out


class GuidedSampling:
    """Sampling shared by the gradient-guidance baselines: subclasses set `domain`, `policy`,
    `device`, `scale`, `batch_size`, `num_labels`, `differentiate_denoiser` and define
    `objective` (a `GuidanceObjective`)."""

    differentiate_denoiser: bool

    def objective(self, x_t: Tensor, t: Tensor, eps: Tensor, cond: Any) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator, y: Tensor | None = None) -> dict[str, Any]:
        """`num` guided samples, labels cycling over 0..K-1 unless `y` [num] is given."""
        y = (torch.arange(num) % self.num_labels if y is None else y).to(self.device)
        pol = guided_policy(self.policy, self.objective, self.scale, differentiate_denoiser=self.differentiate_denoiser)
        xs = []
        for chunk in y.split(self.batch_size):
            cond = {**(self.domain.sample_cond(len(chunk), generator) or {}), "y": chunk}
            xs.append(rollout(pol, len(chunk), cond, generator=generator, shape=tuple(self.domain.sample_shape),
                              device=self.device, keep_states=False).x0)
        return {"x0": torch.cat(xs), "y": y, "gamma": self.scale}
