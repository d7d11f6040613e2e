"""Objectives (kl_to_go, backprop_loss, ConditionNormalizer, policy_gradient_step) and CTRL's
zero-initialised label embedding, with values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from domains.toy.continuous import ContinuousToy
from domains.toy.discrete import DiscreteToy
from rldiff.algorithms.ctrl import CTRL, LabelEmbedding
from rldiff.core.objectives import (
    ConditionNormalizer,
    backprop_loss,
    kl_to_go,
    policy_gradient_step,
)
from rldiff.core.rollout import Trajectory, rollout


# ------------------------------------------------------------------ kl_to_go / backprop_loss
def test_kl_to_go_by_hand():
    kl = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [0.5, 0.25]])  # [T=4, B=2]
    expect = torch.tensor([[8.5, 10.25], [5.5, 6.25], [0.5, 0.25], [0.0, 0.0]])  # sum_{j > i} KL_j
    torch.testing.assert_close(kl_to_go(kl), expect)


def _traj(kl):
    T, B = kl.shape if kl is not None else (3, 2)
    return Trajectory(states=[], x0=torch.zeros(B, 1), log_probs=torch.zeros(T, B), kl=kl, kl_logged=None,
                      grad_steps=torch.ones(T, dtype=torch.bool))


def test_backprop_loss_by_hand():
    kl = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.0, 0.4]])  # [T=2, B=3]; trajectory KL = [0.4, 0.2, 0.4]
    r = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    loss = backprop_loss(_traj(kl), r, gamma=2.5, kl_weight=0.5)
    # -(mean of 2.5 r - 0.5 KL) = -((2.5 - 0.2) + (-5 - 0.1) + (1.25 - 0.2)) / 3
    assert float(loss.detach()) == pytest.approx(-((2.5 - 0.2) + (-5 - 0.1) + (1.25 - 0.2)) / 3, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(r.grad, torch.full((3,), -2.5 / 3))
    assert float(backprop_loss(_traj(None), torch.tensor([1.0, 3.0]), gamma=2.0, kl_weight=0.0)) == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="kl"):
        backprop_loss(_traj(None), torch.tensor([1.0, 3.0]), gamma=2.0, kl_weight=1.0)


# ------------------------------------------------------------------ ConditionNormalizer
def _mean_std(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))  # unbiased, as torch.std


def test_condition_normalizer_per_key_and_batch_fallback():
    norm = ConditionNormalizer(buffer_size=4, min_count=3, scale=True)
    r = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    keys = ["a", "a", "b", "a", "b", "c"]
    out = norm(torch.tensor(r), keys)
    ma, sa = _mean_std([1.0, 2.0, 4.0])  # "a" has 3 >= min_count: its own statistics
    mb, sb = _mean_std(r)  # "b" (2) and "c" (1): the whole batch's
    expect = [(1 - ma) / sa, (2 - ma) / sa, (3 - mb) / sb, (4 - ma) / sa, (5 - mb) / sb, (6 - mb) / sb]
    torch.testing.assert_close(out, torch.tensor(expect), rtol=1e-5, atol=1e-6)
    # second batch: "b" now has 2 + 2 = 4 rewards of history; "a" keeps only the last buffer_size = 4
    out2 = norm(torch.tensor([10.0, 7.0, 0.0]), ["b", "b", "a"])
    mb2, sb2 = _mean_std([3.0, 5.0, 10.0, 7.0])
    ma2, sa2 = _mean_std([1.0, 2.0, 4.0, 0.0])
    expect2 = [(10 - mb2) / sb2, (7 - mb2) / sb2, (0 - ma2) / sa2]
    torch.testing.assert_close(out2, torch.tensor(expect2), rtol=1e-5, atol=1e-6)
    norm(torch.tensor([8.0]), ["a"])  # 5th reward of "a": the oldest one (1.0) drops out
    assert list(norm.history["a"]) == [2.0, 4.0, 0.0, 8.0]


def test_condition_normalizer_unscaled_and_single_group():
    r = torch.tensor([1.0, 2.0, 6.0, 3.0])
    norm = ConditionNormalizer(min_count=2, scale=False)
    out = norm(r, ["x", "y", "x", "y"])
    torch.testing.assert_close(out, torch.tensor([1 - 3.5, 2 - 2.5, 6 - 3.5, 3 - 2.5]))
    m, s = _mean_std(r.tolist())
    torch.testing.assert_close(ConditionNormalizer()(r), (r - m) / s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ConditionNormalizer(scale=False)(r), r - m)
    assert torch.equal(ConditionNormalizer()(torch.tensor([4.0])), torch.zeros(1))


def test_condition_normalizer_single_reward_of_a_key_is_finite():
    """With min_count <= 1 a key seen once uses its own one-element history: its advantage must be
    0 (reward minus its own mean), not NaN from the unbiased std of one number."""
    out = ConditionNormalizer(min_count=1)(torch.tensor([1.0, 2.0, 4.0]), ["a", "b", "b"])
    assert torch.isfinite(out).all(), out
    assert float(out[0]) == 0.0
    m, s = _mean_std([2.0, 4.0])
    torch.testing.assert_close(out[1:], torch.tensor([(2 - m) / s, (4 - m) / s]))


# ------------------------------------------------------------------ policy_gradient_step
def _perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.out.weight.copy_(torch.randn(module.out.weight.shape, generator=g) * 0.3)
        module.out.bias.copy_(torch.randn(module.out.bias.shape, generator=g) * 0.3)


def _toys():
    c = ContinuousToy(dim=2, num_steps=4, hidden=8, condition_dim=4)
    d = DiscreteToy(seq_len=2, vocab_size=3, num_steps=4, hidden=16, condition_dim=4)
    return {"gaussian": c, "masked": d}


@pytest.mark.parametrize("name", ["gaussian", "masked"])
def test_first_on_policy_ratio_is_exactly_one_and_the_gradient_is_the_score_function(name):
    toy = _toys()[name]
    _perturb(toy.denoiser, 0)  # a fine-tuned policy that is not the reference
    pol, B = toy.policy, 16
    shape = None if name == "masked" else toy.sample_shape
    with torch.no_grad():
        traj = rollout(pol, B, generator=torch.Generator().manual_seed(1), kl="all", shape=shape, keep_reference=True)
    T = pol.num_steps
    adv = torch.randn(T, B, generator=torch.Generator().manual_seed(2))
    params = [p for p in toy.denoiser.parameters() if p.requires_grad]
    grads, calls = [], []

    def apply_update():
        calls.append(1)
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])
        for p in params:
            p.grad = None

    stats = policy_gradient_step(pol, traj, adv, apply_update=apply_update, cond_at=lambda idx: None, clip_range=0.2)
    assert stats["first_ratio_max_dev"] == 0.0
    assert stats["clip_frac"] == 0.0 and stats["approx_kl"] == 0.0
    assert stats["loss"] == pytest.approx(float(-adv.mean()), rel=1e-5, abs=1e-6)  # ratio 1: loss_i = -mean_b adv
    assert len(calls) == 1
    # the same gradient by hand: d/dtheta of sum_i -mean_b(adv_i * log p_theta(x_{i+1} | x_i)) / T
    manual = sum(-(adv[i] * pol.step(traj.states[i], i, prev=traj.states[i + 1]).log_prob).mean() for i in range(T)) / T
    ref = torch.autograd.grad(manual, params, allow_unused=True)
    for got, want in zip(grads[0], ref):
        torch.testing.assert_close(got, torch.zeros_like(got) if want is None else want, rtol=1e-4, atol=1e-6)
    assert max(float(g.abs().max()) for g in grads[0]) > 1e-4
    # with the KL term: the first ratio is still 1, and the loss adds kl_weight * mean KL of each step
    stats_kl = policy_gradient_step(pol, traj, adv, apply_update=apply_update, cond_at=lambda idx: None,
                                    clip_range=0.2, kl_weight=0.7)
    assert stats_kl["first_ratio_max_dev"] == 0.0
    assert stats_kl["loss"] == pytest.approx(float(-adv.mean() + 0.7 * traj.kl.mean()), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", ["gaussian", "masked"])
def test_ctrl_policy_gradient_first_ratio_is_one(name):
    toy = _toys()[name]
    ctrl = CTRL(toy, mode="policy_gradient", batch_size=8, kl_weight=1.0, num_minibatches=2, inner_epochs=2)
    w0 = toy.denoiser.out.weight.detach().clone()
    metrics = ctrl.update(0, torch.Generator().manual_seed(3))
    assert metrics["first_ratio_max_dev"] == 0.0
    assert metrics["kl"] == 0.0  # step 0 of CTRL is the pre-trained model
    assert not torch.equal(toy.denoiser.out.weight.detach(), w0)  # and the update moved the adapter


# ------------------------------------------------------------------ CTRL's label embedding
def test_label_embedding_zero_init_hard_and_soft_labels():
    emb = LabelEmbedding(3, 5)
    assert emb.weight.shape == (4, 5) and emb.null_label == 3
    assert torch.equal(emb.weight, torch.zeros(4, 5))
    assert torch.equal(emb(torch.tensor([0, 2, 3])), torch.zeros(3, 5))
    with torch.no_grad():
        emb.weight.copy_(torch.randn(4, 5, generator=torch.Generator().manual_seed(0)))
    W = emb.weight.detach()
    torch.testing.assert_close(emb(torch.tensor([2, 0, 3])), W[[2, 0, 3]])
    y = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(emb(y), torch.stack([0.2 * W[0] + 0.5 * W[1] + 0.3 * W[2], W[0]]))


@pytest.mark.parametrize("name", ["gaussian", "masked"])
def test_ctrl_step_zero_policy_is_the_pretrained_one(name):
    toy = _toys()[name]
    ctrl = CTRL(toy, batch_size=8)
    pol, B = toy.policy, 12
    shape = None if name == "masked" else toy.sample_shape
    y = torch.arange(B) % ctrl.num_labels
    cond = ctrl.make_cond(y, torch.Generator().manual_seed(0))
    assert torch.equal(cond["class_emb"], torch.zeros(B, pol.condition_dim))

    def run(c, **kw):
        with torch.no_grad():
            return rollout(pol, B, c, generator=torch.Generator().manual_seed(4), shape=shape, **kw)

    with_y, without = run(cond, kl="all"), run(None, kl="all")
    assert torch.equal(with_y.x0, without.x0)
    assert torch.equal(with_y.kl, torch.zeros_like(with_y.kl))
    assert torch.equal(with_y.kl_logged, torch.zeros(B))
    # with a non-trivial adapter the zero embedding still changes nothing, a non-zero one does
    _perturb(toy.denoiser, 5)
    a, b = run(cond), run(None)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.log_probs, b.log_probs)
    with torch.no_grad():
        ctrl.embedding.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(6))
    c = run(ctrl.make_cond(y, torch.Generator().manual_seed(0)))
    # (a Gaussian sample's own log-prob does not see a mean shift; discrete samples may coincide, their law does not)
    changed = (c.x0 - a.x0) if name == "gaussian" else (c.log_probs - a.log_probs)
    assert changed.abs().max() > 1e-3


def test_ctrl_soft_labels_use_the_mixture_of_rows():
    toy = _toys()["gaussian"]
    ctrl = CTRL(toy, batch_size=8, soft_labels=True)
    with torch.no_grad():
        ctrl.embedding.weight.normal_(generator=torch.Generator().manual_seed(7))
    y = ctrl.sample_labels(6, torch.Generator().manual_seed(8))
    assert y.shape == (6, ctrl.num_labels) and y.dtype.is_floating_point
    torch.testing.assert_close(y.sum(-1), torch.ones(6))
    cond = ctrl.make_cond(y, torch.Generator().manual_seed(0))
    W = ctrl.embedding.weight.detach()
    torch.testing.assert_close(cond["class_emb"], sum(y[:, k, None] * W[k] for k in range(ctrl.num_labels)))


def test_ctrl_stratified_labels_fill_each_label_quota_and_keep_the_distribution():
    toy = _toys()["gaussian"]
    K = toy.num_labels
    probs = [0.7] + [0.3 / (K - 1)] * (K - 1)
    ctrl = CTRL(toy, batch_size=8, stratified_labels=True, label_probs=probs)
    g = torch.Generator().manual_seed(3)
    batches = [ctrl.sample_labels(10, g) for _ in range(4000)]
    for y in batches[:50]:  # label 0 gets floor(10 * 0.7) = 7 places in every batch
        assert y.shape == (10,) and (y == 0).sum() >= 7
    freq = torch.bincount(torch.cat(batches), minlength=K).float() / (10 * len(batches))
    torch.testing.assert_close(freq, torch.tensor(probs), atol=0.01, rtol=0)
    assert not all(torch.equal(batches[0], b) for b in batches[1:5])  # order is shuffled
    iid = CTRL(toy, batch_size=8, label_probs=probs).sample_labels(10, torch.Generator().manual_seed(3))
    assert iid.shape == (10,)
