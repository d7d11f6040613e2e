"""Are a run's samples copies of training peaks? Hamming distance to the nearest offline peak.

    .venv/bin/python scripts/dna/nearest_peak.py RUN [RUN ...] [--chroms classifier|all]

For each RUN (a finished DNA run; its latest `eval/step_*/samples.fasta`, headers
``target=<cell line>``) and cell line: the smallest, median and 5th-percentile Hamming distance
(of 200) from each generated sequence to its nearest row of the offline training peaks -- by
default the CTRL classifier's chromosomes, the forward anchor's pool. Two random 200 bp sequences
differ at ~150 positions; a generator that memorised its training peaks would show distances near 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from domains.dna.data import CELL_LINES
from domains.dna.domain import build


def nearest_distances(samples: torch.Tensor, peaks: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Hamming distance from each sample [N, L] to its nearest peak [M, L] (token ids): [N]."""
    return torch.cat([(s[:, None, :] != peaks[None]).sum(-1).min(1).values for s in samples.split(chunk)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--chroms", choices=["classifier", "all"], default="classifier")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from composition import latest_samples  # same folder
    from confident_kmers import read_generated

    domain = build(num_steps=10, label_chroms=None if args.chroms == "all" else "classifier")
    peaks = domain.offline_data("train")[0].long()
    print(f"nearest of {len(peaks)} training peaks ({args.chroms} chromosomes): min / 5% / median Hamming distance of 200")
    print("| run | " + " | ".join(CELL_LINES) + " |")
    print("|---" * (len(CELL_LINES) + 1) + "|")
    for run in args.runs:
        generated = read_generated(str(latest_samples(run)))
        cells = []
        for c in CELL_LINES:
            d = nearest_distances(generated[c], peaks).float()
            cells.append(f"{int(d.min())} / {float(d.quantile(0.05)):.0f} / {float(d.median()):.0f}")
        print(f"| {run} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
