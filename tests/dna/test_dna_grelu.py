"""gReLU models: layout, gradient to the one-hot input, mask refusal, specificity, save/load, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domains.dna.data import SequenceSet
from domains.dna.grelu_models import (
    CLASSIFIER_CHROMS,
    ORACLE_CHROMS,
    GReLURegressor,
    build_lightning_model,
    load_grelu,
    model_info,
    save_grelu,
    specificity,
    to_grelu_input,
    train_classifier,
)


def test_layout_matches_grelu_one_hot():
    from grelu.sequence.format import strings_to_one_hot

    ours = to_grelu_input(torch.tensor([[0, 1, 2, 3, 3, 0]]))  # ACGTTA
    assert torch.equal(ours[0], strings_to_one_hot(["ACGTTA"])[0].float())  # [4, L], A C G T rows
    x5 = F.one_hot(torch.tensor([[0, 1, 2, 3, 3, 0]]), 5).float()
    assert torch.equal(to_grelu_input(x5), ours)


def test_mask_token_never_reaches_grelu():
    x = F.one_hot(torch.tensor([[0, 4, 2]]), 5).float()
    with pytest.raises(ValueError, match="1 masked positions reached a gReLU model"):
        to_grelu_input(x)
    with pytest.raises(ValueError, match="mask/N token"):
        to_grelu_input(torch.tensor([[0, 4, 2]]))


def test_gradient_flows_to_one_hot_input(tiny_classifier):
    x = F.one_hot(torch.randint(0, 4, (2, 50)), 5).float().requires_grad_()
    tiny_classifier.log_probs(x)[:, 1].sum().backward()
    assert x.grad[..., :4].abs().sum() > 0
    assert x.grad[..., 4].abs().sum() == 0  # the mask channel is dropped before gReLU


def test_temperature_divides_logits(tiny_classifier):
    x = torch.randint(0, 4, (3, 50))
    assert torch.allclose(tiny_classifier(x) * 2.0, tiny_classifier.raw_logits(x))


def test_specificity_target_minus_max_off_target():
    pred = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]])
    assert specificity(pred, torch.tensor([0, 2])).tolist() == [1.0 - 3.0, 5.0 - 0.0]
    assert specificity(pred, torch.tensor([1, 1])).tolist() == [3.0 - 2.0, -1.0 - 5.0]
    p = pred.clone().requires_grad_()
    specificity(p, torch.tensor([0, 2])).sum().backward()
    assert p.grad.tolist() == [[1.0, -1.0, 0.0], [-1.0, 0.0, 1.0]]


def test_save_load_classifier_and_regressor(tmp_path, tiny_classifier, tiny_arch):
    x = torch.randint(0, 4, (3, 50))
    save_grelu(tiny_classifier, tmp_path / "c.safetensors", {"test_accuracy": 0.5})
    back = load_grelu(tmp_path / "c.safetensors")
    assert torch.allclose(back(x), tiny_classifier(x)) and float(back.temperature) == 2.0
    assert model_info(tmp_path / "c.safetensors") == {"test_accuracy": 0.5}
    assert not any(p.requires_grad for p in back.parameters())
    reg = GReLURegressor(build_lightning_model(3, "regression", tiny_arch), ["hepg2", "k562", "sknsh"]).eval()
    save_grelu(reg, tmp_path / "r.safetensors")
    back = load_grelu(tmp_path / "r.safetensors")
    assert isinstance(back, GReLURegressor) and back.task_names == ("hepg2", "k562", "sknsh")
    assert torch.allclose(back(x), reg(x))


def test_refuses_pretrained_enformer():
    with pytest.raises(ValueError, match="downloads weights"):
        build_lightning_model(4, arch={"model_type": "EnformerPretrainedModel"})


def test_classifier_and_oracle_chromosomes_are_disjoint():
    assert not set(CLASSIFIER_CHROMS) & set(ORACLE_CHROMS)
    assert not {"chr1", "chr2"} & (set(CLASSIFIER_CHROMS) | set(ORACLE_CHROMS))


def test_train_classifier_learns_a_planted_motif(tiny_arch):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (240, 30), generator=g)
    labels = torch.arange(240) % 2
    motif = torch.tensor([2, 0, 3, 0, 0, 2])  # GATAAG planted in class 1
    pos = torch.randint(0, 24, (240,), generator=g)
    for i in (labels == 1).nonzero().flatten().tolist():
        tokens[i, pos[i] : pos[i] + 6] = motif
    seqs = ["".join("ACGT"[v] for v in row) for row in tokens.tolist()]
    ds = SequenceSet(seqs, labels, ("a", "b"))
    _, info = train_classifier(ds, tiny_arch | {"stem_channels": 16, "channel_init": 16}, epochs=25,
                                 batch_size=32, lr=1e-2, patience=25, seed=0)
    assert info["val_accuracy"] >= 0.9
    assert info["temperature"] > 0
