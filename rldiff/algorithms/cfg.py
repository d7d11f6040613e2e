"""Classifier-free guidance: train a conditional model on labelled (x, y) data, then guide.

Ho & Salimans 2022 ("Classifier-Free Diffusion Guidance", arXiv 2207.12598). The conditional
model here is the pre-trained one plus the same zero-initialised label embedding (with a null
label) and adapters CTRL uses, fine-tuned with the ordinary diffusion loss on (x, y) pairs with
the label dropped to null with probability `p_uncond`. Sampling uses
    eps = eps_null + w (eps_y - eps_null)        (Gaussian)
    log p = log p_null + w (log p_y - log p_null) (masked, renormalised)
With w = 1 it is the conditional model itself, whose target is p(x | y) = p_pre(x) p(y | x) / Z
(gamma = 1): unlike CTRL it needs labelled samples from p_pre, and learns the whole conditional
from them (the CTRL paper's sample-efficiency comparison; `num_examples` sets the label budget).

The condition passed to the denoiser is {"y": y, "class_emb": E[y]}, with y = `num_labels` (the
null label) in the unconditional branch and for dropped labels: a denoiser that reads `cond["y"]`
itself (the digits label pathway) must treat that index as "no label", as `PixelDenoiser` does.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor, nn

from rldiff.algorithms.common import (
    backward_fn,
    clip_and_step,
    device_of,
    diffusion_loss,
    trainable_parameters,
)
from rldiff.algorithms.ctrl import LabelEmbedding
from rldiff.core.gaussian import GaussianPolicy
from rldiff.core.masked import MaskedPolicy
from rldiff.core.rollout import rollout


class CFG:
    """Train a conditional model on offline labels and sample with classifier-free guidance.

    Args:
        domain: provides `policy` (with `condition_dim`), `trainable`, `offline_data()`, `num_labels`.
        accelerator: optional.
        guidance_scale: w (1 = plain conditional model).
        p_uncond: probability of replacing y by the null label during training.
        num_examples: use only this many labelled examples (None = all): the label budget.
        batch_size, lr, embedding_lr, max_grad_norm: training settings.
    """

    def __init__(self, domain: Any, accelerator: Any = None, *, guidance_scale: Annotated[float, Field(ge=0)] = 1.0,
                 p_uncond: Annotated[float, Field(ge=0, lt=1)] = 0.1, num_examples: Annotated[int, Field(ge=1)] | None = None,
                 batch_size: Annotated[int, Field(ge=1)] = 256, lr: Annotated[float, Field(gt=0)] = 1e-3,
                 embedding_lr: Annotated[float, Field(gt=0)] = 1e-2,
                 max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0) -> None:
        policy = domain.policy
        if getattr(policy, "condition_dim", None) is None:
            raise ValueError(f"CFG needs a denoiser that accepts cond['class_emb']; {type(domain).__name__} has none")
        self.domain, self.policy, self.accelerator = domain, policy, accelerator
        self.device = device_of(accelerator)
        x, y = domain.offline_data("train")
        if num_examples is not None:
            if num_examples > len(x):
                raise ValueError(f"num_examples={num_examples} but the offline dataset has only {len(x)} examples")
            x, y = x[:num_examples], y[:num_examples]
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.num_labels = int(domain.num_labels)
        self.embedding = LabelEmbedding(self.num_labels, policy.condition_dim).to(self.device)
        self.guidance_scale, self.p_uncond, self.batch_size = guidance_scale, p_uncond, batch_size
        self.max_grad_norm = max_grad_norm
        adapters = trainable_parameters(domain.trainable)
        self.params = adapters + [self.embedding.weight]
        self.optimizer = torch.optim.AdamW([{"params": adapters, "lr": lr},
                                            {"params": [self.embedding.weight], "lr": embedding_lr}])

    def modules(self) -> dict[str, nn.Module]:
        return {**self.domain.trainable, "y_embedding": self.embedding}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"cfg": self.optimizer}

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        idx = torch.randint(len(self.x), (self.batch_size,), generator=generator)
        x0, y = self.x[idx], self.y[idx].long()
        drop = torch.rand(self.batch_size, generator=generator).to(self.device) < self.p_uncond
        y_in = torch.where(drop, torch.full_like(y, self.embedding.null_label), y)
        # y goes in as well (null label = num_labels), for denoisers with their own label pathway
        # (the digits `PixelDenoiser` with label_pathway=True reads cond["y"] and gives the null label no bias)
        cond = {**(self.domain.sample_cond(self.batch_size, generator) or {}), "y": y_in,
                "class_emb": self.embedding(y_in)}
        loss = self._diffusion_loss(x0, cond, generator)
        backward_fn(self.accelerator)(loss)
        gnorm = clip_and_step(self.optimizer, self.params, self.max_grad_norm)
        return {"loss": loss.item(), "grad_norm": gnorm}

    def _diffusion_loss(self, x0: Tensor, cond: dict[str, Any], generator: torch.Generator) -> Tensor:
        loss = diffusion_loss(self.policy, x0, cond, generator, self.device).mean()
        # masked diffusion: nats per token (the Gaussian loss is the summed epsilon error)
        return loss / x0.shape[1] if isinstance(self.policy, MaskedPolicy) else loss

    def guided_policy(self) -> GaussianPolicy | MaskedPolicy:
        """A copy of the policy that samples with guidance scale w (the null label is unconditional)."""
        emb = self.embedding

        def uncond(cond: dict[str, Any]) -> dict[str, Any]:
            null = torch.full((cond["class_emb"].shape[0],), emb.null_label, device=cond["class_emb"].device)
            return {**cond, "y": null, "class_emb": emb(null)}

        pol = copy.copy(self.policy)
        pol.guidance_scale, pol.uncond = self.guidance_scale, uncond
        return pol

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator, y: Tensor | None = None) -> dict[str, Any]:
        y = (torch.arange(num) % self.num_labels if y is None else y).to(self.device)
        pol = self.guided_policy()
        shape = None if isinstance(pol, MaskedPolicy) else tuple(self.domain.sample_shape)
        xs = []
        for chunk in y.split(max(self.batch_size, 256)):
            cond = {**(self.domain.sample_cond(len(chunk), generator) or {}), "y": chunk,
                    "class_emb": self.embedding(chunk)}
            xs.append(rollout(pol, len(chunk), cond, generator=generator, shape=shape, device=self.device,
                              keep_states=False).x0)
        emb = self.embedding

        def label_cond(label: int) -> dict[str, Any]:
            lab = torch.tensor([label], device=self.device)
            return {"y": lab, "class_emb": emb(lab).detach()}

        return {"x0": torch.cat(xs), "y": y, "gamma": self.guidance_scale, "policy": pol, "label_cond": label_cond}
