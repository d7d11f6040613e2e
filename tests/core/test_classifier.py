"""Classifier fitting for CTRL's reward: the 80/20 split, temperature calibration, accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rldiff.core.classifier import calibrate_temperature, fit_classifier, split_indices


def test_split_indices_is_an_80_20_partition():
    tr, va = split_indices(100, generator=torch.Generator().manual_seed(0))
    assert len(tr) == 80 and len(va) == 20
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(100))
    tr, va = split_indices(7)
    assert len(va) == 1 and len(tr) == 6


@pytest.mark.parametrize("T0", [0.5, 2.0])
def test_calibrate_temperature_recovers_a_known_temperature(T0):
    """Labels drawn from softmax(z / T0) and logits z: the NLL minimiser is T0 (up to sampling error)."""
    g = torch.Generator().manual_seed(1)
    N, K = 20_000, 5
    z = torch.randn(N, K, generator=g) * 3
    y = torch.multinomial(torch.softmax(z / T0, -1), 1, generator=g).squeeze(-1)
    T = calibrate_temperature(z, y)
    assert T == pytest.approx(T0, rel=0.05)
    # and it is the minimiser: NLL at T is below the NLL at 0.9 T and 1.1 T
    nll = lambda s: float(F.cross_entropy(z / s, y))
    assert nll(T) <= min(nll(0.9 * T), nll(1.1 * T))


class CountingLinear(nn.Module):
    """A linear classifier that counts the rows it sees in train and eval mode."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.rows = {"train": 0, "eval": 0}

    def forward(self, x):
        self.rows["train" if self.training else "eval"] += len(x)
        return self.lin(x)


def test_fit_classifier_on_a_separable_problem_uses_an_80_20_split():
    g = torch.Generator().manual_seed(2)
    N = 1000
    y = torch.randint(0, 2, (N,), generator=g)
    x = torch.randn(N, 2, generator=g) * 0.5 + (2 * y[:, None] - 1) * 2.0  # blobs at -(2, 2) and (2, 2)
    model = CountingLinear()
    res = fit_classifier(model, x, y, epochs=3, batch_size=100, lr=0.1, patience=10,
                         generator=torch.Generator().manual_seed(3))
    assert res.epochs_run == 3
    # per epoch: 800 training rows, then 200 validation rows; plus one final pass over the 200
    assert model.rows["train"] == 3 * 800
    assert model.rows["eval"] == 3 * 200 + 200
    assert res.val_accuracy == pytest.approx(1.0)
    assert res.val_nll <= res.val_nll_uncalibrated + 1e-6  # calibration minimises the validation NLL
    assert res.temperature > 0 and not res.model.training
    # the same split as split_indices with the same generator: validation accuracy recomputed by hand
    _, va = split_indices(N, 0.2, torch.Generator().manual_seed(3))
    with torch.no_grad():
        acc = (res.model(x[va]).argmax(-1) == y[va]).float().mean().item()
    assert acc == pytest.approx(res.val_accuracy)
    with pytest.raises(ValueError, match="rows"):
        fit_classifier(CountingLinear(), x, y[:-1])


def test_fit_classifier_early_stopping_keeps_the_best_model():
    """Labels independent of x: validation loss soon stops improving; training stops `patience` epochs
    after the best epoch and the returned weights are that epoch's (their loss is the minimum seen)."""
    g = torch.Generator().manual_seed(4)
    N, patience = 400, 2
    x = torch.randn(N, 2, generator=g)
    y = torch.randint(0, 2, (N,), generator=g)
    _, va = split_indices(N, 0.2, torch.Generator().manual_seed(5))  # the split fit_classifier will draw
    losses = []

    class Recording(CountingLinear):
        def forward(self, xb):
            out = super().forward(xb)
            if not self.training:  # one validation pass of all 80 rows (batch_size >= 80)
                losses.append(F.cross_entropy(out, y[va]).item())
            return out

    res = fit_classifier(Recording(), x, y, epochs=200, batch_size=512, lr=0.5, patience=patience,
                         generator=torch.Generator().manual_seed(5))
    per_epoch, final = losses[:-1], losses[-1]
    assert len(per_epoch) == res.epochs_run < 200
    best = min(range(len(per_epoch)), key=per_epoch.__getitem__)
    assert res.epochs_run == best + 1 + patience
    assert final == pytest.approx(per_epoch[best], abs=1e-7)
    assert res.val_nll_uncalibrated == pytest.approx(per_epoch[best], abs=1e-7)
