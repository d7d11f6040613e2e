"""The contract between the one training loop (`rldiff.train.trainer`) and everything it drives.

A recipe names a *domain* and an *algorithm* by import path. The trainer builds them as

    domain = instantiate(cfg.domain)
    algorithm = instantiate(cfg.algorithm, domain=domain, accelerator=accelerator)

where `accelerator` is the run's `accelerate.Accelerator` (built from the recipe's
`train.cpu`, `train.mixed_precision` and `train.gradient_accumulation_steps`), and then only talks
to them through the two protocols below. Nothing here knows about a particular domain or
algorithm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Algorithm(Protocol):
    """What the training loop needs from an algorithm (CTRL, DDPO, reward backprop, ...).

    The algorithm owns its optimisation: `update` calls `accelerator.backward(loss)` (loss scaling
    for fp16, gradient accumulation) and steps its own optimizers; the trainer never touches
    gradients. Modules and optimizers may be wrapped by `accelerator.prepare`; checkpoints unwrap
    them with `accelerator.unwrap_model`.

    Optional methods, called when present:

        def extra_state(self) -> dict:
            JSON-serialisable state beyond modules and optimizers (counters, running reward
            statistics, a scheduler's state_dict), saved in every checkpoint's
            `trainer_state.json`.

        def load_extra_state(self, state: dict) -> None:
            Restore what `extra_state` returned, when a run is resumed.
    """

    def modules(self) -> dict[str, torch.nn.Module]:
        """Trainable modules by name (names without '.').

        Their parameters with `requires_grad=True` and their buffers are checkpointed
        (safetensors); frozen parameters (a pre-trained base under adapters) are not, since the
        trainer rebuilds them from the recipe with the same seed.
        """

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name. Their state is checkpointed (torch.save, loaded weights_only)."""

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        """Perform exactly one optimisation update and return scalar metrics.

        Metrics should include `reward`, `kl` and `loss` when they are defined. All randomness
        must come from `generator` (a CPU generator seeded by the trainer per step: draw on the
        CPU, then move to the device), so that a resumed run is bit-identical to an
        uninterrupted one.
        """

    def sample(self, num: int, generator: torch.Generator) -> dict[str, Any]:
        """Draw `num` samples from the current policy for evaluation.

        Returns at least {"x0": Tensor[num, ...]} plus whatever conditions were used
        (e.g. {"y": LongTensor[num]}). Called on every process, and not under `torch.no_grad()`:
        disable gradients unless sampling needs them (e.g. guidance by a classifier's gradient).
        """


@runtime_checkable
class Domain(Protocol):
    """What the training loop needs from a domain (toy, images, dna)."""

    def evaluate(self, samples: dict[str, Any], out_dir: Path) -> dict[str, float]:
        """Score samples drawn by `Algorithm.sample`, write domain outputs (plots, FASTA, image
        grids) into `out_dir`, and return scalar metrics for `summary.md`."""
