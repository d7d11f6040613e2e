"""The guidance baselines behave as documented on the continuous toy.

- CFG trained on labelled pairs with w = 1 *is* a conditional model: it matches p(x | y) =
  p_pre(x) p(y | x) / Z, the gamma = 1 target.
- Classifier guidance with a classifier trained on noisy inputs and scale 1 approximately samples
  the gamma = 1 target too (its error is the noisy classifier's).
- DPS guides with log p(y | x0_hat(x_t)), which by Jensen overstates how much x_t already tells
  about y; on this toy it *over-concentrates*: the requested label's probability under the samples
  exceeds the target's.
- SVDD with alpha = 1 tilts towards the label (p(y | x) rises well above the pre-trained 1/2).
"""

from __future__ import annotations

from pathlib import Path

import torch

from domains.toy.continuous import ContinuousToy
from tests.core.test_convergence import assert_continuous_target, run_recipe


def target_p_label(label: int, gamma: float) -> float:
    """E[p(label | x)] under the exact target p_pre(x) p(label | x)^gamma / Z."""
    d = ContinuousToy(dim=1, num_steps=50)
    pts, w = d.target_density(label, gamma)
    return float((w * torch.softmax(d.classifier(pts.float()).double(), -1)[:, label]).sum())


def test_cfg_conditional_model_matches_gamma_one_target(tmp_path: Path) -> None:
    metrics = run_recipe("toy/cfg", tmp_path / "run")
    assert_continuous_target(metrics, [0, 1], gamma=1.0)


def test_classifier_guidance_tilts_to_target(tmp_path: Path) -> None:
    metrics = run_recipe("toy/classifier_guidance", tmp_path / "run", "train.eval_samples=4000")
    for y in (0, 1):
        assert abs(metrics[f"y{y}/p_label"] - target_p_label(y, 1.0)) < 0.03, metrics


def test_dps_over_concentrates(tmp_path: Path) -> None:
    metrics = run_recipe("toy/dps", tmp_path / "run", "train.eval_samples=2000")
    for y in (0, 1):
        target = target_p_label(y, 1.0)
        assert metrics[f"y{y}/p_label"] > target + 0.03, (metrics, target)


def test_svdd_tilts_towards_label(tmp_path: Path) -> None:
    metrics = run_recipe("toy/svdd", tmp_path / "run", "train.eval_samples=1000")
    pre = target_p_label(1, 0.0)
    assert abs(pre - 0.5) < 1e-6  # symmetric toy: the pre-trained model is label-balanced
    for y in (0, 1):
        assert metrics[f"y{y}/p_label"] > pre + 0.25, metrics
