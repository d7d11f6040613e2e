"""Tiny fixed denoisers and schedules shared by the core tests (built offline, seconds on a CPU)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

NUM_TRAIN = 100
TIMESTEPS = torch.tensor([90, 70, 50, 30, 10])  # descending inference timesteps, T = 5


def alphas_cumprod(num_train: int = NUM_TRAIN) -> Tensor:
    """alpha-bar of a linear beta schedule [num_train] (float64)."""
    betas = torch.linspace(1e-3, 0.05, num_train, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


class AffineEps(nn.Module):
    """eps(x, t, c) = W x + b[t] (+ C c): a fixed random affine noise predictor on flattened x.

    Affine in x so that every derivative of a DDIM step has a closed form.
    """

    def __init__(self, dim: int, seed: int = 0, scale: float = 0.5, cond_dim: int | None = None,
                 num_train: int = NUM_TRAIN) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(dim, dim, generator=g) * scale / math.sqrt(dim))
        self.b = nn.Parameter(torch.randn(num_train, dim, generator=g) * scale)
        self.C = nn.Parameter(torch.randn(dim, cond_dim, generator=g)) if cond_dim else None

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        h = x.flatten(1) @ self.W.T + self.b[t.long()]
        if isinstance(cond, Tensor):
            h = h + cond @ self.C.T
        return h.view_as(x)


class ElementwiseEps(nn.Module):
    """eps = tanh(a x + t / 100): acts on every coordinate alike (for the sum-over-dims test)."""

    def __init__(self, a: float = 0.7) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        tt = t.float().view(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(self.a * x + tt / 100)


class LinearLogits(nn.Module):
    """Masked-diffusion denoiser: logits [B, L, V] = W onehot(x_t) + b + t u (+ cond["c"] [B, V])."""

    def __init__(self, vocab_size: int, seq_len: int, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        V, L = vocab_size, seq_len
        self.V, self.L = V, L
        self.W = nn.Parameter(torch.randn(L * V, L * (V + 1), generator=g) * scale / math.sqrt(L))
        self.b = nn.Parameter(torch.randn(L, V, generator=g) * scale)
        self.u = nn.Parameter(torch.randn(L, V, generator=g) * 0.5)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        h = (x.flatten(1) @ self.W.T).view(-1, self.L, self.V) + self.b + t.float()[:, None, None] * self.u
        if isinstance(cond, dict) and "c" in cond:
            h = h + cond["c"][:, None, :]
        return h
