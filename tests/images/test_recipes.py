"""Every images recipe validates, and each SD recipe runs 1-2 updates through `rldiff run` with a tiny
SD-architecture pipeline, tiny CLIP and tiny classifiers swapped in by overrides (no download)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rldiff import cli
from rldiff.config import load_recipe
from rldiff.config.loader import RECIPES_DIR
from rldiff.train.logging import read_metrics

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

IMAGE_RECIPES = sorted(p.stem for p in (RECIPES_DIR / "images").glob("*.yaml"))


def test_the_issue_recipes_are_shipped():
    assert set(IMAGE_RECIPES) >= {
        "digits_pretrain", "digits_ctrl", "sd15_ctrl_compressibility", "sd15_ctrl_multitask",
        "sd15_ddpo_aesthetic", "sd15_ddpo_compressibility", "sd15_backprop_aesthetic",
    }


@pytest.mark.parametrize("name", IMAGE_RECIPES)
def test_recipe_validates_and_opens_with_its_command(name):
    path = RECIPES_DIR / "images" / f"{name}.yaml"
    assert path.read_text().splitlines()[0] == f"# rldiff run images/{name}"
    recipe = load_recipe(f"images/{name}")
    assert recipe.config.domain["_component_"].startswith("domains.images.")


@pytest.fixture(scope="module")
def tiny_classifiers(tiny_models, tmp_path_factory):
    """Untrained but well-formed classifier files of the kinds the SD recipes load."""
    from domains.images.rewards import (
        ClipHeadClassifier,
        ImageClassifier,
        load_clip,
        save_image_classifier,
    )

    root = tmp_path_factory.mktemp("tiny_classifiers")
    torch.manual_seed(0)
    return {
        "compress4": save_image_classifier(ImageClassifier(4, size=16, width=4), root / "c4"),
        "compress2": save_image_classifier(ImageClassifier(2, size=16, width=4), root / "c2"),
        "aesthetic2": save_image_classifier(
            ClipHeadClassifier(load_clip(tiny_models["clip"]), 2, clip_path=str(tiny_models["clip"])), root / "a2"),
    }


def _overrides(name, tiny, clf, out):
    common = [
        f"output_dir={out}", f"domain.model={tiny['sd']}", "domain.dtype=fp32", "domain.device=cpu",
        "domain.num_steps=2", "domain.resolution=16", "train.mixed_precision=no", "train.cpu=true",
        "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0", "logging.tensorboard=false",
    ]
    aes = [f"domain.reward.clip_path={tiny['clip']}", f"domain.reward.head_path={tiny['head']}"]
    specific = {
        # CTRL's grad=random keeps step i with prob. (i+1)/(T+1): T=5 makes a step without any gradient unlikely
        "sd15_ctrl_compressibility": [f"domain.classifier.path={clf['compress4']}", "algorithm.batch_size=2",
                                      f"domain.clip_model={tiny['clip']}",
                                      "domain.num_steps=5",
                                      "train.steps=2", "train.eval_samples=4"],
        "sd15_ctrl_multitask": [
            f"domain.classifier.classifiers.0.path={clf['aesthetic2']}",
            f"domain.classifier.classifiers.0.clip_path={tiny['clip']}",
            f"domain.classifier.classifiers.1.path={clf['compress2']}",
            f"domain.measure.measures.0.clip_path={tiny['clip']}",
            f"domain.measure.measures.0.head_path={tiny['head']}",
            "algorithm.batch_size=2", "domain.num_steps=5", "train.steps=1", "train.eval_samples=4"],
        "sd15_ddpo_aesthetic": [*aes, "algorithm.batch_size=2", "train.steps=2", "train.eval_samples=2",
                                f"domain.clip_model={tiny['clip']}"],
        # 32 px images (the smallest BRISQUE scores); the others are 16 px and skip it with a warning
        "sd15_ddpo_compressibility": ["algorithm.batch_size=2", "train.steps=2", "train.eval_samples=2",
                                      "domain.resolution=32"],
        "sd15_backprop_aesthetic": [*aes, "algorithm.batch_size=2", "train.steps=2", "train.eval_samples=2"],
    }[name]
    return common + specific


@pytest.mark.parametrize("name", ["sd15_ctrl_compressibility", "sd15_ctrl_multitask", "sd15_ddpo_aesthetic",
                                  "sd15_ddpo_compressibility", "sd15_backprop_aesthetic"])
def test_sd_recipe_runs_with_a_tiny_pipeline(name, tiny_models, tiny_classifiers, tmp_path):
    out = tmp_path / "run"
    status = cli.main(["run", f"images/{name}", *_overrides(name, tiny_models, tiny_classifiers, out), "--no-progress"])
    assert status == 0
    steps = [e for e in read_metrics(out / "metrics.jsonl") if "loss" in e]
    assert [e["step"] for e in steps] == list(range(1, len(steps) + 1)) and steps
    assert all(math.isfinite(e["loss"]) and math.isfinite(e["reward"]) for e in steps)
    weights = load_file(str(next((out / "checkpoints").glob("step_*")) / "model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and max(float(v.abs().max()) for v in lora_b) > 0  # zero-initialised, moved by the update
    metrics = json.loads((out / "eval.json").read_text())["metrics"]
    if "ctrl" in name:
        assert float(steps[0]["kl"]) == 0.0  # zero-init y-embedding and LoRA: the first rollout is the pre-trained model
        y_emb = [v for k, v in weights.items() if k.startswith("y_embedding")]
        assert y_emb and float(y_emb[0][:-1].abs().sum()) > 0  # label rows moved; row K is the null label
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
    if name in ("sd15_ctrl_compressibility", "sd15_ddpo_aesthetic"):  # the algorithms hand over their prompts
        assert math.isfinite(metrics["clip_score"])
    if name == "sd15_ctrl_multitask":
        assert "accuracy_attribute_0" in metrics and "accuracy_attribute_1" in metrics
    assert ("brisque" in metrics) == (name == "sd15_ddpo_compressibility")  # every SD recipe asks for BRISQUE
    if name == "sd15_ddpo_compressibility":
        assert math.isfinite(metrics["brisque"]) and metrics["brisque"] > 0
        assert metrics["reward_mean"] == pytest.approx(-metrics["measured_value_mean"], rel=1e-6)
