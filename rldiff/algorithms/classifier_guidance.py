"""Classifier guidance with a classifier trained on noisy inputs x_t.

Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image Synthesis", arXiv 2105.05233).
eps_guided = eps - scale * sqrt(1 - a_t) * grad_{x_t} log p(y | x_t, t). With the exact noisy
classifier p(y | x_t) = E[p(y | x0) | x_t] and scale = 1 this samples p_pre(x) p(y | x) exactly in
the continuous-time limit; the catch is that the classifier must be trained on noised offline
data at every noise level — the cost CTRL avoids. `update()` trains it (one minibatch each).
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from rldiff.algorithms.common import device_of
from rldiff.algorithms.guidance import GuidedSampling
from rldiff.core.gaussian import GaussianPolicy


class ClassifierGuidance(GuidedSampling):
    """Train p(y | x_t, t) on noised offline pairs, then sample with its gradient.

    Args:
        domain: provides a Gaussian `policy`, `offline_data()`, `noisy_classifier()`, `num_labels`.
        accelerator: optional.
        scale: guidance scale (the exponent gamma of p(y | x)).
        batch_size: classifier-training minibatch and sampling batch.
        lr: classifier learning rate.
    """

    differentiate_denoiser = False

    def __init__(self, domain: Any, accelerator: Any = None, *, scale: Annotated[float, Field(ge=0)] = 1.0,
                 batch_size: Annotated[int, Field(ge=1)] = 256, lr: Annotated[float, Field(gt=0)] = 1e-3) -> None:
        if not isinstance(domain.policy, GaussianPolicy):
            raise TypeError("classifier guidance needs a Gaussian policy; for masked diffusion use SVDD or CFG")
        self.domain, self.policy, self.device = domain, domain.policy, device_of(accelerator)
        self.x, self.y = (t.to(self.device) for t in domain.offline_data("train"))
        self.classifier = domain.noisy_classifier().to(self.device)
        self.optimizer = torch.optim.AdamW(self.classifier.parameters(), lr=lr)
        self.scale, self.batch_size, self.num_labels = scale, batch_size, int(domain.num_labels)

    def modules(self) -> dict[str, nn.Module]:
        return {"noisy_classifier": self.classifier}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"classifier": self.optimizer}

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        idx = torch.randint(len(self.x), (self.batch_size,), generator=generator)
        x0, y = self.x[idx], self.y[idx]
        ac = self.policy.alphas_cumprod
        t = torch.randint(len(ac), (self.batch_size,), generator=generator)
        a = ac[t].float().to(self.device).view(-1, *[1] * (x0.ndim - 1))
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # forward process q(x_t | x0)
        logits = self.classifier(x_t, t.to(self.device))
        loss = F.cross_entropy(logits, y.long())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "accuracy": (logits.argmax(-1) == y).float().mean().item()}

    def objective(self, x_t: Tensor, t: Tensor, eps: Tensor, cond: Any) -> Tensor:
        """log p(y | x_t, t) [B]."""
        lp = torch.log_softmax(self.classifier(x_t, t), -1)
        return lp.gather(-1, cond["y"].long()[:, None]).squeeze(-1)
