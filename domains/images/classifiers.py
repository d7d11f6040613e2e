"""Digit classifiers p(y | x) on 16x16 images: CTRL's reward model and the independent judge.

Two classifiers, trained on disjoint data (see `domains.images.data`):

- the **reward** classifier (`digits_classifier`): trained on the "train" split with
  `rldiff.core.classifier.fit_classifier` (80/20 split, early stopping, temperature scaling);
  CTRL maximises gamma * log p(y | x) under it.
- the **evaluation** classifier (`digits_eval_classifier`): a wider network trained only on the
  "heldout" split and never used in training; it measures accuracy / macro-F1 of generated digits
  and provides the feature space of the FID-like distance.

    nice python -m domains.images.classifiers --out domains/images/weights/digits
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from domains.images.data import label_subset, load_digits
from rldiff.core.classifier import fit_classifier


class DigitsCNN(nn.Module):
    """A small CNN: [B, 1, 16, 16] in [-1, 1] -> logits [B, num_classes]; `features` = penultimate layer.

    Args:
        width: channels of the first conv block (the second has 2x).
        hidden: width of the penultimate (feature) layer.
        num_classes: number of classes.
        dropout: dropout before the last layer.
    """

    def __init__(self, width: int = 32, hidden: int = 128, num_classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        self.config = {"width": width, "hidden": hidden, "num_classes": num_classes, "dropout": dropout}
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),  # 8x8
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),  # 4x4
            nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.GELU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """[B, hidden] penultimate activations."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Calibrated(nn.Module):
    """logits / temperature of a wrapped classifier (temperature from `fit_classifier`)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def features(self, x: Tensor) -> Tensor:
        return self.model.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature


def shift_augment(x: Tensor, max_shift: int = 1, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """Random translation by up to `max_shift` pixels (zero-padding at -1) plus Gaussian noise."""
    B, _, H, W = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator)
    out = torch.stack([pad[b, :, dy[b]:dy[b] + H, dx[b]:dx[b] + W] for b in range(B)])
    return out + noise * torch.randn(out.shape, generator=generator)


#: (file stem, architecture, data split, seed) of the two shipped classifiers.
CLASSIFIERS: dict[str, dict[str, Any]] = {
    "digits_classifier": {"arch": {"width": 32, "hidden": 128}, "split": "train", "seed": 1},
    "digits_eval_classifier": {"arch": {"width": 48, "hidden": 192}, "split": "heldout", "seed": 2},
}


def train_digits_classifier(name: str, epochs: int = 100, patience: int = 15) -> tuple[Calibrated, dict[str, float]]:
    """Train one of CLASSIFIERS on its split; report its accuracy on the *other* split too.

    Returns:
        (calibrated classifier in eval mode, metrics dict).
    """
    spec = CLASSIFIERS[name]
    torch.manual_seed(spec["seed"])
    g = torch.Generator().manual_seed(spec["seed"])
    x, y = load_digits(spec["split"])
    other = "heldout" if spec["split"] == "train" else "train"
    model = DigitsCNN(**spec["arch"])
    res = fit_classifier(model, x, y, epochs=epochs, patience=patience, lr=2e-3, weight_decay=1e-4, generator=g,
                         augment=lambda xb: shift_augment(xb, generator=g))
    clf = Calibrated(res.model, res.temperature).eval()
    xo, yo = load_digits(other)
    with torch.no_grad():
        acc_other = (clf(xo).argmax(-1) == yo).float().mean().item()
    metrics = {"temperature": res.temperature, "val_accuracy": res.val_accuracy, "val_nll": res.val_nll,
               "val_nll_uncalibrated": res.val_nll_uncalibrated, "epochs_run": res.epochs_run,
               f"accuracy_on_{other}_split": acc_other, "trained_on": spec["split"]}
    return clf, metrics


def train_budget_classifier(num_labels: int, label_seed: int = 0, epochs: int = 200,
                            patience: int = 15) -> tuple[Calibrated, dict[str, float]]:
    """The reward classifier's recipe (architecture, seed, optimiser, augmentation) trained on only
    `num_labels` labelled digits of the "train" split (`label_subset(y, num_labels, label_seed)`),
    for label-budget studies. Nothing of the held-out split is used.

    `fit_classifier` keeps 20% of the budget for early stopping and the temperature; the minibatch
    is at most 1/8 of the remaining examples (>= 16), so small budgets still get several updates per
    epoch.

    Returns:
        (calibrated classifier in eval mode, metrics dict; `num_labels`, `label_seed` included).
    """
    spec = CLASSIFIERS["digits_classifier"]
    x, y = load_digits("train")
    idx = label_subset(y, num_labels, label_seed)
    x, y = x[idx], y[idx]
    torch.manual_seed(spec["seed"])
    g = torch.Generator().manual_seed(spec["seed"])
    n_fit = len(x) - max(1, round(0.2 * len(x)))
    batch = min(128, max(16, math.ceil(n_fit / 8)))
    res = fit_classifier(DigitsCNN(**spec["arch"]), x, y, epochs=epochs, patience=patience, lr=2e-3,
                         weight_decay=1e-4, batch_size=batch, generator=g,
                         augment=lambda xb: shift_augment(xb, generator=g))
    clf = Calibrated(res.model, res.temperature).eval()
    metrics = {"temperature": res.temperature, "val_accuracy": res.val_accuracy, "val_nll": res.val_nll,
               "val_nll_uncalibrated": res.val_nll_uncalibrated, "epochs_run": res.epochs_run,
               "batch_size": batch, "trained_on": "train", "num_labels": num_labels, "label_seed": label_seed}
    return clf, metrics


class NoisyDigitsCNN(nn.Module):
    """p(y | x_t, t) for classifier guidance: `DigitsCNN`'s convolutions with a per-channel bias from
    sinusoidal features of t added after every convolution (no dropout, so guidance is deterministic).

    Args:
        width, hidden, num_classes: as `DigitsCNN`.
        num_train_steps: the diffusion model's training timesteps (t in [0, num_train_steps)).
        time_dim: sinusoidal features of t.
    """

    def __init__(self, width: int = 32, hidden: int = 128, num_classes: int = 10, num_train_steps: int = 1000,
                 time_dim: int = 32) -> None:
        super().__init__()
        self.num_train_steps, self.time_dim = num_train_steps, time_dim
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.GELU())
        chans = (width, width, 2 * width)
        self.convs = nn.ModuleList([nn.Conv2d(1, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1),
                                    nn.Conv2d(width, 2 * width, 3, padding=1)])
        self.time_bias = nn.ModuleList([nn.Linear(hidden, c) for c in chans])
        self.pool = (False, True, True)  # 16 -> 16 -> 8 -> 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.GELU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=x_t.device) / half)
        ang = (t.float().to(x_t.device) * (1000.0 / self.num_train_steps))[:, None] * freqs[None]
        temb = self.time(torch.cat([ang.sin(), ang.cos()], -1))  # [B, hidden]
        h = x_t
        for conv, bias, pool in zip(self.convs, self.time_bias, self.pool):
            h = F.gelu(conv(h) + bias(temb)[:, :, None, None])
            if pool:
                h = F.avg_pool2d(h, 2)
        return self.head(h)


def save_classifier(clf: Calibrated, path: Path, metrics: dict[str, Any]) -> None:
    """Write `<path>.safetensors` (weights) and `<path>.json` (architecture, temperature, metrics)."""
    save_file({k: v.contiguous() for k, v in clf.model.state_dict().items()}, str(path) + ".safetensors")
    meta = {"arch": clf.model.config, "temperature": clf.temperature, "metrics": metrics}
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=1))


def load_classifier(path: str | Path) -> Calibrated:
    """Load a classifier saved by `save_classifier` (`path` without extension)."""
    base = Path(path)
    meta_path, weights_path = Path(str(base) + ".json"), Path(str(base) + ".safetensors")
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"classifier file {p} is missing; make it with "
                                    "`python -m domains.images.classifiers --out DIR`")
    meta = json.loads(meta_path.read_text())
    model = DigitsCNN(**meta["arch"])
    model.load_state_dict(load_file(str(weights_path)))
    return Calibrated(model, meta["temperature"]).eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write <name>.safetensors / <name>.json into")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in CLASSIFIERS:
        clf, metrics = train_digits_classifier(name)
        save_classifier(clf, out / name, metrics)
        print(name, json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
