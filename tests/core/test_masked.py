"""MaskedPolicy (absorbing diffusion, MDLM): transitions, log-probs, KL, Gumbel mode, ELBO, guidance.

References are written out from DESIGN.md: for a position masked at t, the step t -> s
    stays masked w.p. (1 - a_s) / (1 - a_t),  becomes v w.p. (a_s - a_t) / (1 - a_t) p_theta(v | x_t),
with a(t) = 1 - (1 - 1e-3) t on the grid t_i = 1 - i / T, s_i = 1 - (i + 1) / T.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from domains.toy.discrete import DiscreteToy
from rldiff.core.masked import MaskedPolicy
from tests.core._nets import LinearLogits

V, L, T = 3, 4, 4
M = V  # the mask token


def _coeffs(i: int, num_steps: int = T, eps: float = 1e-3) -> tuple[float, float, float]:
    """(t, c_unmask, c_stay) of step i, float64."""
    t, s = 1 - i / num_steps, 1 - (i + 1) / num_steps
    a_t, a_s = 1 - (1 - eps) * t, 1 - (1 - eps) * s
    return t, (a_s - a_t) / (1 - a_t), (1 - a_s) / (1 - a_t)


def _p_theta(den, x, t, cond=None):
    """log p_theta(v | x_t) [B, L, V] straight from the network (float64)."""
    with torch.no_grad():
        return torch.log_softmax(den(x, torch.full((x.shape[0],), t), cond).double(), -1)


def _onehot(tokens):
    return F.one_hot(tokens, V + 1).float()


def _policy(ref_seed: int | None = None, **kw):
    den = LinearLogits(V, L, seed=0)
    ref = LinearLogits(V, L, seed=ref_seed) if ref_seed is not None else None
    return MaskedPolicy(den, V, L, T, reference=ref, **kw), den, ref


def _random_state(B, p_mask, seed):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, V, (B, L), generator=g)
    tok[torch.rand(B, L, generator=g) < p_mask] = M
    return tok


def test_transition_frequencies_match_the_mdlm_reverse_step():
    pol, den, _ = _policy()
    N, i = 20_000, 1
    tok = torch.tensor([[M, 1, M, 0]]).expand(N, L)
    x = _onehot(tok)
    t, c_u, c_s = _coeffs(i)
    assert float(pol.c_unmask[i]) == pytest.approx(c_u, rel=1e-6)
    assert float(pol.c_stay[i]) == pytest.approx(c_s, rel=1e-6)
    p = _p_theta(den, x[:1], t)[0].exp()  # [L, V]
    with torch.no_grad():
        out = pol.tokens(pol.step(x, i, generator=torch.Generator().manual_seed(0)).x_prev)
    for pos in (0, 2):
        expect = torch.cat([c_u * p[pos], torch.tensor([c_s], dtype=torch.float64)])  # [V+1]
        freq = torch.bincount(out[:, pos], minlength=V + 1).double() / N
        tol = 5 * (expect * (1 - expect) / N).sqrt() + 1e-9
        assert ((freq - expect).abs() < tol).all(), (pos, freq, expect)
    assert (out[:, 1] == 1).all() and (out[:, 3] == 0).all()  # unmasked positions never change


def test_last_step_unmasks_everything_with_the_denoiser_probabilities():
    pol, den, _ = _policy()
    N, i = 20_000, T - 1
    t, c_u, c_s = _coeffs(i)
    assert c_s == 0.0 and float(pol.c_stay[i]) == 0.0 and c_u == pytest.approx(1.0)
    x = pol.initial_state(N)
    with torch.no_grad():
        s = pol.step(x, i, generator=torch.Generator().manual_seed(1))
    out = pol.tokens(s.x_prev)
    assert (out != M).all()
    p = _p_theta(den, x[:1], t)[0].exp()  # [L, V]
    for pos in range(L):
        freq = torch.bincount(out[:, pos], minlength=V).double() / N
        assert ((freq - p[pos]).abs() < 5 * (p[pos] * (1 - p[pos]) / N).sqrt()).all()
    assert torch.isfinite(s.log_prob).all()


@pytest.mark.parametrize("i", [0, 2, 3])
def test_log_prob_is_the_sum_of_the_branches_taken(i):
    pol, den, _ = _policy()
    B = 64
    tok = _random_state(B, 0.6, seed=2)
    tok[0] = M  # one fully masked row
    tok[1] = torch.tensor([0, 1, 2, 0])  # one fully unmasked row
    x = _onehot(tok)
    t, c_u, c_s = _coeffs(i)
    logp = _p_theta(den, x, t)
    with torch.no_grad():
        s = pol.step(x, i, generator=torch.Generator().manual_seed(3))
        scored = pol.step(x, i, prev=s.x_prev)
    new = pol.tokens(s.x_prev)
    expect = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        for pos in range(L):
            if tok[b, pos] != M:
                assert new[b, pos] == tok[b, pos]
                continue
            v = int(new[b, pos])
            expect[b] += math.log(c_s) if v == M else math.log(c_u) + float(logp[b, pos, v])
    torch.testing.assert_close(s.log_prob.double(), expect, rtol=1e-5, atol=1e-5)
    assert float(s.log_prob[1]) == 0.0  # nothing masked: probability one
    assert torch.equal(scored.log_prob, s.log_prob)


def test_gumbel_mode_has_the_same_forward_samples_and_passes_gradients():
    pol, den, _ = _policy()
    B, i, tau = 256, 1, 0.7
    tok = _random_state(B, 0.7, seed=4)
    x = _onehot(tok)
    with torch.no_grad():
        hard = pol.step(x, i, generator=torch.Generator().manual_seed(5))
    soft = pol.step(x, i, generator=torch.Generator().manual_seed(5), gumbel=True, tau=tau)
    assert torch.equal(soft.x_prev.detach(), hard.x_prev)
    assert torch.equal(soft.log_prob.detach(), hard.log_prob)
    w = torch.randn(V, generator=torch.Generator().manual_seed(6))
    (soft.x_prev[..., :V] * w).sum().backward()
    grad = den.b.grad.clone()
    assert grad.abs().max() > 1e-3
    # the same gradient from the written-out straight-through estimator: d/dtheta of
    # sum over freshly unmasked positions of w . softmax((log p_theta + g) / tau), with the step's own draws
    den.zero_grad()
    g = torch.Generator().manual_seed(5)
    _, c_u, _ = _coeffs(i)
    unmask = (torch.rand(B, L, generator=g) < c_u).float()
    u = torch.rand(B, L, V, generator=g).clamp(1e-20, 1 - 1e-7)
    gum = -torch.log(-torch.log(u))
    logp0 = torch.log_softmax(den(x, torch.full((B,), 1 - i / T), None), -1)
    st = torch.softmax((logp0 + gum) / tau, -1)
    # the hard forward value is the argmax of the same perturbed logits
    new = pol.tokens(hard.x_prev)
    took = (tok == M) & (unmask > 0)
    assert torch.equal(new[took], (logp0 + gum).argmax(-1)[took])
    ((took.float()[..., None] * st) * w).sum().backward()
    torch.testing.assert_close(grad, den.b.grad, rtol=1e-5, atol=1e-6)


def test_straight_through_relaxation_is_the_exact_gradient_of_a_linear_function():
    """relaxation="straight_through": the backward pass is d p_theta, so for f linear in the new
    tokens the one-sample gradient equals d E[f | which positions unmask] exactly, whatever token
    was drawn."""
    pol, den, _ = _policy()
    B, i = 64, 1
    tok = _random_state(B, 0.7, seed=4)
    x = _onehot(tok)
    step = pol.step(x, i, generator=torch.Generator().manual_seed(5), gumbel=True, relaxation="straight_through")
    w = torch.randn(V, generator=torch.Generator().manual_seed(6))
    (step.x_prev[..., :V] * w).sum().backward()
    grad = den.b.grad.clone()
    den.zero_grad()
    took = ((tok == M) & (pol.tokens(step.x_prev) != M)).float()  # positions that unmasked now
    assert 0 < took.sum() < (tok == M).sum()
    p = torch.softmax(den(x, torch.full((B,), 1 - i / T), None), -1)  # [B, L, V]
    (took[..., None] * p * w).sum().backward()
    assert grad.abs().max() > 1e-3
    torch.testing.assert_close(grad, den.b.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown relaxation 'rebar'"):
        pol.step(x, i, gumbel=True, relaxation="rebar")


def _relaxed_step(relaxation: str):
    """One relaxed step (gumbel=True) and its denoiser; checks its forward value is the hard sample."""
    pol, den, _ = _policy()
    x = _onehot(_random_state(64, 0.7, seed=4))
    with torch.no_grad():
        hard = pol.step(x, 1, generator=torch.Generator().manual_seed(5))
    step = pol.step(x, 1, generator=torch.Generator().manual_seed(5), gumbel=True, relaxation=relaxation)
    assert torch.equal(step.x_prev.detach(), hard.x_prev)
    return step, den


def test_gumbel_rao_averages_the_gumbel_softmax_over_draws_with_the_same_argmax():
    """The conditional Gumbel draws behind relaxation="gumbel_rao" reproduce
    E[softmax((log p + G) / tau) | argmax(log p + G) = a], estimated here by rejection."""
    from rldiff.core.masked import _gumbel_rao_soft

    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(V, generator=g, dtype=torch.float64), -1)
    tau, n = 0.5, 400_000
    z = logp + -torch.log(-torch.log(torch.rand(n, V, generator=g, dtype=torch.float64)))
    w = torch.randn(V, generator=g, dtype=torch.float64)
    for a in range(V):
        hit = z.argmax(-1) == a
        soft = torch.softmax(z[hit] / tau, -1)
        se = soft.std(0) / math.sqrt(int(hit.sum()))
        lp = logp.clone().requires_grad_(True)
        rao = _gumbel_rao_soft(lp, F.one_hot(torch.tensor(a), V).double(), tau, n, g)
        assert ((rao - soft.mean(0)).abs() <= 5 * se + 1e-3).all(), (a, rao, soft.mean(0), se)
        # gradient: E[d (w . softmax((log p + G) / tau)) / d log p | argmax = a], G held fixed
        (rao_grad,) = torch.autograd.grad((w * rao).sum(), lp)
        per_draw = soft * (w - (soft * w).sum(-1, keepdim=True)) / tau  # [hits, V]
        se_g = per_draw.std(0) / math.sqrt(int(hit.sum()))
        assert ((rao_grad - per_draw.mean(0)).abs() <= 5 * se_g + 1e-3).all(), (a, rao_grad, per_draw.mean(0))
    _relaxed_step("gumbel_rao")  # and the step's forward value stays the hard sample


def test_reinmax_is_exact_in_expectation_for_a_quadratic_function_where_straight_through_is_not():
    """ReinMax (relaxation="reinmax") is second-order accurate: averaged over the sampled token, its
    gradient of a quadratic f(one-hot) equals d E[f] / d theta exactly; straight-through's does not."""
    from rldiff.core.masked import _reinmax_soft

    g = torch.Generator().manual_seed(0)
    K = 4
    theta = torch.randn(K, generator=g, dtype=torch.float64)
    A, b = torch.randn(K, K, generator=g, dtype=torch.float64), torch.randn(K, generator=g, dtype=torch.float64)

    def f(x):
        return x @ A @ x + b @ x

    eye = torch.eye(K, dtype=torch.float64)
    th = theta.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(sum(torch.softmax(th, 0)[k] * f(eye[k]) for k in range(K)), th)

    def expected(kind):
        p, total = torch.softmax(theta, 0), torch.zeros(K, dtype=torch.float64)
        for k in range(K):  # every token the sampler can draw, weighted by its probability
            th = theta.clone().requires_grad_(True)
            logp = torch.log_softmax(th, 0)
            soft = _reinmax_soft(logp, eye[k], 1.0) if kind == "reinmax" else logp.exp()
            (grad,) = torch.autograd.grad(f(eye[k] + soft - soft.detach()), th)
            total += p[k] * grad
        return total

    torch.testing.assert_close(expected("reinmax"), exact, rtol=1e-10, atol=1e-12)
    assert (expected("straight_through") - exact).abs().max() > 0.05
    step, den = _relaxed_step("reinmax")  # in the sampler: the forward value is the hard sample, and gradients pass
    (step.x_prev[..., :V] * torch.randn(V, generator=g)).sum().backward()
    assert den.b.grad.abs().max() > 1e-3


