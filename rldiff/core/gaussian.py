"""Gaussian diffusion policy: DDIM (eta > 0) and DDPM ancestral steps with exact log-probabilities.

Every reverse step is a Gaussian `p(x_{t-1} | x_t) = N(mu_t, sigma_t^2 I)`, so its log-probability
and its KL to a reference policy (same sigma_t) are available in closed form. Formulas follow
Song et al. 2021 (DDIM, eqs. 12 and 16) and Ho et al. 2020 (DDPM, eqs. 6-7). Log-probabilities
are **summed** over dimensions: averaging them (as ddpo-pytorch does) silently rescales the KL.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

#: A noise-prediction network: (x_t [B, ...], t [B] long training-timestep indices, cond) -> eps [B, ...].
Denoiser = Callable[[Tensor, Tensor, Any], Tensor]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2 I), summed over every dimension but the first.

    Args:
        x, mean: [B, ...] tensors.
        std: scalar tensor or broadcastable to x; must be > 0.

    Returns:
        [B] log-densities.
    """
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return lp.flatten(1).sum(1)


def gaussian_kl_same_std(mean_p: Tensor, mean_q: Tensor, std: Tensor) -> Tensor:
    """KL(N(mean_p, std^2) || N(mean_q, std^2)) summed over dimensions: |mu_p - mu_q|^2 / (2 std^2).

    Returns:
        [B] KL values.
    """
    std = torch.as_tensor(std, dtype=mean_p.dtype, device=mean_p.device)
    return (((mean_p - mean_q) ** 2) / (2 * std**2)).flatten(1).sum(1)


@dataclass
class GaussianStep:
    """One reverse step x_t -> x_prev of a Gaussian policy."""

    x_prev: Tensor  # [B, ...] the sampled (or scored) next state
    log_prob: Tensor | None  # [B] log p(x_prev | x_t), summed over dims (None if not asked)
    mean: Tensor  # [B, ...] mu_t
    std: Tensor  # [] sigma_t
    eps: Tensor  # [B, ...] predicted noise (after guidance)
    x0_hat: Tensor  # [B, ...] predicted clean sample, DDIM eq. (12)


class DeterministicStepError(ValueError):
    """Raised when a log-prob or KL is requested from a deterministic (sigma_t = 0) step."""


