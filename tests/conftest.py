"""Shared test setup: no network (model hub, W&B), one CPU thread, `tests.*` importable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"

import torch

torch.set_num_threads(1)  # the test machine's cores are shared

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # recipes name test components as `tests.fixtures...`
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture
def fresh_accelerate_state():
    """Reset accelerate's process-wide state around a test that builds an `Accelerator`."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