def test_kl_is_on_masked_positions_and_matches_the_independent_formula():
    pol, den, ref = _policy(ref_seed=1)
    B, i = 32, 1
    tok = _random_state(B, 0.5, seed=7)
    tok[0] = torch.tensor([M, 0, 2, 1])  # partially masked
    tok[1] = torch.tensor([2, 0, 2, 1])  # fully unmasked
    x = _onehot(tok)
    t, c_u, _ = _coeffs(i)
    with torch.no_grad():
        p = pol.step(x, i, generator=torch.Generator().manual_seed(8))
        q = pol.step(x, i, prev=p.x_prev, reference=True, log_prob=False)
        kl = pol.kl(p, q)
    lp, lq = _p_theta(den, x, t), _p_theta(ref, x, t)
    kl_pos = (lp.exp() * (lp - lq)).sum(-1)  # [B, L]
    expect = c_u * ((tok == M).double() * kl_pos).sum(-1)
    torch.testing.assert_close(kl.double(), expect, rtol=1e-5, atol=1e-7)
    assert float(kl[1]) == 0.0  # nothing masked: exactly zero
    assert float(kl[0]) > 1e-3
    # the DRAKES mistake: the per-position KL evaluated on already-unmasked positions is 0 there
    # (carry-over), while the correct masked-position KL of the same partially masked row is > 0
    drakes_pos = (p.probs * (p.log_probs0 - q.log_probs0)).sum(-1)  # [B, L]
    unmasked = (tok != M).double()
    assert float((unmasked[0] * drakes_pos[0]).sum().abs()) < 1e-12
    assert float(kl[0]) > 1e3 * float((unmasked[0] * drakes_pos[0]).sum().abs()) + 1e-3


