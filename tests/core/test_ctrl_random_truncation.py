"""CTRL with grad="random" survives updates in which no step drew a gradient (small T)."""

from __future__ import annotations

import torch

from domains.toy.continuous import ContinuousToy
from rldiff.algorithms.ctrl import CTRL
from rldiff.core.rollout import grad_schedule


def test_update_without_gradient_steps_changes_nothing() -> None:
    d = ContinuousToy(dim=1, num_steps=3)
    algo = CTRL(d, batch_size=8, grad="random")
    # find a seed whose truncation schedule has no gradient step (probability 3/32 at T = 3)
    seed = next(s for s in range(1000) if not grad_schedule("random", 3, generator=_after_labels(s)).any())
    before = [p.detach().clone() for p in algo.params]
    metrics = algo.update(0, torch.Generator().manual_seed(seed))
    assert metrics["grad_norm"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, algo.params))


def _after_labels(seed: int) -> torch.Generator:
    """The generator state at the truncation draw of `CTRL.update`: after y and x_T were drawn."""
    g = torch.Generator().manual_seed(seed)
    torch.multinomial(torch.full((2,), 0.5), 8, replacement=True, generator=g)  # y
    torch.randn((8, 1), generator=g)  # x_T
    return g
