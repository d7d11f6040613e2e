"""CTRL: adding a new condition y to a pre-trained diffusion model with RL.

Zhao, Uehara, Scalia, Kung, Biancalani, Levine, Hajiramezanali. "Adding Conditional Control to
Diffusion Models with Reinforcement Learning", ICLR 2025 (arXiv 2406.12120).

Goal: sample from p(x | c, y) proportional to p_pre(x | c) p(y | x)^gamma, where p(y | x) is a
classifier fitted on offline (x, y) pairs. The fine-tuned policy is the pre-trained model plus a
**zero-initialised** embedding of y (row `num_labels` is the reserved null label) fed through the
denoiser's class-embedding path, plus the domain's trainable adapters (LoRA / residual), so at
step 0 it *is* the pre-trained model and the KL is exactly 0. It maximises (CTRL eq. 6)

    E_{y ~ p(y), x ~ p_theta(. | c, y)} [ gamma log p(y | x) ] - KL(p_theta(. | c, y) || p_pre(. | c)).

- `mode="backprop"`: Algorithm 2, direct backprop through the sampler (reparameterized Gaussian
  steps; straight-through Gumbel-softmax for masked diffusion), truncated per `grad`.
- `mode="policy_gradient"`: Algorithm 1 with the per-step KL penalty and PPO-clipped ratios.
- Continuous y (`soft_labels=True`): y is a probability vector w over classes, the embedding is
  the mixture sum_k w_k E_k and the reward sum_k w_k log p(k | x) (target p_pre prod_k p(k|x)^(gamma w_k)).
- Multi-label control (conditional independence): give a `MultiLabelLogProb` reward and several
  label keys; see `docs/concepts.md`.
- Forward anchor (`forward_weight > 0`, backprop mode): add `forward_weight` x the policy's
  diffusion loss (for masked policies the negative ELBO, nats per sequence) on pairs (x, y) drawn
  from a pool importance-weighted toward the same target, i.e. a Monte Carlo upper bound (up to a
  constant) on the forward KL(target || policy). The reverse KL of eq. 6 and this forward KL have
  the same minimiser, the target; the forward term is mass-covering, so it keeps the policy on
  natural sequences the pool contains. Pools: "offline" = the domain's labelled pairs (x ~ p(x | y)
  = p_pre(x) p(y | x) / p(y) when the data are the pre-trained model's, weights p(y | x)^(e - 1)
  within each label) or "reference" = samples of the pre-trained model (weights p(y | x)^e).
- Moment anchor (`forward_moment_weight > 0`, masked policies, backprop mode): add
  `forward_moment_weight` x (L - k + 1) chi2(q_y || m_y) / 2, where m_y are the k-mer frequencies of the
  same weighted pool (the target's, estimated) and q_y those of this batch's samples with label y
  (straight-through one-hots, so the gradient flows like the reward's). The target has m_y, so the
  term is zero there and the minimiser is kept (up to the pool's error); it stops the policy from
  buying reward with a shift of base composition that the target does not make.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from rldiff.algorithms.common import (
    autocast,
    backward_fn,
    check_t_weights,
    clip_and_step,
    device_of,
    diffusion_loss,
    expand_cond,
    index_cond,
    trainable_parameters,
    with_prompts,
)
from rldiff.core.masked import MaskedPolicy, kmer_frequencies
from rldiff.core.objectives import backprop_loss, kl_to_go, policy_gradient_step
from rldiff.core.reward import ClassifierLogProb, check_reward
from rldiff.core.rollout import rollout


class LabelEmbedding(nn.Module):
    """Zero-initialised embedding of y with a reserved null label (index `num_labels`).

    Hard labels: LongTensor [B] -> [B, dim]. Soft labels: FloatTensor [B, num_labels] of class
    weights -> the weighted mixture of class embeddings.
    """

    def __init__(self, num_labels: int, dim: int) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.weight = nn.Parameter(torch.zeros(num_labels + 1, dim))  # zero-init: step 0 = pre-trained

    @property
    def null_label(self) -> int:
        return self.num_labels

    def forward(self, y: Tensor) -> Tensor:
        if y.dtype.is_floating_point:
            return y @ self.weight[: self.num_labels]
        return self.weight[y.long()]


class CTRL:
    """CTRL (Algorithms 1 and 2) over any domain satisfying `rldiff.train.protocol.RLDomain`.

    Args:
        domain: provides `policy` (with `condition_dim`), `trainable`, `classifier`, `num_labels`.
        accelerator: an `accelerate.Accelerator` (device, mixed precision, backward); optional.
        gamma: reward scale: the target is p_pre(x) p(y|x)^gamma.
        mode: "backprop" (Algorithm 2) or "policy_gradient" (Algorithm 1).
        batch_size: trajectories per update.
        lr: learning rate of the domain's adapters (LoRA / residual).
        embedding_lr: learning rate of the y-embedding.
        betas, weight_decay: AdamW settings (paper: (0.9, 0.999), 0.1 on SD).
        max_grad_norm: gradient clipping (None = off).
        grad: gradient truncation for backprop: none / last_k / random / all.
        k: K for grad="last_k".
        kl_weight: weight of the KL term (1 = the exact CTRL objective).
        kl_log_steps: extra non-gradient steps for the logged KL estimate (backprop mode).
        gumbel_tau: straight-through Gumbel-softmax temperature (masked domains).
        relaxation: masked domains' gradient through sampled tokens: "gumbel_softmax",
            "gumbel_rao" (Rao-Blackwellized over `rao_samples` conditional draws), "reinmax"
            (ReinMax: second-order accurate, Liu et al. 2023) or
            "straight_through" (the gradient of the token probabilities); see `MaskedPolicy.step`.
        rao_samples: conditional Gumbel draws per token for "gumbel_rao".
        clip_range: PPO clip (policy_gradient mode).
        inner_epochs, num_minibatches: PPO passes / minibatches per batch (policy_gradient mode).
        normalize_advantages: divide advantages by their std in policy_gradient mode (changes the
            effective gamma; off by default so the KL-regularized target stays exact).
        label_probs: the distribution of y during training (default uniform).
        stratified_labels: draw each batch's hard labels stratified (label k appears
            floor(n p_k) times, the remainder drawn from label_probs, then shuffled) instead of i.i.d.:
            the same distribution of y over training, with less per-label noise in each batch.
        soft_labels: train on continuous y ~ Dirichlet(1) mixtures instead of hard labels.
        temperature: classifier temperature (from calibration) used inside the reward.
        forward_weight: weight of the forward anchor (0 = off; backprop mode, hard labels only).
        forward_source: the anchor's pool: "offline" (the domain's `offline_data("train")` pairs) or
            "reference" (samples drawn from the pre-trained model when CTRL is built).
        forward_exponent: e in the anchor's target p_pre(x) p(y | x)^e (default gamma / kl_weight,
            the exponent of CTRL's own target).
        forward_batch: pairs per update in the anchor term.
        forward_pool: at most this many pool examples (a fixed random subset / this many samples).
        forward_t_weights: reweight the anchor's terms over the noise level t: K equal bins of t,
            bin k's terms x w_k (`diffusion_loss(t_weights=...)`; None = the bound as it is; with a
            10-step masked sampler, 10 weights are its 10 steps, the lowest-noise first). Each t's
            term alone is minimised by the target, so any weighting keeps the minimiser.
        forward_moment_weight: weight of the moment anchor (0 = off; masked policies, backprop mode,
            hard labels): (L - k + 1) / 2 x the Pearson chi-square of the batch's k-mer frequencies for
            y against the pool's (~ KL for small differences; finite for a k-mer the batch lacks), summed
            over the batch's labels weighted by their share of the batch. Uses the forward pool (built
            with `forward_source`, `forward_exponent`, `forward_pool` even when `forward_weight` is 0).
        forward_moment_k: k of those k-mers (V^k frequencies; 2 = dinucleotides for DNA).
        forward_moment_exponent: e of the moment anchor's own target p_pre p(y | x)^e, the same pool
            reweighted (None = `forward_exponent`): a lower e holds the composition nearer the real
            sequences of label y (e = 1 for offline pairs: their own frequencies) while the MDLM-loss
            anchor keeps its exponent.
        forward_moment_unbiased: estimate the chi-square without the batch's own sampling noise: per
            label a U-statistic over pairs of its n rows, sum_j (n^2 (q_j - m_j)^2 - sum_i (f_ij - m_j)^2)
            / (n (n - 1) m_j), whose expectation is the chi-square of the policy's mean frequencies E[q]
            (the batch's chi-square adds sum_j Var(q_j) / m_j: at 8 rows per label on DNA ~95% of its
            value, a push toward sequences of one composition). Labels with one row in the batch drop out.
        forward_autocast: "bf16" runs the MDLM-loss anchor's denoiser pass under
            `torch.autocast(dtype=bfloat16)` (convolutions and matmuls in bf16; the log-softmax and the
            loss in fp32): the anchor is a regulariser toward the pool, so a rounded value and gradient
            serve it, and on a CPU with AVX512-BF16 its pass is ~1.7x faster. The rollout, the reward and
            the exact KL keep the accelerator's precision. "no" (default) = the accelerator's precision.
    """

    def __init__(
        self,
        domain: Any,
        accelerator: Any = None,
        *,
        gamma: Annotated[float, Field(gt=0)] = 1.0,
        mode: Literal["backprop", "policy_gradient"] = "backprop",
        batch_size: Annotated[int, Field(ge=1)] = 64,
        lr: Annotated[float, Field(gt=0)] = 1e-3,
        embedding_lr: Annotated[float, Field(gt=0)] = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: Annotated[float, Field(ge=0)] = 0.0,
        max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0,
        grad: Literal["none", "last_k", "random", "all"] = "all",
        k: Annotated[int, Field(ge=1)] = 1,
        kl_weight: Annotated[float, Field(ge=0)] = 1.0,
        kl_log_steps: Annotated[int, Field(ge=0)] = 0,
        gumbel_tau: Annotated[float, Field(gt=0)] = 1.0,
        relaxation: Literal["gumbel_softmax", "gumbel_rao", "straight_through", "reinmax"] = "gumbel_softmax",
        rao_samples: Annotated[int, Field(ge=1)] = 8,
        clip_range: Annotated[float, Field(gt=0)] | None = 0.2,
        inner_epochs: Annotated[int, Field(ge=1)] = 1,
        num_minibatches: Annotated[int, Field(ge=1)] = 1,
        normalize_advantages: bool = False,
        label_probs: list[float] | None = None,
        stratified_labels: bool = False,
        soft_labels: bool = False,
        temperature: Annotated[float, Field(gt=0)] = 1.0,
        forward_weight: Annotated[float, Field(ge=0)] = 0.0,
        forward_source: Literal["offline", "reference"] = "offline",
        forward_exponent: Annotated[float, Field(ge=0)] | None = None,
        forward_batch: Annotated[int, Field(ge=1)] = 64,
        forward_pool: Annotated[int, Field(ge=1)] = 4096,
        forward_t_weights: list[Annotated[float, Field(ge=0)]] | None = None,
        forward_moment_weight: Annotated[float, Field(ge=0)] = 0.0,
        forward_moment_k: Annotated[int, Field(ge=1, le=4)] = 2,
        forward_moment_exponent: Annotated[float, Field(ge=0)] | None = None,
        forward_moment_unbiased: bool = False,
        forward_autocast: Literal["no", "bf16"] = "no",
    ) -> None:
        policy = domain.policy
        if getattr(policy, "condition_dim", None) is None:
            raise ValueError(
                f"CTRL needs a policy whose denoiser accepts cond['class_emb'] (policy.condition_dim); "
                f"the domain {type(domain).__name__} does not declare one"
            )
        if mode == "backprop" and grad == "none":
            raise ValueError("CTRL mode='backprop' needs gradients through the sampler: grad must not be 'none'")
        self.domain, self.policy, self.accelerator = domain, policy, accelerator
        self.device = device_of(accelerator)
        self.num_labels = int(domain.num_labels)
        self.embedding = LabelEmbedding(self.num_labels, policy.condition_dim).to(self.device)
        self.reward = ClassifierLogProb(domain.classifier, label_key="y", temperature=temperature)
        self.gamma, self.mode, self.batch_size = gamma, mode, batch_size
        self.grad, self.k, self.kl_weight, self.kl_log_steps = grad, k, kl_weight, kl_log_steps
        self.gumbel_tau, self.relaxation, self.clip_range = gumbel_tau, relaxation, clip_range
        self.rao_samples = rao_samples
        self.inner_epochs, self.num_minibatches = inner_epochs, num_minibatches
        self.normalize_advantages, self.soft_labels = normalize_advantages, soft_labels
        self.max_grad_norm = max_grad_norm
        probs = torch.full((self.num_labels,), 1.0 / self.num_labels) if label_probs is None else torch.tensor(label_probs, dtype=torch.float)
        if probs.shape != (self.num_labels,) or (probs < 0).any() or abs(float(probs.sum()) - 1) > 1e-6:
            raise ValueError(f"label_probs must be {self.num_labels} non-negative numbers summing to 1, got {label_probs}")
        self.label_probs = probs
        self.stratified_labels = stratified_labels
        self.adapter_params = trainable_parameters(domain.trainable)
        self.params = self.adapter_params + [self.embedding.weight]
        self.optimizer = torch.optim.AdamW(
            [{"params": self.adapter_params, "lr": lr}, {"params": [self.embedding.weight], "lr": embedding_lr}],
            betas=tuple(betas), weight_decay=weight_decay,
        )
        if getattr(policy, "guidance_scale", None) is not None:
            self._wrap_uncond()
        self.forward_weight, self.forward_batch, self.forward_t_weights = forward_weight, forward_batch, forward_t_weights
        self.forward_moment_weight, self.forward_moment_k = forward_moment_weight, forward_moment_k
        self.forward_moment_unbiased, self.forward_autocast = forward_moment_unbiased, forward_autocast
        self.forward_moment_exponent = forward_moment_exponent
        if forward_weight:
            if mode != "backprop" or soft_labels:
                raise ValueError("forward_weight > 0 (the forward anchor) needs mode='backprop' and hard labels")
            if forward_t_weights is not None:  # checked now, not at the first update
                self.forward_t_weights = check_t_weights(forward_t_weights, "forward_t_weights")
        if forward_moment_weight:
            if mode != "backprop" or soft_labels or not isinstance(policy, MaskedPolicy):
                raise ValueError("forward_moment_weight > 0 (the moment anchor) needs a masked policy, "
                                 "mode='backprop' and hard labels")
            if forward_moment_k > policy.seq_len:
                raise ValueError(f"forward_moment_k={forward_moment_k} is longer than the sequences ({policy.seq_len})")
        if forward_weight or forward_moment_weight:
            exponent = forward_exponent if forward_exponent is not None else gamma / max(kl_weight, 1e-12)
            self._build_forward_pool(forward_source, exponent, forward_pool)
        if forward_moment_weight:
            self.forward_moments = self._pool_moments()  # [K, V^k]

    # ------------------------------------------------------------------ protocol
    def modules(self) -> dict[str, nn.Module]:
        return {**self.domain.trainable, "y_embedding": self.embedding}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"ctrl": self.optimizer}

    def _wrap_uncond(self) -> None:
        """Classifier-free guidance on the base condition: the unconditional branch gets the null label,
        both as the y-embedding and, for a denoiser that reads labels itself (e.g. the digits label
        pathway), as `cond["y"]` (hard labels -> the null label K; soft labels [B, K] -> all zeros)."""
        base_uncond = self.policy.uncond

        def uncond(cond: dict[str, Any]) -> dict[str, Any]:
            out = base_uncond(cond)
            if isinstance(cond, dict) and "class_emb" in cond:
                null = torch.full((cond["class_emb"].shape[0],), self.embedding.null_label, device=self.device)
                out = {**out, "class_emb": self.embedding(null)}
                y = out.get("y")
                if torch.is_tensor(y):
                    out["y"] = torch.zeros_like(y) if y.is_floating_point() else null.to(y.device, y.dtype)
            return out

        self.policy.uncond = uncond

    def sample_labels(self, n: int, generator: torch.Generator) -> Tensor:
        """y for a training batch: hard labels [n] from label_probs, or soft [n, K] ~ Dirichlet(1)."""
        if self.soft_labels:
            e = -torch.log(torch.rand(n, self.num_labels, generator=generator).clamp(min=1e-12))  # Exp(1)
            return (e / e.sum(-1, keepdim=True)).to(self.device)
        if not self.stratified_labels:
            return torch.multinomial(self.label_probs, n, replacement=True, generator=generator).to(self.device)
        quota = (self.label_probs * n).floor().long()  # [K] guaranteed copies of each label
        fixed = torch.repeat_interleave(torch.arange(self.num_labels), quota)
        rest = n - len(fixed)
        extra = (torch.multinomial(self.label_probs, rest, replacement=True, generator=generator) if rest
                 else fixed.new_empty(0))
        y = torch.cat([fixed, extra])
        return y[torch.randperm(n, generator=generator)].to(self.device)

    def make_cond(self, y: Tensor, generator: torch.Generator) -> dict[str, Any]:
        base = self.domain.sample_cond(len(y), generator)
        return expand_cond(base, y=y, class_emb=self.embedding(y))

    def _rollout(self, cond: dict[str, Any], n: int, generator: torch.Generator, **kw: Any):
        shape = None if isinstance(self.policy, MaskedPolicy) else tuple(self.domain.sample_shape)
        return rollout(self.policy, n, cond, generator=generator, shape=shape, device=self.device,
                       gumbel_tau=self.gumbel_tau, relaxation=self.relaxation,
                       rao_samples=self.rao_samples, **kw)

    # ------------------------------------------------------------------ forward anchor
    def _classifier_input(self, x: Tensor) -> Tensor:
        return self.policy.one_hot(x) if isinstance(self.policy, MaskedPolicy) else x

    @torch.no_grad()
    def _build_forward_pool(self, source: str, exponent: float, size: int) -> None:
        """The anchor's pool x [N, ...] and per-label self-normalised weights [N, K] toward p_pre p(y|x)^e."""
        g = torch.Generator().manual_seed(0)  # a fixed pool: a resumed run rebuilds the same one
        labels = torch.arange(self.num_labels)
        if source == "offline":  # label k's rows ~ p_pre(x) p(k | x): reweight them by p(k | x)^(e - 1)
            if not hasattr(self.domain, "offline_data"):
                raise ValueError(f"forward_source 'offline' needs labelled pairs from the domain's offline_data(); "
                                 f"{type(self.domain).__name__} has none (use forward_source: reference)")
            x, y = self.domain.offline_data("train")
            keep = torch.randperm(len(x), generator=g)[:size]
            x, y = x[keep].to(self.device), y[keep].long().cpu()
            if y.min() < 0 or y.max() >= self.num_labels:
                raise ValueError(f"offline_data labels must lie in [0, {self.num_labels}); got {y.min()}..{y.max()}")
            own = y[:, None] == labels  # [N, K]: which label's target each row may stand for
            missing = labels[~own.any(0)].tolist()
            if missing:
                raise ValueError(f"forward anchor: the offline pool has no example of label(s) {missing}")
        else:  # pre-trained samples stand for every label, weighted by p(k | x)^e
            null = torch.full((size,), self.embedding.null_label, device=self.device)
            x = torch.cat([self._rollout(self.make_cond(c, g), len(c), g, keep_states=False).x0
                           for c in null.split(256)])  # the policy is still the pre-trained model here
            if isinstance(self.policy, MaskedPolicy):
                x = self.policy.tokens(x)
            own = None
        log_p = torch.cat([self.reward.log_probs(self._classifier_input(c)).float().cpu() for c in x.split(256)])
        self.forward_x = x
        self._pool_log_p, self._pool_own = log_p, own
        self.forward_weights = self._pool_weights(exponent)  # [N, K]: column k = label k's target weights
        self.forward_ess = 1 / (self.forward_weights**2).sum(0)  # effective pool size per label

    def _pool_weights(self, exponent: float) -> Tensor:
        """[N, K] self-normalised pool weights toward p_pre p(k | x)^e: offline rows (label k's own rows,
        already ~ p_pre p(k | x)) need p(k | x)^(e - 1), pre-trained samples p(k | x)^e."""
        log_p, own = self._pool_log_p, self._pool_own
        if own is None:
            return torch.softmax(exponent * log_p, 0)
        return torch.softmax(torch.where(own, (exponent - 1) * log_p, -torch.inf), 0)

    def _moment_weights(self) -> Tensor:
        """[N, K]: the pool's weights behind the moment target, toward p_pre p(k | x)^forward_moment_exponent
        (None: the anchor's own exponent, `forward_weights`)."""
        e = self.forward_moment_exponent
        return self.forward_weights if e is None else self._pool_weights(e)

    @torch.no_grad()
    def _pool_moments(self) -> Tensor:
        """[K, V^k]: label k's k-mer frequencies under `_moment_weights` -- the target's, estimated."""
        V, k = self.policy.vocab_size, self.forward_moment_k
        f = torch.cat([kmer_frequencies(self.policy.one_hot(c)[..., :V].double(), k)
                       for c in self.forward_x.split(1024)])  # [N, V^k]
        return (self._moment_weights().double().T @ f.cpu()).float().to(self.device)

    def _moment_loss(self, x0: Tensor, y: Tensor) -> Tensor:
        """(L - k + 1) sum_y share_y chi2(batch moments_y || pool moments_y) / 2, differentiable in x0.

        Half the Pearson chi-square sum_j (q_j - m_j)^2 / m_j is KL(q || m) to second order around
        q = m, and unlike a KL it stays finite for a k-mer that this batch happens not to contain.
        `forward_moment_unbiased` replaces each (q_j - m_j)^2 by its unbiased estimate from pairs of rows.
        """
        V, k = self.policy.vocab_size, self.forward_moment_k
        f = kmer_frequencies(x0[..., :V], k)  # [B, V^k]
        onehot = nn.functional.one_hot(y.long(), self.num_labels).to(f.dtype)  # [B, K]
        n = onehot.sum(0)  # [K]
        present = n > (1 if self.forward_moment_unbiased else 0)
        rows, total = n[present, None], (onehot.T @ f)[present]  # [K', 1] rows and [K', V^k] summed frequencies
        m = self.forward_moments[present]
        sq = (total / rows - m) ** 2  # (batch moments - pool moments)^2 per present label
        if self.forward_moment_unbiased:  # (n^2 sq - sum_i (f_i - m)^2) / (n (n - 1)): pairs i != i' only
            own = onehot.T[present] @ f**2 - 2 * m * total + rows * m**2  # sum_i (f_i - m)^2 over label's rows
            sq = (rows**2 * sq - own) / (rows * (rows - 1))
        chi2 = (sq / m.clamp(min=1e-6)).sum(-1)  # [K']
        return (x0.shape[1] - k + 1) * 0.5 * (n[present] / len(y) * chi2).sum()

    def _forward_nelbo(self, generator: torch.Generator) -> Tensor:
        """Mean diffusion loss of `forward_batch` pool pairs (x, y), y uniform, x ~ label y's weights."""
        y = torch.randint(self.num_labels, (self.forward_batch,), generator=generator)
        idx = torch.multinomial(self.forward_weights.T[y], 1, generator=generator).squeeze(1)
        y = y.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.forward_autocast == "bf16"):
            loss = diffusion_loss(self.policy, self.forward_x[idx.to(self.device)], self.make_cond(y, generator),
                                  generator, self.device, t_weights=self.forward_t_weights)
        return loss.float().mean()

    # ------------------------------------------------------------------ one update
    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        y = self.sample_labels(self.batch_size, generator)
        if self.mode == "backprop":
            return self._update_backprop(y, generator)
        return self._update_policy_gradient(y, generator)

    def _update_backprop(self, y: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Algorithm 2: differentiate gamma log p(y | x_0) - sum_i KL_i through the sampler."""
        with autocast(self.accelerator):
            cond = self.make_cond(y, generator)
            traj = self._rollout(cond, len(y), generator, grad=self.grad, k=self.k,
                                 kl="grad" if self.kl_weight else "none", kl_log_steps=self.kl_log_steps,
                                 keep_states=False)
            r = check_reward(self.reward(traj.x0, cond), len(y), "log p(y|x)")
            loss = total = backprop_loss(traj, r, self.gamma, self.kl_weight)
            if self.forward_weight:
                nelbo = self._forward_nelbo(generator)
                total = total + self.forward_weight * nelbo
            if self.forward_moment_weight:
                moment = self._moment_loss(traj.x0, y)
                total = total + self.forward_moment_weight * moment
        if total.requires_grad:
            backward_fn(self.accelerator)(total)
            gnorm = clip_and_step(self.optimizer, self.params, self.max_grad_norm)
        else:  # grad="random" drew no gradient step this time: there is nothing to update
            gnorm = 0.0
        out = {"loss": loss.item(), "reward": r.mean().item(), "grad_norm": gnorm,
               "accuracy": self._accuracy(traj.x0, y), "reference_calls": float(traj.num_reference_calls)}
        if self.forward_weight:
            out |= {"forward_nelbo": nelbo.item()}
        if self.forward_weight or self.forward_moment_weight:
            out["forward_ess"] = self.forward_ess.min().item()
        if self.forward_moment_weight:
            out["moment_chi2"] = moment.item()
        if traj.kl_logged is not None:
            out["kl"] = traj.kl_logged.mean().item()
        return out

    def _update_policy_gradient(self, y: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Algorithm 1: clipped policy gradient on gamma log p(y | x_0) with the per-step KL penalty."""
        with torch.no_grad(), autocast(self.accelerator):
            cond = self.make_cond(y, generator)
            traj = self._rollout(cond, len(y), generator, grad="none", kl="all" if self.kl_weight else "none",
                                 keep_reference=bool(self.kl_weight))
            r = check_reward(self.reward(traj.x0, cond), len(y), "log p(y|x)")
            kl = traj.kl if traj.kl is not None else torch.zeros_like(traj.log_probs)
            returns = self.gamma * r[None, :] - self.kl_weight * kl_to_go(kl)  # [T, B]
            adv = returns - returns.mean(1, keepdim=True)  # per-step batch baseline
            if self.normalize_advantages:
                adv = adv / adv.std(1, keepdim=True).clamp(min=1e-6)
        # the embedding is part of the policy: recompute it with gradient for each minibatch
        def cond_at(idx: Tensor) -> dict[str, Any]:
            c = index_cond(cond, idx)
            return {**c, "class_emb": self.embedding(y[idx])}

        stats = policy_gradient_step(
            self.policy, traj, adv, apply_update=lambda: clip_and_step(self.optimizer, self.params, self.max_grad_norm),
            cond_at=cond_at, clip_range=self.clip_range, kl_weight=self.kl_weight, inner_epochs=self.inner_epochs,
            num_minibatches=self.num_minibatches, generator=generator, backward=backward_fn(self.accelerator),
        )
        return {**stats, "reward": r.mean().item(), "kl": kl.sum(0).mean().item(),
                "accuracy": self._accuracy(traj.x0, y)}

    @torch.no_grad()
    def _accuracy(self, x0: Tensor, y: Tensor) -> float:
        """How often the training classifier's argmax equals the requested label (hard labels)."""
        target = y.argmax(-1) if y.dtype.is_floating_point else y
        return (self.reward.log_probs(x0.detach()).argmax(-1) == target).float().mean().item()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator, y: Tensor | None = None) -> dict[str, Any]:
        """`num` samples split evenly over the labels (or for the given y).

        Returns:
            {"x0": samples, "y": labels, "gamma": the effective reward scale gamma / kl_weight,
            "prompt": one per sample when the domain's conditions carry prompts, ...}.
        """
        if y is None:
            y = torch.arange(num) % self.num_labels
        y = y.to(self.device)
        out, conds = [], []
        for chunk in y.split(max(self.batch_size, 256)):
            conds.append(self.make_cond(chunk, generator))
            out.append(self._rollout(conds[-1], len(chunk), generator, keep_states=False).x0)
        return with_prompts({"x0": torch.cat(out), "y": y, "gamma": self.gamma / max(self.kl_weight, 1e-12),
                             "policy": self.policy, "label_cond": self._label_cond}, conds)

    @torch.no_grad()
    def _label_cond(self, label: int) -> dict[str, Any]:
        """The condition of one sample with label `label` (for exact analyses of the sampler)."""
        y = torch.tensor([label], device=self.device)
        return {"y": y, "class_emb": self.embedding(y)}
