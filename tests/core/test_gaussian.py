"""GaussianPolicy (DDIM eta > 0, DDPM): log-probs, KL, guidance and gradients against hand formulas.

Every reference below is written out independently in float64 from DESIGN.md "The math":
    x0_hat  = (x_t - sqrt(1 - a_t) e) / sqrt(a_t)
    sigma_t = eta sqrt((1 - a_p) / (1 - a_t)) sqrt(1 - a_t / a_p)
    mu_t    = sqrt(a_p) x0_hat + sqrt(1 - a_p - sigma_t^2) e
    log p   = sum_dims -(x - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from rldiff.core.gaussian import DeterministicStepError, GaussianPolicy
from tests.core._nets import TIMESTEPS, AffineEps, ElementwiseEps, alphas_cumprod

AC = alphas_cumprod()
FINAL = float(AC[0])
T = len(TIMESTEPS)


def _alphas(i: int, ac: torch.Tensor = AC, ts: torch.Tensor = TIMESTEPS, final: float = FINAL) -> tuple[float, float]:
    a_t = float(ac[ts[i]])
    a_p = float(ac[ts[i + 1]]) if i + 1 < len(ts) else final
    return a_t, a_p


def _ref_ddim(x_t, eps, a_t, a_p, eta):
    """(x0_hat, mu, sigma) of a DDIM step, float64."""
    x_t, eps = x_t.double(), eps.double()
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    mu = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma**2) * eps
    return x0, mu, sigma


def _ref_log_prob(x, mu, sigma):
    lp = -((x.double() - mu) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).sum(1)


def _eps(den, x, i, ts=TIMESTEPS, cond=None):
    with torch.no_grad():
        return den(x, ts[i].expand(x.shape[0]), cond)


CONFIGS = [
    {"kind": "ddim", "eta": 0.3},
    {"kind": "ddim", "eta": 1.0},
    {"kind": "ddpm", "ddpm_variance": "small"},
    {"kind": "ddpm", "ddpm_variance": "large"},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_scoring_a_sampled_transition_returns_its_log_prob(cfg):
    shape = (3, 2, 3, 3)
    den = AffineEps(18, seed=1)
    pol = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, **cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    with torch.no_grad():
        for i in range(T):
            s = pol.step(x, i, generator=g)
            scored = pol.step(x, i, prev=s.x_prev)
            assert scored.x_prev is s.x_prev
            assert torch.equal(scored.log_prob, s.log_prob)
            assert s.log_prob.shape == (3,) and torch.isfinite(s.log_prob).all()
            x = s.x_prev


@pytest.mark.parametrize("eta", [0.1, 0.5, 1.0])
def test_log_prob_equals_hand_formula(eta):
    shape = (2, 3, 4, 4)  # [B, C, H, W]
    den = AffineEps(48, seed=2)
    pol = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, eta=eta)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g)
    for i in range(T):
        a_t, a_p = _alphas(i)
        eps = _eps(den, x, i)
        x0, mu, sigma = _ref_ddim(x, eps, a_t, a_p, eta)
        with torch.no_grad():
            s = pol.step(x, i, generator=g)
            other = torch.randn(shape, generator=g) * 0.5 + mu.float()  # an arbitrary (not sampled) target
            scored = pol.step(x, i, prev=other)
        assert float(s.std) == pytest.approx(sigma, rel=1e-6)
        torch.testing.assert_close(s.x0_hat.double(), x0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.mean.double(), mu, rtol=1e-5, atol=1e-5)
        tol = {"rtol": 1e-5, "atol": 1e-3}
        torch.testing.assert_close(s.log_prob.double(), _ref_log_prob(s.x_prev, mu, sigma), **tol)
        torch.testing.assert_close(scored.log_prob.double(), _ref_log_prob(other, mu, sigma), **tol)
        x = s.x_prev


def test_log_prob_is_a_sum_over_dimensions_not_a_mean():
    """Duplicating every coordinate (iid inputs, elementwise denoiser) must double the log-prob."""
    pol = GaussianPolicy(ElementwiseEps(), AC, TIMESTEPS, final_alpha_cumprod=FINAL, eta=1.0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, generator=g)
    for i in range(T):
        with torch.no_grad():
            s = pol.step(x, i, generator=g)
            s2 = pol.step(torch.cat([x, x], 1), i, prev=torch.cat([s.x_prev, s.x_prev], 1))
        torch.testing.assert_close(s2.log_prob, 2 * s.log_prob, rtol=1e-6, atol=1e-5)
        # and the 10-dim value is 10 times the mean per-dimension term (a mean would not scale)
        a_t, a_p = _alphas(i)
        _, mu, sigma = _ref_ddim(x, _eps(pol.denoiser, x, i), a_t, a_p, 1.0)
        per_dim = -((s.x_prev.double() - mu) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
        torch.testing.assert_close(s.log_prob.double(), 5 * per_dim.mean(1), rtol=1e-4, atol=1e-3)
        x = s.x_prev


def test_ddpm_small_equals_ddim_eta_one_and_large_uses_beta():
    den = AffineEps(6, seed=4)
    ddim = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, eta=1.0)
    small = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, kind="ddpm", ddpm_variance="small")
    large = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, kind="ddpm", ddpm_variance="large")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 6, generator=g)
    for i in range(T):
        a_t, a_p = _alphas(i)
        z = torch.randn(3, 6, generator=g)
        with torch.no_grad():
            a, b, c = (p.step(x, i, noise=z) for p in (ddim, small, large))
        beta_tilde = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        assert float(a.std) ** 2 == pytest.approx(beta_tilde, rel=1e-5)
        assert float(b.std) == pytest.approx(float(a.std), rel=1e-6)
        torch.testing.assert_close(b.mean, a.mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.log_prob, a.log_prob, rtol=1e-4, atol=1e-3)
        # "large": sigma^2 = beta_t = 1 - a_t / a_p, same posterior mean as "small"
        assert float(c.std) ** 2 == pytest.approx(1 - a_t / a_p, rel=1e-5)
        torch.testing.assert_close(c.mean, b.mean, rtol=1e-6, atol=1e-6)
        # Ho et al. eq. (7) written out
        alpha = a_t / a_p
        x0 = (x.double() - math.sqrt(1 - a_t) * _eps(den, x, i).double()) / math.sqrt(a_t)
        mu = math.sqrt(a_p) * (1 - alpha) / (1 - a_t) * x0 + math.sqrt(alpha) * (1 - a_p) / (1 - a_t) * x.double()
        torch.testing.assert_close(b.mean.double(), mu, rtol=1e-5, atol=1e-5)
        x = a.x_prev


def test_eta_zero_is_deterministic_and_refuses_log_probs_and_kl():
    den = AffineEps(4, seed=6)
    pol = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, eta=0.0)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(7))
    for i in range(T):
        a_t, a_p = _alphas(i)
        with torch.no_grad():
            s1 = pol.step(x, i, generator=torch.Generator().manual_seed(1), log_prob=False)
            s2 = pol.step(x, i, generator=torch.Generator().manual_seed(2), log_prob=False)
        assert float(s1.std) == 0.0 and s1.log_prob is None
        assert torch.equal(s1.x_prev, s2.x_prev)
        _, mu, _ = _ref_ddim(x, _eps(den, x, i), a_t, a_p, 0.0)  # sqrt(a_p) x0 + sqrt(1 - a_p) e
        torch.testing.assert_close(s1.x_prev.double(), mu, rtol=1e-5, atol=1e-5)
        with pytest.raises(DeterministicStepError, match="eta"):
            pol.step(x, i)
        with pytest.raises(DeterministicStepError, match="eta"):
            pol.kl(s1, s2)
        x = s1.x_prev
    assert issubclass(DeterministicStepError, ValueError)


@pytest.mark.parametrize("i", [0, 2, 4])
def test_analytic_kl_matches_monte_carlo(i):
    D, N = 3, 20_000
    den, ref = AffineEps(D, seed=8), AffineEps(D, seed=9)
    pol = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, eta=1.0, reference=ref)
    x = torch.randn(1, D, generator=torch.Generator().manual_seed(10)).expand(N, D)
    with torch.no_grad():
        p = pol.step(x, i, generator=torch.Generator().manual_seed(11))
        q = pol.step(x, i, prev=p.x_prev, reference=True)
        kl = pol.kl(p, q)
    # hand formula: sum_dims (mu_p - mu_q)^2 / (2 sigma^2) with both means from the written-out DDIM step
    a_t, a_p = _alphas(i)
    _, mu_p, sigma = _ref_ddim(x[:1], _eps(den, x[:1], i), a_t, a_p, 1.0)
    _, mu_q, _ = _ref_ddim(x[:1], _eps(ref, x[:1], i), a_t, a_p, 1.0)
    exact = float(((mu_p - mu_q) ** 2).sum() / (2 * sigma**2))
    assert exact > 0.05
    torch.testing.assert_close(kl.double(), torch.full((N,), exact, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    ratio = (p.log_prob - q.log_prob).double()
    se = float(ratio.std()) / math.sqrt(N)
    assert abs(float(ratio.mean()) - exact) < 4 * se, (float(ratio.mean()), exact, se)


def test_kl_of_a_policy_to_itself_is_exactly_zero():
    den = AffineEps(5, seed=12)
    for reference in (None, den):
        pol = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, eta=0.8, reference=reference)
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(13))
        with torch.no_grad():
            for i in range(T):
                p = pol.step(x, i, generator=torch.Generator().manual_seed(i))
                r = pol.step(x, i, prev=p.x_prev, reference=True, log_prob=False)
                assert torch.equal(pol.kl(p, r), torch.zeros(4))
                x = p.x_prev


def test_classifier_free_guidance_combines_eps_as_documented():
    D, C, w = 4, 3, 3.5
    den = AffineEps(D, seed=14, cond_dim=C)
    pol = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, eta=1.0, guidance_scale=w,
                         uncond=lambda c: torch.zeros_like(c))
    g = torch.Generator().manual_seed(15)
    x, c = torch.randn(2, D, generator=g), torch.randn(2, C, generator=g)
    for i in range(T):
        e_c, e_u = _eps(den, x, i, cond=c), _eps(den, x, i, cond=torch.zeros_like(c))
        guided = e_u + w * (e_c - e_u)
        with torch.no_grad():
            s = pol.step(x, i, c, generator=g)
        torch.testing.assert_close(s.eps, guided, rtol=1e-6, atol=1e-6)
        assert (s.eps - e_c).abs().max() > 1e-2  # guidance actually changed something
        a_t, a_p = _alphas(i)
        _, mu, _ = _ref_ddim(x, guided, a_t, a_p, 1.0)
        torch.testing.assert_close(s.mean.double(), mu, rtol=1e-5, atol=1e-5)
        x = s.x_prev


@pytest.mark.parametrize("spacing,alpha_to_one", [("leading", False), ("trailing", False), ("leading", True)])
def test_from_scheduler_uses_the_scheduler_timesteps_and_final_alpha(spacing, alpha_to_one):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          clip_sample=False, set_alpha_to_one=alpha_to_one, steps_offset=1, timestep_spacing=spacing)
    eta = 0.7
    den = AffineEps(3, seed=16, num_train=1000)
    pol = GaussianPolicy.from_scheduler(den, sched, 8, eta=eta)
    assert torch.equal(pol.timesteps, sched.timesteps.long())
    ac = sched.alphas_cumprod.double()
    torch.testing.assert_close(pol.alpha_t.double(), ac[sched.timesteps].float().double())
    final = 1.0 if alpha_to_one else float(ac[0])
    assert float(pol.alpha_prev[-1]) == pytest.approx(float(sched.final_alpha_cumprod), rel=1e-7)
    assert float(pol.alpha_prev[-1]) == pytest.approx(final, rel=1e-7)
    torch.testing.assert_close(pol.alpha_prev[:-1].double(), ac[sched.timesteps[1:]].float().double())
    # one full trajectory against diffusers' own DDIM step with the same variance noise
    g = torch.Generator().manual_seed(17)
    x = torch.randn(2, 3, generator=g)
    for i, t in enumerate(sched.timesteps):
        z = torch.randn(2, 3, generator=g)
        with torch.no_grad():
            ours = pol.step(x, i, noise=z, log_prob=False)
            theirs = sched.step(den(x, t.expand(2), None), t, x, eta=eta, variance_noise=z).prev_sample
        torch.testing.assert_close(ours.x_prev, theirs, rtol=1e-5, atol=1e-5)
        x = ours.x_prev
    if alpha_to_one:  # a_p = 1 at the last step: sigma = 0 there whatever eta
        assert float(pol.sigma[-1]) == 0.0


@pytest.mark.parametrize("checkpointing", [False, True])
def test_reparameterized_step_passes_gradients_to_denoiser_and_x_t(checkpointing):
    """x_prev = mu(x_t; W, b) + sigma z with eps = W x + b[t] gives closed-form derivatives:
    d x_prev / d x_t = c0 I + k W,  d x_prev / d eps = k,  c0 = sqrt(a_p / a_t),
    k = sqrt(1 - a_p - sigma^2) - sqrt(a_p (1 - a_t) / a_t)."""
    D, B, eta = 3, 2, 0.9
    den = AffineEps(D, seed=18)
    pol = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, eta=eta, gradient_checkpointing=checkpointing)
    g = torch.Generator().manual_seed(19)
    for i in range(T):
        den.zero_grad(set_to_none=True)
        x = torch.randn(B, D, generator=g, requires_grad=True)
        z, v = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
        s = pol.step(x, i, noise=z)
        (s.x_prev * v).sum().backward()
        a_t, a_p = _alphas(i)
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        c0 = math.sqrt(a_p / a_t)
        k = math.sqrt(1 - a_p - sigma**2) - math.sqrt(a_p * (1 - a_t) / a_t)
        W = den.W.detach().double()
        vd, xd = v.double(), x.detach().double()
        torch.testing.assert_close(x.grad.double(), vd @ (c0 * torch.eye(D, dtype=torch.float64) + k * W), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(den.W.grad.double(), k * vd.T @ xd, rtol=1e-4, atol=1e-5)
        expect_b = torch.zeros_like(den.b, dtype=torch.float64)
        expect_b[TIMESTEPS[i]] = k * vd.sum(0)
        torch.testing.assert_close(den.b.grad.double(), expect_b, rtol=1e-4, atol=1e-5)
