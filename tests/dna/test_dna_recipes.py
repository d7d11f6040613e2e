"""The DNA recipes validate and run through the real trainer for a couple of updates (tiny sizes)."""

from __future__ import annotations

import json

import pytest

from rldiff.config import load_recipe, shipped_recipes

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
    from rldiff.train.trainer import train

    over = ["domain.num_steps=2", "domain.elbo_samples=1", "domain.eval_real_per_class=64",
            "algorithm.batch_size=4", "train.steps=2", "train.eval_samples=8", "train.checkpoint_every=0",
            "logging.tensorboard=false", f"output_dir={tmp_path}"]
    cfg = load_recipe("dna/ctrl_cell_type", over).config
    res = train(cfg, tmp_path, show_progress=False)
    m = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    for c in ("GM12878", "hESC", "K562", "HepG2"):
        assert 0 <= m[f"oracle_acc_{c}"] <= 1 and f"motif_enrichment_{c}" in m and f"kmer3_corr_{c}" in m
    assert m["num_samples"] == 8 and res.eval_metrics == pytest.approx(m)
    fasta = next(tmp_path.glob("eval/step_*/samples.fasta")).read_text()
    assert fasta.count(">") == 8 and "target=HepG2" in fasta
    ckpt = next(tmp_path.glob("checkpoints/step_*"))
    from safetensors.torch import load_file

    tensors = load_file(str(ckpt / "model.safetensors"))
    assert tensors["y_embedding.weight"][:4].abs().sum() > 0  # the zero-initialised y-embedding moved
    assert tensors["y_embedding.weight"][4].abs().sum() == 0  # the null label is never trained here
    assert all("lora_" in k for k in tensors if k.startswith("denoiser."))  # only adapters are saved
