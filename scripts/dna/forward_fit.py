"""Fit CTRL's target by maximum likelihood on importance-resampled pre-trained samples (a probe).

    .venv/bin/python scripts/dna/forward_fit.py [--gamma 20] [--pool 4096] [--steps 300]

CTRL's target for cell line y is p_pre(x) p(y | x)^gamma / Z. Instead of the reverse-KL fit of
Algorithms 1 / 2, this fits it *mass-covering*: draw `--pool` samples of the shipped pre-trained
model (T = 10), give each the self-normalised weight p_classifier(y | x)^gamma for every y, resample
(x, y) pairs by those weights (SIR), and train the CTRL-style conditional policy (zero-initialised
y-embedding + the domain's LoRA) with the MDLM loss on them (`rldiff.algorithms.cfg.CFG` with no
label dropout, sampled at w = 1). As the pool grows this minimises KL(target || policy), whose
optimum is CTRL's. Prints the held-out oracle metrics of 64 samples per cell line at `--eval-every`
and at the end, and writes them to `--out`/metrics.json.

It answers one question: does a mass-covering fit reach the target within a CPU budget? (Session 6:
no -- the target is only ~3.7 nats from p_pre, a few hundredths of a nat per position, so the MDLM
loss carries very little label signal per sample; see docs/dna.md.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from domains.dna.data import CELL_LINES
from domains.dna.domain import build
from domains.dna.grelu_models import predict
from rldiff.algorithms.cfg import CFG


def resample(pool: torch.Tensor, log_probs: torch.Tensor, gamma: float, per_label: int,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """SIR: `per_label` pool rows per label drawn with weights softmax(gamma log p(y | x)) over the pool.

    Returns (tokens [K * per_label, L], labels, effective sample size of each label's weights)."""
    w = torch.softmax(gamma * log_probs, 0)  # [N, K], each column sums to 1
    xs, ys = [], []
    for k in range(w.shape[1]):
        idx = torch.multinomial(w[:, k], per_label, replacement=True, generator=generator)
        xs.append(pool[idx])
        ys.append(torch.full((per_label,), k))
    perm = torch.randperm(w.shape[1] * per_label, generator=generator)
    return torch.cat(xs)[perm], torch.cat(ys)[perm], (1 / (w**2).sum(0)).tolist()


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gamma", type=float, default=20.0, help="target exponent (CTRL's gamma / kl_weight)")
    ap.add_argument("--pool", type=int, default=4096, help="pre-trained samples to importance-weight")
    ap.add_argument("--per-label", type=int, default=5000, help="resampled training pairs per cell line")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--embedding-lr", type=float, default=3e-2)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/dna/forward_fit")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    domain = build(num_steps=10)
    t0 = time.time()
    pool = domain.sample_pretrained(args.pool, torch.Generator().manual_seed(args.seed + 1), batch_size=256)
    log_probs = torch.log_softmax(predict(domain.classifier, pool), -1)
    g = torch.Generator().manual_seed(args.seed)
    x, y, ess = resample(pool, log_probs, args.gamma, args.per_label, g)
    print(f"pool of {args.pool} drawn in {time.time() - t0:.0f} s; effective sample size per cell line "
          + ", ".join(f"{c} {e:.0f}" for c, e in zip(CELL_LINES, ess)), flush=True)
    domain.offline_data = lambda split="train": (x, y)  # the resampled pairs are CFG's labelled data
    algo = CFG(domain, guidance_scale=1.0, p_uncond=0.0, batch_size=args.batch_size, lr=args.lr,
               embedding_lr=args.embedding_lr)
    metrics: dict[str, float] = {}
    for step in range(1, args.steps + 1):
        loss = algo.update(step, g)["loss"]
        if step % 25 == 0:
            print(f"update {step}: MDLM loss {loss:.4f} ({time.time() - t0:.0f} s)", flush=True)
        if step == args.steps or (args.eval_every and step % args.eval_every == 0):
            samples = algo.sample(256, torch.Generator().manual_seed(123))
            metrics = domain.evaluate(samples, out / f"step_{step:06d}")
            print(f"update {step}: " + "; ".join(
                f"{key} " + " / ".join(f"{metrics[f'{key}_{c}']:.2f}" for c in CELL_LINES)
                for key in ("oracle_acc", "kmer3_corr", "motif_enrichment")), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"args": vars(args), "ess": ess, **metrics}, indent=1))
    return metrics


if __name__ == "__main__":
    main()
