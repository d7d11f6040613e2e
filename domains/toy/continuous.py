"""Continuous toy domain: a Gaussian mixture in 1-D or 2-D with an *analytic* pre-trained denoiser.

Because the data distribution is a Gaussian mixture, every noised marginal q_t is a Gaussian
mixture too, so the optimal noise prediction eps*(x_t, t) = -sqrt(1 - a_t) * grad log q_t(x_t) is
available in closed form: the pre-trained model is exact. With an analytic classifier p(y | x)
(softmax of linear logits), the fine-tuning target p_pre(x) p(y | x)^gamma / Z is computed on a
grid, so every algorithm can be checked against the exact answer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from diffusers import DDIMScheduler
from pydantic import Field
from torch import Tensor, nn

from rldiff.core.gaussian import GaussianPolicy
from rldiff.core.reward import ClassifierLogProb


class GaussianMixture:
    """Isotropic Gaussian mixture sum_k w_k N(mu_k, s_k^2 I) and its noised marginals."""

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [K, d]
        self.stds = torch.as_tensor(stds, dtype=torch.float64)  # [K]
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()  # [K]
        self.dim = self.means.shape[1]

    def noised(self, a: Tensor | float) -> tuple[Tensor, Tensor]:
        """Means [.., K, d] and variances [.., K] of q_a(x) = law of sqrt(a) x0 + sqrt(1 - a) z."""
        a = torch.as_tensor(a, dtype=torch.float64)
        means = a.sqrt()[..., None, None] * self.means
        var = a[..., None] * self.stds**2 + (1 - a[..., None])
        return means, var

    def component_log_probs(self, x: Tensor, a: Tensor | float = 1.0) -> Tensor:
        """log(w_k N(x; mean_k(a), var_k(a) I)) for each component: [B, K]."""
        means, var = self.noised(a)
        x = x.double()
        d2 = ((x[:, None, :] - means) ** 2).sum(-1)  # [B, K]
        return self.weights.log() - d2 / (2 * var) - 0.5 * self.dim * torch.log(2 * math.pi * var)

    def log_prob(self, x: Tensor, a: Tensor | float = 1.0) -> Tensor:
        """log q_a(x): [B]."""
        return torch.logsumexp(self.component_log_probs(x, a), dim=-1)

    def score(self, x: Tensor, a: Tensor) -> Tensor:
        """grad_x log q_a(x) for per-sample a [B]: [B, d]."""
        means, var = self.noised(a)  # [B, K, d], [B, K]
        resp = torch.softmax(self.component_log_probs(x, a), dim=-1)  # [B, K]
        return (resp[..., None] * (means - x.double()[:, None, :]) / var[..., None]).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k, None] * z).float()


class AnalyticEps(nn.Module):
    """The exact noise predictor of a Gaussian mixture: eps*(x_t, t) = -sqrt(1 - a_t) grad log q_t(x_t).

    The noised component means / variances are tabulated per training timestep (float32) so a
    call is a handful of tensor ops.
    """

    def __init__(self, mixture: GaussianMixture, alphas_cumprod: Tensor) -> None:
        super().__init__()
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        means, var = mixture.noised(a)  # [N, K, d], [N, K]
        self.register_buffer("means", means.float(), persistent=False)
        self.register_buffer("var", var.float(), persistent=False)
        self.register_buffer("log_w", mixture.weights.log().float(), persistent=False)
        self.register_buffer("sqrt_1m_a", (1 - a).sqrt().float(), persistent=False)
        self.dim = mixture.dim

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        t = t.long()
        means, var = self.means[t], self.var[t]  # [B, K, d], [B, K]
        diff = means - x_t[:, None, :]  # [B, K, d]
        logits = self.log_w - (diff**2).sum(-1) / (2 * var) - 0.5 * self.dim * torch.log(var)
        resp = torch.softmax(logits, dim=-1)  # [B, K] posterior over components
        score = (resp[..., None] * diff / var[..., None]).sum(1)  # [B, d]
        return -self.sqrt_1m_a[t][:, None] * score


class SwitchableAdapter:
    """`disable_adapter()` (same name as peft's) switches a residual adapter off while the
    context is open; the module's forward checks `self._adapter_enabled`."""

    _adapter_enabled = True

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        prev, self._adapter_enabled = self._adapter_enabled, False
        try:
            yield
        finally:
            self._adapter_enabled = prev


class ResidualDenoiser(SwitchableAdapter, nn.Module):
    """Pre-trained analytic denoiser + a zero-initialised trainable residual MLP (the "LoRA").

    `cond["class_emb"]` [B, condition_dim] is added to the residual's time features: CTRL's adapter.
    `disable_adapter()` (same name as peft's) switches the residual off: the reference view.
    """

    def __init__(self, base: nn.Module, dim: int, hidden: int = 64, condition_dim: int = 16, num_train_steps: int = 1000) -> None:
        super().__init__()
        self.base = base
        self.num_train_steps = num_train_steps
        self.condition_dim = condition_dim
        self.time_mlp = nn.Sequential(nn.Linear(condition_dim, condition_dim), nn.SiLU())
        self.inp = nn.Linear(dim + condition_dim, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)  # zero-init: step 0 equals the pre-trained model
        nn.init.zeros_(self.out.bias)

    def time_features(self, t: Tensor) -> Tensor:
        half = self.condition_dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
        ang = (t.float() / self.num_train_steps * 1000.0)[:, None] * freqs[None]
        return torch.cat([ang.sin(), ang.cos()], dim=-1)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        eps = self.base(x_t, t, cond)
        if not self._adapter_enabled:
            return eps
        h = self.time_mlp(self.time_features(t))
        if isinstance(cond, dict) and cond.get("class_emb") is not None:
            h = h + cond["class_emb"]
        h = torch.nn.functional.silu(self.inp(torch.cat([x_t, h], dim=-1)))
        h = torch.nn.functional.silu(self.mid(h))
        return eps + self.out(h)


class AdapterDisabledView:
    """Call a module with its adapters disabled: the frozen pre-trained *view* (no copy)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args: Any) -> Tensor:
        with self.module.disable_adapter():
            return self.module(*args)


class NoisyMLPClassifier(nn.Module):
    """p(y | x_t, t): an MLP on x_t and sinusoidal features of t."""

    def __init__(self, dim: int, num_labels: int, hidden: int = 64, num_train_steps: int = 1000) -> None:
        super().__init__()
        self.num_train_steps = num_train_steps
        self.net = nn.Sequential(nn.Linear(dim + 16, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, num_labels))

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(8, device=t.device) / 8)
        ang = (t.float() / self.num_train_steps * 1000.0)[:, None] * freqs[None]
        return self.net(torch.cat([x_t, ang.sin(), ang.cos()], -1))


class LinearClassifier(nn.Module):
    """Analytic p(y | x) = softmax(W x + b): [B, d] -> logits [B, K]."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x.float() @ self.weight.T + self.bias


PRESETS = {
    # three modes on a line; labels "left" / "right"
    1: {"means": [[-2.0], [0.0], [2.0]], "stds": [0.7, 0.7, 0.7], "weights": [0.3, 0.4, 0.3], "cls_w": [[-2.0], [2.0]], "cls_b": [0.0, 0.0]},
    # four modes on a square; labels by quadrant half-planes
    2: {"means": [[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]], "stds": [0.8, 0.8, 0.8, 0.8], "weights": [0.1, 0.2, 0.3, 0.4],
            "cls_w": [[-1.0, -1.0], [1.0, 1.0]], "cls_b": [0.0, 0.0]},
}


class ContinuousToy:
    """The Gaussian-mixture toy domain (satisfies `rldiff.train.protocol.RLDomain`).

    Args:
        dim: 1 or 2 (a preset mixture and classifier).
        num_steps: DDIM inference steps T.
        eta: DDIM eta (> 0 for log-probs).
        target_label: the label whose log-probability is the task `reward` (DDPO / backprop).
        hidden: width of the trainable residual.
        condition_dim: width of the time/condition features (CTRL's embedding size).
        grid_size: points per axis for the exact target.
    """

    def __init__(self, dim: int = 1, num_steps: int = 50, eta: float = 1.0, target_label: int = 1, hidden: int = 64,
                 condition_dim: int = 16, grid_size: int = 801, num_train_steps: int = 1000) -> None:
        if dim not in PRESETS:
            raise ValueError(f"dim must be one of {sorted(PRESETS)}, got {dim}")
        p = PRESETS[dim]
        self.dim = dim
        self.mixture = GaussianMixture(torch.tensor(p["means"]), torch.tensor(p["stds"]), torch.tensor(p["weights"]))
        self.classifier = LinearClassifier(torch.tensor(p["cls_w"]), torch.tensor(p["cls_b"]))
        self.num_labels = len(p["cls_b"])
        self.target_label = target_label
        self.scheduler = DDIMScheduler(num_train_timesteps=num_train_steps, beta_schedule="linear", beta_start=1e-4,
                                       beta_end=0.02, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        base = AnalyticEps(self.mixture, self.scheduler.alphas_cumprod)
        self.denoiser = ResidualDenoiser(base, dim, hidden=hidden, condition_dim=condition_dim, num_train_steps=num_train_steps)
        self.policy = GaussianPolicy.from_scheduler(
            self.denoiser, self.scheduler, num_steps, eta=eta, reference=AdapterDisabledView(self.denoiser),
            condition_dim=condition_dim,
        )
        self.trainable = {"denoiser": self.denoiser}
        self.sample_shape = (dim,)
        self.reward = ClassifierLogProb(self.classifier, label=target_label)
        # the sampler's last state is x at training step 0, whose law is q at a_0 (not exactly a = 1)
        self.final_alpha = float(self.policy.alpha_prev[-1])
        self.grid_size = grid_size

    def sample_cond(self, num: int, generator: torch.Generator) -> None:
        return None

    def offline_data(self, split: str = "train", num: int = 20_000) -> tuple[Tensor, Tensor]:
        """Labelled pairs: x ~ p_pre, y ~ p(y | x) (fixed seed per split)."""
        g = torch.Generator().manual_seed({"train": 1, "val": 2, "test": 3}[split])
        x = self.mixture.sample(num, g)
        y = torch.multinomial(torch.softmax(self.classifier(x), -1), 1, generator=g).squeeze(-1)
        return x, y

    def noisy_classifier(self) -> nn.Module:
        """An untrained MLP p(y | x_t, t) for classifier guidance."""
        return NoisyMLPClassifier(self.dim, self.num_labels, num_train_steps=len(self.scheduler.alphas_cumprod))

    # ------------------------------------------------------------------ exact targets
    def grid(self) -> tuple[Tensor, Tensor]:
        """Grid points [G, d] and cell volume."""
        lo, hi = -5.0, 5.0
        ax = torch.linspace(lo, hi, self.grid_size if self.dim == 1 else min(self.grid_size, 241), dtype=torch.float64)
        h = float(ax[1] - ax[0])
        if self.dim == 1:
            return ax[:, None], h
        gx, gy = torch.meshgrid(ax, ax, indexing="ij")
        return torch.stack([gx.flatten(), gy.flatten()], -1), h * h

    def target_density(self, label: int, gamma: float) -> tuple[Tensor, Tensor]:
        """The exact target p_pre(x) p(label | x)^gamma / Z on the grid: (points [G, d], probabilities [G])."""
        pts, _ = self.grid()
        logp = self.mixture.log_prob(pts, self.final_alpha)
        logp = logp + gamma * torch.log_softmax(self.classifier(pts).double(), -1)[:, label]
        return pts, torch.softmax(logp, 0)

    def target_stats(self, label: int, gamma: float) -> dict[str, Tensor]:
        """Mean [d], std [d] and nearest-mode proportions [K] of the exact target p_pre p(y|x)^gamma / Z."""
        pts, w = self.target_density(label, gamma)
        return self._weighted_stats(pts, w)

    def sampler_target_stats(self, label: int, gamma: float, num: int = 200_000) -> dict[str, Tensor]:
        """The same statistics for the optimum of the KL-regularized objective *at this T*.

        With finitely many steps the pre-trained sampler's marginal p_pre_T differs slightly from
        p_pre (discretization error, O(1/T)); the objective's optimum over path measures has
        marginal p_pre_T(x) p(y|x)^gamma / Z. It is computed by self-normalised importance
        weighting of `num` pre-trained samples (fixed seed; cached).
        """
        if not hasattr(self, "_pre_samples"):
            from rldiff.core.rollout import rollout

            g = torch.Generator().manual_seed(12345)
            with torch.no_grad(), self.denoiser.disable_adapter():
                self._pre_samples = rollout(self.policy, num, None, generator=g, shape=self.sample_shape).x0.double()
        x = self._pre_samples
        w = torch.softmax(gamma * torch.log_softmax(self.classifier(x).double(), -1)[:, label], 0)
        return self._weighted_stats(x, w)

    def _weighted_stats(self, pts: Tensor, w: Tensor) -> dict[str, Tensor]:
        mean = (w[:, None] * pts).sum(0)
        std = ((w[:, None] * (pts - mean) ** 2).sum(0)).sqrt()
        props = torch.zeros(len(self.mixture.weights), dtype=torch.float64).index_add_(0, self.nearest_mode(pts), w)
        return {"mean": mean, "std": std, "mode_props": props}

    def nearest_mode(self, x: Tensor) -> Tensor:
        return torch.cdist(x.double(), self.mixture.means).argmin(-1)

    def sample_stats(self, x: Tensor) -> dict[str, Tensor]:
        x = x.double()
        props = torch.bincount(self.nearest_mode(x), minlength=len(self.mixture.weights)).double() / len(x)
        return {"mean": x.mean(0), "std": x.std(0), "mode_props": props}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, samples: dict[str, Any], out_dir: Path) -> dict[str, float]:
        """Compare samples with the target for each requested label.

        `samples` = {"x0": [N, d], "y": [N] labels, "gamma": float}. Reports per label the mean /
        std / mode-proportion errors and the mean's z-score (error / standard error at this sample
        size) against the objective's optimum at this T (`sampler_target_stats`; unprefixed keys)
        and against the continuous-time target p_pre p(y|x)^gamma (`exact_` keys).
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        x, y, gamma = samples["x0"].detach().cpu(), samples["y"].cpu(), float(samples["gamma"])
        metrics: dict[str, float] = {}
        fig, axes = plt.subplots(1, int(y.max()) + 1 - int(y.min()), figsize=(4 * (int(y.max()) + 1 - int(y.min())), 3.5), squeeze=False)
        for ax, label in zip(axes[0], sorted(set(y.tolist()))):
            xs = x[y == label]
            got, n = self.sample_stats(xs), len(xs)
            for name, tgt in (("", self.sampler_target_stats(label, gamma)), ("exact_", self.target_stats(label, gamma))):
                metrics[f"y{label}/{name}mean_err"] = float((got["mean"] - tgt["mean"]).abs().max())
                metrics[f"y{label}/{name}mean_z"] = float(((got["mean"] - tgt["mean"]).abs() / (tgt["std"] / math.sqrt(n))).max())
                metrics[f"y{label}/{name}std_err"] = float((got["std"] - tgt["std"]).abs().max())
                metrics[f"y{label}/{name}mode_tv"] = float(0.5 * (got["mode_props"] - tgt["mode_props"]).abs().sum())
            metrics[f"y{label}/p_label"] = float(torch.softmax(self.classifier(xs), -1)[:, label].mean())
            metrics[f"y{label}/n"] = float(n)
            for d in range(self.dim):
                metrics[f"y{label}/mean{d}"] = float(got["mean"][d])
                metrics[f"y{label}/std{d}"] = float(got["std"][d])
            for k, p in enumerate(got["mode_props"].tolist()):
                metrics[f"y{label}/mode{k}"] = p
            self._plot(ax, xs, label, gamma)
        metrics["max_mean_z"] = max(v for k, v in metrics.items() if k.endswith("/mean_z"))
        metrics["max_mode_tv"] = max(v for k, v in metrics.items() if k.endswith("/mode_tv"))
        fig.tight_layout()
        fig.savefig(out_dir / "samples_vs_target.png", dpi=90)
        plt.close(fig)
        return metrics

    def _plot(self, ax: Any, xs: Tensor, label: int, gamma: float) -> None:
        pts, w = self.target_density(label, gamma)
        if self.dim == 1:
            _, h = self.grid()
            ax.hist(xs[:, 0].numpy(), bins=80, density=True, alpha=0.5, label="samples")
            ax.plot(pts[:, 0].numpy(), (w / h).numpy(), "k-", label="exact target")
            ax.legend()
        else:
            g = round(math.sqrt(len(pts)))
            ax.contour(pts[:, 0].view(g, g).numpy(), pts[:, 1].view(g, g).numpy(), w.view(g, g).numpy(), levels=6, colors="k")
            ax.scatter(xs[:, 0].numpy(), xs[:, 1].numpy(), s=2, alpha=0.3)
        ax.set_title(f"y = {label}, gamma = {gamma:g}")


def build(dim: Literal[1, 2] = 1, num_steps: Annotated[int, Field(ge=2)] = 50, eta: Annotated[float, Field(gt=0)] = 1.0,
          target_label: Annotated[int, Field(ge=0, le=1)] = 1, hidden: Annotated[int, Field(ge=1)] = 64,
          condition_dim: Annotated[int, Field(ge=2, multiple_of=2)] = 16, reward: Any = None) -> ContinuousToy:
    """Recipe entry point for the continuous toy domain.

    `reward` (optional) replaces the task reward log p(target_label | x) used by DDPO / reward
    backprop, e.g. a user's function through `rldiff.core.reward.load_reward`.
    """
    domain = ContinuousToy(dim=dim, num_steps=num_steps, eta=eta, target_label=target_label, hidden=hidden,
                           condition_dim=condition_dim)
    if reward is not None:
        domain.reward = reward
    return domain
