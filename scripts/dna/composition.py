"""Base composition of generated sequences against real ones and against CTRL's exact target.

    .venv/bin/python scripts/dna/composition.py [RUN ...] [--exponents 0 20 70] [--threads 2]

For each RUN (a finished DNA run; its latest `eval/step_*/samples.fasta`, headers
``target=<cell line>``) and each requested cell line: GC fraction, CpG dinucleotides per 100
adjacent pairs, the 3-mer Pearson r with the real training sequences of that cell line (the
evaluation's metric), the same r over the 3-mers without a CpG, and the three most over- and
under-represented 3-mers (generated / real frequency).

`--exponents` also reports the same statistics for CTRL's target p_pre(x) p(y | x)^e, estimated by
self-normalised importance weights on the shipped 2,048 pre-trained samples (T = 10; e = 0 is the
pre-trained model itself): where a policy's composition moves away from real sequences while the
target's does not, the policy has not found the target (docs/dna.md, session 8).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from torch import Tensor

from domains.dna.data import CELL_LINES, load_dnase
from domains.dna.domain import DEFAULT_CLASSIFIER, default_baseline, read_baseline
from domains.dna.grelu_models import load_grelu, predict
from domains.dna.kmers import kmer_counts

KMERS = ["".join(p) for p in itertools.product("ACGT", repeat=3)]
HAS_CPG = torch.tensor(["CG" in k for k in KMERS])


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def stats(freq: Tensor, gc: float, cpg: float, real: Tensor) -> str:
    """One line: GC, CpG per 100, 3-mer r (all / without CpG 3-mers), most over / under 3-mers."""
    ratio = freq / real
    order = ratio.argsort()
    over = " ".join(f"{KMERS[j]} {ratio[j]:.2f}" for j in order[-3:].flip(0))
    under = " ".join(f"{KMERS[j]} {ratio[j]:.2f}" for j in order[:3])
    return (f"GC {gc:.3f}  CpG/100 {cpg:.2f}  3-mer r {pearson(real, freq):.3f} (no CpG 3-mers "
            f"{pearson(real[~HAS_CPG], freq[~HAS_CPG]):.3f})  over: {over}  under: {under}")


def composition(tokens: Tensor, weights: Tensor | None = None) -> tuple[Tensor, float, float]:
    """(3-mer frequencies [64], GC fraction, CpG per 100 pairs) of tokens [N, L], optionally weighted."""
    w = torch.full((len(tokens),), 1.0 / len(tokens)) if weights is None else weights / weights.sum()
    counts = torch.stack([kmer_counts(t[None]) for t in tokens])  # [N, 64]
    freq = (w[:, None] * counts).sum(0)
    gc = float((w * ((tokens == 1) | (tokens == 2)).float().mean(1)).sum())
    cpg = float((w * ((tokens[:, :-1] == 1) & (tokens[:, 1:] == 2)).float().mean(1)).sum() * 100)
    return freq / freq.sum(), gc, cpg


def latest_samples(run: Path) -> Path:
    found = sorted((run / "eval").glob("step_*/samples.fasta"))
    if not found:
        raise SystemExit(f"{run}: no eval/step_*/samples.fasta (was the run evaluated?)")
    return found[-1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--exponents", type=float, nargs="*", default=[0.0, 20.0, 70.0],
                    help="target exponents gamma / kl_weight to estimate on the pre-trained pool")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from confident_kmers import read_generated  # same folder

    data = load_dnase("train")
    tokens = data.tokens()
    real = {}
    for k, name in enumerate(CELL_LINES):
        freq, gc, cpg = composition(tokens[data.labels == k])
        real[name] = freq
        print(f"real {name:>8}: GC {gc:.3f}  CpG/100 {cpg:.2f}")
    for run in args.runs:
        generated = read_generated(str(latest_samples(run)))
        print(f"\n{run}")
        for name in CELL_LINES:
            if name in generated:
                freq, gc, cpg = composition(generated[name])
                print(f"  {name:>8}: " + stats(freq, gc, cpg, real[name]))
    if args.exponents:
        pool = read_baseline(default_baseline(10))
        log_probs = torch.log_softmax(predict(load_grelu(str(DEFAULT_CLASSIFIER)), torch.nn.functional.one_hot(pool, 5).float()), -1)
        for e in args.exponents:
            w = torch.softmax(e * log_probs, 0)  # [N, K] self-normalised target weights per cell line
            ess = (1 / (w**2).sum(0)).tolist()
            print(f"\ntarget p_pre(x) p(y|x)^{e:g} on {len(pool)} pre-trained samples (ESS "
                  + " / ".join(f"{v:.0f}" for v in ess) + ")")
            for k, name in enumerate(CELL_LINES):
                freq, gc, cpg = composition(pool, w[:, k])
                print(f"  {name:>8}: " + stats(freq, gc, cpg, real[name]))


if __name__ == "__main__":
    main()
