"""Small pieces the algorithm files share: devices, optimizers, gradient sync, condition batches."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rldiff.core.gaussian import GaussianPolicy


def device_of(accelerator: Any) -> torch.device:
    """The accelerator's device, or CPU without one."""
    return accelerator.device if accelerator is not None else torch.device("cpu")


def autocast(accelerator: Any) -> contextlib.AbstractContextManager:
    """accelerate's autocast (mixed precision) or a no-op."""
    return accelerator.autocast() if accelerator is not None else contextlib.nullcontext()


def backward_fn(accelerator: Any):
    """`accelerator.backward` (loss scaling for fp16) or plain `loss.backward`."""
    return accelerator.backward if accelerator is not None else (lambda loss: loss.backward())


def trainable_parameters(*modules: nn.Module | dict[str, nn.Module]) -> list[nn.Parameter]:
    """Every parameter with requires_grad=True in the given modules (dicts of modules allowed), deduplicated."""
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        for mod in (m.values() if isinstance(m, dict) else [m]):
            for p in mod.parameters():
                if p.requires_grad:
                    seen.setdefault(id(p), p)
    return list(seen.values())


def sync_gradients(params: list[nn.Parameter]) -> None:
    """Average gradients over data-parallel workers (no-op in a single process).

    Done explicitly (rather than through DDP wrapping) so that *every* trainable parameter —
    including CTRL's y-embedding, which lives outside the denoiser — is synchronised, and
    N workers x batch B give the same update as 1 worker x batch N*B.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


def expand_cond(base: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """A condition dict: the domain's base condition plus algorithm keys."""
    return {**(base or {}), **extra}


def index_cond(cond: Any, idx: Tensor) -> Any:
    """Select rows `idx` of every tensor (and list) in a condition dict."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[idx]
    out = {}
    for k, v in cond.items():
        if isinstance(v, Tensor) and v.ndim > 0:
            out[k] = v[idx]
        elif isinstance(v, (list, tuple)):
            out[k] = [v[int(i)] for i in idx]
        else:
            out[k] = v
    return out


def with_prompts(out: dict[str, Any], conds: list[Any]) -> dict[str, Any]:
    """Add `out["prompt"]` (one per sample, for text-image metrics such as the CLIP score) when the
    domain's conditions carry prompts."""
    if conds and all(isinstance(c, dict) and "prompt" in c for c in conds):
        out["prompt"] = [p for c in conds for p in c["prompt"]]
    return out


def condition_keys(cond: Any, key: str = "prompt") -> list[Any] | None:
    """Per-sample hashable keys for per-condition reward normalization (None = one group)."""
    if isinstance(cond, dict) and key in cond:
        v = cond[key]
        return [(x.item() if x.ndim == 0 else tuple(x.tolist())) if isinstance(x, Tensor) else x for x in v]
    return None


def clip_and_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], max_grad_norm: float | None) -> float:
    """Sync gradients across workers, clip them, step, zero. Returns the pre-clip gradient norm."""
    sync_gradients(params)
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


class TaskRewardMixin:
    """What DDPO and reward backprop share: they fine-tune the domain's own trainable modules on
    its task reward, and sample with the (unconditional) domain condition. Subclasses set
    `domain`, `policy`, `batch_size`, `reward_scale`, `kl_weight` and define `_rollout`."""

    def modules(self) -> dict[str, nn.Module]:
        return dict(self.domain.trainable)

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator) -> dict[str, Any]:
        """Samples from the current policy; `y` is the labels the domain's conditions carry
        (`cond["y"]`, e.g. a label-conditioned policy), else its target label when it has one."""
        chunk = max(self.batch_size, 256)
        xs, conds = [], []
        for start in range(0, num, chunk):
            n = min(chunk, num - start)
            conds.append(self.domain.sample_cond(n, generator))
            xs.append(self._rollout(n, conds[-1], generator, keep_states=False).x0)
        out: dict[str, Any] = {"x0": torch.cat(xs), "gamma": self.reward_scale / max(self.kl_weight, 1e-12),
                               "policy": self.policy, "label_cond": lambda label: None}
        if conds and all(isinstance(c, dict) and isinstance(c.get("y"), torch.Tensor) for c in conds):
            out["y"] = torch.cat([c["y"] for c in conds])
        elif getattr(self.domain, "target_label", None) is not None:
            out["y"] = torch.full((num,), int(self.domain.target_label))
        return with_prompts(out, conds)


def check_t_weights(t_weights: Sequence[float], name: str = "diffusion_loss: t_weights") -> Tensor:
    """`t_weights` as a float64 vector, or a ValueError naming `name` unless they are finite, >= 0, not all 0."""
    w = torch.as_tensor(list(t_weights), dtype=torch.float64)
    if w.ndim != 1 or len(w) == 0 or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{name} must be finite non-negative numbers, not all 0; got {list(t_weights)}")
    return w


def diffusion_loss(policy: Any, x0: Tensor, cond: Any, generator: torch.Generator, device: torch.device,
                   t_weights: Sequence[float] | None = None) -> Tensor:
    """The pre-training loss of `policy` on clean samples `x0`, one value per example: [B].

    Gaussian policies: the epsilon-prediction error summed over dimensions at a uniform timestep.
    Masked policies: the MDLM continuous-time negative ELBO in nats per sequence (weight
    -alpha'(t) / (1 - alpha(t)) on the masked positions' log-likelihoods), an upper bound on
    -log p_theta(x0 | cond) in expectation over t and the mask.

    `t_weights` [w_1, ..., w_K] reweights the loss over t: the noise range is cut into K equal bins
    (masked: t in ((k-1)/K, k/K]; Gaussian: the timesteps in order) and bin k's terms are multiplied
    by w_k. t is drawn in proportion to the weights and the value scaled by their mean, so it is an
    unbiased estimate of the integral of w(t) x the per-t loss (None = all ones = the loss itself;
    [1, 1, 0, ..., 0] of 10 keeps the lowest-noise fifth, e.g. a 10-step sampler's last 2 steps).
    """
    w = None if t_weights is None else check_t_weights(t_weights)
    B = x0.shape[0]
    if isinstance(policy, GaussianPolicy):
        n = len(policy.alphas_cumprod)
        if w is None:
            t, scale = torch.randint(n, (B,), generator=generator), 1.0
        else:  # each timestep's weight is its bin's
            per_t = w[(torch.arange(n) * len(w)) // n]
            t, scale = torch.multinomial(per_t, B, replacement=True, generator=generator), float(per_t.mean())
        a = policy.alphas_cumprod[t].float().to(device).view(-1, *[1] * (x0.ndim - 1))
        noise = torch.randn(x0.shape, generator=generator).to(device)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return scale * ((policy.denoiser(x_t, t.to(device), cond) - noise) ** 2).flatten(1).sum(1)
    if w is None:
        t, scale = torch.rand(B, generator=generator), 1.0
    else:
        k = torch.multinomial(w, B, replacement=True, generator=generator)
        t, scale = (k + torch.rand(B, generator=generator)) / len(w), float(w.mean())
    t = t.clamp(min=1e-3)
    keep = policy.schedule.alpha(t).float()
    is_masked = (torch.rand(x0.shape, generator=generator) >= keep[:, None]).to(device)
    x_t = torch.where(is_masked, torch.full_like(x0, policy.mask_id), x0)
    ll = policy.denoise(policy.one_hot(x_t), t.to(device), cond).gather(-1, x0.long()[..., None]).squeeze(-1)
    return -scale * policy.schedule.elbo_weight(t).float().to(device) * (is_masked * ll).sum(-1)
