"""Shared fixtures for the DNA domain tests: tiny models built from configs, tiny files."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

TINY_CLASSIFIER = {
    "model_type": "ConvModel", "stem_channels": 8, "stem_kernel_size": 7, "n_conv": 1, "channel_init": 8,
    "kernel_size": 3, "final_pool_func": "max",
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared: avoid OpenMP oversubscription
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_denoiser():
    from domains.dna.model import DNADenoiser

    torch.manual_seed(0)
    return DNADenoiser(channels=8, cond_dim=8, dilations=(1, 2))


@pytest.fixture
def tiny_arch():
    return dict(TINY_CLASSIFIER)


@pytest.fixture
def tiny_classifier():
    from domains.dna.grelu_models import GReLUClassifier, build_lightning_model

    torch.manual_seed(0)
    return GReLUClassifier(build_lightning_model(4, "multiclass", TINY_CLASSIFIER), temperature=2.0).eval()
