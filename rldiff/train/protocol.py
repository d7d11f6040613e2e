"""The contract between the one training loop (`rldiff.train.trainer`) and everything it drives.

A recipe names a *domain* and an *algorithm* by import path. The trainer builds them as

    domain = instantiate(cfg.domain)
    algorithm = instantiate(cfg.algorithm, domain=domain)

and then only talks to them through the two protocols below. Nothing here knows about a
particular domain or algorithm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Algorithm(Protocol):
    """What the training loop needs from an algorithm (CTRL, DDPO, reward backprop, ...)."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """Trainable modules by name. Their parameters are checkpointed (safetensors)."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name. Their state is checkpointed (torch.save, loaded weights_only)."""

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        """Perform exactly one optimisation update and return scalar metrics.

        Metrics should include `reward`, `kl` and `loss` when they are defined. All randomness
        must come from `generator` (seeded by the trainer per step), so that a resumed run is
        bit-identical to an uninterrupted one.
        """

    def sample(self, num: int, generator: torch.Generator) -> dict[str, Any]:
        """Draw `num` samples from the current policy for evaluation.

        Returns at least {"x0": Tensor[num, ...]} plus whatever conditions were used
        (e.g. {"y": LongTensor[num]}).
        """


@runtime_checkable
class Domain(Protocol):
    """What the training loop needs from a domain (toy, images, dna)."""

    def evaluate(self, samples: dict[str, Any], out_dir: Path) -> dict[str, float]:
        """Score samples drawn by `Algorithm.sample`, write domain outputs (plots, FASTA, image
        grids) into `out_dir`, and return scalar metrics for `summary.md`."""
