"""gReLU models as CTRL classifiers p(cell line | x) and as held-out evaluation oracles.

A `grelu.lightning.LightningModel` (ConvModel / DilatedConvModel; never the pre-trained
Enformer, which downloads weights) holds the network, its loss and its prediction transforms.
It is trained here with `rldiff.core.classifier.fit_classifier` (80/20 split, early stopping,
temperature scaling) rather than a Lightning `Trainer`, which keeps training deterministic,
quiet and cheap on a CPU. Weights are saved as safetensors with the model's parameters in the
metadata; nothing is loaded through `load_from_checkpoint`.

Layout. gReLU takes one-hot DNA as [B, 4, L] with channels A, C, G, T
(`grelu.sequence.format.STANDARD_BASES`). The diffusion states are [B, L, 5] with the mask token
as the last channel; `to_grelu_input` drops that channel (and refuses a state that still has a
masked position, so the mask token never reaches a gReLU model) and transposes. Everything is a
differentiable tensor operation, so gradients flow from the model's output into the one-hot
input (straight-through Gumbel-softmax samples included).

Splits. The classifier and the oracle are trained on *disjoint* training chromosomes
(`CLASSIFIER_CHROMS` / `ORACLE_CHROMS`); both are scored on chr2 (test).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domains.dna.data import CELL_LINES, SequenceSet

#: Training chromosomes of the CTRL classifier and of the held-out oracle: disjoint halves.
CLASSIFIER_CHROMS: tuple[str, ...] = tuple(f"chr{i}" for i in range(3, 23, 2)) + ("chrX",)
ORACLE_CHROMS: tuple[str, ...] = tuple(f"chr{i}" for i in range(4, 23, 2)) + ("chrY",)

#: Defaults: a small ConvModel for the classifier, a DilatedConvModel for the oracle.
CLASSIFIER_ARCH: dict[str, Any] = {
    "model_type": "ConvModel", "stem_channels": 64, "stem_kernel_size": 15, "n_conv": 3,
    "channel_init": 64, "kernel_size": 5, "dilation_init": 1, "dilation_mult": 2, "act_func": "relu",
    "norm": True, "residual": True, "dropout": 0.1, "final_pool_func": "max",
}
ORACLE_ARCH: dict[str, Any] = {
    "model_type": "DilatedConvModel", "channels": 64, "stem_kernel_size": 21, "kernel_size": 3,
    "dilation_mult": 2, "n_conv": 6, "act_func": "relu", "crop_len": 0, "final_pool_func": "max",
}


def to_grelu_input(x: Tensor) -> Tensor:
    """Diffusion states or tokens -> gReLU's one-hot layout [B, 4, L] (A, C, G, T).

    Args:
        x: LongTensor tokens [B, L] in {0..3}, or float one-hot / straight-through [B, L, 4] or
           [B, L, 5] (the last channel is the mask token and must be zero everywhere).

    Raises:
        ValueError: a masked position (the mask token must never reach a gReLU model).
    """
    if x.dim() == 2:
        if x.numel() and (x.min() < 0 or x.max() > 3):
            raise ValueError("tokens must be in {0, 1, 2, 3}; a mask/N token cannot be scored by a gReLU model")
        x = F.one_hot(x.long(), 4).float()
    if x.dim() != 3 or x.shape[-1] not in (4, 5):
        raise ValueError(f"expected tokens [B, L] or one-hot [B, L, 4|5], got shape {tuple(x.shape)}")
    if x.shape[-1] == 5:
        if bool((x[..., 4].detach() > 0.5).any()):
            n = int((x[..., 4].detach() > 0.5).sum())
            raise ValueError(f"{n} masked positions reached a gReLU model; score only fully unmasked x0")
        x = x[..., :4]
    return x.transpose(1, 2).float()  # [B, 4, L]


def reverse_complement_one_hot(x: Tensor) -> Tensor:
    """Reverse complement of one-hot [B, L, 4] (ACGT order: complement = reversed channels)."""
    return x.flip(1).flip(2)


def build_lightning_model(n_tasks: int, task: str = "multiclass", arch: dict[str, Any] | None = None,
                          loss: str | None = None) -> Any:
    """A fresh `grelu.lightning.LightningModel`.

    Args:
        n_tasks: outputs (classes for "multiclass", activities for "regression").
        task: "multiclass" or "regression".
        arch: model_params (must include `model_type`, a class in `grelu.model.models`).
        loss: gReLU loss name (default "mse" for regression).
    """
    from grelu.lightning import LightningModel

    arch = dict(arch or CLASSIFIER_ARCH)
    if arch.get("model_type") in {"EnformerPretrainedModel", "BorzoiPretrainedModel"}:
        raise ValueError(f"{arch['model_type']} downloads weights; use ConvModel or DilatedConvModel")
    train = {"task": task, "logger": None, "checkpoint": False}
    if task == "regression":
        train["loss"] = loss or "mse"
    return LightningModel(model_params={**arch, "n_tasks": n_tasks}, train_params=train)


class GReLUClassifier(nn.Module):
    """p(y | x) from a gReLU LightningModel: x0 [B, L, 4|5] or tokens [B, L] -> calibrated logits [B, K].

    Args:
        lightning_model: a multiclass `LightningModel`.
        temperature: logits are divided by it (temperature scaling).
        label_names: class names in index order.
    """

    differentiable = True

    def __init__(self, lightning_model: Any, temperature: float = 1.0,
                 label_names: Sequence[str] = CELL_LINES, rc_average: bool = False) -> None:
        super().__init__()
        self.lm = lightning_model
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.label_names = tuple(label_names)
        self.rc_average = bool(rc_average)

    def raw_logits(self, x: Tensor) -> Tensor:
        """Uncalibrated logits [B, K] (with `rc_average`: the mean over x and its reverse complement)."""
        g = to_grelu_input(x)  # [B, 4, L]
        # cuDNN's RNN backward refuses eval mode; a recurrent model (ConvGRUModel) that a reward
        # differentiates through on a GPU therefore runs with cuDNN off (no effect on a CPU).
        with torch.backends.cudnn.flags(enabled=not (g.is_cuda and torch.is_grad_enabled())):
            out = self.lm(g, logits=True).mean(-1)  # [B, K]
            if self.rc_average:  # ACGT order: complement = reversed channels; then reverse the positions
                out = 0.5 * (out + self.lm(g.flip(1).flip(2), logits=True).mean(-1))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.raw_logits(x) / self.temperature

    def log_probs(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self(x), dim=-1)


class GReLURegressor(nn.Module):
    """Activities from a regression LightningModel: x0 [B, L, 4|5] or tokens -> [B, K]."""

    differentiable = True

    def __init__(self, lightning_model: Any, task_names: Sequence[str]) -> None:
        super().__init__()
        self.lm = lightning_model
        self.task_names = tuple(task_names)

    def forward(self, x: Tensor) -> Tensor:
        return self.lm(to_grelu_input(x)).mean(-1)  # [B, K]


# --------------------------------------------------------------------------- training
def train_classifier(data: SequenceSet, arch: dict[str, Any] | None = None, *, epochs: int = 20,
                     batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 1e-4, patience: int = 3,
                     seed: int = 0, rc_augment: bool = True, progress: bool = False,
                     schedule: str = "constant", label_smoothing: float = 0.0, rc_average: bool = False,
                     val_fraction: float = 0.2, warmup_epochs: float = 1.0,
                     max_minutes: float | None = None, log: Any = None) -> tuple[GReLUClassifier, dict]:
    """Train a temperature-calibrated gReLU classifier on (sequence, label) pairs.

    A random `val_fraction` split of `data` is held out for early stopping (validation NLL) and
    temperature scaling. With the defaults (constant learning rate, no label smoothing, no RC
    averaging) this is `rldiff.core.classifier.fit_classifier`. Otherwise a local loop runs AdamW
    with `schedule` "cosine" (linear warm-up over `warmup_epochs`, cosine decay to 0 at `epochs`)
    or "constant", cross-entropy with `label_smoothing`, reverse-complement augmentation, and (with
    `rc_average`) validates, calibrates and later predicts with logits averaged over both strands.
    `max_minutes` stops training after the first epoch that ends past that wall time.

    Returns:
        (classifier in eval mode, {"val_accuracy", "val_nll", "val_nll_uncalibrated", "temperature", "epochs"}).
    """
    if data.labels is None:
        raise ValueError(f"{data.source}: no labels to train a classifier on")
    torch.manual_seed(seed)
    K = len(data.label_names)
    lm = build_lightning_model(K, "multiclass", arch)
    clf = GReLUClassifier(lm, 1.0, data.label_names, rc_average=rc_average)
    x = data.one_hot(n="random", generator=torch.Generator().manual_seed(seed))  # [N, L, 4]

    def augment(xb: Tensor) -> Tensor:
        if not rc_augment:
            return xb
        flip = torch.rand(len(xb)) < 0.5
        return torch.where(flip[:, None, None], reverse_complement_one_hot(xb), xb)

    if (schedule == "constant" and label_smoothing == 0.0 and not rc_average and val_fraction == 0.2
            and max_minutes is None):
        from rldiff.core.classifier import fit_classifier

        res = fit_classifier(_RawLogits(clf), x, data.labels, epochs=epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, patience=patience,
                             generator=torch.Generator().manual_seed(seed), augment=augment, progress=progress)
        out = {"val_accuracy": res.val_accuracy, "val_nll": res.val_nll,
               "val_nll_uncalibrated": res.val_nll_uncalibrated, "temperature": res.temperature,
               "epochs": res.epochs_run}
    else:
        out = _fit_local(clf, x, data.labels, augment, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, patience=patience, seed=seed, schedule=schedule,
                         label_smoothing=label_smoothing, val_fraction=val_fraction,
                         warmup_epochs=warmup_epochs, max_minutes=max_minutes, log=log)
    clf.temperature.fill_(out["temperature"])
    clf.eval()
    return clf, out


def _fit_local(clf: GReLUClassifier, x: Tensor, y: Tensor, augment: Any, *, epochs: int, batch_size: int,
               lr: float, weight_decay: float, patience: int, seed: int, schedule: str, label_smoothing: float,
               val_fraction: float, warmup_epochs: float, max_minutes: float | None, log: Any) -> dict:
    """AdamW + optional warm-up/cosine schedule + label smoothing; best epoch by validation NLL."""
    import math
    import time

    from rldiff.core.classifier import EarlyStopping, calibrate_temperature, split_indices

    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    g = torch.Generator().manual_seed(seed)
    tr, va = split_indices(len(x), val_fraction, g)
    model = _RawLogits(clf)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(tr) / batch_size)
    total, warm = epochs * steps_per_epoch, max(1, int(warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        if schedule == "constant":
            return lr
        if step < warm:
            return lr * (step + 1) / warm
        return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    stopper, epoch, step, t0 = EarlyStopping(model, patience), 0, 0, time.time()
    history = []
    for epoch in range(epochs):
        model.train()
        order = tr[torch.randperm(len(tr), generator=g)]
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model(augment(x[idx])), y[idx].long(), label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        logits = _batched(model, x[va], 256)
        val_loss = F.cross_entropy(logits, y[va].long()).item()
        val_acc = (logits.argmax(-1) == y[va]).float().mean().item()
        history.append({"epoch": epoch + 1, "val_nll": val_loss, "val_accuracy": val_acc,
                        "minutes": (time.time() - t0) / 60})
        if log is not None:
            log(history[-1])
        if stopper.step(val_loss):
            break
        if max_minutes is not None and (time.time() - t0) / 60 > max_minutes:
            break
    stopper.restore()
    logits = _batched(model, x[va], 256)
    temp = calibrate_temperature(logits, y[va])
    return {"val_accuracy": (logits.argmax(-1) == y[va]).float().mean().item(),
            "val_nll": F.cross_entropy(logits / temp, y[va].long()).item(),
            "val_nll_uncalibrated": F.cross_entropy(logits, y[va].long()).item(), "temperature": temp,
            "epochs": epoch + 1, "best_epoch": min(history, key=lambda h: h["val_nll"])["epoch"]}


class _RawLogits(nn.Module):
    """Uncalibrated logits of a GReLUClassifier (what `fit_classifier` trains and calibrates)."""

    def __init__(self, clf: GReLUClassifier) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, x: Tensor) -> Tensor:
        return self.clf.raw_logits(x)


def train_regressor(data: SequenceSet, arch: dict[str, Any] | None = None, *, epochs: int = 20,
                    batch_size: int = 128, lr: float = 1e-3, patience: int = 3, seed: int = 0,
                    val_fraction: float = 0.2) -> tuple[GReLURegressor, dict]:
    """Train a gReLU regression oracle (MSE) on sequences with `activities` [N, K].

    Returns:
        (regressor in eval mode, {"val_mse", "val_pearson_<task>", "epochs"}).
    """

    from rldiff.core.classifier import EarlyStopping, split_indices

    if data.activities is None:
        raise ValueError(f"{data.source}: no activity columns to train a regression oracle on")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    K = data.activities.shape[1]
    reg = GReLURegressor(build_lightning_model(K, "regression", arch or ORACLE_ARCH), data.activity_names)
    x, y = data.one_hot(n="random", generator=g), data.activities.float()
    tr, va = split_indices(len(x), val_fraction, g)
    opt = torch.optim.AdamW(reg.parameters(), lr=lr)
    stopper, epoch = EarlyStopping(reg, patience), 0
    for epoch in range(epochs):
        reg.train()
        order = tr[torch.randperm(len(tr), generator=g)]
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            loss = F.mse_loss(reg.lm(to_grelu_input(x[idx]), logits=True).mean(-1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        pred = _batched(reg, x[va], batch_size)
        val = F.mse_loss(pred, y[va]).item()
        if stopper.step(val):
            break
    stopper.restore()
    reg.eval()
    pred = _batched(reg, x[va], batch_size)
    out = {"val_mse": F.mse_loss(pred, y[va]).item(), "epochs": epoch + 1}
    for k, name in enumerate(reg.task_names):
        out[f"val_pearson_{name}"] = float(torch.corrcoef(torch.stack([pred[:, k], y[va, k]]))[0, 1])
    return reg, out


@torch.no_grad()
def _batched(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Batched forward of a classifier / regressor without gradient ([N, K])."""
    return _batched(model, x, batch_size)


