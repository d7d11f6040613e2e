"""The sampling loop, written out in plain view, returning a trajectory with exact per-step
log-probabilities and (when asked) per-step KL to the reference policy.

Gradient modes (which denoiser calls keep their autograd graph):

- ``"none"``: no step carries gradient (sampling, and DDPO's data collection).
- ``"last_k"``: the last K steps (DRaFT-K / AlignProp); the state entering them is detached.
- ``"random"``: step i keeps its gradient with probability (i + 1) / (T + 1), as in the CTRL
  reference code; steps without gradient detach their input.
- ``"all"``: every step; combine with ``policy.gradient_checkpointing = True`` to keep memory flat.

KL modes: ``"none"``; ``"grad"`` computes the reference forward only on steps that carry gradient
(the only steps whose KL term contributes to the gradient of a direct-backprop objective);
``"all"`` computes it on every step. With ``"grad"``, ``kl_log_steps = m > 0`` adds an unbiased
*logging* estimate of the KL summed over the non-gradient steps from m of them drawn at random
(scaled by their count), so a run can report the full KL at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rldiff.core.gaussian import GaussianPolicy
from rldiff.core.masked import MaskedPolicy

GradMode = Literal["none", "last_k", "random", "all"]
KLMode = Literal["none", "grad", "all"]


@dataclass
class Trajectory:
    """A sampled trajectory x_T -> x_0.

    Attributes:
        states: T + 1 detached states, states[0] = x_T, states[-1] = x_0.
        x0: the final state, carrying gradient when the last step did.
        log_probs: [T, B] log p_theta(x_{i+1} | x_i) (detached, no graph; NaN on
            deterministic steps, eta = 0).
        kl: [T, B] per-step KL to the reference, zero where not computed; None if kl="none".
        kl_logged: [B] total KL estimate for logging (exact for kl="all"; includes the unbiased
            estimate of non-gradient steps for kl="grad" with kl_log_steps > 0).
        grad_steps: [T] bool, which steps carried gradient.
        cond: the condition used.
        num_reference_calls: how many reference-model forward passes this rollout made.
    """

    states: list[Tensor]
    x0: Tensor
    log_probs: Tensor
    kl: Tensor | None
    kl_logged: Tensor | None
    grad_steps: Tensor
    cond: Any = None
    num_reference_calls: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


def grad_schedule(mode: GradMode, num_steps: int, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Which of the T steps carry gradient.

    Returns:
        [T] bool tensor.
    """
    T = num_steps
    if mode == "none":
        return torch.zeros(T, dtype=torch.bool)
    if mode == "all":
        return torch.ones(T, dtype=torch.bool)
    if mode == "last_k":
        if not 1 <= k <= T:
            raise ValueError(f"last_k needs 1 <= k <= T={T}, got k={k}")
        return torch.arange(T) >= T - k
    if mode == "random":
        p = (torch.arange(T, dtype=torch.float64) + 1) / (T + 1)
        return torch.rand(T, generator=generator, dtype=torch.float64) < p
    raise ValueError(f"unknown gradient mode {mode!r}; valid: none, last_k, random, all")


