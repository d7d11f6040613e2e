"""How well does the gradient a straight-through estimator follows predict real base substitutions?

    .venv/bin/python scripts/dna/gradient_bias.py [--num 128] [--positions 6] [--threads 2]

CTRL Algorithm 2 on DNA differentiates log p(y | x) of the gReLU classifier at the sampled one-hot
sequence (straight-through, Gumbel-softmax, Gumbel-Rao: all first order). For `--num` shipped
pre-trained samples (T = 10) and `--positions` random positions in each, this scores every single-
base substitution x -> x' with the classifier and compares the real change of log p(y | x) with

- the first-order prediction the straight-through family uses, grad(x)[new] - grad(x)[old], and
- the trapezoid rule (grad(x) + grad(x'))[new] - [old], halved, which is exact for a function that is
  quadratic in the one-hot input and is what ReinMax (`relaxation: reinmax`) estimates in expectation.

Per cell line it prints, for substitutions to A / C / G / T, the mean real change and the two
predictions, and the correlation of each prediction with the real change over all substitutions.
A first-order prediction whose ranking of the four bases differs from the real one pushes a
policy's base composition the wrong way (docs/dna.md, session 8).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor

from domains.dna.data import CELL_LINES
from domains.dna.domain import DEFAULT_CLASSIFIER, default_baseline, read_baseline
from domains.dna.grelu_models import load_grelu


def log_prob_and_grad(classifier: torch.nn.Module, tokens: Tensor, label: int) -> tuple[Tensor, Tensor]:
    """log p(label | x) [N] and its gradient with respect to the one-hot input [N, L, 4]."""
    x = F.one_hot(tokens, 5).float().requires_grad_(True)  # the mask channel stays 0
    lp = torch.log_softmax(classifier(x), -1)[:, label]
    (grad,) = torch.autograd.grad(lp.sum(), x)
    return lp.detach(), grad[..., :4]


def substitution_table(classifier: torch.nn.Module, tokens: Tensor, label: int, positions: int,
                       generator: torch.Generator) -> dict[str, Tensor]:
    """Real and predicted changes of log p(label | x) for substitutions at random positions.

    Returns flat tensors over all (sequence, position, new base != old base): `new` (base index),
    `real`, `first_order` and `trapezoid`."""
    lp0, g0 = log_prob_and_grad(classifier, tokens, label)
    rows = torch.arange(len(tokens))
    out: dict[str, list[Tensor]] = {"new": [], "real": [], "first_order": [], "trapezoid": []}
    for _ in range(positions):
        pos = torch.randint(tokens.shape[1], (len(tokens),), generator=generator)
        old = tokens[rows, pos]
        for new in range(4):
            keep = old != new
            mutant = tokens.clone()
            mutant[rows, pos] = new
            lp1, g1 = log_prob_and_grad(classifier, mutant, label)
            first = g0[rows, pos, new] - g0[rows, pos, old]
            second = g1[rows, pos, new] - g1[rows, pos, old]
            out["new"].append(torch.full((int(keep.sum()),), new))
            out["real"].append((lp1 - lp0)[keep])
            out["first_order"].append(first[keep])
            out["trapezoid"].append(((first + second) / 2)[keep])
    return {k: torch.cat(v) for k, v in out.items()}


def corr(a: Tensor, b: Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=128, help="pre-trained samples scored")
    ap.add_argument("--positions", type=int, default=6, help="random positions substituted per sequence")
    ap.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    classifier = load_grelu(args.classifier).eval()
    for p in classifier.parameters():
        p.requires_grad_(False)
    tokens = read_baseline(default_baseline(10))[: args.num]
    generator = torch.Generator().manual_seed(args.seed)
    summary: dict[str, dict[str, float]] = {}
    for label, name in enumerate(CELL_LINES):
        t = substitution_table(classifier, tokens, label, args.positions, generator)
        cells = []
        for new, base in enumerate("ACGT"):
            sel = t["new"] == new
            cells.append(f"to {base}: real {t['real'][sel].mean():+.3f} first-order {t['first_order'][sel].mean():+.3f} "
                         f"trapezoid {t['trapezoid'][sel].mean():+.3f}")
        summary[name] = {"corr_first_order": corr(t["real"], t["first_order"]), "corr_trapezoid": corr(t["real"], t["trapezoid"])}
        print(f"{name:>8}: " + " | ".join(cells)
              + f" | r(real, first-order) {summary[name]['corr_first_order']:.2f}, r(real, trapezoid) {summary[name]['corr_trapezoid']:.2f}",
              flush=True)
    return summary


if __name__ == "__main__":
    main()
