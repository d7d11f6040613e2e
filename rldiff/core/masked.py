"""Masked (absorbing-state) discrete diffusion policy with exact log-probabilities (MDLM).

Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models". Tokens are in
{0, ..., V-1}; the mask token is V. States are carried as one-hot tensors [B, L, V+1] (the mask
is the last channel) so that the same code runs hard sampling and straight-through
Gumbel-softmax sampling for direct backprop.

Reverse step t -> s (s < t) for a position still masked at t (unmasked positions carry over):
    stays masked        with probability (1 - alpha_s) / (1 - alpha_t)
    becomes token v     with probability (alpha_s - alpha_t) / (1 - alpha_t) * p_theta(v | x_t)
The per-step KL to a reference is sum over masked i of
    (alpha_s - alpha_t) / (1 - alpha_t) * KL(p_theta(.|x_t)_i || p_ref(.|x_t)_i)
(the stay-masked branch is shared and contributes nothing; unmasked positions contribute exactly 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

#: (x_t one-hot [B, L, V+1] float, t [B] float in (0, 1], cond) -> logits over tokens [B, L, V].
MaskedDenoiser = Callable[[Tensor, Tensor, Any], Tensor]


class LogLinearSchedule:
    """alpha(t) = 1 - (1 - eps) t: the probability that a token is still unmasked at time t."""

    def __init__(self, eps: float = 1e-3) -> None:
        self.eps = eps

    def alpha(self, t: Tensor | float) -> Tensor:
        return 1 - (1 - self.eps) * torch.as_tensor(t, dtype=torch.float64)

    def elbo_weight(self, t: Tensor) -> Tensor:
        """-alpha'(t) / (1 - alpha(t)), the continuous-time NELBO weight (= 1/t here)."""
        return (1 - self.eps) / (1 - self.alpha(t))


@dataclass
class MaskedStep:
    """One reverse step of a masked policy."""

    x_prev: Tensor  # [B, L, V+1] one-hot next state (straight-through in Gumbel mode)
    log_prob: Tensor | None  # [B] log-prob of the transition, summed over masked positions
    probs: Tensor  # [B, L, V] p_theta(x0 | x_t) (carry-over: one-hot at unmasked positions)
    log_probs0: Tensor  # [B, L, V] log p_theta(x0 | x_t)
    masked: Tensor  # [B, L] float, 1 where x_t is masked
    c_unmask: Tensor  # [] (alpha_s - alpha_t) / (1 - alpha_t)


