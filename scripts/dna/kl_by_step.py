"""Where along the sampler does a fine-tuned CTRL policy spend its KL? Per-step KL and reward by label.

    .venv/bin/python scripts/dna/kl_by_step.py runs/dna/ctrl_cell_type/<run> [--samples 128] [--seed 5]

Rebuilds the run from its `config.yaml`, loads its latest checkpoint (the parameter average when
the run used `train.ema_decay`), draws `--samples` trajectories with labels spread evenly over
the cell lines, and prints for each label the exact masked-position KL to the pre-trained model
of each of the T steps (step 0 = the all-mask start), their sum (the path KL the training log
reports) and the mean classifier log p(y | x) of the samples. Works for any CTRL run on a masked
domain.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from rldiff.config import load_recipe
from rldiff.train.trainer import load_run


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    config = load_recipe(args.run_dir / "config.yaml", []).config
    run = load_run(config, args.run_dir)
    domain, algorithm, ema = run.domain, run.algorithm, run.ema
    if not hasattr(algorithm, "make_cond"):
        raise SystemExit(f"{args.run_dir} is not a CTRL run ({config.algorithm['_component_']})")
    torch.set_num_threads(args.threads)  # after the build: the domain's `threads` may have set it
    generator = torch.Generator().manual_seed(args.seed)
    y = torch.arange(args.samples) % algorithm.num_labels
    with ema.averaged() if ema is not None else contextlib.nullcontext(), torch.no_grad():
        cond = algorithm.make_cond(y, generator)
        traj = algorithm._rollout(cond, len(y), generator, grad="none", kl="all", keep_states=False)
        reward = algorithm.reward(traj.x0, cond)
    names = list(getattr(domain, "label_names", range(algorithm.num_labels)))
    rows = []
    for k, name in enumerate(names):
        sel = y == k
        per_step = traj.kl[:, sel].mean(1)
        rows.append({"label": str(name), "kl_per_step": [round(float(v), 3) for v in per_step],
                     "kl_total": float(traj.kl[:, sel].sum(0).mean()), "reward": float(reward[sel].mean())})
        print(f"{name:>8}: KL per step " + " ".join(f"{v:.2f}" for v in per_step)
              + f" | total {rows[-1]['kl_total']:.2f} nats, mean log p(y|x) {rows[-1]['reward']:.3f}")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
