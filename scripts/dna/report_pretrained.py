"""Sample the shipped pre-trained DNA model and measure it; writes the baseline samples.

    .venv/bin/python scripts/dna/report_pretrained.py [--num 512] [--steps 50] [--threads 1]
    .venv/bin/python scripts/dna/report_pretrained.py --steps 10     # the recipes' T

Writes domains/dna/weights/pretrained_samples_T<steps>.txt.gz (the baseline that motif enrichment
and the samples' ELBO are measured against: `domains.dna.build` picks the file drawn with its own
number of sampling steps T) and domains/dna/weights/pretrained_report_T<steps>.json with:
held-out (chr2) ELBO per sequence and per base, the ELBO of the model's own samples, 3-mer and
6-mer correlation of its samples with the training data, the oracle's class distribution over
its samples, and each cell line's known-motif hits per sequence in samples and in real data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import torch

from domains.dna.data import CELL_LINES, decode, load_dnase
from domains.dna.evaluate import CELL_TYPE_MOTIFS, load_motifs, motif_counts
from domains.dna.grelu_models import load_grelu, predict
from domains.dna.kmers import kmer_correlation
from domains.dna.model import VOCAB, load_denoiser
from rldiff.core.masked import MaskedPolicy
from rldiff.core.rollout import rollout

WEIGHTS = Path(__file__).resolve().parents[2] / "domains" / "dna" / "weights"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=512, help="samples to draw")
    ap.add_argument("--steps", type=int, default=50, help="sampling steps T (the domain's default)")
    ap.add_argument("--elbo-seqs", type=int, default=1000, help="chr2 sequences for the held-out ELBO")
    ap.add_argument("--elbo-samples", type=int, default=16, help="Monte Carlo times per sequence")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    den = load_denoiser(args.weights / "denoiser.safetensors")
    pol = MaskedPolicy(den, VOCAB, 200, args.steps)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        samples = torch.cat([pol.tokens(rollout(pol, min(128, args.num - s), generator=g, keep_states=False).x0)
                             for s in range(0, args.num, 128)])
    sample_minutes = (time.time() - t0) / 60
    train, test = load_dnase("train"), load_dnase("test")
    train_tok = train.tokens()
    elbo_g = torch.Generator().manual_seed(args.seed)
    test_tok = test.tokens()[torch.randperm(len(test), generator=elbo_g)[: args.elbo_seqs]]
    elbo_test = torch.cat([pol.elbo(test_tok[i : i + 250], num_samples=args.elbo_samples, generator=elbo_g)
                           for i in range(0, len(test_tok), 250)])
    elbo_self = torch.cat([pol.elbo(samples[i : i + 250], num_samples=args.elbo_samples, generator=elbo_g)
                           for i in range(0, len(samples), 250)])
    rep = {
        "command": "python scripts/dna/report_pretrained.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "num_samples": args.num, "sampling_steps": args.steps,
        "elbo_test_per_seq": float(elbo_test.mean()), "elbo_test_per_base": float(elbo_test.mean()) / 200,
        "elbo_test_sem_per_seq": float(elbo_test.std() / len(elbo_test) ** 0.5),
        "elbo_test_sequences": len(test_tok), "elbo_mc_samples": args.elbo_samples,
        "elbo_own_samples_per_seq": float(elbo_self.mean()),
        "kmer3_corr_train": kmer_correlation(samples, train_tok, 3),
        "kmer6_corr_train": kmer_correlation(samples, train_tok, 6),
        "kmer3_corr_test_vs_train": kmer_correlation(test_tok, train_tok, 3),
        "unique_fraction": len({tuple(r) for r in samples.tolist()}) / len(samples),
        "sample_minutes": sample_minutes,
    }
    for k, c in enumerate(CELL_LINES):
        rep[f"kmer3_corr_{c}"] = kmer_correlation(samples, train_tok[train.labels == k], 3)
    orc = WEIGHTS / "oracle.safetensors"
    if orc.is_file():
        pred = predict(load_grelu(orc), samples).argmax(-1)
        for k, c in enumerate(CELL_LINES):
            rep[f"oracle_fraction_{c}"] = float((pred == k).float().mean())
    motifs = load_motifs()
    seqs = decode(samples)
    counts = motif_counts(seqs, motifs)
    real = load_dnase("test")
    real_counts = motif_counts(real.sequences, motifs)
    for k, c in enumerate(CELL_LINES):
        tfs = CELL_TYPE_MOTIFS[c]
        rep[f"motif_hits_{c}_pretrained"] = float(sum(counts[t] for t in tfs).mean())
        rows = (real.labels == k).numpy()
        rep[f"motif_hits_{c}_real_{c}"] = float(sum(real_counts[t][rows] for t in tfs).mean())
        rep[f"motif_hits_{c}_real_others"] = float(sum(real_counts[t][~rows] for t in tfs).mean())
    samples_path = args.weights / f"pretrained_samples_T{args.steps}.txt.gz"
    tmp = samples_path.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
        fh.write(("\n".join(seqs) + "\n").encode())  # no name or time in the header: reproducible bytes
    tmp.replace(samples_path)
    report_path = args.weights / f"pretrained_report_T{args.steps}.json"
    report_path.with_suffix(".tmp").write_text(json.dumps(rep, indent=2) + "\n")
    report_path.with_suffix(".tmp").replace(report_path)
    print(json.dumps(rep, indent=2))
    return rep


if __name__ == "__main__":
    main()
