"""`rldiff.algorithms.common.diffusion_loss` against its formula, including the low-noise part (`t_max`).

The discrete toy's denoiser is the exact posterior of a known table and does not depend on t, so the
expected MDLM loss over t ~ U(0, t_max] is a one-dimensional integral over t of a sum over the 2^L
mask patterns: computed here by quadrature and compared with the Monte Carlo mean of the loss.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from domains.toy.continuous import ContinuousToy
from domains.toy.discrete import DiscreteToy
from rldiff.algorithms.common import diffusion_loss


def _exact_masked_loss(policy, x0: torch.Tensor, t_max: float, grid: int = 20_000) -> float:
    """E_{t ~ U(0, t_max], mask}[t_max w(t) sum_{masked i} -log p(x0_i | x_t)] for one sequence x0 [L]."""
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
    t = ((torch.arange(grid, dtype=torch.float64) + 0.5) / grid * t_max).clamp(min=1e-3)  # the loss's own clamp
    p_mask = 1 - policy.schedule.alpha(t)  # [grid]
    prob = p_mask[:, None] ** size_t * (1 - p_mask[:, None]) ** (L - size_t)  # [grid, patterns]
    per_t = policy.schedule.elbo_weight(t) * (prob * nll_t).sum(1)
    return float(t_max * per_t.mean())


@pytest.mark.parametrize("t_max", [1.0, 0.2])
def test_masked_loss_matches_its_integral(t_max: float) -> None:
    domain = DiscreteToy(seq_len=3, num_steps=8)
    policy = domain.policy
    x0 = domain.offline_data("train")[0][:1].long()  # one sequence of the table
    exact = _exact_masked_loss(policy, x0[0], t_max)
    losses = diffusion_loss(policy, x0.repeat(200_000, 1), None, torch.Generator().manual_seed(0),
                            torch.device("cpu"), t_max=t_max).detach().double()
    se = float(losses.std() / len(losses) ** 0.5)
    assert abs(float(losses.mean()) - exact) < 5 * se, (t_max, float(losses.mean()), exact, se)
    if t_max < 1:  # the part over (0, t_max] is clearly less than the whole bound (distinguishes the two)
        assert exact < 0.5 * _exact_masked_loss(policy, x0[0], 1.0)


def test_default_t_max_is_the_full_loss() -> None:
    domain = DiscreteToy(seq_len=3, num_steps=8)
    x0 = domain.offline_data("train")[0][:64].long()
    a = diffusion_loss(domain.policy, x0, None, torch.Generator().manual_seed(3), torch.device("cpu"))
    b = diffusion_loss(domain.policy, x0, None, torch.Generator().manual_seed(3), torch.device("cpu"), t_max=1.0)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="t_max"):
        diffusion_loss(domain.policy, x0, None, torch.Generator(), torch.device("cpu"), t_max=0.0)


def test_gaussian_t_max_keeps_the_lowest_timesteps() -> None:
    """Gaussian policies: only the lowest t_max fraction of the timesteps, scaled by that fraction."""
    domain = ContinuousToy()
    policy = domain.policy
    seen: list[torch.Tensor] = []
    denoiser = policy.denoiser

    def spy(x_t, t, cond):
        seen.append(t.clone())
        return torch.zeros_like(x_t)  # epsilon prediction 0: the loss is |noise|^2, scale-free in t

    policy.denoiser = spy
    try:
        x0 = torch.zeros(4000, *domain.sample_shape)
        n_all = len(policy.alphas_cumprod)
        full = diffusion_loss(policy, x0, None, torch.Generator().manual_seed(0), torch.device("cpu"))
        low = diffusion_loss(policy, x0, None, torch.Generator().manual_seed(0), torch.device("cpu"), t_max=0.25)
    finally:
        policy.denoiser = denoiser
    n = round(0.25 * n_all)
    assert int(seen[0].max()) >= n and int(seen[1].max()) < n  # the restricted draw stays below n
    dim = x0[0].numel()
    torch.testing.assert_close(float(full.mean()), float(dim), rtol=0.05, atol=0)  # E|noise|^2 = dim
    torch.testing.assert_close(float(low.mean()), dim * n / n_all, rtol=0.05, atol=0)
