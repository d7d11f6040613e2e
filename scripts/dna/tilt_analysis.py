"""What would the exact CTRL target achieve with the shipped classifier? An importance-weighting check.

    .venv/bin/python scripts/dna/tilt_analysis.py [--gammas 1 2 5 10 20 50] [--split validation]
    .venv/bin/python scripts/dna/tilt_analysis.py --pool pretrained    # the model's own T = 10 samples
    .venv/bin/python scripts/dna/tilt_analysis.py --pool pretrained --draw 12288   # + 12,288 fresh ones

CTRL's target for cell line y is p(x | y) proportional to p_pre(x) p(y | x)^gamma. Taking real
held-out sequences (chr1 by default, seen by neither gReLU model) as a stand-in for samples of
p_pre (or, with `--pool pretrained`, the 2,048 shipped samples of p_pre itself drawn with the
recipes' T = 10, which makes the weighting a plain self-normalised importance-sampling estimate of
the target), the target is approximated by weighting each sequence with w_k(x) proportional to
p_classifier(k | x)^gamma (self-normalised importance sampling). For each gamma and cell line k this
prints the held-out oracle's accuracy, the 3-mer Pearson correlation with real training sequences of
k, the effective sample size of the weights, the target's KL to p_pre (nats, against the
empirical pool) and its mean log p_classifier(k | x) (what a converged run's logged KL and reward approach). It separates what the *objective* allows
(classifier-oracle agreement) from what a fine-tuning run reaches (optimisation, parameterisation).
"""

from __future__ import annotations

import argparse
import json

import torch

from domains.dna.data import CELL_LINES, decode, load_dnase
from domains.dna.domain import DEFAULT_CLASSIFIER, DEFAULT_ORACLE, default_baseline, read_baseline
from domains.dna.evaluate import CELL_TYPE_MOTIFS, load_motifs, motif_counts
from domains.dna.grelu_models import load_grelu, predict
from domains.dna.kmers import kmer_frequencies


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gammas", type=float, nargs="+", default=[1, 2, 5, 10, 20, 50])
    ap.add_argument("--split", default="validation", choices=["validation", "test"])
    ap.add_argument("--pool", default="real", choices=["real", "pretrained"],
                    help="real held-out sequences of --split, or the shipped T = 10 pre-trained samples")
    ap.add_argument("--draw", type=int, default=0,
                    help="with --pool pretrained: also draw this many fresh T = 10 samples of the shipped model "
                         "(seeded by --seed; ~2 s per 100 on two threads) to see whether the estimates move with the pool size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER))
    ap.add_argument("--oracle", default=str(DEFAULT_ORACLE))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--motifs", action="store_true",
                    help="also report the target's known-motif enrichment over the pool (FIMO on every pool "
                         "sequence; with --pool pretrained this is the main job's motif metric for the exact target)")
    args = ap.parse_args(argv)
    if args.draw and args.pool != "pretrained":
        ap.error("--draw adds pre-trained samples: use it with --pool pretrained")
    torch.set_num_threads(args.threads)
    parts = load_dnase().split()
    if args.pool == "real":
        pool = parts[args.split].tokens()  # [N, L]
    else:
        pool = read_baseline(default_baseline(10))
        if args.draw:
            from domains.dna.domain import build

            fresh = build(num_steps=10, oracle=None).sample_pretrained(
                args.draw, torch.Generator().manual_seed(args.seed), batch_size=256)
            pool = torch.cat([pool, fresh])
    train = parts["train"]
    real = {k: train.subset((train.labels == k).nonzero().flatten()[:2000]).tokens() for k in range(4)}
    lp_clf = torch.log_softmax(predict(load_grelu(args.classifier), pool), -1)  # [N, 4]
    oracle_call = predict(load_grelu(args.oracle), pool).argmax(-1)  # [N]
    idx = pool[:, :-2] * 16 + pool[:, 1:-1] * 4 + pool[:, 2:]  # 3-mer index per position
    counts = torch.zeros(len(pool), 64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float))
    hits = None
    if args.motifs:  # known motifs of each cell line per pool sequence, as `rldiff eval` counts them
        found = motif_counts(decode(pool), load_motifs(sorted({t for c in CELL_LINES for t in CELL_TYPE_MOTIFS[c]})))
        hits = {c: torch.tensor(sum(found[t] for t in CELL_TYPE_MOTIFS[c]), dtype=torch.float) for c in CELL_LINES}
    rows = []
    for g in args.gammas:
        for k, c in enumerate(CELL_LINES):
            w = torch.softmax(g * lp_clf[:, k], 0)  # [N] normalised p(k|x)^gamma
            f = (w[:, None] * counts).sum(0)
            rows.append({
                "gamma": g, "cell_line": c,
                "oracle_acc": float((w * (oracle_call == k).float()).sum()),
                "kmer3_corr": _corr(f / f.sum(), kmer_frequencies(real[k])),
                "ess": float(1 / (w**2).sum()),
                # KL(target || p_pre) in nats (against the empirical pool) and the target's mean
                # classifier log p(k | x): what a converged CTRL run's logged KL and reward should be
                "kl": float(torch.special.xlogy(w, w * len(w)).sum()),
                "reward": float((w * lp_clf[:, k]).sum()),
            })
            if hits is not None:  # the target's motif hits over the pool's (p_pre's) own
                rows[-1]["motif_enrichment"] = float(((w * hits[c]).sum() + 1e-3) / (hits[c].mean() + 1e-3))
        print(f"gamma {g:>5g}  " + "  ".join(
            f"{r['cell_line']}: acc {r['oracle_acc']:.2f} k3 {r['kmer3_corr']:.3f} ess {r['ess']:.0f} "
            f"KL {r['kl']:.2f} r {r['reward']:.2f}" + (f" motifs {r['motif_enrichment']:.2f}x" if hits else "")
            for r in rows[-4:]), flush=True)
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
