"""rollout / grad_schedule: gradient modes, KL modes, reference-call counts, unbiased KL logging,
and which parameters receive gradient (closed forms with an affine noise predictor)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import rldiff.algorithms.ctrl as ctrl_module
from domains.toy.continuous import ContinuousToy
from rldiff.algorithms.ctrl import CTRL
from rldiff.core.gaussian import GaussianPolicy
from rldiff.core.masked import MaskedPolicy
from rldiff.core.rollout import grad_schedule, rollout
from tests.core._nets import TIMESTEPS, AffineEps, LinearLogits, alphas_cumprod

AC = alphas_cumprod()
FINAL = float(AC[0])
T = len(TIMESTEPS)


def _coeffs(i: int, eta: float) -> tuple[float, float, float]:
    """(c0, k, sigma) of DDIM step i: x_prev = c0 x_t + k eps + sigma z."""
    a_t = float(AC[TIMESTEPS[i]])
    a_p = float(AC[TIMESTEPS[i + 1]]) if i + 1 < T else FINAL
    sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    return math.sqrt(a_p / a_t), math.sqrt(1 - a_p - sigma**2) - math.sqrt(a_p * (1 - a_t) / a_t), sigma


class Shifted(nn.Module):
    """A reference whose eps is the policy's plus a constant: the per-step KL is then a known constant."""

    def __init__(self, net: nn.Module, delta: torch.Tensor) -> None:
        super().__init__()
        self.net, self.delta = net, delta

    def forward(self, x, t, cond=None):
        return self.net(x, t, cond) + self.delta


# ------------------------------------------------------------------ grad_schedule
def test_grad_schedule_deterministic_modes():
    assert torch.equal(grad_schedule("none", 6), torch.zeros(6, dtype=torch.bool))
    assert torch.equal(grad_schedule("all", 6), torch.ones(6, dtype=torch.bool))
    assert grad_schedule("last_k", 6, k=1).tolist() == [False] * 5 + [True]
    assert grad_schedule("last_k", 6, k=3).tolist() == [False] * 3 + [True] * 3
    assert grad_schedule("last_k", 6, k=6).tolist() == [True] * 6
    for bad_k in (0, 7):
        with pytest.raises(ValueError, match="k"):
            grad_schedule("last_k", 6, k=bad_k)
    with pytest.raises(ValueError, match="random"):
        grad_schedule("sometimes", 6)


def test_grad_schedule_random_frequencies():
    Tr, n = 7, 4000
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([grad_schedule("random", Tr, generator=g) for _ in range(n)]).double()  # [n, T]
    p = (torch.arange(Tr, dtype=torch.float64) + 1) / (Tr + 1)
    freq = draws.mean(0)
    assert ((freq - p).abs() < 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)
    # steps are drawn independently: the pair (0, T-1) co-occurs with probability p_0 p_{T-1}
    both = (draws[:, 0] * draws[:, -1]).mean()
    pp = p[0] * p[-1]
    assert abs(float(both - pp)) < 5 * math.sqrt(pp * (1 - pp) / n)


# ------------------------------------------------------------------ shapes, KL modes, reference calls
def _gaussian_policy(eta=1.0, ref_seed=1, D=2):
    den = AffineEps(D, seed=0)
    ref = AffineEps(D, seed=ref_seed) if ref_seed is not None else None
    return GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, eta=eta, reference=ref), den, ref


def _recompute(pol, traj, i):
    """(log-prob, KL) of step i re-scored from the stored states."""
    with torch.no_grad():
        p = pol.step(traj.states[i], i, traj.cond, prev=traj.states[i + 1])
        q = pol.step(traj.states[i], i, traj.cond, prev=traj.states[i + 1], reference=True, log_prob=False)
        return p.log_prob, pol.kl(p, q)


