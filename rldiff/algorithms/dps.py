"""Reconstruction guidance / DPS: guide with the gradient of log p(y | x0_hat(x_t)).

Chung et al. 2023 ("Diffusion Posterior Sampling", arXiv 2209.14687); Ho et al. 2022
(reconstruction guidance). Needs no noisy classifier and no training: the clean-data classifier
is applied to the denoiser's prediction x0_hat(x_t) = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) and
its gradient is taken *through the denoiser*. Its known bias: log p(y | E[x0 | x_t]) is not
log p(y | x_t) = log E[p(y | x0) | x_t] (Jensen), so DPS does not sample p_pre(x) p(y | x)^gamma
exactly; on the toy it over-concentrates on the label (see tests/core/test_baselines.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor, nn

from rldiff.algorithms.common import device_of
from rldiff.algorithms.guidance import GuidedSampling
from rldiff.core.gaussian import GaussianPolicy
from rldiff.core.reward import ClassifierLogProb


class DPS(GuidedSampling):
    """Reconstruction guidance with the domain's classifier (no fine-tuning; `train.steps: 0`).

    Args:
        domain: provides a Gaussian `policy`, `classifier` (clean x -> logits), `num_labels`.
        accelerator: optional.
        scale: guidance scale (gamma for classifier guidance; DPS papers tune it freely).
        batch_size: sampling batch size.
    """

    differentiate_denoiser = True

    def __init__(self, domain: Any, accelerator: Any = None, *, scale: Annotated[float, Field(ge=0)] = 1.0,
                 batch_size: Annotated[int, Field(ge=1)] = 256) -> None:
        if not isinstance(domain.policy, GaussianPolicy):
            raise TypeError("DPS needs a Gaussian policy (x0_hat is a continuous prediction)")
        self.domain, self.policy, self.device = domain, domain.policy, device_of(accelerator)
        self.log_prob = ClassifierLogProb(domain.classifier, label_key="y")
        self.scale, self.batch_size, self.num_labels = scale, batch_size, int(domain.num_labels)

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        raise RuntimeError("DPS has nothing to train: set train.steps: 0")

    def objective(self, x_t: Tensor, t: Tensor, eps: Tensor, cond: Any) -> Tensor:
        """log p(y | x0_hat(x_t)) [B], differentiable through eps."""
        a = self.policy.alphas_cumprod.to(x_t.device)[t.long()].float().view(-1, *[1] * (x_t.ndim - 1))
        x0_hat = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        return self.log_prob(x0_hat, cond)
