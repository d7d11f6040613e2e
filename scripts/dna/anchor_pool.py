"""What CTRL's forward anchor pulls toward on DNA: its importance-weighted offline pool, scored.

    .venv/bin/python scripts/dna/anchor_pool.py [--exponents 1 70 100 200 400] [--pool 4096] [--num 256]

Builds the pool exactly as `CTRL(forward_weight > 0, forward_source="offline")` does (a fixed random
`--pool` rows of the CTRL classifier's training chromosomes, as the recipe sets; label k's rows
weighted by p_classifier(k | x)^(e - 1)), then for each exponent e draws `--num` sequences per cell line by those weights (with replacement, like
the anchor's batches) and reports the effective pool size (ESS), the held-out oracle's accuracy and
the 3-mer r with the cell line's training sequences (the metrics of `rldiff eval`). The anchor's
target is only as good as this: it shows which exponents give a pool that is both accurate and natural.
Note the 3-mer reference is training peaks of every chromosome, so about half of it lies on the pool's.
"""

from __future__ import annotations

import argparse

import torch

from domains.dna.data import CELL_LINES
from domains.dna.domain import build
from domains.dna.grelu_models import predict
from domains.dna.kmers import kmer_correlation
from rldiff.algorithms.ctrl import CTRL


def pool_draws(domain, exponent: float, pool: int, num: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`num` tokens per cell line drawn (with replacement) from CTRL's weighted offline pool at exponent
    `exponent`, and the pool's effective size per cell line (ESS)."""
    algo = CTRL(domain, gamma=1.0, kl_weight=1.0, forward_weight=1.0, forward_exponent=exponent, forward_pool=pool)
    g = torch.Generator().manual_seed(seed)
    draws = {c: algo.forward_x[torch.multinomial(algo.forward_weights[:, k], num, replacement=True, generator=g)]
             for k, c in enumerate(CELL_LINES)}
    return draws, algo.forward_ess


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exponents", type=float, nargs="+", default=[1, 70, 100, 200, 400])
    ap.add_argument("--pool", type=int, default=4096, help="CTRL's forward_pool")
    ap.add_argument("--num", type=int, default=256, help="sequences drawn per cell line")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    domain = build(num_steps=10, label_chroms="classifier")  # never the oracle's peaks
    real = domain.real_tokens()
    print(f"pool of {args.pool} training rows; {args.num} draws per cell line; oracle accuracy / 3-mer r / ESS")
    print("| exponent e | " + " | ".join(CELL_LINES) + " |")
    print("|---" * (len(CELL_LINES) + 1) + "|")
    for e in args.exponents:
        draws, ess = pool_draws(domain, e, args.pool, args.num, args.seed)
        cells = []
        for k, c in enumerate(CELL_LINES):
            acc = float((predict(domain.oracle, draws[c]).argmax(-1) == k).float().mean())
            cells.append(f"{acc:.2f} / {kmer_correlation(draws[c], real[k], 3):.2f} / {float(ess[k]):.0f}")
        print(f"| {e:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