def test_kl_is_exactly_zero_on_a_fully_unmasked_state():
    pol, _, _ = _policy(ref_seed=1)
    x = _onehot(torch.randint(0, V, (16, L), generator=torch.Generator().manual_seed(9)))
    for i in range(T):
        with torch.no_grad():
            p = pol.step(x, i, generator=torch.Generator().manual_seed(i))
            q = pol.step(x, i, prev=p.x_prev, reference=True)
        assert torch.equal(p.x_prev, x)
        assert torch.equal(pol.kl(p, q), torch.zeros(16))
        assert torch.equal(p.log_prob, torch.zeros(16))


@pytest.mark.parametrize("i", [0, 2])
def test_analytic_kl_matches_monte_carlo_log_ratio(i):
    pol, _, _ = _policy(ref_seed=1)
    N = 20_000
    x = _onehot(torch.tensor([[M, M, 1, M]]).expand(N, L))
    with torch.no_grad():
        p = pol.step(x, i, generator=torch.Generator().manual_seed(10))
        q = pol.step(x, i, prev=p.x_prev, reference=True)
        kl = float(pol.kl(p, q)[0])
    ratio = (p.log_prob - q.log_prob).double()
    se = float(ratio.std()) / math.sqrt(N)
    assert kl > 0.02
    assert abs(float(ratio.mean()) - kl) < 4 * se, (float(ratio.mean()), kl, se)