class GaussianPolicy:
    """A noise-predicting denoiser plus its DDIM/DDPM sampler, with exact per-step log-probs.

    Args:
        denoiser: the (trainable) noise predictor, `denoiser(x_t, t, cond) -> eps`.
        alphas_cumprod: [N_train] alpha-bar of the training schedule.
        timesteps: the inference timesteps, descending (e.g. a diffusers scheduler's `.timesteps`).
        final_alpha_cumprod: alpha-bar after the last step (diffusers' `final_alpha_cumprod`).
        eta: DDIM stochasticity; 1.0 matches the DDPM posterior variance. 0 is deterministic and
            then log-probs / KL are undefined (asking for them raises `DeterministicStepError`).
        kind: "ddim" (Song et al. eq. 12 with sigma from eq. 16) or "ddpm" (posterior mean of
            Ho et al. eq. 7 with variance "small" = posterior beta-tilde or "large" = beta_t).
        ddpm_variance: "small" or "large" (only for kind="ddpm").
        guidance_scale: classifier-free guidance weight w (eps = e_u + w (e_c - e_u)); None = off.
        uncond: maps a condition to its unconditional counterpart (required with guidance).
        reference: the frozen pre-trained denoiser (a view, e.g. LoRA adapters disabled), used for
            KL. None means the policy *is* the reference.
        gradient_checkpointing: recompute denoiser activations in backward (saves memory).
        condition_dim: size of the embedding the denoiser accepts as `cond["class_emb"]` (the
            adapter interface CTRL uses to attach a new condition y); None if unsupported.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        alphas_cumprod: Tensor,
        timesteps: Tensor,
        *,
        final_alpha_cumprod: float | Tensor = 1.0,
        eta: float = 1.0,
        kind: Literal["ddim", "ddpm"] = "ddim",
        ddpm_variance: Literal["small", "large"] = "small",
        guidance_scale: float | None = None,
        uncond: Callable[[Any], Any] | None = None,
        reference: Denoiser | None = None,
        gradient_checkpointing: bool = False,
        condition_dim: int | None = None,
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if kind not in ("ddim", "ddpm"):
            raise ValueError(f"kind must be 'ddim' or 'ddpm', got {kind!r}")
        if guidance_scale is not None and uncond is None:
            raise ValueError("guidance_scale needs `uncond` (a map from cond to the null condition)")
        self.denoiser = denoiser
        self.reference = reference
        self.eta = float(eta)
        self.kind = kind
        self.ddpm_variance = ddpm_variance
        self.guidance_scale = guidance_scale
        self.uncond = uncond
        self.gradient_checkpointing = gradient_checkpointing
        self.condition_dim = condition_dim
        ts = torch.as_tensor(timesteps).long()
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        a_t = ac[ts]
        a_p = torch.cat([ac[ts[1:]], torch.as_tensor([float(final_alpha_cumprod)], dtype=torch.float64)])
        self.alphas_cumprod = ac  # [N_train] float64
        self.timesteps = ts  # [T]
        sigma = self._sigmas(a_t, a_p)  # float64
        self.alpha_t = a_t.float()  # [T]
        self.alpha_prev = a_p.float()  # [T]
        self.sigma = sigma.float()  # [T]
        # per-step coefficients, computed in float64 (1 - a_p - sigma^2 cancels badly in float32)
        alpha = a_t / a_p
        self._c_x0 = {  # x0_hat = c_xt * x_t - c_eps * eps
            "c_xt": (1 / a_t.sqrt()).float(), "c_eps": ((1 - a_t) / a_t).sqrt().float()}
        if kind == "ddpm":  # mean = m_x0 * x0_hat + m_xt * x_t
            self._c_mean = {"m_x0": (a_p.sqrt() * (1 - alpha) / (1 - a_t)).float(),
                                "m_xt": (alpha.sqrt() * (1 - a_p) / (1 - a_t)).float()}
        else:  # mean = m_x0 * x0_hat + m_eps * eps
            self._c_mean = {"m_x0": a_p.sqrt().float(), "m_eps": (1 - a_p - sigma**2).clamp(min=0).sqrt().float()}

    @classmethod
    def from_scheduler(cls, denoiser: Denoiser, scheduler: Any, num_steps: int, **kwargs: Any) -> GaussianPolicy:
        """Build from a diffusers scheduler (its alphas_cumprod and timestep spacing).

        Args:
            scheduler: e.g. `diffusers.DDIMScheduler`; `set_timesteps(num_steps)` is called on it.
            num_steps: number of inference steps T.
        """
        scheduler.set_timesteps(num_steps)
        final = getattr(scheduler, "final_alpha_cumprod", scheduler.alphas_cumprod[0])
        return cls(denoiser, scheduler.alphas_cumprod, scheduler.timesteps, final_alpha_cumprod=final, **kwargs)

    # ------------------------------------------------------------------ schedule
    def _sigmas(self, a_t: Tensor, a_p: Tensor) -> Tensor:
        beta = 1 - a_t / a_p  # beta_t of the (strided) forward step
        if self.kind == "ddpm":
            if self.ddpm_variance == "large":
                return beta.sqrt()
            return ((1 - a_p) / (1 - a_t) * beta).sqrt()  # beta-tilde, Ho et al. eq. (7)
        # compute sigma_t(eta), see Song et al. formula (16)
        return self.eta * ((1 - a_p) / (1 - a_t)).sqrt() * beta.sqrt()

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def initial_state(self, batch_size: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> Tensor:
        """x_T ~ N(0, I) of shape [batch_size, *shape]."""
        return torch.randn((batch_size, *shape), generator=generator, device=device)

    # ------------------------------------------------------------------ model calls
    def predict_eps(self, x_t: Tensor, i: int, cond: Any, *, reference: bool = False) -> Tensor:
        """Noise prediction at step i, with classifier-free guidance when configured."""
        net = self.reference if reference and self.reference is not None else self.denoiser
        if reference and "class_emb" in (cond if isinstance(cond, dict) else {}):
            cond = {k: v for k, v in cond.items() if k != "class_emb"}  # the reference never sees y
        t = self.timesteps[i].expand(x_t.shape[0]).to(x_t.device)
        if self.guidance_scale is None:
            return self._call(net, x_t, t, cond)
        e_c = self._call(net, x_t, t, cond)
        e_u = self._call(net, x_t, t, self.uncond(cond))
        return e_u + self.guidance_scale * (e_c - e_u)

    def _call(self, net: Denoiser, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(net, x, t, cond, use_reentrant=False)
        return net(x, t, cond)

    # ------------------------------------------------------------------ the step
    def step(
        self,
        x_t: Tensor,
        i: int,
        cond: Any = None,
        *,
        prev: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        reference: bool = False,
        log_prob: bool = True,
    ) -> GaussianStep:
        """One reverse step from x_t (step index i, 0 = noisiest).

        Without `prev` it samples x_prev = mu + sigma z (reparameterized: gradients flow through mu
        into the denoiser and x_t). With `prev` it scores that given transition instead.

        Args:
            x_t: [B, ...] current state.
            i: step index in [0, T).
            cond: condition passed to the denoiser.
            prev: a transition target to score instead of sampling.
            noise: the z to use when sampling (drawn from `generator` if None).
            reference: use the frozen reference denoiser.
            log_prob: compute log p(x_prev | x_t); raises DeterministicStepError if sigma_t = 0.

        Returns:
            GaussianStep with x_prev, log_prob [B], mean, std, eps, x0_hat.
        """
        sigma = self.sigma[i]
        if log_prob and sigma <= 0:
            raise DeterministicStepError(self._deterministic_message(i))
        eps = self.predict_eps(x_t, i, cond, reference=reference)
        # predicted x_0, see Song et al. formula (12)
        x0_hat = self._c_x0["c_xt"][i] * x_t - self._c_x0["c_eps"][i] * eps
        c = {k: v[i] for k, v in self._c_mean.items()}
        if self.kind == "ddpm":
            # posterior mean mu~(x_t, x_0), Ho et al. formula (7)
            mean = c["m_x0"] * x0_hat + c["m_xt"] * x_t
        else:
            # sqrt(a_p) x0_hat + direction pointing to x_t, Song et al. formula (12)
            mean = c["m_x0"] * x0_hat + c["m_eps"] * eps
        if prev is None:
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            prev = mean + sigma * noise
        lp = gaussian_log_prob(prev, mean, sigma) if log_prob else None
        return GaussianStep(x_prev=prev, log_prob=lp, mean=mean, std=sigma, eps=eps, x0_hat=x0_hat)

    def _deterministic_message(self, i: int) -> str:
        a_t, a_p = float(self.alpha_t[i]), float(self.alpha_prev[i])
        why = (f"eta={self.eta}" if self.eta == 0 or self.kind == "ddpm" else
               f"alpha-bar {a_t:.6g} -> {a_p:.6g}: a step onto alpha-bar 1 has no noise; build the scheduler "
               "with set_alpha_to_one=False (or steps_offset=1) so the last step keeps sigma > 0")
        return (f"step {i} is deterministic (sigma_t = 0, {why}): its log-probability and KL are undefined. "
                "Policy gradients, KL penalties and CTRL need eta > 0 (e.g. 1.0) on every step.")

    def has_log_prob(self, i: int) -> bool:
        """Whether step i is stochastic (sigma_t > 0), so its log-probability is defined."""
        return bool(self.sigma[i] > 0)

    def kl(self, step: GaussianStep, ref: GaussianStep) -> Tensor:
        """Exact per-step KL(p_theta(.|x_t) || p_ref(.|x_t)) = |mu_theta - mu_ref|^2 / (2 sigma_t^2), summed.

        Returns:
            [B] KL values.
        """
        if step.std <= 0:
            raise DeterministicStepError("KL between deterministic steps (sigma_t = 0) is undefined; use eta > 0 "
                                         "and a final step with sigma > 0")
        return gaussian_kl_same_std(step.mean, ref.mean, step.std)
