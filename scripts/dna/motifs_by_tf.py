"""Known-motif hits per TF: pre-trained samples, CTRL's weighted pool (the anchors' target), and runs.

    .venv/bin/python scripts/dna/motifs_by_tf.py [RUN ...] [--exponent 30] [--pool 16384] [--num 1024]

The evaluation's motif enrichment pools each cell line's known TFs (`CELL_TYPE_MOTIFS`). This
splits it: for each cell line and each of its TFs, FIMO hits per sequence (the evaluation's
`motif_counts`, p < 1e-4, both strands) in the shipped pre-trained samples (T = 10), in `--num`
draws from the weighted offline pool that CTRL's anchors use at exponent e (built as
`CTRL(forward_source="offline", forward_exponent=e, forward_pool=...)` builds it: rows of the
classifier's chromosomes, label k's weighted by p(k | x)^(e - 1)), and in each RUN's final samples
for that cell line (latest `eval/step_*/samples.fasta`). A policy whose enrichment is short of its
target's shows here which motifs it did not learn (docs/dna.md, session 13).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from domains.dna.data import CELL_LINES, decode
from domains.dna.domain import build, default_baseline, read_baseline
from domains.dna.evaluate import CELL_TYPE_MOTIFS, load_motifs, motif_counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--exponent", type=float, default=30.0, help="the pool's exponent e (the recipe's forward_exponent)")
    ap.add_argument("--pool", type=int, default=16384, help="CTRL's forward_pool")
    ap.add_argument("--num", type=int, default=1024, help="pool draws per cell line")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from anchor_pool import pool_draws  # same folder
    from composition import latest_samples
    from confident_kmers import read_generated

    domain = build(num_steps=10, label_chroms="classifier")  # never the oracle's peaks
    motifs = load_motifs()
    pretrained = motif_counts(decode(read_baseline(default_baseline(10))), motifs)  # one column for every cell line
    columns = {f"pool, e = {args.exponent:g}": pool_draws(domain, args.exponent, args.pool, args.num, args.seed)[0]}
    for run in args.runs:
        columns[str(run)] = read_generated(str(latest_samples(run)))
    print("known-motif FIMO hits per sequence (p < 1e-4, both strands)")
    print("| cell line | TF | pre-trained (T = 10) | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 3) + "|")
    for c in CELL_LINES:
        counts = [pretrained] + [motif_counts(decode(col[c]), motifs) for col in columns.values()]
        for tf in CELL_TYPE_MOTIFS[c]:
            print(f"| {c} | {tf} | " + " | ".join(f"{float(n[tf].mean()):.3f}" for n in counts) + " |", flush=True)


if __name__ == "__main__":
    main()