def _elbo_expectation(pol, tokens, n: int = 2001):
    """E[policy.elbo(x)] with infinitely many Monte Carlo samples:
    integral over t in [0, 1] of w(t) sum_S P(S masked | a(t)) sum_{i in S} log p_theta(x_i | x with S masked),
    over the full masking path a(t) = 1 - t, w(t) = 1/t (as `elbo` does), by the trapezoid rule."""
    L = tokens.shape[-1]
    t = torch.linspace(0, 1, n, dtype=torch.float64).clamp(min=1e-4)
    a, w = 1 - t, 1 / t
    out = []
    for x in tokens:
        integrand = torch.zeros(n, dtype=torch.float64)
        for pattern in itertools.product([0, 1], repeat=L):
            S = torch.tensor(pattern, dtype=torch.bool)
            if not S.any():
                continue
            xt = torch.where(S, torch.full_like(x, pol.mask_id), x)
            with torch.no_grad():
                logp0 = pol.denoise(pol.one_hot(xt)[None].expand(n, L, -1), t.float(), None)  # [n, L, V]
            ll = logp0.double().gather(-1, x[None, :, None].expand(n, L, 1)).squeeze(-1)  # [n, L]
            k = int(S.sum())
            integrand += (1 - a) ** k * a ** (L - k) * (ll * S.double()).sum(-1)
        out.append(float(torch.trapezoid(w * integrand, torch.linspace(0, 1, n, dtype=torch.float64))))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seq_len,vocab_size", [(2, 4), (3, 3)])
