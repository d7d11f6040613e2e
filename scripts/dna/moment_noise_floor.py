"""The moment anchor's noise floor: what `moment_chi2` reads on batches drawn from its own target.

    .venv/bin/python scripts/dna/moment_noise_floor.py [--batches 32 64 128 1024] [--repeats 50]
        [--pool 16384] [--exponent 30] [--moment-exponent 3]

Builds CTRL's offline pool as the recipe `dna/ctrl_cell_type` does, then draws `--repeats` batches
per batch size exactly from the moment anchor's target (labels uniform, each row drawn by its label's
pool weights toward p_pre p(y | x)^moment-exponent) and evaluates `CTRL._moment_loss` on them, both
the batch chi-square (`forward_moment_unbiased=False`) and the pairs-of-rows U-statistic (`True`).
A policy that matched the target exactly would log these values: the batch chi-square's mean is
chi2(E q || m) + sum_j Var(q_j) / m_j, so it sits well above zero at small batches, while the
U-statistic's mean is zero there (the target estimated from the same pool). A training run's logged
`moment_chi2` is only informative above this floor.
"""

from __future__ import annotations

import argparse

import torch

from domains.dna.domain import build
from rldiff.algorithms.ctrl import CTRL


def floor(algo: CTRL, batch: int, repeats: int, seed: int) -> dict[bool, torch.Tensor]:
    """`moment_chi2` of `repeats` batches of `batch` rows drawn from the moment anchor's target, by
    estimator (False: batch chi-square, True: unbiased); tensors of shape [repeats]. `algo`'s own
    `forward_moment_unbiased` is left as it was."""
    g = torch.Generator().manual_seed(seed)
    weights = algo._moment_weights()  # [N, K]: the rows behind algo.forward_moments
    out: dict[bool, list[float]] = {False: [], True: []}
    setting = algo.forward_moment_unbiased
    try:
        for _ in range(repeats):
            y = torch.randint(algo.num_labels, (batch,), generator=g)
            idx = torch.multinomial(weights.T[y], 1, generator=g).squeeze(1)
            x0 = algo.policy.one_hot(algo.forward_x[idx]).to(algo.device)
            for unbiased in out:
                algo.forward_moment_unbiased = unbiased
                out[unbiased].append(float(algo._moment_loss(x0, y.to(algo.device))))
    finally:
        algo.forward_moment_unbiased = setting
    return {u: torch.tensor(v) for u, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 1024])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--pool", type=int, default=16384, help="CTRL's forward_pool")
    ap.add_argument("--exponent", type=float, default=30.0, help="CTRL's forward_exponent")
    ap.add_argument("--moment-exponent", type=float, default=3.0, help="CTRL's forward_moment_exponent")
    ap.add_argument("--k", type=int, default=3, help="CTRL's forward_moment_k")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    domain = build(num_steps=10, label_chroms="classifier")  # never the oracle's peaks
    algo = CTRL(domain, gamma=1.0, kl_weight=1.0, forward_weight=0.0, forward_moment_weight=1.0,
                forward_moment_k=args.k, forward_exponent=args.exponent,
                forward_moment_exponent=args.moment_exponent, forward_pool=args.pool)
    print(f"moment_chi2 of {args.repeats} batches drawn from the target (pool {args.pool}, "
          f"moments at e = {args.moment_exponent:g}, {args.k}-mers): mean +- sd")
    print("| batch | batch chi-square | unbiased (pairs of rows) |")
    print("|---|---|---|")
    for b in args.batches:
        v = floor(algo, b, args.repeats, args.seed)
        print(f"| {b} | {v[False].mean():.2f} +- {v[False].std():.2f} | {v[True].mean():.2f} +- {v[True].std():.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
