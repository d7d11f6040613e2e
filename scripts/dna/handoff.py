"""Which sampler steps of a fine-tuned CTRL policy carry its cell-type signal, and which its artefacts?

    .venv/bin/python scripts/dna/handoff.py RUN --at 10 8 7 [--samples 1024] [--out DIR]

Rebuilds a finished DNA CTRL run (its latest checkpoint, the parameter average if the run kept one)
and samples `--samples` sequences, labels spread over the cell lines, with the fine-tuned policy for
the first K sampler steps and the frozen pre-trained model for the remaining T - K (K = T: the run's
own sampler). Each K is scored by the domain's evaluation (held-out oracle accuracy, 3-mer r, motif
enrichment, ELBO) into `--out`/k<K>/ and summarised on one line. Used in docs/dna.md (session 8).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from domains.dna.data import CELL_LINES
from rldiff.config import load_recipe
from rldiff.train.trainer import load_run


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--at", type=int, nargs="+", required=True, help="K: fine-tuned steps before the hand-off")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="default: RUN/handoff")
    args = ap.parse_args(argv)
    config = load_recipe(args.run_dir / "config.yaml", []).config
    run = load_run(config, args.run_dir)
    torch.set_num_threads(args.threads)
    policy, own_step = run.algorithm.policy, run.algorithm.policy.step
    if not all(0 <= k <= policy.num_steps for k in args.at):
        raise SystemExit(f"--at: each K must be in [0, {policy.num_steps}]")
    out = args.out or args.run_dir / "handoff"
    results = {}
    for k in args.at:
        def step(x_t, i, cond=None, _k=k, **kw):
            return own_step(x_t, i, cond, **{**kw, "reference": kw.get("reference", False) or i >= _k})

        policy.step = step
        try:
            with run.ema.averaged() if run.ema is not None else contextlib.nullcontext(), torch.no_grad():
                samples = run.algorithm.sample(args.samples, torch.Generator().manual_seed(args.seed))
                (out / f"k{k}").mkdir(parents=True, exist_ok=True)
                m = {key: float(v) for key, v in run.domain.evaluate(samples, out / f"k{k}").items()}
        finally:
            policy.step = own_step
        (out / f"k{k}" / "metrics.json").write_text(json.dumps(m, indent=1))
        results[k] = m

        def row(key, m=m):
            return " / ".join(f"{m[f'{key}_{c}']:.2f}" for c in CELL_LINES)

        print(f"K = {k}: oracle accuracy {row('oracle_acc')} | 3-mer r {row('kmer3_corr')} | "
              f"motif enrichment {row('motif_enrichment')} | ELBO ratio {m['elbo_ratio']:.3f}", flush=True)
    return results


if __name__ == "__main__":
    main()
