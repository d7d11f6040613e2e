"""The DNA recipes validate and run through the real trainer for a couple of updates (tiny sizes)."""

from __future__ import annotations

import pytest
import torch

from rldiff.config import load_recipe, shipped_recipes
from tests.dna._recipes import run_tiny

NAMES = ("dna/pretrain", "dna/ctrl_cell_type")


@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates_and_opens_with_its_command(name):
    assert load_recipe(name).config.description
    assert shipped_recipes()[name].read_text().splitlines()[0] == f"# rldiff run {name}"


def test_pretrain_recipe_two_updates(tmp_path, fresh_accelerate_state):
    from rldiff.train.trainer import train

    over = ["domain.channels=8", "domain.cond_dim=8", "domain.dilations=[1, 2]", "domain.num_steps=2",
            "domain.eval_size=8", "domain.max_train=256", "algorithm.batch_size=4", "train.steps=2",
            "train.eval_samples=4", "train.checkpoint_every=0", "logging.tensorboard=false",
            f"output_dir={tmp_path}"]
    cfg = load_recipe("dna/pretrain", over).config
    res = train(cfg, tmp_path, show_progress=False)
    assert res.eval_metrics["elbo_test_per_base"] < 0
    assert -1 <= res.eval_metrics["kmer3_corr"] <= 1


def test_ctrl_cell_type_two_updates(tmp_path, fresh_accelerate_state):
    run_tiny("dna/ctrl_cell_type", ["algorithm.batch_size=8", "train.steps=2", "algorithm.forward_pool=512",
                                    "algorithm.forward_batch=8", "train.log_every=1"], tmp_path)
    import json

    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_logs = [m for m in logged if "loss" in m]
    # the recipe's moment anchor is on (its unbiased estimate can be negative; 8 rows over 4 labels make a pair)
    assert train_logs and all(m["moment_chi2"] != 0 for m in train_logs)
    assert load_recipe("dna/ctrl_cell_type").config.algorithm["forward_moment_unbiased"] is True
    # and the MDLM-loss anchor, on its lowest-noise terms only (forward_t_weights)
    assert all(m["forward_nelbo"] > 0 for m in train_logs)
    assert load_recipe("dna/ctrl_cell_type").config.algorithm["forward_t_weights"][:3] == [1, 1, 1]
    ckpt = next(tmp_path.glob("checkpoints/step_*"))
    from safetensors.torch import load_file

    tensors = load_file(str(ckpt / "model.safetensors"))
    assert tensors["y_embedding.weight"][:4].abs().sum() > 0  # the zero-initialised y-embedding moved
    assert tensors["y_embedding.weight"][4].abs().sum() == 0  # the null label is never trained here
    assert all("lora_" in k for k in tensors if k.startswith("denoiser."))  # only adapters are saved
    # the recipe evaluates the moving average of exactly those trained tensors (train.ema_decay)
    averaged = load_file(str(ckpt / "ema.safetensors"))
    assert set(averaged) == {k for k in tensors if "lora_" in k or k == "y_embedding.weight"}
    assert not torch.equal(averaged["y_embedding.weight"], tensors["y_embedding.weight"])
