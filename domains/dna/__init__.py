"""DNA domain: masked discrete diffusion for cell-type-specific regulatory DNA (200 bp), gReLU
classifiers p(cell line | x) and held-out gReLU oracles, evaluation; see docs/dna.md.

    from domains.dna import build
    domain = build()          # shipped pre-trained denoiser, classifier, oracle

Submodules: `data` (loaders, splits), `model` (denoiser, LoRA), `pretrain` (MDLM pre-training),
`grelu_models` (classifiers, oracles, specificity), `evaluate` (metrics), `domain` (the domain).
Heavy imports (gReLU) happen only when `build` / `DNADomain` are first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CELL_LINES", "DNADomain", "build"]


def __getattr__(name: str) -> Any:
    if name in ("build", "DNADomain", "CellTypeReward"):
        from domains.dna import domain

        return getattr(domain, name)
    if name == "CELL_LINES":
        from domains.dna.data import CELL_LINES

        return CELL_LINES
    raise AttributeError(f"module 'domains.dna' has no attribute {name!r}")
