"""`rldiff.algorithms.common.diffusion_loss` against its formula, including its reweighting over t.

The discrete toy's denoiser is the exact posterior of a known table and does not depend on t, so the
expected MDLM loss with weights w(t) is a one-dimensional integral over t of a sum over the 2^L mask
patterns: computed here by quadrature and compared with the Monte Carlo mean of the loss.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from domains.toy.continuous import ContinuousToy
from domains.toy.discrete import DiscreteToy
from rldiff.algorithms.common import diffusion_loss

LOW_FIFTH = [1.0, 1.0] + [0.0] * 8  # a 10-step sampler's last 2 steps


def _exact_masked_loss(policy, x0: torch.Tensor, t_weights: list[float] | None, grid: int = 20_000) -> float:
    """int_0^1 w(t) E_mask[w_elbo(t) sum_{masked i} -log p(x0_i | x_t)] dt for one sequence x0 [L]."""
    L = x0.shape[0]
    nll, size = [], []
    for pattern in itertools.product([False, True], repeat=L):  # every mask pattern and its loss
        m = torch.tensor(pattern)
        x_t = torch.where(m, torch.full_like(x0, policy.mask_id), x0)[None]
        with torch.no_grad():
            ll = policy.denoise(policy.one_hot(x_t), torch.ones(1), None)[0].gather(-1, x0[:, None]).squeeze(-1)
        nll.append(float(-(ll * m).sum()))
        size.append(int(m.sum()))
    nll_t, size_t = torch.tensor(nll, dtype=torch.float64), torch.tensor(size, dtype=torch.float64)
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    w = torch.ones(grid, dtype=torch.float64) if t_weights is None else \
        torch.tensor(t_weights, dtype=torch.float64)[(u * len(t_weights)).long()]
    t = u.clamp(min=1e-3)  # the loss's own clamp
    p_mask = 1 - policy.schedule.alpha(t)  # [grid]
    prob = p_mask[:, None] ** size_t * (1 - p_mask[:, None]) ** (L - size_t)  # [grid, patterns]
    return float((w * policy.schedule.elbo_weight(t) * (prob * nll_t).sum(1)).mean())


@pytest.mark.parametrize("t_weights", [None, LOW_FIFTH, [1.0, 0.3]])
def test_masked_loss_matches_its_integral(t_weights: list[float] | None) -> None:
    domain = DiscreteToy(seq_len=3, num_steps=8)
    policy = domain.policy
    x0 = domain.offline_data("train")[0][:1].long()  # one sequence of the table
    exact = _exact_masked_loss(policy, x0[0], t_weights)
    losses = diffusion_loss(policy, x0.repeat(200_000, 1), None, torch.Generator().manual_seed(0),
                            torch.device("cpu"), t_weights=t_weights).detach().double()
    se = float(losses.std() / len(losses) ** 0.5)
    assert abs(float(losses.mean()) - exact) < 5 * se, (t_weights, float(losses.mean()), exact, se)
    if t_weights is not None:  # clearly different from the unweighted loss (the test tells them apart)
        assert exact < 0.75 * _exact_masked_loss(policy, x0[0], None)


def test_default_weights_are_the_plain_loss() -> None:
    domain = DiscreteToy(seq_len=3, num_steps=8)
    x0 = domain.offline_data("train")[0][:64].long()
    a = diffusion_loss(domain.policy, x0, None, torch.Generator().manual_seed(3), torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    t = torch.rand(64, generator=g).clamp(min=1e-3)  # the draws the docstring describes, in that order
    is_masked = torch.rand(x0.shape, generator=g) >= domain.policy.schedule.alpha(t).float()[:, None]
    x_t = torch.where(is_masked, torch.full_like(x0, domain.policy.mask_id), x0)
    ll = domain.policy.denoise(domain.policy.one_hot(x_t), t, None).gather(-1, x0[..., None]).squeeze(-1)
    torch.testing.assert_close(a, -domain.policy.schedule.elbo_weight(t).float() * (is_masked * ll).sum(-1))
    for bad in ([], [0.0, 0.0], [1.0, -1.0], [float("nan")]):
        with pytest.raises(ValueError, match="t_weights"):
            diffusion_loss(domain.policy, x0, None, torch.Generator(), torch.device("cpu"), t_weights=bad)


def test_gaussian_weights_follow_the_timesteps() -> None:
    """Gaussian policies: bins over the timesteps in order; zero-weight bins are never drawn."""
    domain = ContinuousToy()
    policy = domain.policy
    seen: list[torch.Tensor] = []
    denoiser = policy.denoiser

    def spy(x_t, t, cond):
        seen.append(t.clone())
        return torch.zeros_like(x_t)  # epsilon prediction 0: the loss is |noise|^2 at every t

    policy.denoiser = spy
    try:
        x0 = torch.zeros(4000, *domain.sample_shape)
        full = diffusion_loss(policy, x0, None, torch.Generator().manual_seed(0), torch.device("cpu"))
        low = diffusion_loss(policy, x0, None, torch.Generator().manual_seed(0), torch.device("cpu"),
                             t_weights=[1.0, 0.0, 0.0, 0.0])
    finally:
        policy.denoiser = denoiser
    n = len(policy.alphas_cumprod)
    assert int(seen[0].max()) >= n // 4 and int(seen[1].max()) < n // 4  # only the first quarter drawn
    dim = x0[0].numel()
    torch.testing.assert_close(float(full.mean()), float(dim), rtol=0.05, atol=0)  # E|noise|^2 = dim
    torch.testing.assert_close(float(low.mean()), dim / 4, rtol=0.05, atol=0)  # x the weights' mean
