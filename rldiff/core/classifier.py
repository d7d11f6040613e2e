"""Training p(y | x) from offline (x, y) pairs: 80/20 split, early stopping, temperature scaling.

CTRL's reward is `gamma * log p(y | x)`, so the classifier's *calibration* matters, not only its
accuracy: an over-confident classifier acts like a larger gamma. Temperature scaling (Guo et al.
2017) fits one scalar T on the held-out 20% by minimizing the negative log-likelihood.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm


@dataclass
class FitResult:
    """Outcome of `fit_classifier`."""

    model: nn.Module  # best model (by validation loss), in eval mode
    temperature: float  # calibrated temperature T (use logits / T)
    val_accuracy: float
    val_nll: float  # NLL on the validation split after calibration
    val_nll_uncalibrated: float
    epochs_run: int


def split_indices(n: int, val_fraction: float = 0.2, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A random (train, val) split of range(n), default 80/20."""
    perm = torch.randperm(n, generator=generator)
    n_val = max(1, round(n * val_fraction))
    return perm[n_val:], perm[:n_val]


def calibrate_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 minimizing NLL(softmax(logits / T), labels) (LBFGS on log T)."""
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    logits, labels = logits.detach().float(), labels.detach().long()

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


class EarlyStopping:
    """Keep the best weights by validation loss; `step` says when `patience` epochs in a row brought
    no improvement. `restore` loads the best weights back."""

    def __init__(self, model: nn.Module, patience: int) -> None:
        self.model, self.patience = model, patience
        self.best_state, self.best_loss, self.bad = copy.deepcopy(model.state_dict()), float("inf"), 0

    def step(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True = stop now."""
        if val_loss < self.best_loss - 1e-6:
            self.best_loss, self.best_state, self.bad = val_loss, copy.deepcopy(self.model.state_dict()), 0
            return False
        self.bad += 1
        return self.bad >= self.patience

    def restore(self) -> nn.Module:
        self.model.load_state_dict(self.best_state)
        return self.model


def fit_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    val_fraction: float = 0.2,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    patience: int = 5,
    generator: torch.Generator | None = None,
    augment: callable | None = None,
    progress: bool = False,
) -> FitResult:
    """Train a classifier x -> logits with an 80/20 split, early stopping and temperature scaling.

    Args:
        model: maps x [N, ...] to logits [N, K].
        x, y: inputs and integer labels [N].
        val_fraction: held-out fraction for early stopping and calibration.
        epochs: maximum epochs.
        patience: stop after this many epochs without validation-loss improvement.
        generator: controls the split and the minibatch order.
        augment: optional function applied to each training minibatch of x.

    Returns:
        FitResult with the best model, its temperature and validation metrics.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    tr, va = split_indices(len(x), val_fraction, generator)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    stopper, epoch = EarlyStopping(model, patience), 0
    bar = tqdm(range(epochs), desc="classifier", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = tr[torch.randperm(len(tr), generator=generator)]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb = x[idx] if augment is None else augment(x[idx])
            loss = F.cross_entropy(model(xb), y[idx].long())
            opt.zero_grad()
            loss.backward()
            opt.step()
        val_loss = F.cross_entropy(_predict(model, x[va], batch_size), y[va].long()).item()
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        if stopper.step(val_loss):
            break
    stopper.restore().eval()
    logits = _predict(model, x[va], batch_size)
    temp = calibrate_temperature(logits, y[va])
    return FitResult(
        model=model,
        temperature=temp,
        val_accuracy=(logits.argmax(-1) == y[va]).float().mean().item(),
        val_nll=F.cross_entropy(logits / temp, y[va].long()).item(),
        val_nll_uncalibrated=F.cross_entropy(logits, y[va].long()).item(),
        epochs_run=epoch + 1,
    )


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
