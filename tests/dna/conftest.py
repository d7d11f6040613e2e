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


@pytest.fixture
def build_tiny(tmp_path, tiny_denoiser, tiny_classifier):
    """A factory for DNA domains built through `domains.dna.build` from the tiny models saved to
    tmp_path (classifier doubling as oracle, 3 random baseline sequences); kwargs go to `build`."""
    import gzip

    from domains.dna.grelu_models import save_grelu
    from domains.dna.model import save_denoiser

    save_denoiser(tiny_denoiser, tmp_path / "d.safetensors")
    save_grelu(tiny_classifier, tmp_path / "c.safetensors")
    torch.manual_seed(1)
    with gzip.open(tmp_path / "base.txt.gz", "wt") as fh:
        fh.write("\n".join("".join("ACGT"[i] for i in torch.randint(0, 4, (200,)).tolist()) for _ in range(3)))

    def build(**kw):
        from domains.dna import build as build_domain

        kw = {"baseline_samples": str(tmp_path / "base.txt.gz"), **kw}
        return build_domain(denoiser=str(tmp_path / "d.safetensors"), classifier=str(tmp_path / "c.safetensors"),
                            oracle=str(tmp_path / "c.safetensors"), num_steps=4, lora_rank=2,
                            eval_real_per_class=50, elbo_samples=2, **kw)

    return build
