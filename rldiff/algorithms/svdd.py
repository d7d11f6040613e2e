"""SVDD: soft value-based decoding, a derivative-free, training-free guidance baseline.

Li, Zhao, Uehara, et al. 2024 ("Derivative-Free Guidance in Continuous and Discrete Diffusion
Models with Soft Value-Based Decoding", arXiv 2408.08252). At every step draw M candidates
x_{t-1} from the pre-trained transition, score each with a value v(x_{t-1}) and keep one:
the argmax (`alpha = 0`) or a draw from softmax(v / alpha). SVDD-PM approximates the soft value by
the reward of the denoiser's prediction, v(x_{t-1}) = r(x0_hat(x_{t-1})); with the exact soft
value and M -> infinity the alpha > 0 rule samples p_pre(x) exp(r(x) / alpha). Works for Gaussian
and masked policies alike and needs neither gradients nor training (`train.steps: 0`).
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor, nn

from rldiff.algorithms.common import device_of, index_cond
from rldiff.core.gaussian import GaussianPolicy
from rldiff.core.masked import MaskedPolicy
from rldiff.core.reward import ClassifierLogProb, as_reward


class SVDD:
    """Value-guided decoding with the domain's classifier log p(y | x) (or its `reward`).

    Args:
        domain: provides `policy`, `classifier`, `num_labels` (or `reward` with `use_reward`).
        accelerator: optional.
        num_candidates: M, candidates per step.
        alpha: selection temperature; 0 = argmax.
        use_reward: guide by the domain's task `reward` instead of log p(y | x).
        batch_size: samples decoded in parallel (each carries M candidates).
    """

    def __init__(self, domain: Any, accelerator: Any = None, *, num_candidates: Annotated[int, Field(ge=1)] = 8,
                 alpha: Annotated[float, Field(ge=0)] = 0.0, use_reward: bool = False,
                 batch_size: Annotated[int, Field(ge=1)] = 128) -> None:
        self.domain, self.policy, self.device = domain, domain.policy, device_of(accelerator)
        self.value_fn = as_reward(domain.reward) if use_reward else ClassifierLogProb(domain.classifier, label_key="y")
        self.use_reward = use_reward
        self.M, self.alpha, self.batch_size = num_candidates, alpha, batch_size
        self.num_labels = int(getattr(domain, "num_labels", 1))

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        raise RuntimeError("SVDD has nothing to train: set train.steps: 0")

    def x0_hat(self, x: Tensor, i_next: int, cond: Any) -> Tensor:
        """The denoiser's clean prediction from state x at step index i_next (x itself at the end)."""
        pol = self.policy
        if i_next >= pol.num_steps:
            return x
        if isinstance(pol, GaussianPolicy):
            return pol.step(x, i_next, cond, log_prob=False, noise=torch.zeros_like(x)).x0_hat
        t = pol.times[i_next].expand(x.shape[0]).to(x.device)
        best = pol.denoise(x, t, cond).argmax(-1)  # [B, L] argmax fill of masked positions
        return pol.one_hot(torch.where(x[..., pol.mask_id] > 0, best, x.argmax(-1)))

    @torch.no_grad()
    def decode(self, cond: Any, n: int, generator: torch.Generator) -> Tensor:
        """Run SVDD for n samples with conditions `cond` (dict with per-sample rows)."""
        pol, M = self.policy, self.M
        if isinstance(pol, MaskedPolicy):
            x = pol.initial_state(n, device=self.device)
        else:
            x = pol.initial_state(n, tuple(self.domain.sample_shape), generator=generator, device=self.device)
        rep = torch.arange(n).repeat_interleave(M)  # candidate m of sample b at row b * M + m
        cond_rep = index_cond(cond, rep.to(self.device)) if cond is not None else None
        for i in range(pol.num_steps):
            cand = pol.step(x[rep], i, cond_rep, generator=generator, log_prob=False).x_prev  # [n*M, ...]
            v = self.value_fn(self.x0_hat(cand, i + 1, cond_rep), cond_rep).view(n, M)
            if self.alpha == 0:
                pick = v.argmax(-1)
            else:
                pick = torch.multinomial(torch.softmax(v / self.alpha, -1).cpu(), 1, generator=generator).squeeze(-1)
            x = cand.view(n, M, *cand.shape[1:])[torch.arange(n), pick.to(self.device)]
        return x

    def sample(self, num: int, generator: torch.Generator, y: Tensor | None = None) -> dict[str, Any]:
        if self.use_reward:
            y = torch.full((num,), int(getattr(self.domain, "target_label", 0)))
        y = (torch.arange(num) % self.num_labels if y is None else y).to(self.device)
        xs = []
        for chunk in y.split(self.batch_size):
            cond = {**(self.domain.sample_cond(len(chunk), generator) or {}), "y": chunk}
            xs.append(self.decode(cond, len(chunk), generator))
        return {"x0": torch.cat(xs), "y": y, "gamma": 1.0 / self.alpha if self.alpha else float("inf")}
