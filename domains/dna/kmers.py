"""k-mer statistics of DNA sequences (token tensors), used for sample-quality metrics."""

from __future__ import annotations

import torch
from torch import Tensor


def kmer_counts(tokens: Tensor, k: int = 3) -> Tensor:
    """Counts of all 4^k k-mers over a set of sequences.

    Args:
        tokens: LongTensor [N, L] over {0, 1, 2, 3} (A, C, G, T).
        k: k-mer length.

    Returns:
        FloatTensor [4^k] with the k-mer at index sum_j tokens[j] * 4^(k-1-j) (lexicographic
        order: AAA, AAC, ..., TTT).
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [N, L], got shape {tuple(tokens.shape)}")
    N, L = tokens.shape
    if L < k:
        raise ValueError(f"sequences of length {L} have no {k}-mers")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() > 3):
        raise ValueError("tokens must be in {0, 1, 2, 3} (A, C, G, T); masks/N are not allowed")
    idx = torch.zeros(N, L - k + 1, dtype=torch.long)
    for j in range(k):
        idx = idx * 4 + tokens[:, j : L - k + 1 + j].long()
    return torch.bincount(idx.flatten(), minlength=4**k).float()


def kmer_frequencies(tokens: Tensor, k: int = 3) -> Tensor:
    """k-mer counts normalised to sum to 1 ([4^k])."""
    c = kmer_counts(tokens, k)
    return c / c.sum().clamp(min=1)


def kmer_correlation(a: Tensor, b: Tensor, k: int = 3) -> float:
    """Pearson correlation between the k-mer frequency vectors of two sets of sequences."""
    fa, fb = kmer_frequencies(a, k).double(), kmer_frequencies(b, k).double()
    fa, fb = fa - fa.mean(), fb - fb.mean()
    denom = (fa.norm() * fb.norm()).clamp(min=1e-300)
    return float((fa * fb).sum() / denom)
