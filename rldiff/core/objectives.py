"""KL-regularized reward objectives and the two ways to optimise them.

The objective (CTRL eq. 4; Uehara et al. 2024; Fan et al. 2023) over trajectories of the policy:

    J(theta) = E[ gamma * r(x_0) ] - KL(p_theta(x_T:0) || p_pre(x_T:0))
             = E[ gamma * r(x_0) - sum_i KL_i(x_i) ]

with KL_i the exact per-step KL of the policy's transition to the reference's at state x_i, summed
over all steps and dimensions. Its maximiser samples x_0 from p_pre(x_0) exp(gamma r(x_0)) / Z.

- **Direct backprop** (CTRL Algorithm 2; AlignProp, DRaFT): differentiate the sample path
  (reparameterized Gaussian steps, straight-through Gumbel-softmax for masked steps).
- **Policy gradient** (CTRL Algorithm 1; DDPO with a KL penalty): the score-function gradient
      grad J = E[ sum_i grad log p_theta(x_{i+1} | x_i) * (gamma r - sum_{j > i} KL_j) ]
             - E[ sum_i grad_theta KL_i(x_i) ]
  (the action at step i influences the KL of later steps; KL_i depends on theta directly), with
  PPO-style clipped importance ratios for several updates per batch of samples.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rldiff.core.rollout import Trajectory


def kl_to_go(kl: Tensor) -> Tensor:
    """sum_{j > i} KL_j for each step i: [T, B] -> [T, B]."""
    rev = torch.flip(kl, [0]).cumsum(0)
    total_after = torch.flip(rev, [0]) - kl  # sum_{j >= i} - KL_i
    return total_after


def backprop_loss(traj: Trajectory, reward: Tensor, gamma: float, kl_weight: float = 1.0) -> Tensor:
    """Negative KL-regularized objective for direct backprop: -(gamma r - kl_weight sum_i KL_i).mean().

    Args:
        traj: a rollout with gradient (`grad != "none"`) and `kl="grad"` or `"all"` when kl_weight > 0.
        reward: [B] r(x_0), differentiable w.r.t. traj.x0.
        gamma: reward scale.
        kl_weight: weight of the trajectory KL (1 = the exact CTRL objective).

    Returns:
        scalar loss.
    """
    total = gamma * reward
    if kl_weight:
        if traj.kl is None:
            raise ValueError("backprop_loss with kl_weight > 0 needs a rollout with kl='grad' or 'all'")
        total = total - kl_weight * traj.kl.sum(0)
    return -total.mean()


class ConditionNormalizer:
    """Per-condition reward baselines (DDPO's per-prompt stat tracking).

    Keeps the last `buffer_size` rewards per condition key; a condition with fewer than
    `min_count` rewards uses the statistics of the whole batch.

    Args:
        buffer_size: rewards kept per condition.
        min_count: minimum history before a condition's own statistics are used.
        scale: also divide by the standard deviation (changes the effective gamma; off for exact
            KL-regularized targets).
    """

    def __init__(self, buffer_size: int = 64, min_count: int = 16, scale: bool = True) -> None:
        self.buffer_size, self.min_count, self.scale = buffer_size, min_count, scale
        self.history: dict[Any, deque[float]] = defaultdict(lambda: deque(maxlen=self.buffer_size))

    def __call__(self, rewards: Tensor, keys: Sequence[Any] | None = None) -> Tensor:
        """Advantages [B] from rewards [B] and one hashable key per sample (None = one group)."""
        r = rewards.detach().float()
        if keys is None:
            mean, std = r.mean(), _std(r)
            return (r - mean) / std if self.scale else r - mean
        out = torch.empty_like(r)
        batch_mean, batch_std = r.mean(), _std(r)
        for key in dict.fromkeys(keys):
            idx = torch.tensor([i for i, k in enumerate(keys) if k == key])
            self.history[key].extend(r[idx].tolist())
            hist = torch.tensor(list(self.history[key]))
            if len(hist) >= self.min_count:
                mean, std = hist.mean(), _std(hist)
            else:
                mean, std = batch_mean, batch_std
            out[idx] = (r[idx] - mean) / std if self.scale else r[idx] - mean
        return out

    def state_dict(self) -> dict[str, list[float]]:
        return {repr(k): list(v) for k, v in self.history.items()}


def _std(x: Tensor) -> Tensor:
    """Standard deviation for normalisation: 1 for a single value (unbiased std would be NaN), >= 1e-6."""
    return x.std().clamp(min=1e-6) if len(x) > 1 else torch.ones((), dtype=x.dtype)


def policy_gradient_step(
    policy: Any,
    traj: Trajectory,
    advantages: Tensor,
    *,
    apply_update: Callable[[], Any],
    cond_at: Callable[[Tensor], Any],
    clip_range: float | None = 1e-4,
    kl_weight: float = 0.0,
    inner_epochs: int = 1,
    num_minibatches: int = 1,
    generator: torch.Generator | None = None,
    backward: Callable[[Tensor], None] | None = None,
) -> dict[str, float]:
    """PPO-style clipped policy-gradient updates on one batch of trajectories.

    For each inner epoch and minibatch of samples, every step i is re-scored with the current
    policy (`policy.step(x_i, i, prev=x_{i+1})`), the importance ratio to the sampling policy is
    clipped, and — with `kl_weight > 0` — the direct gradient of the per-step KL to the reference is
    added. One optimizer step per minibatch (gradients accumulated over the T steps).

    Args:
        policy: GaussianPolicy or MaskedPolicy.
        traj: a no-gradient rollout with `keep_states=True` (its log_probs are the old log-probs);
            with `keep_reference=True` its reference steps are reused for the KL term.
        advantages: [T, B] per-step advantages (e.g. normalized gamma r - kl_weight * KL-to-go).
        apply_update: called after each minibatch's gradients are accumulated (sync, clip, step, zero).
        cond_at: maps sample indices [b] to the condition for those samples.
        clip_range: PPO clip epsilon; None = plain importance-weighted score function.
        kl_weight: weight of the direct per-step KL gradient term.
        inner_epochs: passes over the batch.
        num_minibatches: minibatches per pass.
        generator: shuffles minibatches.
        backward: how to backpropagate (`accelerator.backward`); default `loss.backward()`.

    Returns:
        metrics: mean loss, clip fraction, approx KL(old || new), first ratio statistics.
    """
    backward = backward or (lambda loss: loss.backward())
    T, B = traj.log_probs.shape
    old_lp = traj.log_probs.detach()  # [T, B]
    stats: dict[str, list[float]] = defaultdict(list)
    first = True
    for _ in range(inner_epochs):
        perm = torch.randperm(B, generator=generator) if num_minibatches > 1 else torch.arange(B)
        for mb in perm.chunk(num_minibatches):
            for i in range(T):
                x_i, x_next = traj.states[i][mb], traj.states[i + 1][mb]
                cond = cond_at(mb)
                new = policy.step(x_i, i, cond, prev=x_next)
                ratio = torch.exp(new.log_prob - old_lp[i, mb])  # [b]
                adv = advantages[i, mb]
                if clip_range is None:
                    pg = -(adv * ratio)
                else:
                    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range))
                loss = pg.mean()
                if kl_weight:
                    loss = loss + kl_weight * policy.kl(new, _reference_step(policy, traj, i, mb, x_i, x_next, cond)).mean()
                backward(loss / T)
                if first:
                    stats["first_ratio_max_dev"].append(float((ratio.detach() - 1).abs().max()))
                stats["loss"].append(float(loss.detach()))
                if clip_range is not None:
                    stats["clip_frac"].append(float(((ratio.detach() - 1).abs() > clip_range).float().mean()))
                stats["approx_kl"].append(float(0.5 * ((new.log_prob.detach() - old_lp[i, mb]) ** 2).mean()))
            first = False
            apply_update()
    return {k: sum(v) / len(v) for k, v in stats.items()}


def _reference_step(policy: Any, traj: Trajectory, i: int, mb: Tensor, x_i: Tensor, x_next: Tensor, cond: Any) -> Any:
    """The reference's step at state x_i for minibatch rows `mb`: cached from the rollout when kept."""
    cached = traj.extras.get("ref_steps")
    if cached:
        ref = cached[i]
        return type(ref)(**{k: (v[mb] if isinstance(v, Tensor) and v.ndim > 0 else v) for k, v in vars(ref).items()})
    with torch.no_grad():
        return policy.step(x_i, i, cond, prev=x_next, reference=True, log_prob=False)