def test_rollout_shapes_and_kl_all():
    pol, _, _ = _gaussian_policy()
    B = 3
    with torch.no_grad():
        traj = rollout(pol, B, generator=torch.Generator().manual_seed(1), kl="all", shape=(2,))
    assert traj.log_probs.shape == (T, B) and traj.kl.shape == (T, B) and traj.kl_logged.shape == (B,)
    assert len(traj.states) == T + 1 and torch.equal(traj.x0, traj.states[-1])
    assert traj.num_reference_calls == T
    torch.testing.assert_close(traj.kl_logged, traj.kl.sum(0))
    for i in range(T):
        lp, kl = _recompute(pol, traj, i)
        torch.testing.assert_close(traj.log_probs[i], lp, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(traj.kl[i], kl, rtol=1e-6, atol=1e-7)
    assert (traj.kl > 0).all()
    with torch.no_grad():
        plain = rollout(pol, B, generator=torch.Generator().manual_seed(1), shape=(2,))
    assert plain.kl is None and plain.kl_logged is None and plain.num_reference_calls == 0
    assert torch.equal(plain.x0, traj.x0)  # the KL computation consumes no randomness


@pytest.mark.parametrize("log_steps", [0, 2])
def test_kl_grad_calls_the_reference_only_on_gradient_steps(log_steps):
    pol, _, _ = _gaussian_policy()
    B, K = 4, 2
    traj = rollout(pol, B, generator=torch.Generator().manual_seed(2), grad="last_k", k=K, kl="grad",
                   kl_log_steps=log_steps, shape=(2,))
    assert traj.grad_steps.tolist() == [False] * (T - K) + [True] * K
    assert traj.num_reference_calls == K + log_steps
    assert torch.equal(traj.kl[: T - K], torch.zeros(T - K, B))  # no KL term (hence no gradient) off grad steps
    full = torch.stack([_recompute(pol, traj, i)[1] for i in range(T)])  # [T, B]
    torch.testing.assert_close(traj.kl[T - K :].detach(), full[T - K :], rtol=1e-5, atol=1e-6)
    assert traj.kl.requires_grad
    extra = traj.kl_logged - traj.kl.sum(0).detach()
    if log_steps == 0:
        torch.testing.assert_close(extra, torch.zeros(B))
    else:  # (#non-grad steps / m) * the KL of some m of the non-grad steps
        scale = (T - K) / log_steps
        candidates = [scale * full[list(c)].sum(0) for c in itertools.combinations(range(T - K), log_steps)]
        assert any(torch.allclose(extra, c, rtol=1e-5, atol=1e-6) for c in candidates)


def test_kl_grad_reference_calls_for_a_masked_policy_in_random_mode():
    den, ref = LinearLogits(3, 4, seed=0), LinearLogits(3, 4, seed=1)
    pol = MaskedPolicy(den, 3, 4, 6, reference=ref)
    for seed in range(5):
        traj = rollout(pol, 8, generator=torch.Generator().manual_seed(seed), grad="random", kl="grad")
        assert traj.num_reference_calls == int(traj.grad_steps.sum())
        assert traj.log_probs.shape == (6, 8) and traj.kl.shape == (6, 8)
        assert torch.equal(traj.kl[~traj.grad_steps], torch.zeros(int((~traj.grad_steps).sum()), 8))


def test_kl_log_steps_estimate_is_unbiased():
    """The reference's eps is the policy's plus delta, so KL_i = D-sum (k_i delta)^2 / (2 sigma_i^2) is a
    constant per step and the logging estimate takes finitely many values with a known mean."""
    D, eta = 2, 1.0
    den = AffineEps(D, seed=3)
    delta = torch.tensor([0.3, -0.2])
    pol = GaussianPolicy(den, AC, TIMESTEPS, final_alpha_cumprod=FINAL, eta=eta, reference=Shifted(den, delta))
    kl_steps = torch.tensor([(_coeffs(i, eta)[1] ** 2) * float((delta.double() ** 2).sum()) / (2 * _coeffs(i, eta)[2] ** 2)
                             for i in range(T)], dtype=torch.float64)
    total = float(kl_steps.sum())
    with torch.no_grad():
        exact = rollout(pol, 2, generator=torch.Generator().manual_seed(4), kl="all", shape=(D,))
    torch.testing.assert_close(exact.kl.double(), kl_steps[:, None].expand(T, 2), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(exact.kl_logged.double(), torch.full((2,), total, dtype=torch.float64), rtol=1e-4, atol=0)
    # grad on the last step only; one of the other T - 1 steps drawn for logging, scaled by T - 1
    R = 400
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        logged = torch.stack([rollout(pol, 1, generator=g, grad="last_k", k=1, kl="grad", kl_log_steps=1,
                                      shape=(D,)).kl_logged[0] for _ in range(R)]).double()
    values = kl_steps[-1] + (T - 1) * kl_steps[:-1]  # the T - 1 equally likely values
    assert all(float((values - v).abs().min()) < 1e-4 * total for v in logged)
    se = float(values.std(unbiased=False)) / math.sqrt(R)
    assert abs(float(logged.mean()) - total) < 4 * se, (float(logged.mean()), total, se)


def test_rollout_with_eta_zero_samples_deterministically_and_refuses_kl():
    """eta = 0 is plain deterministic DDIM: sampling must work (log-probs are undefined, not needed);
    only asking for a KL must raise DeterministicStepError naming eta."""
    from rldiff.core.gaussian import DeterministicStepError

    pol, den, _ = _gaussian_policy(eta=0.0)
    B, D = 3, 2
    x = pol.initial_state(B, (D,), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        for i in range(T):  # the hand loop: x_prev = sqrt(a_p) x0_hat + sqrt(1 - a_p) eps
            c0, k, sigma = _coeffs(i, 0.0)
            assert sigma == 0.0
            x = c0 * x + k * den(x, TIMESTEPS[i].expand(B), None)
        traj = rollout(pol, B, generator=torch.Generator().manual_seed(8), shape=(D,))
        again = rollout(pol, B, generator=torch.Generator().manual_seed(8), shape=(D,))
    torch.testing.assert_close(traj.x0, x, rtol=1e-5, atol=1e-5)
    assert torch.equal(traj.x0, again.x0)
    with pytest.raises(DeterministicStepError, match="eta"), torch.no_grad():
        rollout(pol, B, generator=torch.Generator().manual_seed(8), kl="all", shape=(D,))


# ------------------------------------------------------------------ which steps carry gradient
def test_last_k_gradients_equal_the_closed_form():
    """eps = W x + b[t]: x_prev = A_i x + k_i b[t_i] + sigma_i z with A_i = c0_i I + k_i W, so for
    loss = sum_b v . x0 and K = 2: grad b[t_4] = k_4 sum v, grad b[t_3] = k_3 A_4^T sum v, every other
    row 0; grad W = k_4 sum v x_4^T + k_3 sum (A_4^T v) x_3^T (x_i = the state entering step i)."""
    D, B, K, eta = 3, 4, 2, 1.0
    pol, den, _ = _gaussian_policy(eta=eta, ref_seed=None, D=D)
    v = torch.randn(B, D, generator=torch.Generator().manual_seed(6))
    traj = rollout(pol, B, generator=torch.Generator().manual_seed(7), grad="last_k", k=K, shape=(D,))
    (traj.x0 * v).sum().backward()
    W = den.W.detach().double()
    I = torch.eye(D, dtype=torch.float64)
    c0_4, k_4, _ = _coeffs(4, eta)
    _, k_3, _ = _coeffs(3, eta)
    A4 = c0_4 * I + k_4 * W
    vd = v.double()
    up3 = vd @ A4  # rows: A_4^T v_b
    expect_b = torch.zeros(den.b.shape, dtype=torch.float64)
    expect_b[TIMESTEPS[4]] = k_4 * vd.sum(0)
    expect_b[TIMESTEPS[3]] = k_3 * up3.sum(0)
    torch.testing.assert_close(den.b.grad.double(), expect_b, rtol=1e-4, atol=1e-6)
    x3, x4 = traj.states[3].double(), traj.states[4].double()
    expect_W = k_4 * vd.T @ x4 + k_3 * up3.T @ x3
    torch.testing.assert_close(den.W.grad.double(), expect_W, rtol=1e-4, atol=1e-6)
    # with every step differentiated the first step's bias row gets gradient too
    den.zero_grad()
    traj = rollout(pol, B, generator=torch.Generator().manual_seed(7), grad="all", shape=(D,))
    (traj.x0 * v).sum().backward()
    assert den.b.grad[TIMESTEPS[0]].abs().max() > 1e-4


def test_random_mode_detaches_the_input_of_non_gradient_steps():
    """Only the final unbroken run of gradient steps reaches x0; each earlier gradient step's path is cut
    by the next non-gradient step, which detaches its input."""
    D, B = 2, 3
    pol, den, _ = _gaussian_policy(ref_seed=None, D=D)
    checked = 0
    for seed in range(40):
        den.zero_grad(set_to_none=True)
        traj = rollout(pol, B, generator=torch.Generator().manual_seed(seed), grad="random", shape=(D,))
        gs = traj.grad_steps.tolist()
        if not gs[-1] or all(gs):
            continue
        traj.x0.sum().backward()
        run_start = max(i for i in range(T) if not gs[i]) + 1  # first step of the final run
        for i in range(T):
            row = den.b.grad[TIMESTEPS[i]]
            if i >= run_start:
                assert row.abs().max() > 1e-6, (gs, i)
            else:
                assert torch.equal(row, torch.zeros(D)), (gs, i)
        checked += 1
    assert checked >= 5


# ------------------------------------------------------------------ CTRL: gradients reach exactly the trainable parameters
def test_ctrl_backprop_update_reaches_exactly_the_trainable_parameters(monkeypatch):
    torch.manual_seed(0)
    toy = ContinuousToy(dim=1, num_steps=4, hidden=8, condition_dim=4)
    frozen = toy.denoiser.time_mlp[0].bias
    frozen.requires_grad_(False)
    ctrl = CTRL(toy, batch_size=8, mode="backprop", grad="all", kl_weight=1.0, lr=1e-2, embedding_lr=1e-1)
    trainable = {n: p for n, p in toy.denoiser.named_parameters() if p.requires_grad}
    trainable["y_embedding.weight"] = ctrl.embedding.weight
    assert {id(p) for p in ctrl.params} == {id(p) for p in trainable.values()}
    assert list(toy.denoiser.base.parameters()) == []  # the analytic base is not trainable at all
    seen = []
    real = ctrl_module.clip_and_step

    def spy(optimizer, params, max_grad_norm):
        seen.append({n: (None if p.grad is None else p.grad.clone()) for n, p in trainable.items()})
        seen[-1]["_frozen"] = frozen.grad
        seen[-1]["_buffers"] = [b.grad for b in toy.denoiser.base.buffers()] + [b.grad for b in toy.classifier.buffers()]
        return real(optimizer, params, max_grad_norm)

    monkeypatch.setattr(ctrl_module, "clip_and_step", spy)
    out_w0 = toy.denoiser.out.weight.detach().clone()
    g = torch.Generator().manual_seed(1)
    ctrl.update(0, g)
    ctrl.update(1, g)
    assert len(seen) == 2
    for grads in seen:
        assert all(grads[n] is not None for n in trainable), [n for n in trainable if grads[n] is None]
        assert grads["_frozen"] is None
        assert all(b is None for b in grads["_buffers"])
    # step 0: the zero-initialised output layer blocks everything upstream, so only it moves
    assert seen[0]["out.weight"].abs().max() > 0 and seen[0]["out.bias"].abs().max() > 0
    assert torch.equal(seen[0]["inp.weight"], torch.zeros_like(seen[0]["inp.weight"]))
    assert not torch.equal(toy.denoiser.out.weight.detach(), out_w0)
    # step 1: the output layer is non-zero, gradients reach every layer and the used label rows
    for n in ("inp.weight", "mid.weight", "time_mlp.0.weight", "out.weight"):
        assert seen[1][n].abs().max() > 0, n
    emb = seen[1]["y_embedding.weight"]
    assert emb[: ctrl.num_labels].abs().sum(1).min() > 0  # both labels were drawn with batch 8 (p = 1 - 2^-7)
    assert torch.equal(emb[ctrl.embedding.null_label], torch.zeros(emb.shape[1]))  # null label unused
