"""Direct reward backprop: AlignProp / DRaFT-K (continuous) and DRAKES-style (masked discrete).

Prabhudesai et al. 2023 (AlignProp, arXiv 2310.03739); Clark et al. 2024 (DRaFT, arXiv
2309.17400); Wang et al. 2024 (DRAKES, arXiv 2410.13643). The reward's gradient is propagated
through the sampling chain — reparameterized Gaussian steps, or straight-through Gumbel-softmax
steps for masked diffusion — truncated to the last K steps (`grad="last_k"`, DRaFT-K), randomly
(`grad="random"`), or through every step with gradient checkpointing (`grad="all"`).

With `kl_weight > 0` the loss is the KL-regularized objective -(gamma r - kl_weight * KL); its
optimum samples p_pre exp(gamma r / kl_weight). Unlike the DRAKES code, the masked KL is taken on
the still-masked positions (where it is non-zero); see `rldiff.core.masked`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from rldiff.algorithms.common import (
    TaskRewardMixin,
    autocast,
    backward_fn,
    clip_and_step,
    device_of,
    trainable_parameters,
)
from rldiff.core.masked import MaskedPolicy
from rldiff.core.objectives import backprop_loss
from rldiff.core.reward import as_reward, check_reward
from rldiff.core.rollout import rollout


class RewardBackprop(TaskRewardMixin):
    """Direct reward backprop over any `RLDomain` with a differentiable `reward`.

    Args:
        domain: provides `policy`, `trainable`, `reward` (differentiable), `sample_cond`.
        accelerator: optional `accelerate.Accelerator`.
        batch_size: trajectories per update.
        lr, betas, weight_decay: AdamW settings.
        reward_scale: gamma.
        kl_weight: KL-to-reference weight (0 = AlignProp / DRaFT without regularization).
        grad: none is not allowed; last_k (DRaFT-K), random (CTRL/AlignProp code), all.
        k: K for last_k.
        kl_log_steps: extra non-gradient steps for the logged KL estimate.
        gumbel_tau: Gumbel-softmax temperature (masked policies).
        relaxation: masked policies' gradient through sampled tokens: "gumbel_softmax",
            "gumbel_rao" (Rao-Blackwellized over `rao_samples` conditional draws), "reinmax"
            (ReinMax: second-order accurate, Liu et al. 2023) or
            "straight_through" (see `MaskedPolicy.step`).
        rao_samples: conditional Gumbel draws per token for "gumbel_rao".
        max_grad_norm: gradient clipping.
    """

    def __init__(
        self,
        domain: Any,
        accelerator: Any = None,
        *,
        batch_size: Annotated[int, Field(ge=1)] = 64,
        lr: Annotated[float, Field(gt=0)] = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: Annotated[float, Field(ge=0)] = 0.0,
        reward_scale: Annotated[float, Field(gt=0)] = 1.0,
        kl_weight: Annotated[float, Field(ge=0)] = 0.0,
        grad: Literal["last_k", "random", "all"] = "last_k",
        k: Annotated[int, Field(ge=1)] = 1,
        kl_log_steps: Annotated[int, Field(ge=0)] = 0,
        gumbel_tau: Annotated[float, Field(gt=0)] = 1.0,
        relaxation: Literal["gumbel_softmax", "gumbel_rao", "straight_through", "reinmax"] = "gumbel_softmax",
        rao_samples: Annotated[int, Field(ge=1)] = 8,
        max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0,
    ) -> None:
        self.reward = as_reward(domain.reward)
        if not self.reward.differentiable:
            raise ValueError(
                f"reward backprop needs a differentiable reward; {self.reward!r} is not "
                "(set `differentiable = True` on it, or use DDPO / CTRL mode=policy_gradient)"
            )
        self.domain, self.policy, self.accelerator = domain, domain.policy, accelerator
        self.device = device_of(accelerator)
        self.batch_size, self.reward_scale, self.kl_weight = batch_size, reward_scale, kl_weight
        self.grad, self.k, self.kl_log_steps, self.gumbel_tau = grad, k, kl_log_steps, gumbel_tau
        self.relaxation, self.rao_samples = relaxation, rao_samples
        self.max_grad_norm = max_grad_norm
        self.params = trainable_parameters(domain.trainable)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"backprop": self.optimizer}

    def _rollout(self, n: int, cond: Any, generator: torch.Generator, **kw: Any):
        shape = None if isinstance(self.policy, MaskedPolicy) else tuple(self.domain.sample_shape)
        return rollout(self.policy, n, cond, generator=generator, shape=shape, device=self.device,
                       gumbel_tau=self.gumbel_tau, relaxation=self.relaxation,
                       rao_samples=self.rao_samples, **kw)

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        with autocast(self.accelerator):
            cond = self.domain.sample_cond(self.batch_size, generator)
            traj = self._rollout(self.batch_size, cond, generator, grad=self.grad, k=self.k,
                                 kl="grad" if self.kl_weight else "none", kl_log_steps=self.kl_log_steps,
                                 keep_states=False)
            r = check_reward(self.reward(traj.x0, cond), self.batch_size, "reward")
            loss = backprop_loss(traj, r, self.reward_scale, self.kl_weight)
        if loss.requires_grad:
            backward_fn(self.accelerator)(loss)
            gnorm = clip_and_step(self.optimizer, self.params, self.max_grad_norm)
        else:  # grad="random" drew no gradient step this time: there is nothing to update
            gnorm = 0.0
        out = {"loss": loss.item(), "reward": r.mean().item(), "grad_norm": gnorm,
               "reference_calls": float(traj.num_reference_calls)}
        if traj.kl_logged is not None:
            out["kl"] = traj.kl_logged.mean().item()
        return out