def test_elbo_monte_carlo_average_matches_its_expectation(seq_len, vocab_size):
    toy = DiscreteToy(seq_len=seq_len, vocab_size=vocab_size, num_steps=8)
    pol, seqs = toy.policy, toy.all_seqs  # [N, L]
    R, S = 256, 32
    elbo = pol.elbo(seqs.repeat_interleave(R, 0), num_samples=S, generator=torch.Generator().manual_seed(11))
    elbo = elbo.double().view(len(seqs), R)
    mean, se = elbo.mean(1), elbo.std(1) / math.sqrt(R)
    expect = _elbo_expectation(pol, seqs)
    assert ((mean - expect).abs() < 4 * se).all(), ((mean - expect) / se)
    exact = torch.log(toy.table.double())  # [N]; table order = all_seqs order
    assert (mean <= exact + 4 * se).all(), ((mean - exact) / se)


@pytest.mark.parametrize("seq_len,vocab_size", [(2, 4), (3, 3)])
def test_elbo_of_the_exact_denoiser_is_a_tight_lower_bound(seq_len, vocab_size):
    """With the exact table denoiser the continuous-time MDLM bound, taken down to a = 0, equals log p(x);
    whatever the schedule's endpoint it must never exceed log p(x)."""
    toy = DiscreteToy(seq_len=seq_len, vocab_size=vocab_size, num_steps=8)
    expect = _elbo_expectation(toy.policy, toy.all_seqs)  # noise-free E[policy.elbo(x)]
    exact = torch.log(toy.table.double())
    gap = exact - expect
    assert (gap.abs() < 0.01).all(), gap  # tight
    # (integrating only down to the sampling schedule's floor a(1) = eps = 1e-3 drops the a in [0, eps]
    # piece, about eps * log p(x) < 0, and gives E[elbo] > log p(x): the bug this test caught)
    assert (gap >= -1e-5).all(), f"E[elbo] - log p(x) up to {(-gap).max():.4f} > 0: not a lower bound"


def test_elbo_of_a_wrong_denoiser_is_lower():
    toy = DiscreteToy(seq_len=2, vocab_size=3, num_steps=8)
    wrong = MaskedPolicy(LinearLogits(3, 2, seed=3), 3, 2, 8)
    seqs = toy.all_seqs
    g = torch.Generator().manual_seed(12)
    good = toy.policy.elbo(seqs.repeat(64, 1), num_samples=16, generator=g)
    bad = wrong.elbo(seqs.repeat(64, 1), num_samples=16, generator=g)
    p = toy.table.double().repeat(64) / 64
    # cross-entropy: E_p[ELBO_wrong] < E_p[ELBO_exact] ~ -H(p)
    assert float((p * bad.double()).sum()) < float((p * good.double()).sum()) - 0.05


def test_classifier_free_guidance_on_log_probs():
    w = 2.5
    pol, den, _ = _policy(guidance_scale=w, uncond=lambda c: {"c": torch.zeros_like(c["c"])})
    B, i = 8, 1
    tok = _random_state(B, 0.5, seed=13)
    x = _onehot(tok)
    cond = {"c": torch.randn(B, V, generator=torch.Generator().manual_seed(14)) * 2}
    t, _, _ = _coeffs(i)
    lc, lu = _p_theta(den, x, t, cond), _p_theta(den, x, t, {"c": torch.zeros(B, V)})
    guided = torch.log_softmax(lu + w * (lc - lu), -1)
    with torch.no_grad():
        s = pol.step(x, i, cond, generator=torch.Generator().manual_seed(15))
    m = tok == M
    torch.testing.assert_close(s.log_probs0.double()[m], guided[m], rtol=1e-5, atol=1e-5)
    assert (guided[m] - lc[m]).abs().max() > 1e-2  # guidance changed the distribution
    # unmasked positions carry over with probability one
    torch.testing.assert_close(s.probs[~m], F.one_hot(tok[~m], V).float())
