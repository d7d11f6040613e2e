"""DDPO: denoising diffusion policy optimization.

Black, Janner, Du, Kostrikov, Levine. "Training Diffusion Models with Reinforcement Learning",
ICLR 2024 (arXiv 2305.13301). The denoising chain is an MDP whose actions are the transitions
x_t -> x_{t-1}; each has an exact log-probability, so the policy gradient is available:

- `mode="score_function"` (DDPO_SF): REINFORCE, one gradient step per batch of samples,
  grad = E[ sum_t grad log p_theta(x_{t-1} | x_t) * A ].
- `mode="clipped"` (DDPO_IS): importance-sampled, PPO-clipped ratios, several inner epochs.

Rewards are normalised per condition (per prompt) with a running buffer, as in the paper.
An optional KL penalty to the reference (`kl_weight > 0`) turns it into the KL-regularized
objective of `rldiff.core.objectives` (per-step KL-to-go in the advantage plus the direct KL
gradient); with `scale_advantages=False` the optimum is then exactly p_pre exp(r / kl_weight).
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
    condition_keys,
    device_of,
    index_cond,
    trainable_parameters,
)
from rldiff.core.masked import MaskedPolicy
from rldiff.core.objectives import ConditionNormalizer, kl_to_go, policy_gradient_step
from rldiff.core.reward import as_reward, check_reward
from rldiff.core.rollout import rollout


class DDPO(TaskRewardMixin):
    """DDPO over any `RLDomain` (its `reward` is maximised).

    Args:
        domain: provides `policy`, `trainable`, `reward`, `sample_cond`, `sample_shape`.
        accelerator: optional `accelerate.Accelerator`.
        mode: "clipped" (DDPO_IS, PPO-style) or "score_function" (DDPO_SF).
        batch_size: trajectories sampled per update.
        lr, betas, weight_decay: AdamW settings.
        reward_scale: multiplies the reward (gamma).
        kl_weight: KL-to-reference penalty (0 = plain DDPO).
        clip_range: PPO clip epsilon (DDPO uses 1e-4 on SD).
        inner_epochs, num_minibatches: passes and minibatches per sampled batch ("clipped").
        scale_advantages: divide by the per-condition std (DDPO's default; changes the effective
            reward scale, so turn it off for an exact KL-regularized target).
        adv_clip_max: clip advantages to [-adv_clip_max, adv_clip_max].
        normalizer_buffer, normalizer_min_count: per-condition statistics (`ConditionNormalizer`).
        condition_key: the key in the domain's condition that identifies a condition (a prompt).
        max_grad_norm: gradient clipping.
    """

    def __init__(
        self,
        domain: Any,
        accelerator: Any = None,
        *,
        mode: Literal["clipped", "score_function"] = "clipped",
        batch_size: Annotated[int, Field(ge=2)] = 64,
        lr: Annotated[float, Field(gt=0)] = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: Annotated[float, Field(ge=0)] = 0.0,
        reward_scale: Annotated[float, Field(gt=0)] = 1.0,
        kl_weight: Annotated[float, Field(ge=0)] = 0.0,
        clip_range: Annotated[float, Field(gt=0)] = 1e-4,
        inner_epochs: Annotated[int, Field(ge=1)] = 1,
        num_minibatches: Annotated[int, Field(ge=1)] = 1,
        scale_advantages: bool = True,
        adv_clip_max: Annotated[float, Field(gt=0)] = 5.0,
        normalizer_buffer: Annotated[int, Field(ge=1)] = 64,
        normalizer_min_count: Annotated[int, Field(ge=1)] = 16,
        condition_key: str = "prompt",
        max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0,
    ) -> None:
        self.domain, self.policy, self.accelerator = domain, domain.policy, accelerator
        self.device = device_of(accelerator)
        self.reward = as_reward(domain.reward)
        self.mode, self.batch_size = mode, batch_size
        self.reward_scale, self.kl_weight = reward_scale, kl_weight
        self.clip_range = clip_range if mode == "clipped" else None
        self.inner_epochs = inner_epochs if mode == "clipped" else 1
        self.num_minibatches = num_minibatches if mode == "clipped" else 1
        self.adv_clip_max, self.condition_key, self.max_grad_norm = adv_clip_max, condition_key, max_grad_norm
        self.normalizer = ConditionNormalizer(normalizer_buffer, normalizer_min_count, scale=scale_advantages)
        self.params = trainable_parameters(domain.trainable)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"ddpo": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The per-condition reward buffers (so a resumed run normalises identically)."""
        return {"normalizer": {k: list(v) for k, v in self.normalizer.history.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for k, v in state.get("normalizer", {}).items():
            self.normalizer.history[k].extend(v)

    def _rollout(self, n: int, cond: Any, generator: torch.Generator, **kw: Any):
        shape = None if isinstance(self.policy, MaskedPolicy) else tuple(self.domain.sample_shape)
        return rollout(self.policy, n, cond, generator=generator, shape=shape, device=self.device, **kw)

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        with torch.no_grad(), autocast(self.accelerator):
            cond = self.domain.sample_cond(self.batch_size, generator)
            traj = self._rollout(self.batch_size, cond, generator, kl="all" if self.kl_weight else "none",
                                 keep_reference=bool(self.kl_weight))
            r = check_reward(self.reward(traj.x0, cond), self.batch_size, "reward")
            keys = condition_keys(cond, self.condition_key)
            adv_r = self.normalizer(self.reward_scale * r, [str(k) for k in keys] if keys else None)  # [B]
            adv = adv_r[None, :].expand_as(traj.log_probs).clone()  # [T, B]
            kl = traj.kl
            if kl is not None:
                adv = adv - self.kl_weight * (kl_to_go(kl) - kl_to_go(kl).mean(1, keepdim=True))
            adv = adv.clamp(-self.adv_clip_max, self.adv_clip_max)
        stats = policy_gradient_step(
            self.policy, traj, adv, apply_update=lambda: clip_and_step(self.optimizer, self.params, self.max_grad_norm),
            cond_at=lambda idx: index_cond(cond, idx), clip_range=self.clip_range, kl_weight=self.kl_weight,
            inner_epochs=self.inner_epochs, num_minibatches=self.num_minibatches, generator=generator,
            backward=backward_fn(self.accelerator),
        )
        out = {**stats, "reward": r.mean().item()}
        if kl is not None:
            out["kl"] = kl.sum(0).mean().item()
        return out
