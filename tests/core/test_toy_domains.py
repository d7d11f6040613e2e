"""Toy domains: the analytic denoisers and exact targets that every algorithm is checked against."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from domains.toy.continuous import AnalyticEps, ContinuousToy, GaussianMixture
from domains.toy.discrete import DiscreteToy
from rldiff.core.rollout import rollout


# ------------------------------------------------------------------ continuous
def _mixture_log_density(x, mix, a):
    """log q_a(x) of sqrt(a) x0 + sqrt(1 - a) z, x0 ~ sum_k w_k N(mu_k, s_k^2 I), written out (float64)."""
    d = x.shape[1]
    terms = []
    for w, mu, s in zip(mix.weights.tolist(), mix.means.tolist(), mix.stds.tolist()):
        var = a * s**2 + 1 - a
        d2 = ((x - math.sqrt(a) * torch.tensor(mu, dtype=torch.float64)) ** 2).sum(1)
        terms.append(math.log(w) - d2 / (2 * var) - 0.5 * d * math.log(2 * math.pi * var))
    return torch.logsumexp(torch.stack(terms, 1), 1)


def _check_eps_is_scaled_score(eps_net, mix, ac, dim, g):
    for t in (0, 10, 200, 500, 999):
        a = float(ac[t])
        x = (torch.randn(64, dim, generator=g, dtype=torch.float64) * 2.5).requires_grad_(True)
        (score,) = torch.autograd.grad(_mixture_log_density(x, mix, a).sum(), x)
        expect = -math.sqrt(1 - a) * score
        with torch.no_grad():
            got = eps_net(x.detach().float(), torch.full((64,), t), None)
        torch.testing.assert_close(got.double(), expect, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("dim", [1, 2])
def test_analytic_eps_is_the_scaled_score_of_the_noised_mixture(dim):
    toy = ContinuousToy(dim=dim, num_steps=10)
    base = toy.denoiser.base
    ac = toy.scheduler.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    _check_eps_is_scaled_score(base, toy.mixture, ac, dim, g)
    # the residual adapter is zero-initialised: the fine-tunable denoiser starts as the analytic one
    x = torch.randn(8, dim, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    with torch.no_grad():
        assert torch.equal(toy.denoiser(x, t, None), base(x, t, None))


def test_analytic_eps_with_unequal_component_widths():
    """The presets have equal widths; unequal ones exercise the variance term of the responsibilities."""
    mix = GaussianMixture(torch.tensor([[-1.5, 0.5], [2.0, -1.0], [0.0, 2.5]]), torch.tensor([0.3, 1.2, 0.6]),
                          torch.tensor([0.5, 0.2, 0.3]))
    ac = ContinuousToy(dim=2, num_steps=10).scheduler.alphas_cumprod.double()
    _check_eps_is_scaled_score(AnalyticEps(mix, ac), mix, ac, 2, torch.Generator().manual_seed(1))


def _phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _npdf(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _truncated(m, sd, lo, hi):
    """(P, E[X 1], E[X^2 1]) of X ~ N(m, sd^2) on the interval (lo, hi)."""
    al, be = (lo - m) / sd, (hi - m) / sd
    Z = _phi(be) - _phi(al)
    e1 = _npdf(al) - _npdf(be)  # E[U 1]
    e2 = Z + al * _npdf(al) - be * _npdf(be)  # E[U^2 1]
    return Z, m * Z + sd * e1, m * m * Z + 2 * m * sd * e1 + sd * sd * e2


def _box_moments(toy, lo=-5.0, hi=5.0):
    """Mean [d] and std [d] of the noised mixture q_{a_0} restricted to the grid's box [lo, hi]^d (the
    grid target is that restriction); per component the coordinates are independent, so they factorise."""
    a = toy.final_alpha
    d = toy.dim
    mass, m1, m2 = 0.0, torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    for w, mu, s in zip(toy.mixture.weights.tolist(), toy.mixture.means.tolist(), toy.mixture.stds.tolist()):
        sd = math.sqrt(a * s**2 + 1 - a)
        parts = [_truncated(math.sqrt(a) * mu[j], sd, lo, hi) for j in range(d)]
        Zs = [p[0] for p in parts]
        mass += w * math.prod(Zs)
        for j in range(d):
            others = math.prod(Zs[:j] + Zs[j + 1 :])
            m1[j] += w * parts[j][1] * others
            m2[j] += w * parts[j][2] * others
    mean = m1 / mass
    return mean, (m2 / mass - mean**2).sqrt(), mass


def test_target_stats_at_gamma_zero_are_the_mixture_moments_1d():
    toy = ContinuousToy(dim=1, num_steps=10)
    a = toy.final_alpha
    assert a == pytest.approx(float(toy.scheduler.alphas_cumprod[0]), rel=1e-6)  # the sampler ends at a_0 < 1
    stats = toy.target_stats(label=1, gamma=0.0)
    mean, std, mass = _box_moments(toy)
    assert mass > 0.9999
    torch.testing.assert_close(stats["mean"], mean, atol=5e-6, rtol=0)  # Riemann sum on 801 points
    torch.testing.assert_close(stats["std"], std, atol=5e-6, rtol=0)
    # the untruncated mixture moments, for scale: sum w (a s^2 + 1 - a + a mu^2) - mean^2
    w, mu, s = toy.mixture.weights, toy.mixture.means[:, 0], toy.mixture.stds
    full = float(((w * (a * s**2 + 1 - a + a * mu**2)).sum() - (w * math.sqrt(a) * mu).sum() ** 2).sqrt())
    assert float(stats["std"][0]) == pytest.approx(full, abs=1e-4)
    # mass nearest each mode (modes at -2, 0, 2 split at -1 and 1) within the box
    comps = list(zip(w.tolist(), (math.sqrt(a) * mu).tolist(), (a * s**2 + 1 - a).sqrt().tolist()))
    cdf = lambda b: sum(wk * _phi((b - mk) / sk) for wk, mk, sk in comps)
    props = torch.tensor([cdf(-1) - cdf(-5), cdf(1) - cdf(-1), cdf(5) - cdf(1)], dtype=torch.float64) / mass
    # nearest-mode proportions of grid points: a half-cell of mass sits on each boundary point
    torch.testing.assert_close(stats["mode_props"], props, atol=2e-3, rtol=0)


def test_target_stats_at_gamma_zero_are_the_mixture_moments_2d():
    toy = ContinuousToy(dim=2, num_steps=10, grid_size=241)
    stats = toy.target_stats(label=0, gamma=0.0)
    mean, std, mass = _box_moments(toy)
    torch.testing.assert_close(stats["mean"], mean, atol=1e-4, rtol=0)  # Riemann sum on a 241^2 grid (endpoint terms)
    torch.testing.assert_close(stats["std"], std, atol=1e-4, rtol=0)
    # quadrant masses within the box: modes at (+-2, +-2), coordinates independent within a component
    a = toy.final_alpha
    props = torch.zeros(4, dtype=torch.float64)
    for w, mu, s in zip(toy.mixture.weights.tolist(), toy.mixture.means.tolist(), toy.mixture.stds.tolist()):
        sd = math.sqrt(a * s**2 + 1 - a)
        pos = [_phi((5 - math.sqrt(a) * m) / sd) - _phi(-math.sqrt(a) * m / sd) for m in mu]  # P(0 < x_j < 5)
        neg = [_phi(-math.sqrt(a) * m / sd) - _phi((-5 - math.sqrt(a) * m) / sd) for m in mu]
        for j, q in enumerate(toy.mixture.means.tolist()):
            props[j] += w * (pos[0] if q[0] > 0 else neg[0]) * (pos[1] if q[1] > 0 else neg[1])
    # grid points on the axes (ties) go to one quadrant: up to a cell row of mass, ~h * density
    torch.testing.assert_close(stats["mode_props"], props / mass, atol=2e-3, rtol=0)


# ------------------------------------------------------------------ discrete
def _brute_posterior(table, V, L, state):
    """p(x0_i = v | revealed tokens of `state`) by enumerating the table: [L, V]."""
    seqs = list(itertools.product(range(V), repeat=L))
    out = torch.zeros(L, V, dtype=torch.float64)
    for s, p in zip(seqs, table.double().tolist()):
        if all(state[j] == V or state[j] == s[j] for j in range(L)):
            for i in range(L):
                out[i, s[i]] += p
    return out / out.sum(-1, keepdim=True)


def test_table_denoiser_is_the_brute_force_conditional():
    V, L = 3, 3
    toy = DiscreteToy(seq_len=L, vocab_size=V, num_steps=4)
    states = torch.tensor(list(itertools.product(range(V + 1), repeat=L)))  # every (V+1)^L state
    with torch.no_grad():
        probs = toy.denoiser.base(F.one_hot(states, V + 1).float(), torch.ones(len(states)), None).exp()
    for state, p in zip(states.tolist(), probs):
        torch.testing.assert_close(p.double(), _brute_posterior(toy.table, V, L, state), atol=1e-6, rtol=1e-5)


def test_table_denoiser_input_gradient_matches_finite_differences():
    """Direct backprop differentiates the denoiser in its one-hot input, towards tokens the input
    rules out too: autograd must agree with finite differences of the continuous extension (a
    posterior computed through log(indicator) gives exactly zero there)."""
    dom = DiscreteToy(seq_len=3, num_steps=8)
    base = dom.denoiser.base
    x = F.one_hot(torch.tensor([[2, 4, 4]]), 5).double()  # position 0 revealed as token 2
    direction = torch.zeros_like(x)
    direction[0, 0, 1], direction[0, 0, 2] = 1.0, -1.0  # move mass from token 2 to token 1
    w = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w[:, 0] = 0  # the revealed position's output is replaced by the carry-over in MaskedPolicy
    base = base.double()

    def f(inp):
        return (base(inp, torch.ones(1)).exp() * w).sum()

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(xg), xg)
    jvp = float((grad * direction).sum())
    h = 1e-6
    fd = (float(f(x + h * direction)) - float(f(x))) / h
    assert abs(fd) > 1e-3
    assert jvp == pytest.approx(fd, rel=1e-3, abs=1e-6)


def test_terminal_distribution_with_one_step_is_the_product_of_marginals():
    """T = 1: every position unmasks at once, independently, from p(x_i | all masked) = the marginal."""
    V, L = 3, 3
    toy = DiscreteToy(seq_len=L, vocab_size=V, num_steps=1)
    table = toy.table.double().view(*([V] * L))
    marg = [table.sum(dim=[d for d in range(L) if d != i]) for i in range(L)]
    expect = torch.einsum("a,b,c->abc", *marg).flatten()
    torch.testing.assert_close(toy.terminal_distribution(), expect, atol=1e-6, rtol=1e-5)


def test_terminal_distribution_with_two_steps_by_enumeration():
    """T = 2: a subset S of positions unmasks at t = 1 -> 1/2 (each w.p. c), drawn from the marginals; the
    rest unmasks at the last step from the table's conditional given x_S."""
    V, L = 3, 3
    toy = DiscreteToy(seq_len=L, vocab_size=V, num_steps=2)
    eps = 1e-3
    a_t, a_s = 1 - (1 - eps) * 1.0, 1 - (1 - eps) * 0.5
    c = (a_s - a_t) / (1 - a_t)
    marg = _brute_posterior(toy.table, V, L, [V] * L)  # [L, V]
    expect = torch.zeros(V**L, dtype=torch.float64)
    for n, x in enumerate(itertools.product(range(V), repeat=L)):
        for S in itertools.product([0, 1], repeat=L):
            revealed = [x[i] if S[i] else V for i in range(L)]
            post = _brute_posterior(toy.table, V, L, revealed)
            p = 1.0
            for i in range(L):
                p *= c * float(marg[i, x[i]]) if S[i] else (1 - c) * float(post[i, x[i]])
            expect[n] += p
    torch.testing.assert_close(toy.terminal_distribution(), expect, atol=1e-6, rtol=1e-5)