def rollout(
    policy: GaussianPolicy | MaskedPolicy,
    batch_size: int,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    grad: GradMode = "none",
    k: int = 1,
    kl: KLMode = "none",
    kl_log_steps: int = 0,
    shape: tuple[int, ...] | None = None,
    device: torch.device | str = "cpu",
    gumbel_tau: float = 1.0,
    relaxation: str = "gumbel_softmax",
    rao_samples: int = 8,
    progress: bool = False,
    keep_states: bool = True,
    keep_reference: bool = False,
) -> Trajectory:
    """Run the reverse process from x_T to x_0.

    Args:
        policy: a GaussianPolicy or MaskedPolicy.
        batch_size: B.
        cond: condition passed to every denoiser call.
        generator: source of every random draw (noise, truncation, Gumbel).
        grad: gradient mode (module docstring).
        k: K for grad="last_k".
        kl: KL mode (module docstring).
        kl_log_steps: extra non-gradient steps for the logging estimate (kl="grad").
        shape: sample shape for Gaussian policies (without batch).
        gumbel_tau: Gumbel-softmax temperature for masked policies in gradient steps.
        relaxation, rao_samples: masked policies' straight-through estimator (`MaskedPolicy.step`).
        progress: show a tqdm bar.
        keep_states: store the detached states (needed by policy-gradient methods).
        keep_reference: store the reference steps (for kl="all" without gradient) in
            `extras["ref_steps"]`, so a policy-gradient update can reuse them instead of running
            the reference model again.

    Returns:
        Trajectory.
    """
    T = policy.num_steps
    masked = isinstance(policy, MaskedPolicy)
    if masked:
        x = policy.initial_state(batch_size, device=device)
    else:
        if shape is None:
            raise ValueError("rollout of a GaussianPolicy needs `shape` (the sample shape without batch)")
        x = policy.initial_state(batch_size, shape, generator=generator, device=device)
    grad_steps = grad_schedule(grad, T, k, generator)  # [T]
    kl_steps = torch.zeros(T, dtype=torch.bool)
    log_only = torch.zeros(T, dtype=torch.bool)
    if kl == "all":
        kl_steps[:] = True
    elif kl == "grad":
        kl_steps = grad_steps.clone()
        others = (~grad_steps).nonzero().flatten()
        if kl_log_steps > 0 and len(others) > 0:
            pick = others[torch.randperm(len(others), generator=generator)[: min(kl_log_steps, len(others))]]
            log_only[pick] = True
    elif kl != "none":
        raise ValueError(f"unknown KL mode {kl!r}; valid: none, grad, all")
    n_log = int(log_only.sum())
    log_scale = float((~grad_steps).sum()) / n_log if n_log else 0.0

    states = [x.detach()] if keep_states else []
    log_probs, kls = [], []
    kl_logged = torch.zeros(batch_size, device=device)
    ref_calls = 0
    ref_steps = []
    for i in tqdm(range(T), desc="sampling", disable=not progress, leave=False):
        with torch.set_grad_enabled(bool(grad_steps[i]) and torch.is_grad_enabled()):
            if not grad_steps[i]:
                x = x.detach()
            if masked:
                step = policy.step(x, i, cond, generator=generator, gumbel=bool(grad_steps[i]), tau=gumbel_tau,
                                   relaxation=relaxation, rao_samples=rao_samples)
            else:  # a deterministic step (eta = 0) has no log-prob: NaN, and asking for its KL raises
                step = policy.step(x, i, cond, generator=generator, log_prob=policy.has_log_prob(i))
            kl_i = torch.zeros(batch_size, device=device)
            if kl_steps[i] or log_only[i]:
                ref = policy.step(x, i, cond, prev=step.x_prev, reference=True, log_prob=False)
                ref_calls += 1
                if keep_reference:
                    ref_steps.append(ref)
                kl_i = policy.kl(step, ref)
                kl_logged = kl_logged + (kl_i.detach() * (log_scale if log_only[i] else 1.0))
                if log_only[i]:
                    kl_i = torch.zeros(batch_size, device=device)
        x = step.x_prev
        # detached: policy-gradient updates recompute log-probs and direct backprop never uses them, so
        # keeping their graph would only hold memory (bench/memory.py measured a third of what
        # autograd saves at T = 100 with checkpointing)
        log_probs.append(step.log_prob.detach() if step.log_prob is not None
                         else torch.full((batch_size,), float("nan"), device=device))
        kls.append(kl_i)
        if keep_states:
            states.append(x.detach())
    return Trajectory(
        states=states,
        x0=x,
        log_probs=torch.stack(log_probs),  # [T, B]
        kl=torch.stack(kls) if kl != "none" else None,  # [T, B]
        kl_logged=kl_logged if kl != "none" else None,  # [B]
        grad_steps=grad_steps,
        cond=cond,
        num_reference_calls=ref_calls,
        extras={"ref_steps": ref_steps} if keep_reference else {},
    )