class MaskedPolicy:
    """Absorbing-state diffusion sampler over sequences of length L with vocabulary V.

    Args:
        denoiser: trainable network mapping one-hot x_t to token logits.
        vocab_size: V (the mask token is index V).
        seq_len: L.
        num_steps: T, uniform time grid t_i = 1 - i/T, s_i = 1 - (i+1)/T.
        schedule: the noise schedule (log-linear by default).
        reference: frozen pre-trained denoiser (a view; None = the policy is its own reference).
        gradient_checkpointing: recompute denoiser activations during backward.
        condition_dim: size of `cond["class_emb"]` the denoiser accepts (CTRL's adapter); None if not.
        guidance_scale: classifier-free guidance w on the log-probabilities:
            log p = log p_u + w (log p_c - log p_u), renormalised; None = off.
        uncond: maps a condition to its unconditional counterpart (required with guidance).
    """

    def __init__(
        self,
        denoiser: MaskedDenoiser,
        vocab_size: int,
        seq_len: int,
        num_steps: int,
        *,
        schedule: LogLinearSchedule | None = None,
        reference: MaskedDenoiser | None = None,
        gradient_checkpointing: bool = False,
        condition_dim: int | None = None,
        guidance_scale: float | None = None,
        uncond: Callable[[Any], Any] | None = None,
    ) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.denoiser = denoiser
        self.reference = reference
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.seq_len = seq_len
        self.schedule = schedule or LogLinearSchedule()
        self.gradient_checkpointing = gradient_checkpointing
        self.condition_dim = condition_dim
        if guidance_scale is not None and uncond is None:
            raise ValueError("guidance_scale needs `uncond` (a map from cond to the null condition)")
        self.guidance_scale, self.uncond = guidance_scale, uncond
        t = 1 - torch.arange(num_steps, dtype=torch.float64) / num_steps  # [T]
        s = 1 - torch.arange(1, num_steps + 1, dtype=torch.float64) / num_steps  # [T]
        self.times = t.float()
        a_t, a_s = self.schedule.alpha(t), self.schedule.alpha(s)
        self.c_unmask = ((a_s - a_t) / (1 - a_t)).float()  # [T]
        self.c_stay = ((1 - a_s) / (1 - a_t)).float()  # [T]; exactly 0 at the last step

    @property
    def num_steps(self) -> int:
        return len(self.times)

    # ------------------------------------------------------------------ encodings
    def one_hot(self, tokens: Tensor) -> Tensor:
        """[B, L] long (mask = V) -> [B, L, V+1] float."""
        return F.one_hot(tokens, self.vocab_size + 1).float()

    def tokens(self, x: Tensor) -> Tensor:
        """[B, L, V+1] one-hot -> [B, L] long."""
        return x.argmax(-1)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        """All-mask state [B, L, V+1]."""
        tok = torch.full((batch_size, self.seq_len), self.mask_id, dtype=torch.long, device=device)
        return self.one_hot(tok)

    # ------------------------------------------------------------------ model calls
    def denoise(self, x_t: Tensor, t: Tensor, cond: Any, *, reference: bool = False) -> Tensor:
        """log p_theta(x0 | x_t) [B, L, V] with carry-over unmasking (SUBS parameterization)."""
        net = self.reference if reference and self.reference is not None else self.denoiser
        if reference and isinstance(cond, dict) and "class_emb" in cond:
            cond = {k: v for k, v in cond.items() if k != "class_emb"}  # the reference never sees y
        logp = torch.log_softmax(self._call(net, x_t, t, cond).float(), dim=-1)  # zero mass on the mask
        if self.guidance_scale is not None:
            logp_u = torch.log_softmax(self._call(net, x_t, t, self.uncond(cond)).float(), dim=-1)
            logp = torch.log_softmax(logp_u + self.guidance_scale * (logp - logp_u), dim=-1)
        # which positions are masked is structural: no (straight-through) gradient through it
        masked = x_t[..., self.mask_id : self.mask_id + 1].detach()  # [B, L, 1]
        # unmasked positions carry over: p(x0 = x_t) = 1 there (log 0 -> large negative, kept finite)
        carry = torch.log(x_t[..., : self.vocab_size].clamp(min=1e-30))
        return masked * logp + (1 - masked) * carry

    def _call(self, net: MaskedDenoiser, x: Tensor, t: Tensor, cond: Any) -> Tensor:
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
        generator: torch.Generator | None = None,
        reference: bool = False,
        gumbel: bool = False,
        tau: float = 1.0,
        relaxation: str = "gumbel_softmax",
        rao_samples: int = 8,
        log_prob: bool = True,
    ) -> MaskedStep:
        """One reverse step t_i -> s_i.

        Args:
            x_t: [B, L, V+1] one-hot current state.
            i: step index in [0, T).
            prev: a given next state (one-hot) to score instead of sampling.
            gumbel: straight-through Gumbel-softmax on the unmask branch (hard one-hot forward, soft
                gradient backward) for direct backprop. Whether a position unmasks at this step
                does not depend on theta, so that Bernoulli draw needs no gradient.
            tau: Gumbel-softmax temperature.
            relaxation: the backward pass of `gumbel` mode. ``"gumbel_softmax"``: the gradient of
                softmax((log p + g) / tau) (Jang et al. 2017); ``"straight_through"``: the gradient
                of p itself (Bengio et al. 2013), which is exact for any function that is linear in
                each position's one-hot token, e.g. a reward or the next denoiser call that is
                multilinear in the sequence, with no temperature to tune. ``"gumbel_rao"``: the
                Gumbel-softmax gradient averaged over `rao_samples` Gumbel draws conditioned on the
                sampled token (Paulus et al. 2021, "Rao-Blackwellizing the Straight-Through
                Gumbel-Softmax Gradient Estimator"): the same expected gradient, lower variance, so a
                lower `tau` (less bias) becomes usable. ``"reinmax"``: ReinMax (Liu et al. 2023,
                "Bridging Discrete and Backpropagation: Straight-Through and Beyond"), Heun's
                method in place of straight-through's Euler step: second-order accurate, i.e. its
                expected gradient is exact for any function that is quadratic in each position's
                one-hot token (straight-through: linear), at no extra model call.
            rao_samples: conditional Gumbel draws per token for ``"gumbel_rao"``.
            log_prob: also return the log-probability of the transition.

        Returns:
            MaskedStep (x_prev [B, L, V+1], log_prob [B], probs [B, L, V], masked [B, L], c_unmask).
        """
        B = x_t.shape[0]
        t = self.times[i].expand(B).to(x_t.device)
        logp0 = self.denoise(x_t, t, cond, reference=reference)  # [B, L, V]
        c_u, c_s = self.c_unmask[i].to(x_t.device), self.c_stay[i].to(x_t.device)
        masked = x_t[..., self.mask_id].detach()  # [B, L]
        # transition log-probabilities over V tokens + "stay masked"
        log_q = torch.cat([logp0 + torch.log(c_u), torch.log(c_s).expand(*logp0.shape[:-1], 1)], dim=-1)  # [B, L, V+1]
        if prev is None:
            # two stages: unmask-or-stay ~ Bernoulli(c_u) (does not depend on theta), then the token
            # ~ p_theta(. | x_t) by Gumbel-max; straight-through Gumbel-softmax on that branch only
            unmask = (torch.rand(masked.shape, generator=generator, device=x_t.device) < c_u).to(x_t.dtype)  # [B, L]
            u = torch.rand(logp0.shape, generator=generator, device=x_t.device).clamp_(1e-20, 1 - 1e-7)
            g = -torch.log(-torch.log(u))  # Gumbel(0, 1), [B, L, V]
            token = F.one_hot((logp0.detach() + g).argmax(-1), self.vocab_size).to(x_t.dtype)  # [B, L, V]
            if gumbel:
                if relaxation == "gumbel_softmax":
                    soft = torch.softmax((logp0 + g) / tau, dim=-1)
                elif relaxation == "gumbel_rao":
                    soft = _gumbel_rao_soft(logp0, token, tau, rao_samples, generator)
                elif relaxation == "straight_through":
                    soft = logp0.exp()
                elif relaxation == "reinmax":
                    soft = _reinmax_soft(logp0, token, tau)
                else:
                    raise ValueError(f"unknown relaxation {relaxation!r}; valid: gumbel_softmax, gumbel_rao, straight_through, reinmax")
                token = token + (soft - soft.detach())  # straight-through: forward value exactly one-hot
            token = F.pad(token, (0, 1))  # [B, L, V+1], mask channel 0
            stay = F.one_hot(torch.full_like(masked, self.mask_id, dtype=torch.long), self.vocab_size + 1).to(x_t.dtype)
            m, um = masked.unsqueeze(-1), unmask.unsqueeze(-1)
            prev = m * (um * token + (1 - um) * stay) + (1 - m) * x_t
        lp = None
        if log_prob:
            # log of the branch taken, at masked positions only (unmasked positions carry over w.p. 1)
            taken = (prev.detach() * log_q.clamp(min=-1e4)).sum(-1)  # [B, L]
            lp = (masked * taken).sum(-1)
        return MaskedStep(x_prev=prev, log_prob=lp, probs=logp0.exp(), log_probs0=logp0, masked=masked, c_unmask=c_u)

    def kl(self, step: MaskedStep, ref: MaskedStep) -> Tensor:
        """Exact per-step KL on masked positions (see module docstring).

        Returns:
            [B] KL values.
        """
        kl_pos = (step.probs * (step.log_probs0 - ref.log_probs0)).sum(-1)  # [B, L]
        return step.c_unmask * (step.masked * kl_pos).sum(-1)

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def elbo(self, tokens: Tensor, cond: Any = None, *, num_samples: int = 16,
             generator: torch.Generator | None = None, reference: bool = False) -> Tensor:
        """MDLM continuous-time ELBO (a lower bound on log p(x0), in nats), Monte Carlo over t.

        Uses stratified times t_j = (j + u) / num_samples so the estimate has low variance. The
        bound integrates over the whole masking path, alpha from 1 down to 0 (alpha(t) = 1 - t,
        weight 1/t); the sampling schedule's floor eps would drop the alpha in [0, eps] piece and
        overstate the likelihood.

        Args:
            tokens: [B, L] long clean sequences.
            num_samples: Monte Carlo samples of t per sequence.

        Returns:
            [B] ELBO values (higher is better).
        """
        B, L = tokens.shape
        x0 = self.one_hot(tokens)
        total = torch.zeros(B, dtype=torch.float64, device=tokens.device)
        u = torch.rand(B, generator=generator, device=tokens.device)
        for j in range(num_samples):
            t = ((j + u) / num_samples).clamp(min=1e-6)  # [B]
            keep = 1 - t  # alpha(t) over the full path
            is_masked = torch.rand(B, L, generator=generator, device=tokens.device) >= keep[:, None]
            xt = torch.where(is_masked, torch.full_like(tokens, self.mask_id), tokens)
            logp0 = self.denoise(self.one_hot(xt), t, cond, reference=reference)
            ll = (logp0 * x0[..., : self.vocab_size]).sum(-1)  # [B, L]
            total += (1 / t.double()) * (is_masked.double() * ll.double()).sum(-1)
        return (total / num_samples).float()