def test_terminal_distribution_matches_monte_carlo_rollouts():
    V, L, N = 3, 2, 40_000
    toy = DiscreteToy(seq_len=L, vocab_size=V, num_steps=4)
    exact = toy.terminal_distribution()
    assert float(exact.sum()) == pytest.approx(1.0, abs=1e-9)
    with torch.no_grad():
        x0 = rollout(toy.policy, N, generator=torch.Generator().manual_seed(1)).x0
    tokens = x0.argmax(-1)
    assert (tokens < V).all()
    emp = torch.bincount(toy.index(tokens), minlength=V**L).double() / N
    se = (exact * (1 - exact) / N).sqrt()
    assert ((emp - exact).abs() < 5 * se + 1e-9).all(), ((emp - exact) / se)
    tv = float(0.5 * (emp - exact).abs().sum())
    noise = float(0.5 * (se * math.sqrt(2 / math.pi)).sum())  # E[TV] from sampling noise alone
    assert tv < 2.5 * noise, (tv, noise)
    # with 4 steps the sampler is visibly not the table (many positions unmask together) ...
    table_tv = float(0.5 * (exact - toy.table.double()).abs().sum())
    assert table_tv > 4 * noise


def test_terminal_distribution_approaches_the_table_as_steps_grow():
    V, L = 3, 3
    tvs = {}
    for T in (4, 16, 64):
        toy = DiscreteToy(seq_len=L, vocab_size=V, num_steps=T)
        tvs[T] = float(0.5 * (toy.terminal_distribution() - toy.table.double()).abs().sum())
    assert tvs[64] < tvs[16] < tvs[4], tvs
    assert tvs[64] < 0.02, tvs
