"""A probe (not a shipped algorithm): CTRL Algorithm 2 plus a mass-covering term on the same target.

    PYTHONPATH=scripts/dna .venv/bin/rldiff run dna/ctrl_cell_type \\
        algorithm._component_=forward_anchor.CTRLForwardAnchor algorithm.forward_weight=0.1 [algorithm.forward_exponent=20]

Adds `forward_weight` x the MDLM negative ELBO (nats per sequence) of the policy, conditioned on y,
on pairs (x, y) resampled from the shipped 2,048 pre-trained samples (T = 10) with self-normalised
weights p_classifier(y | x)^e, e = `forward_exponent` (default gamma / kl_weight, the target's own
exponent). Up to a constant that term is a Monte Carlo upper bound (the ELBO bounds log q) on
KL(target || policy), estimated on the pool; the reverse KL that Algorithm 2 minimises and this
forward KL are both minimised by CTRL's target, so adding it keeps the optimum (up to the pool's
and the bound's error) while pulling the policy toward natural, confidently classified sequences
the pool contains. Used in
docs/dna.md (session 8): it raised 3-mer r by 0.04-0.11 at 0.02-0.07 less oracle accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from domains.dna.domain import default_baseline, read_baseline
from rldiff.algorithms.common import autocast, backward_fn, clip_and_step
from rldiff.algorithms.ctrl import CTRL
from rldiff.core.objectives import backprop_loss
from rldiff.core.reward import check_reward


class CTRLForwardAnchor(CTRL):
    """CTRL (mode backprop) + `forward_weight` x NELBO of importance-resampled pre-trained samples."""

    def __init__(self, domain: Any, accelerator: Any = None, *, forward_weight: float = 0.1,
                 forward_exponent: float | None = None, forward_batch: int = 64, **kwargs: Any) -> None:
        super().__init__(domain, accelerator, **kwargs)
        if self.mode != "backprop":
            raise ValueError("the forward anchor probe extends Algorithm 2 (mode: backprop)")
        self.forward_weight, self.forward_batch = forward_weight, forward_batch
        exponent = forward_exponent if forward_exponent is not None else self.gamma / self.kl_weight
        self.pool = read_baseline(default_baseline(self.policy.num_steps))
        with torch.no_grad():
            log_probs = torch.cat([self.reward.log_probs(self.policy.one_hot(c)) for c in self.pool.split(256)])
        self.weights = torch.softmax(exponent * log_probs, 0)  # [N, K]: each label's target weights
        ess = (1 / (self.weights**2).sum(0)).tolist()
        print("forward anchor: pool of", len(self.pool), "ESS per label", [round(v) for v in ess], flush=True)

    def _forward_nelbo(self, generator: torch.Generator) -> Tensor:
        """MDLM negative ELBO (nats per sequence) of resampled (x, y) pairs under the y-conditioned policy."""
        pol = self.policy
        y = torch.randint(self.num_labels, (self.forward_batch,), generator=generator)
        idx = torch.stack([torch.multinomial(self.weights[:, k], 1, generator=generator)[0] for k in y.tolist()])
        x0 = self.pool[idx]
        cond = {"y": y, "class_emb": self.embedding(y)}
        t = torch.rand(len(y), generator=generator).clamp(min=1e-3)
        is_masked = torch.rand(x0.shape, generator=generator) >= pol.schedule.alpha(t).float()[:, None]
        x_t = torch.where(is_masked, torch.full_like(x0, pol.mask_id), x0)
        ll = pol.denoise(pol.one_hot(x_t), t, cond).gather(-1, x0.long()[..., None]).squeeze(-1)
        return -(pol.schedule.elbo_weight(t).float() * (is_masked * ll).sum(-1)).mean()

    def _update_backprop(self, y: Tensor, generator: torch.Generator) -> dict[str, float]:
        with autocast(self.accelerator):
            cond = self.make_cond(y, generator)
            traj = self._rollout(cond, len(y), generator, grad=self.grad, k=self.k,
                                 kl="grad" if self.kl_weight else "none", kl_log_steps=self.kl_log_steps,
                                 keep_states=False)
            r = check_reward(self.reward(traj.x0, cond), len(y), "log p(y|x)")
            loss = backprop_loss(traj, r, self.gamma, self.kl_weight)
            nelbo = self._forward_nelbo(generator)
        backward_fn(self.accelerator)(loss + self.forward_weight * nelbo)
        gnorm = clip_and_step(self.optimizer, self.params, self.max_grad_norm)
        out = {"loss": loss.item(), "reward": r.mean().item(), "grad_norm": gnorm, "forward_nelbo": nelbo.item(),
               "accuracy": self._accuracy(traj.x0, y), "reference_calls": float(traj.num_reference_calls)}
        if traj.kl_logged is not None:
            out["kl"] = traj.kl_logged.mean().item()
        return out
