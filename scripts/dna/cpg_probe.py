"""Do the gReLU classifier and the held-out oracle reward CpG dinucleotides?

    .venv/bin/python scripts/dna/cpg_probe.py [--num 1000] [--cpgs 3 6]

Takes real chr1 sequences (seen by neither model), writes n CpGs at random positions into each,
and prints the mean change of log p(cell line | x) under the classifier and the oracle, next to a
control that rewrites the same number of random position pairs to random bases. Used in
docs/dna.md to tell classifier-specific reward hacking from a preference both models share.
"""

from __future__ import annotations

import argparse

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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    val = load_dnase("validation")
    x = val.tokens()[torch.randperm(len(val), generator=g)[: args.num]]
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


if __name__ == "__main__":
    main()
