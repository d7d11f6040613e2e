"""Evaluation helpers shared by the image domains: label agreement, Frechet distance, diversity, grids, BRISQUE."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import f1_score
from torch import Tensor


def label_agreement(measured: Tensor, requested: Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, macro-F1 and per-class accuracy of measured labels against the requested ones.

    Args:
        measured: [N] labels an evaluator assigned to the samples.
        requested: [N] labels the samples were generated for.
        num_classes: K; per-class accuracy is reported for every requested class present.

    Returns:
        {"accuracy", "macro_f1", "acc_class_<k>" for each requested class k}.
    """
    m = measured.detach().cpu().long().numpy()
    r = requested.detach().cpu().long().numpy()
    if m.shape != r.shape:
        raise ValueError(f"measured labels have shape {m.shape} but requested labels {r.shape}")
    out = {
        "accuracy": float((m == r).mean()),
        # macro over the requested classes (labels=...), as in the CTRL paper's tables
        "macro_f1": float(f1_score(r, m, labels=sorted(set(r.tolist())), average="macro", zero_division=0)),
    }
    for k in range(num_classes):
        sel = r == k
        if sel.any():
            out[f"acc_class_{k}"] = float((m[sel] == k).mean())
    return out


def frechet_distance(feat_a: Tensor, feat_b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula).

    d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2}), computed in float64
    through a symmetric eigen-decomposition (exact for PSD covariances).

    Args:
        feat_a: [N, D] features; feat_b: [M, D] features (N, M >= 2).
    """
    a, b = feat_a.detach().double().cpu(), feat_b.detach().double().cpu()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two [N, D] feature sets with N >= 2 and equal D, got {tuple(a.shape)}, {tuple(b.shape)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    ev, vec = torch.linalg.eigh(s_a)
    sqrt_a = vec @ torch.diag(ev.clamp(min=0).sqrt()) @ vec.T
    m = sqrt_a @ s_b @ sqrt_a
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * tr_sqrt)


def mean_pairwise_distance(x: Tensor) -> float:
    """Mean Euclidean distance between distinct rows of x ([N, ...] flattened); 0 for N < 2."""
    f = x.detach().flatten(1).double()
    n = len(f)
    if n < 2:
        return 0.0
    d = torch.cdist(f, f)
    return float(d.sum() / (n * (n - 1)))


def within_class_diversity(x: Tensor, labels: Tensor) -> float:
    """Average over classes of the mean pairwise distance between samples of that class."""
    vals = [mean_pairwise_distance(x[labels == k]) for k in torch.unique(labels) if int((labels == k).sum()) >= 2]
    return float(np.mean(vals)) if vals else 0.0


def to_uint8(x: Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_grid(images: Tensor, path: str | Path, ncol: int = 10, scale: int = 4, pad: int = 2) -> Path:
    """Write images [N, C, H, W] in [-1, 1] as one PNG grid (nearest-neighbour upscaled).

    Returns:
        The written path.
    """
    arr = to_uint8(images)  # [N, H, W, C]
    n, h, w, c = arr.shape
    if n == 0:
        raise ValueError(f"no images to put in the grid {path}")
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    H, W = h * scale, w * scale
    canvas = np.full((nrow * (H + pad) + pad, ncol * (W + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        tile = arr[i].repeat(scale, 0).repeat(scale, 1)
        canvas[pad + r * (H + pad): pad + r * (H + pad) + H, pad + q * (W + pad): pad + q * (W + pad) + W] = tile
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_class_grids(images: Tensor, labels: Tensor, out_dir: str | Path, classes: Sequence[int],
                     per_class: int = 20, prefix: str = "grid") -> list[Path]:
    """One PNG per class (`<prefix>_y<k>.png`, up to `per_class` images) plus `<prefix>.png` with a row per class."""
    out_dir = Path(out_dir)
    paths, rows = [], []
    ncol = 10
    for k in classes:
        sel = images[labels == k][:per_class]
        if len(sel) == 0:
            continue
        paths.append(save_grid(sel, out_dir / f"{prefix}_y{k}.png", ncol=ncol))
        row = sel[:ncol]
        if len(row) < ncol:  # pad the overview row with blank (white) tiles
            row = torch.cat([row, torch.ones(ncol - len(row), *row.shape[1:], dtype=row.dtype)])
        rows.append(row)
    if rows:
        paths.append(save_grid(torch.cat(rows), out_dir / f"{prefix}.png", ncol=ncol))
    return paths


#: below this side length BRISQUE's two-scale statistics are computed on too few pixels to mean anything
BRISQUE_MIN_SIDE = 32


@functools.cache
def _brisque_model():
    """The `brisque` package's scorer with its bundled LIVE-trained SVM (no download).

    brisque 0.2.0 returns some features as 1-element arrays, which NumPy >= 2.4 no longer converts with
    float(); the subclass flattens them to scalars and changes nothing else.
    """
    with warnings.catch_warnings():  # brisque imports the deprecated scipy.ndimage.filters
        warnings.simplefilter("ignore", DeprecationWarning)
        from brisque import BRISQUE

    class _Brisque(BRISQUE):
        def calculate_brisque_features(self, image, kernel_size=7, sigma=7 / 6):
            feats = super().calculate_brisque_features(image, kernel_size=kernel_size, sigma=sigma)
            return np.array([np.asarray(f, dtype=np.float64).item() for f in feats])

    return _Brisque(url=False)


def brisque_scores(images: Tensor) -> np.ndarray:
    """BRISQUE of each image (no-reference quality; lower = better, ~0-100 for natural images).

    Computed by the `brisque` package (Mittal et al. 2012 features, its bundled SVM regressor trained on
    LIVE), on the 8-bit RGB view of the images. Args: images [N, C, H, W] in [-1, 1], C = 1 or 3.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"BRISQUE needs images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    if min(images.shape[-2:]) < BRISQUE_MIN_SIDE:
        raise ValueError(f"BRISQUE needs images at least {BRISQUE_MIN_SIDE}x{BRISQUE_MIN_SIDE} pixels, "
                         f"got {images.shape[-2]}x{images.shape[-1]}")
    model = _brisque_model()
    u8 = to_uint8(images.expand(-1, 3, -1, -1))
    return np.array([float(model.score(img)) for img in u8])


def brisque_score(images: Tensor) -> float:
    """Mean BRISQUE of a batch (see `brisque_scores`)."""
    return float(brisque_scores(images).mean())