def _reinmax_soft(logp: Tensor, token: Tensor, tau: float) -> Tensor:
    """ReinMax's surrogate pi_2 (Liu et al. 2023, Algorithm 2) for a sampled one-hot `token` [.., V]:
    pi_1 = softmax(theta') with theta' = log((token + softmax(logp / tau)) / 2) in the forward pass and
    d pi_1 / d theta taken at theta' (its logits move with theta), pi_2 = 2 pi_1 - pi_0 / 2.
    `token + pi_2 - pi_2.detach()` is then the sample forward and ReinMax's gradient backward."""
    pi1 = ((token + torch.softmax(logp / tau, dim=-1)) / 2).clamp(min=1e-30)
    pi1 = torch.softmax((pi1.log() - logp).detach() + logp, dim=-1)
    return 2 * pi1 - 0.5 * logp.exp()


def _gumbel_rao_soft(logp: Tensor, token: Tensor, tau: float, num: int, generator: torch.Generator | None) -> Tensor:
    """E[softmax((logp + G) / tau) | argmax(logp + G) = token], estimated from `num` draws [.., V];
    its gradient is E[d softmax((logp + G) / tau) / d logp | argmax], the noise held fixed.

    Given the argmax a of normalised log-probabilities, the perturbed maximum is Gumbel(0):
    z_a = -log E_a, and every other z_v is a Gumbel(logp_v) truncated below z_a:
    z_v = -log(E_v / p_v + E_a), with E ~ Exp(1) (Maddison et al. 2014, A* sampling)."""
    e = -torch.log(torch.rand((num, *logp.shape), generator=generator, device=logp.device).clamp_(1e-20, 1 - 1e-7))
    e_top = (e * token).sum(-1, keepdim=True)  # [num, .., 1] E_a
    z_other = logp - torch.log(e + e_top * logp.exp())  # = -log(E_v / p_v + E_a), finite for p_v -> 0
    z = torch.where(token.bool(), -torch.log(e_top).expand_as(z_other), z_other)
    g = (z - logp).detach()  # the noise is drawn given the token, then held fixed: d/dtheta of softmax((logp + g) / tau)
    return torch.softmax((logp + g) / tau, dim=-1).mean(0)


def kmer_frequencies(x: Tensor, k: int) -> Tensor:
    """Per-sequence k-mer frequencies of one-hot (or relaxed one-hot) sequences, differentiable.

    Args:
        x: [B, L, V] one-hot tokens (a straight-through one-hot carries its gradient through).
        k: k-mer length, 1 <= k <= L.

    Returns:
        [B, V^k]: the mean over the L - k + 1 windows of the outer product of the window's k one-hots,
        flattened with the first position most significant (index sum_j v_j V^(k-1-j); for hard
        one-hots these are the k-mer counts / (L - k + 1)).
    """
    L = x.shape[1]
    if not 1 <= k <= L:
        raise ValueError(f"k must lie in [1, {L}] for sequences of length {L}, got {k}")
    n = L - k + 1
    f = x[:, :n]  # [B, n, V]
    for j in range(1, k):
        f = (f.unsqueeze(-1) * x[:, j : j + n].unsqueeze(-2)).flatten(-2)  # [B, n, V^(j+1)]
    return f.mean(1)
