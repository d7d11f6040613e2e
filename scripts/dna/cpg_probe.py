"""Do the gReLU classifier and the held-out oracle reward CpG dinucleotides?

    .venv/bin/python scripts/dna/cpg_probe.py [--num 1000] [--cpgs 3 6] [--shuffle]

Takes real chr1 sequences (seen by neither model), writes n CpGs at random positions into each,
and prints the mean change of log p(cell line | x) under the classifier and the oracle, next to a
control that rewrites the same number of random position pairs to random bases. Used in
docs/dna.md to tell classifier-specific reward hacking from a preference both models share.
With `--shuffle` it also scores dinucleotide-shuffled copies of the same sequences (gReLU's
`dinuc_shuffle`: every dinucleotide count, CpG included, kept; motifs destroyed): how much of each
model's call rests on composition rather than on the order of the bases.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import Tensor

from domains.dna.data import CELL_LINES, load_dnase
from domains.dna.domain import DEFAULT_CLASSIFIER, DEFAULT_ORACLE
from domains.dna.grelu_models import load_grelu, predict

C, G = 1, 2  # token indices (A, C, G, T)


def add_cpg(tokens: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Write n CpG dinucleotides at random positions of every sequence [N, L]."""
    out = tokens.clone()
    for row in out:
        pos = torch.randperm(out.shape[1] - 1, generator=generator)[:n]
        row[pos], row[pos + 1] = C, G
    return out


def rewrite_pairs(tokens: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Control: rewrite n random position pairs of every sequence to random bases."""
    out = tokens.clone()
    for row in out:
        pos = torch.randperm(out.shape[1] - 1, generator=generator)[:n]
        row[pos] = torch.randint(4, (n,), generator=generator)
        row[pos + 1] = torch.randint(4, (n,), generator=generator)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=1000, help="chr1 sequences to probe")
    ap.add_argument("--cpgs", type=int, nargs="+", default=[3, 6], help="CpGs written per sequence")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shuffle", action="store_true", help="also score dinucleotide-shuffled copies")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    val = load_dnase("validation")
    pick = torch.randperm(len(val), generator=g)[: args.num]
    x, y = val.tokens()[pick], val.labels[pick]
    models = {"classifier": load_grelu(DEFAULT_CLASSIFIER), "oracle": load_grelu(DEFAULT_ORACLE)}
    base = {k: torch.log_softmax(predict(m, x), -1) for k, m in models.items()}
    for n in args.cpgs:
        for name, edit in (("CpG", add_cpg), ("random pairs", rewrite_pairs)):
            xm = edit(x, n, g)
            parts = []
            for k, m in models.items():
                d = (torch.log_softmax(predict(m, xm), -1) - base[k]).mean(0)
                parts.append(f"{k} " + " ".join(f"{c}:{v:+.3f}" for c, v in zip(CELL_LINES, d.tolist())))
            print(f"+{n} {name:12s} mean d log p: " + " | ".join(parts), flush=True)
    if args.shuffle:
        shuffled = dinucleotide_shuffled(x, seed=0)
        for k, m in models.items():
            for name, logp in (("real", base[k]), ("dinuc-shuffled", torch.log_softmax(predict(m, shuffled), -1))):
                acc = [float((logp[y == c].argmax(-1) == c).float().mean()) for c in range(len(CELL_LINES))]
                print(f"{k:10s} {name:15s} accuracy " + " ".join(f"{c}:{a:.2f}" for c, a in zip(CELL_LINES, acc))
                      + f"  mean log p(y | x) {float(logp[torch.arange(len(y)), y].mean()):.2f}", flush=True)


def dinucleotide_shuffled(tokens: Tensor, seed: int = 0) -> Tensor:
    """gReLU's dinucleotide shuffle of token sequences [N, L] (A, C, G, T = 0..3)."""
    from grelu.sequence.utils import dinuc_shuffle

    one_hot = torch.nn.functional.one_hot(tokens.long(), 4).permute(0, 2, 1).float()  # [N, 4, L]
    return torch.as_tensor(np.asarray(dinuc_shuffle(one_hot, seed=seed))).argmax(1)


if __name__ == "__main__":
    main()