def accuracy_by_class(logits: Tensor, labels: Tensor, num_labels: int) -> dict[int, float]:
    """Accuracy of argmax(logits) per true class (NaN for a class with no rows)."""
    pred = logits.argmax(-1)
    return {k: float((pred[labels == k] == k).float().mean()) if (labels == k).any() else float("nan")
            for k in range(num_labels)}


# --------------------------------------------------------------------------- specificity
def specificity(predictions: Tensor, target: Tensor, compare: str = "subtract", off_aggfunc: str = "max") -> Tensor:
    """Target minus (or divided by) the aggregated off-target predictions, with gReLU's `Specificity`.

    Args:
        predictions: [B, K] model outputs (activities, log-probabilities, ...).
        target: LongTensor [B] index of the on-target task per row.
        compare: "subtract" or "divide".
        off_aggfunc: how off-targets are pooled ("max" = the largest off-target).

    Returns:
        [B] specificity per row (differentiable in `predictions`).
    """
    from grelu.transforms.prediction_transforms import Specificity

    K = predictions.shape[1]
    x = predictions.unsqueeze(-1)  # [B, K, 1]: gReLU's (batch, tasks, length) layout
    per_task = torch.stack(
        [Specificity(on_tasks=[k], off_tasks=[j for j in range(K) if j != k], off_aggfunc=off_aggfunc,
                     compare_func=compare)(x).reshape(-1) for k in range(K)],
        dim=1,
    )  # [B, K]
    return per_task.gather(1, target.long().view(-1, 1)).squeeze(1)


