"""Denoiser shapes, the CTRL adapter, LoRA (zero-init = base, reference is a view), MDLM loss/ELBO."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from domains.dna.model import (
    DNADenoiser,
    LoRA,
    count_parameters,
    load_denoiser,
    save_denoiser,
    with_lora,
)
from domains.dna.pretrain import mdlm_loss, reverse_complement
from rldiff.core.masked import LogLinearSchedule, MaskedPolicy
from rldiff.core.rollout import rollout


def batch(B=3, L=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.one_hot(torch.randint(0, 5, (B, L), generator=g), 5).float(), torch.rand(B, generator=g)


def test_shapes_and_default_size():
    m = DNADenoiser(channels=8, cond_dim=8, dilations=(1, 2))
    x, t = batch()
    assert m(x, t, None).shape == (3, 40, 4)
    assert 400_000 < count_parameters(DNADenoiser()) < 2_000_000  # the shipped size is CPU-sized


def test_time_conditioning_matters(tiny_denoiser):
    x, t = batch()
    assert not torch.allclose(tiny_denoiser(x, t), tiny_denoiser(x, t * 0.5))


def test_class_emb_adapter(tiny_denoiser):
    x, t = batch()
    base = tiny_denoiser(x, t, None)
    assert torch.equal(tiny_denoiser(x, t, {"class_emb": torch.zeros(3, 8)}), base)  # zero = pre-trained
    assert not torch.allclose(tiny_denoiser(x, t, {"class_emb": torch.randn(3, 8)}), base)


def test_lora_zero_init_equals_base_and_reference_is_a_view(tiny_denoiser):
    x, t = batch()
    base_out = tiny_denoiser(x, t).detach()
    n_base = count_parameters(tiny_denoiser)
    adapted, reference = with_lora(tiny_denoiser, rank=2, alpha=4.0)
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(adapted.adapters()) == 3 * 2  # conv, proj, film in each of the 2 blocks
    assert torch.equal(adapted(x, t), base_out)  # B = 0 at init
    for layer in adapted.adapters():
        layer.lora_B.weight.data.normal_()
    assert not torch.allclose(adapted(x, t), base_out)
    assert torch.equal(reference(x, t), base_out)  # adapters off = the pre-trained network
    assert all(layer.enabled for layer in adapted.adapters())  # the context restored them
    assert sum(p.numel() for p in reference.parameters()) == 0  # a view, not a copy
    assert count_parameters(adapted) - count_parameters(adapted, trainable_only=True) == n_base


def test_lora_on_dilated_conv_keeps_length():
    conv = torch.nn.Conv1d(4, 6, 5, dilation=8, padding=16)
    layer = LoRA(conv, rank=2, alpha=2.0)
    layer.lora_B.weight.data.normal_()
    assert layer(torch.randn(2, 4, 50)).shape == (2, 6, 50)
    with pytest.raises(TypeError):
        LoRA(torch.nn.ReLU(), 2, 2.0)


def test_save_load_roundtrip(tmp_path, tiny_denoiser):
    save_denoiser(tiny_denoiser, tmp_path / "d.safetensors", {"note": "x"})
    back = load_denoiser(tmp_path / "d.safetensors")
    x, t = batch()
    assert back.config.dilations == [1, 2] or tuple(back.config.dilations) == (1, 2)
    assert torch.equal(back(x, t), tiny_denoiser(x, t))


class Uniform(torch.nn.Module):
    """A denoiser with uniform predictions: its per-base NELBO is exactly (1 - eps) ln 4 in expectation."""

    def forward(self, x, t, cond=None):
        return torch.zeros(*x.shape[:2], 4)


def test_mdlm_loss_matches_analytic_value_for_uniform_denoiser():
    sched = LogLinearSchedule()
    x0 = torch.randint(0, 4, (4000, 50), generator=torch.Generator().manual_seed(0))
    loss, t = mdlm_loss(Uniform(), x0, sched, torch.Generator().manual_seed(1))
    # E[(1/t) * #masked / L * ln 4] = (1 - eps) ln 4
    assert loss.item() == pytest.approx((1 - sched.eps) * math.log(4), rel=0.01)
    assert t.min() > 0 and t.max() <= 1


def test_elbo_uniform_denoiser_and_rollout_unmasks_everything():
    pol = MaskedPolicy(Uniform(), 4, 30, 10)
    tokens = torch.randint(0, 4, (64, 30))
    elbo = pol.elbo(tokens, num_samples=64, generator=torch.Generator().manual_seed(0))
    assert elbo.mean().item() == pytest.approx(-30 * math.log(4) * (1 - 1e-3), rel=0.02)
    traj = rollout(pol, 5, generator=torch.Generator().manual_seed(0))
    assert traj.x0[..., 4].sum() == 0 and traj.x0.sum() == 5 * 30


def test_reverse_complement():
    assert reverse_complement(torch.tensor([[0, 0, 1, 2]])).tolist() == [[1, 2, 3, 3]]  # AACG -> CGTT


def test_kl_to_reference_is_zero_at_init_and_positive_after_update(tiny_denoiser):
    adapted, reference = with_lora(tiny_denoiser, rank=2)
    pol = MaskedPolicy(adapted, 4, 24, 6, reference=reference, condition_dim=8)
    traj = rollout(pol, 4, generator=torch.Generator().manual_seed(0), kl="all")
    assert traj.kl.abs().max() == 0
    for layer in adapted.adapters():
        layer.lora_B.weight.data.normal_(std=0.5)
    traj = rollout(pol, 4, generator=torch.Generator().manual_seed(0), kl="all")
    assert traj.kl.sum() > 0


def test_per_label_lora_matches_its_formula_and_routes_by_label(tiny_denoiser):
    x, t = batch(B=4)
    base_out = tiny_denoiser(x, t).detach()
    adapted, reference = with_lora(tiny_denoiser, rank=2, alpha=4.0, num_labels=3)
    y = torch.tensor([0, 2, 1, 2])
    assert torch.equal(adapted(x, t, {"y": y}), base_out)  # every B_y = 0 at init
    g = torch.Generator().manual_seed(0)
    for layer in adapted.adapters():
        assert layer.lora_B_y.shape[0] == 4  # 3 labels + the null label
        layer.lora_B_y.data.copy_(torch.randn(layer.lora_B_y.shape, generator=g))
    out = adapted(x, t, {"y": y})
    # one layer by hand: W x + (alpha / r) B_y A x, sample by sample
    conv = adapted.base.blocks[0].conv
    h = torch.randn(4, 8, 40, generator=g)
    conv.labels = y
    got = conv(h)
    conv.labels = None
    for i in range(4):
        want = conv.base(h[i : i + 1]) + 2.0 * torch.einsum("or,brl->bol", conv.lora_B_y[y[i]], conv.lora_A(h[i : i + 1]))
        assert torch.allclose(got[i : i + 1], want, atol=1e-5)
    for i in range(4):  # a sample's output depends on its own label only
        assert torch.allclose(adapted(x[i : i + 1], t[i : i + 1], {"y": y[i : i + 1]}), out[i : i + 1], atol=1e-5)
    assert torch.allclose(adapted(x, t, {"y": F.one_hot(y, 3).float()}), out, atol=1e-5)  # soft one-hot = hard
    assert not torch.allclose(adapted(x, t, {"y": torch.tensor([1, 2, 1, 0])}), out)
    null = adapted(x, t, None)  # no label: the null row
    for layer in adapted.adapters():
        layer.lora_B_y.data[3] = 0
    assert not torch.allclose(null, base_out) and torch.allclose(adapted(x, t, None), base_out, atol=1e-6)
    assert torch.equal(reference(x, t, {"y": y}), base_out)  # adapters off = the pre-trained network
    assert all(layer.labels is None for layer in adapted.adapters())  # labels never leak to the next call
    adapted(x, t, {"y": y}).sum().backward()
    grad = adapted.base.blocks[1].proj.lora_B_y.grad
    assert grad[[0, 1, 2]].abs().sum(dim=(1, 2)).gt(0).all() and grad[3].abs().sum() == 0  # only labels used
    with pytest.raises(ValueError, match="labels for a batch"):
        adapted(x, t, {"y": y[:3]})
