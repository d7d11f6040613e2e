"""The digits domain: data split, pixel denoiser + CTRL adapter, LoRA reference view, shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from domains.images.data import NUM_HELDOUT, label_subset, load_digits, split_indices
from domains.images.lora import adapters_disabled, lora_parameters
from domains.images.pixel import WEIGHTS_DIR, PixelDenoiser, build_digits_unet, load_digits_model
from rldiff.core.rollout import rollout


@pytest.fixture(scope="module")
def domain():
    from domains.images.digits import build

    return build(num_steps=20, reference_samples=200)


def test_split_is_disjoint_and_complete():
    idx = split_indices()
    assert len(idx["heldout"]) == NUM_HELDOUT == 600
    assert len(idx["train"]) == 1797 - 600
    assert len(np.intersect1d(idx["train"], idx["heldout"])) == 0
    x, y = load_digits("heldout")
    assert x.shape == (600, 1, 16, 16) and y.shape == (600,)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    sub = label_subset(y, 100, seed=3)
    assert torch.bincount(y[sub], minlength=10).tolist() == [10] * 10


def test_class_emb_zero_is_the_pretrained_unet():
    torch.manual_seed(0)
    unet = build_digits_unet()
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([10, 500, 990])
    with torch.no_grad():
        base = unet(x, t).sample  # no class embedding at all
        den = PixelDenoiser(unet)
        assert den.condition_dim == 128
        assert torch.equal(den(x, t, None), base)
        assert torch.equal(den(x, t, {"class_emb": torch.zeros(3, 128)}), base)
        moved = den(x, t, {"class_emb": torch.randn(3, 128)})
    assert (moved - base).abs().max() > 1e-3


def test_lora_reference_is_a_view(domain):
    unet = domain.unet
    lora = lora_parameters(unet)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    assert len(lora) > 0 and {id(p) for p in trainable} == {id(p) for p in lora}
    assert domain.policy.reference.model is unet  # no copy of the pre-trained weights
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([100, 700])
    with torch.no_grad():
        before = domain.denoiser(x, t, None)
        assert torch.equal(before, domain.policy.reference(x, t, None))  # LoRA B = 0 at init
        saved = {n: p.clone() for n, p in unet.named_parameters() if "lora_B" in n}
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
        try:
            after = domain.denoiser(x, t, None)
            ref = domain.policy.reference(x, t, None)
            with adapters_disabled(unet):
                assert all(p.requires_grad for p in lora)  # the switch leaves requires_grad alone
        finally:
            for n, p in unet.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
    assert (after - before).abs().max() > 1e-3
    assert torch.equal(ref, before)


def test_rollout_at_init_has_zero_kl(domain):
    g = torch.Generator().manual_seed(0)
    cond = {"class_emb": torch.zeros(4, domain.policy.condition_dim)}
    traj = rollout(domain.policy, 4, cond, generator=g, shape=domain.sample_shape, grad="none", kl="all")
    assert traj.x0.shape == (4, 1, 16, 16)
    assert float(traj.kl.abs().max()) == 0.0
    assert float(domain.policy.sigma.min()) > 0.02  # eta = 1 with a_prev < 1: every step is stochastic


def test_shipped_classifiers_are_independent_and_accurate():
    meta = {n: json.loads((WEIGHTS_DIR / f"{n}.json").read_text()) for n in ("digits_classifier", "digits_eval_classifier")}
    assert meta["digits_classifier"]["metrics"]["trained_on"] == "train"
    assert meta["digits_eval_classifier"]["metrics"]["trained_on"] == "heldout"
    from domains.images.classifiers import load_classifier

    for name, split, floor in (("digits_classifier", "heldout", 0.97), ("digits_eval_classifier", "train", 0.96)):
        clf = load_classifier(WEIGHTS_DIR / name)
        x, y = load_digits(split)  # data the classifier never saw
        with torch.no_grad():
            acc = (clf(x).argmax(-1) == y).float().mean().item()
        assert acc >= floor, (name, acc)
        assert acc == pytest.approx(meta[name]["metrics"][f"accuracy_on_{split}_split"], abs=1e-6)


def test_pretrained_samples_cover_the_classes(domain, tmp_path):
    metrics = domain.evaluate({"x0": domain.reference_x0()}, tmp_path)
    # the unconditional model makes every digit: class entropy near log(10) = 2.303
    assert metrics["class_balance_entropy"] > 2.15
    assert metrics["fd_to_pretrained"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["fd_pretrained_to_real"] < 4 * metrics["fd_real_to_real"]
    assert (tmp_path / "grid_pretrained.png").is_file()


def test_evaluate_on_real_digits_reproduces_the_judges_accuracy(domain, tmp_path):
    x, y = load_digits("train")  # never seen by the independent judge
    metrics = domain.evaluate({"x0": x[:300], "y": y[:300]}, tmp_path)
    with torch.no_grad():
        expected = (domain.eval_classifier(x[:300]).argmax(-1) == y[:300]).float().mean().item()
    assert metrics["accuracy"] == pytest.approx(expected, abs=1e-6)  # float32 mean vs exact fraction
    assert 0.9 < metrics["macro_f1"] <= 1.0
    assert metrics["fd_real_to_real"] < metrics["fd_pretrained_to_real"]
    assert metrics["diversity"] == pytest.approx(metrics["diversity_real"], rel=0.2)
    # real "k"s resemble the pre-trained model's "k"s far more than its "(k+1)"s do
    shifted = domain.evaluate({"x0": x[:300], "y": (y[:300] + 1) % 10}, tmp_path / "shifted")
    assert 0 < 5 * metrics["fd_to_pretrained_same_class"] < shifted["fd_to_pretrained_same_class"]
    assert shifted["accuracy"] < 0.05
    from PIL import Image

    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (10 * (64 + 2) + 2, 10 * (64 + 2) + 2)  # 10 classes x 10 images of 16px x4, 2px gaps
    assert len(list(tmp_path.glob("grid_y*.png"))) == 10


def test_missing_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_digits_model(tmp_path / "nope")


def test_pretrain_writes_a_loadable_model(tmp_path):
    from domains.images.pretrain import pretrain_digits

    log = pretrain_digits(tmp_path / "m", steps=3, batch_size=8, log_every=1, warmup=1)
    assert log["steps_run"] == 3 and len(log["losses"]) == 3
    unet, sched = load_digits_model(tmp_path / "m")
    assert sched.config.timestep_spacing == "trailing" and not sched.config.set_alpha_to_one
    assert sum(p.numel() for p in unet.parameters()) == log["num_parameters"]


def test_label_pathway_starts_at_the_pretrained_unet_and_the_reference_ignores_y():
    from domains.images.lora import ReferenceView

    torch.manual_seed(0)
    unet = build_digits_unet()
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([5, 300, 700, 999])
    y = torch.tensor([0, 3, 3, 9])
    with torch.no_grad():
        base = unet(x, t).sample
    den = PixelDenoiser(unet, num_labels=10, label_knots=3)
    assert len(den.label_bias) == 8 and tuple(den.label_bias[0].shape) == (30, 32)  # 8 resnets, 3 knots x 10 labels
    ref = ReferenceView(den, unet)
    with torch.no_grad():
        assert torch.equal(den(x, t, {"y": y}), base)  # zero tables: exactly the pre-trained model
        for table in den.label_bias:
            table.normal_()
        moved = den(x, t, {"y": y})
        other = den(x, t, {"y": (y + 1) % 10})
        soft = den(x, t, {"y": torch.nn.functional.one_hot(y, 10).float()})
        assert torch.equal(den(x, t, None), base)  # no y: pre-trained
        assert torch.equal(den(x, t, {"y": torch.full((4,), 10)}), base)  # CTRL's null label: pre-trained
        assert torch.equal(ref(x, t, {"y": y, "class_emb": torch.randn(4, 128)}), base)  # the reference never sees y
    assert (moved - base).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    assert (moved - other).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # the label matters
    assert torch.allclose(soft, moved, atol=1e-5)  # one-hot soft labels = hard labels


def test_label_pathway_time_knots_interpolate():
    den = PixelDenoiser(build_digits_unet(), num_labels=10, label_knots=3)
    w = den._knot_weights(torch.tensor([0, 999, 499, 250]))
    assert torch.allclose(w.sum(1), torch.ones(4))
    assert w[0].tolist() == [1.0, 0.0, 0.0] and w[1].tolist() == [0.0, 0.0, 1.0]
    assert w[2].argmax() == 1 and w[3, 0] > 0 and w[3, 1] > 0
    assert PixelDenoiser(build_digits_unet(), num_labels=10)._knot_weights(torch.tensor([0, 999])).tolist() == [[1.0], [1.0]]


def test_ctrl_trains_the_label_pathway_and_keeps_the_reference():
    from domains.images.digits import build
    from rldiff.algorithms.ctrl import CTRL

    torch.manual_seed(0)
    domain = build(num_steps=2, lora_rank=0, label_pathway=True, label_knots=2, reference_samples=2)
    tables = list(domain.denoiser.label_bias)
    algo = CTRL(domain, gamma=5.0, batch_size=6, lr=1e-2, embedding_lr=1e-2)
    assert all(any(p is q for q in algo.params) for p in tables)  # the tables are CTRL's trainable adapters
    x, t, y = torch.randn(10, 1, 16, 16), torch.linspace(0, 999, 10).long(), torch.arange(10)
    with torch.no_grad():
        before = domain.denoiser(x, t, {"y": y})
    algo.update(0, torch.Generator().manual_seed(0))
    assert sum(float(p.detach().abs().sum()) for p in tables) > 0
    with torch.no_grad():
        after = domain.denoiser(x, t, {"y": y})
        assert torch.equal(domain.policy.reference(x, t, {"y": y}), before)
    assert (after - before).abs().max() > 1e-4


def test_ctrl_guidance_uncond_branch_gets_the_null_label_for_y_too():
    """With guidance on, CTRL's unconditional branch replaces both the y-embedding and a label the denoiser
    reads itself (the digits label pathway) by the null label, so that branch is the pre-trained model."""
    from domains.images.digits import build
    from rldiff.algorithms.ctrl import CTRL

    torch.manual_seed(0)
    domain = build(num_steps=2, lora_rank=0, label_pathway=True, label_knots=2, reference_samples=2)
    domain.policy.guidance_scale, domain.policy.uncond = 2.0, lambda c: dict(c)
    algo = CTRL(domain, gamma=5.0, batch_size=4)
    for table in domain.denoiser.label_bias:
        table.data.normal_()
    y = torch.tensor([0, 3, 7, 9])
    cond = algo.make_cond(y, torch.Generator().manual_seed(0))
    un = domain.policy.uncond(cond)
    assert un["y"].tolist() == [10] * 4 and torch.equal(cond["y"], y)  # the conditional branch keeps its labels
    assert torch.equal(un["class_emb"], algo.embedding(torch.full((4,), 10)))
    soft = domain.policy.uncond({**cond, "y": torch.nn.functional.one_hot(y, 10).float()})
    assert torch.equal(soft["y"], torch.zeros(4, 10))
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([5, 300, 700, 999])
    with torch.no_grad():  # the null label adds no bias: the same output as without any label
        assert torch.equal(domain.denoiser(x, t, un), domain.denoiser(x, t, {"class_emb": un["class_emb"]}))
        assert torch.equal(domain.denoiser(x, t, soft), domain.denoiser(x, t, {"class_emb": un["class_emb"]}))
