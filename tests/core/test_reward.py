"""Rewards: FunctionReward, validation, WeightedSum, ClassifierLogProb (hard / soft / fixed), MultiLabelLogProb."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rldiff.core.reward import (
    ClassifierLogProb,
    FunctionReward,
    MultiLabelLogProb,
    Reward,
    WeightedSum,
    as_reward,
)

X = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0], [0.5, 0.5, 0.5], [2.0, -2.0, 1.0]])  # [B=4, 3]


def brightness(x0):
    return x0.mean(1)


def scaled(x0, cond):
    return x0.sum(1) * cond["s"]


def test_function_reward_with_one_and_two_arguments():
    r1 = FunctionReward(brightness)
    torch.testing.assert_close(r1(X, {"ignored": 1}), torch.tensor([2.0, 1.0, 0.5, 1.0 / 3]))
    assert r1.name == "brightness" and r1.differentiable is False
    r2 = FunctionReward(scaled, differentiable=True)
    s = torch.tensor([1.0, 2.0, -1.0, 0.5])
    torch.testing.assert_close(r2(X, {"s": s}), torch.tensor([6.0, 6.0, -1.5, 0.5]))
    assert r2.differentiable is True

    class Callable1:
        def __call__(self, x0):
            return x0[:, 0] * 10

    torch.testing.assert_close(FunctionReward(Callable1())(X), torch.tensor([10.0, -10.0, 5.0, 20.0]))
    assert isinstance(r2, Reward)


def test_non_finite_reward_names_the_reward_and_the_indices():
    def nanny(x0):
        out = x0.sum(1)
        out[1] = float("nan")
        out[3] = float("inf")
        return out

    with pytest.raises(ValueError, match=r"'nanny'.*\[1, 3\]"):
        FunctionReward(nanny)(X)


def test_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"'keepdim'.*shape \(4, 1\).*\(4,\)"):
        FunctionReward(lambda x0: x0.sum(1, keepdim=True), name="keepdim")(X)
    with pytest.raises(ValueError, match="shape"):
        FunctionReward(lambda x0: x0.sum(1)[:3], name="short")(X)


def test_as_reward_keeps_or_overrides_the_flag():
    r = FunctionReward(brightness, differentiable=True)
    assert as_reward(r) is r
    assert as_reward(r, differentiable=False).differentiable is False
    assert as_reward(brightness).differentiable is False
    assert as_reward(brightness, differentiable=True)(X).shape == (4,)


def test_weighted_sum_values_gradient_and_flag():
    x = X.clone().requires_grad_(True)
    r1 = FunctionReward(brightness, differentiable=True)
    r2 = FunctionReward(lambda x0: (x0**2).sum(1), differentiable=True, name="sq")
    ws = WeightedSum([r1, r2], [2.0, -0.5])
    out = ws(x)
    torch.testing.assert_close(out.detach(), 2 * X.mean(1) - 0.5 * (X**2).sum(1))
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * torch.full_like(X, 1 / 3) - 0.5 * 2 * X)
    assert ws.differentiable is True
    assert WeightedSum([r1, brightness]).differentiable is False  # a plain function is not differentiable
    torch.testing.assert_close(WeightedSum([r1, brightness])(X), 2 * X.mean(1))  # default weights 1
    with pytest.raises(ValueError, match="weights"):
        WeightedSum([r1, r2], [1.0])


class FixedLinear(nn.Module):
    def __init__(self, W, b):
        super().__init__()
        self.W, self.b = W, b

    def forward(self, x):
        return x @ self.W.T + self.b


W3 = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [-1.0, 1.0, 1.0]])  # K = 3 classes
B3 = torch.tensor([0.1, -0.2, 0.3])


def _log_softmax_by_hand(logits):
    return torch.stack([torch.tensor([l - math.log(sum(math.exp(m) for m in row)) for l in row]) for row in logits.tolist()])


def test_classifier_log_prob_hard_soft_and_fixed_label():
    Tc = 2.0
    r = ClassifierLogProb(FixedLinear(W3, B3), label_key="y", temperature=Tc)
    lp = _log_softmax_by_hand((X @ W3.T + B3) / Tc)  # [B, K]
    y = torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(r(X, {"y": y}), lp[torch.arange(4), y])
    w = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(r(X, {"y": w}), (w * lp).sum(1))  # soft: sum_k w_k log p_k
    fixed = ClassifierLogProb(FixedLinear(W3, B3), temperature=Tc, label=1)
    torch.testing.assert_close(fixed(X, None), lp[:, 1])
    assert r.differentiable and isinstance(r, Reward) and as_reward(r) is r
    # gradient of log p(y|x) w.r.t. x is (W_y - sum_k p_k W_k) / T
    x = X.clone().requires_grad_(True)
    r(x, {"y": y}).sum().backward()
    p = lp.exp()
    torch.testing.assert_close(x.grad, (W3[y] - p @ W3) / Tc)


def test_multilabel_log_prob_is_the_sum_of_terms():
    W2, B2 = torch.tensor([[0.3, -0.7, 1.0], [-0.2, 0.4, 0.1]]), torch.tensor([0.0, 0.5])
    t1 = ClassifierLogProb(FixedLinear(W3, B3), label_key="y1", temperature=1.5)
    t2 = ClassifierLogProb(FixedLinear(W2, B2), label_key="y2")
    multi = MultiLabelLogProb([t1, t2])
    cond = {"y1": torch.tensor([2, 0, 1, 1]), "y2": torch.tensor([1, 1, 0, 1])}
    p1 = _log_softmax_by_hand((X @ W3.T + B3) / 1.5)[torch.arange(4), cond["y1"]]
    p2 = _log_softmax_by_hand(X @ W2.T + B2)[torch.arange(4), cond["y2"]]
    torch.testing.assert_close(multi(X, cond), p1 + p2)
    assert multi.differentiable
