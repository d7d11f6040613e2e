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


@runtime_checkable
class RLDomain(Domain, Protocol):
    """What the algorithms in `rldiff.algorithms` read from a domain.

    Attributes:
        policy: a `GaussianPolicy` or `MaskedPolicy` whose `denoiser` holds the trainable
            parameters (LoRA adapters, a zero-initialised residual, ...) and whose `reference`
            is a frozen *view* of the pre-trained model (adapters disabled / a frozen module).
            Set `policy.condition_dim` when the denoiser accepts `cond["class_emb"]`
            ([B, condition_dim], added to its time embedding; zero = the pre-trained model):
            that is the adapter CTRL uses to attach a new condition y.
        trainable: modules whose `requires_grad` parameters the algorithms optimize; only those
            parameters are checkpointed.
        sample_shape: the sample shape without batch (Gaussian policies), None for masked.
        reward: the task reward (`rldiff.core.reward.Reward`) for DDPO / reward backprop.
        classifier: module x0 -> logits [B, num_labels], p(y | x) for CTRL (calibrated).
        num_labels: number of classes of y.
    """

    policy: Any
    trainable: dict[str, torch.nn.Module]
    sample_shape: tuple[int, ...] | None
    reward: Any
    classifier: Any
    num_labels: int

    def sample_cond(self, num: int, generator: torch.Generator) -> dict[str, Any] | None:
        """Base conditions (e.g. prompts) for a batch of `num` samples; None if unconditional.
        Algorithms add their own keys (`y`, `class_emb`) to a copy of this dict."""


@runtime_checkable
class OfflineDataDomain(Protocol):
    """Domains with an offline labelled dataset (for classifier fitting, CFG and classifier guidance)."""

    def offline_data(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """(x [N, ...] clean samples in the policy's space, y [N] integer labels).

        For masked domains x is a LongTensor of tokens [N, L]."""

    def noisy_classifier(self) -> torch.nn.Module:
        """A fresh, untrained classifier (x_t, t) -> logits [B, num_labels] for classifier guidance."""
