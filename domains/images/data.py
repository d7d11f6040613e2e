"""The embedded digits data: scikit-learn's 1,797 bundled 8x8 digits, upsampled to 16x16 in [-1, 1].

The digits are split once, by a fixed seed, into two disjoint parts:

- ``"train"`` (1,197 images): pre-training of the diffusion model and the CTRL reward classifier
  p(y | x) (which `rldiff.core.classifier.fit_classifier` splits 80/20 again);
- ``"heldout"`` (600 images): the *independent* evaluation classifier and the real-data reference
  set of the FID-like distance. Nothing trained for generation ever sees these images.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Fixed seed of the train / held-out split (changing it invalidates the shipped weights).
SPLIT_SEED = 0
#: Size of the held-out split.
NUM_HELDOUT = 600
#: Side of the upsampled images.
IMAGE_SIZE = 16

Split = Literal["train", "heldout", "all"]


def upsample_digits(images: np.ndarray | Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """8x8 digit intensities in [0, 16] -> [N, 1, size, size] float32 in [-1, 1] (bilinear)."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


def split_indices() -> dict[str, np.ndarray]:
    """The fixed, disjoint index sets of the "train" and "heldout" splits (sorted)."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(1797)
    return {"heldout": np.sort(perm[:NUM_HELDOUT]), "train": np.sort(perm[NUM_HELDOUT:])}


def load_digits(split: Split = "train", size: int = IMAGE_SIZE) -> tuple[Tensor, Tensor]:
    """Digits of one split.

    Args:
        split: "train", "heldout" or "all".
        size: output side length.

    Returns:
        (x [N, 1, size, size] in [-1, 1], y [N] long digit labels).
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    data = _sk_load_digits()
    if split == "all":
        idx = np.arange(len(data.target))
    elif split in ("train", "heldout"):
        idx = split_indices()[split]
    else:
        raise ValueError(f"unknown digits split {split!r}; valid: 'train', 'heldout', 'all'")
    x = upsample_digits(data.images[idx], size)  # [N, 1, size, size]
    y = torch.as_tensor(data.target[idx], dtype=torch.long)  # [N]
    return x, y


def label_subset(y: Tensor, num_labels: int, seed: int = 0) -> Tensor:
    """Indices of a class-balanced subset of `num_labels` labelled examples (for label-budget studies).

    Args:
        y: [N] labels.
        num_labels: how many labelled examples to keep (<= N); classes get equal shares (+-1).
        seed: which subset.

    Returns:
        [num_labels] sorted indices into y.
    """
    if not 1 <= num_labels <= len(y):
        raise ValueError(f"num_labels must be in [1, {len(y)}], got {num_labels}")
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    per_class = [(y == c).nonzero().flatten() for c in classes]
    per_class = [p[torch.randperm(len(p), generator=g)] for p in per_class]
    picked, k = [], 0
    while len(picked) < num_labels:  # round-robin over classes
        for p in per_class:
            if k < len(p) and len(picked) < num_labels:
                picked.append(int(p[k]))
        k += 1
    return torch.tensor(sorted(picked), dtype=torch.long)