# --------------------------------------------------------------------------- I/O
def save_grelu(model: GReLUClassifier | GReLURegressor, path: str | Path, info: dict[str, Any] | None = None) -> None:
    """Save a gReLU classifier / regressor as safetensors; architecture and calibration in the metadata."""
    from safetensors.torch import save_file

    kind = "classifier" if isinstance(model, GReLUClassifier) else "regressor"
    names = model.label_names if kind == "classifier" else model.task_names
    meta = {
        "kind": kind,
        "model_params": json.dumps(model.lm.model_params, sort_keys=True),
        "task": model.lm.train_params["task"],
        "names": json.dumps(list(names)),
        "info": json.dumps(info or {}, sort_keys=True),
    }
    if kind == "classifier" and model.rc_average:
        meta["rc_average"] = "true"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def load_grelu(path: str | Path) -> GReLUClassifier | GReLURegressor:
    """Load a model saved by `save_grelu` (eval mode, parameters frozen)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gReLU model weights not found: {path}")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    missing = [k for k in ("kind", "model_params", "task", "names") if k not in meta]
    if missing:
        raise ValueError(f"{path}: safetensors metadata lacks {missing}; was it written by save_grelu?")
    params = json.loads(meta["model_params"])
    n_tasks = params.pop("n_tasks")
    names = json.loads(meta["names"])
    lm = build_lightning_model(n_tasks, meta["task"], params)
    if meta["kind"] == "classifier":
        model = GReLUClassifier(lm, 1.0, names, rc_average=meta.get("rc_average") == "true")
    else:
        model = GReLURegressor(lm, names)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def model_info(path: str | Path) -> dict[str, Any]:
    """The `info` dict stored with a saved gReLU model (training command, accuracies)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return json.loads((fh.metadata() or {}).get("info", "{}"))
