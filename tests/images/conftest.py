"""Shared fixtures: one thread per test process, tiny SD / CLIP models written once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # OpenMP spinning on a shared 2-core machine makes tiny models 100x slower


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Paths of a tiny SD pipeline ("sd"), a tiny CLIP ("clip") and an aesthetic head for it ("head")."""
    from domains.images.tiny import save_tiny_aesthetic_head, save_tiny_clip, save_tiny_sd_pipeline

    root = tmp_path_factory.mktemp("tiny_images")
    return {
        "sd": save_tiny_sd_pipeline(root / "sd"),
        "clip": save_tiny_clip(root / "clip"),
        "head": save_tiny_aesthetic_head(root / "head.pth"),
    }
