"""Are high oracle confidence and natural 3-mer statistics in conflict on real DNA?

    .venv/bin/python scripts/dna/confident_kmers.py [--threshold 0.9] [--fasta RUN/eval/step_000200/samples.fasta]

For each cell line c, takes real chr2 test sequences (seen by neither gReLU model) and reports the
3-mer Pearson r with c's training sequences (the metric of `DNADomain.evaluate`) of 64-sequence
subsets (mean of 20 random subsets, the size an evaluation uses per cell line) of:
all real c sequences; real c sequences the held-out oracle calls c with p > threshold; and any real
sequence the oracle calls c with p > threshold. With --fasta (an evaluation's samples.fasta, headers
``target=<cell line>``) the generated sequences of each target are scored the same way. Every group
also gets its CpG dinucleotide frequency (per 100 dinucleotides). Used in docs/dna.md: if confident
real sequences keep r >= 0.9, a policy that is accurate but has low 3-mer r left the real-sequence
manifold rather than hitting an inherent trade-off.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from domains.dna.data import CELL_LINES, encode, load_dnase
from domains.dna.domain import DEFAULT_ORACLE
from domains.dna.grelu_models import load_grelu, predict
from domains.dna.kmers import kmer_correlation


def cpg_per_100(tokens: Tensor) -> float:
    """CpG dinucleotides per 100 adjacent pairs (A, C, G, T = 0..3)."""
    return float(((tokens[:, :-1] == 1) & (tokens[:, 1:] == 2)).float().mean() * 100)


def subset_r(x: Tensor, ref: Tensor, n: int, reps: int, generator: torch.Generator) -> float:
    """Mean 3-mer r with `ref` over `reps` random n-sequence subsets of x (all of x if it is smaller)."""
    rs = [kmer_correlation(x[torch.randperm(len(x), generator=generator)[:n]], ref, 3) for _ in range(reps)]
    return sum(rs) / len(rs)


def read_generated(path: str) -> dict[str, Tensor]:
    """Tokens per target cell line from an evaluation's samples.fasta."""
    from Bio import SeqIO

    by: dict[str, list[str]] = {}
    for rec in SeqIO.parse(path, "fasta"):
        fields = dict(kv.split("=", 1) for kv in rec.description.split()[1:] if "=" in kv)
        if "target" not in fields:
            raise ValueError(f"{path}: record {rec.id!r} has no target=<cell line> in its header")
        by.setdefault(fields["target"], []).append(str(rec.seq))
    return {c: encode(s, source=path) for c, s in by.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=0.9, help="oracle probability for 'confident'")
    ap.add_argument("--subset", type=int, default=64, help="sequences per subset (an evaluation's per cell line)")
    ap.add_argument("--reps", type=int, default=20, help="random subsets averaged")
    ap.add_argument("--fasta", default=None, help="generated samples.fasta to score the same way")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(args.seed)
    train, test = load_dnase("train"), load_dnase("test")
    train_tok, test_tok = train.tokens(), test.tokens()
    keep = ~(test_tok >= 4).any(1)  # drop sequences with N
    test_tok, labels = test_tok[keep], test.labels[keep]
    prob = predict(load_grelu(DEFAULT_ORACLE), test_tok).softmax(-1)
    generated = read_generated(args.fasta) if args.fasta else {}
    print(f"3-mer r of {args.subset}-sequence subsets with the cell line's training sequences "
          f"(mean of {args.reps}); n = sequences in the group; CpG per 100 dinucleotides")
    for k, c in enumerate(CELL_LINES):
        ref = train_tok[train.labels == k]
        groups = {
            f"real {c}": test_tok[labels == k],
            f"real {c}, oracle p({c}) > {args.threshold}": test_tok[(labels == k) & (prob[:, k] > args.threshold)],
            f"any real, oracle p({c}) > {args.threshold}": test_tok[prob[:, k] > args.threshold],
            f"training {c} (reference)": ref,
        }
        if c in generated:
            groups[f"generated for {c}"] = generated[c]
        for name, x in groups.items():
            r = subset_r(x, ref, args.subset, args.reps, g) if "reference" not in name else float("nan")
            print(f"  {name:<40} n = {len(x):>5}  r = {r:.3f}  CpG = {cpg_per_100(x):.2f}")


if __name__ == "__main__":
    main()
