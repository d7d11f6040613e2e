"""The training loop, checkpoints and logging, run in-process on the dummy fixture recipe."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from rldiff.config import load_recipe
from rldiff.train.checkpoint import (
    discard_uncommitted,
    latest_checkpoint,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
)
from rldiff.train.logging import read_metrics, truncate_metrics
from rldiff.train.trainer import TrainingError, derive_seed, evaluate_checkpoint, train
from tests.fixtures import DUMMY_RECIPE

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

NET_KEYS = {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}


def _config(*overrides: str):
    return load_recipe(DUMMY_RECIPE, list(overrides)).config


def _train_entries(run_dir: Path) -> list[dict]:
    return [e for e in read_metrics(run_dir / "metrics.jsonl") if "loss" in e]


def _tb_steps(run_dir: Path, tag: str) -> list[int]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One complete 40-update run of the fixture recipe (checkpoints every 10, keep 2)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    run_dir = tmp_path_factory.mktemp("run")
    result = train(_config(), run_dir, command="rldiff run dummy", show_progress=False)
    return run_dir, result


def test_derive_seed_depends_on_seed_and_step_only():
    seeds = {derive_seed(0, "update", step) for step in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(0, "update", 5) == derive_seed(0, "update", 5)
    assert derive_seed(0, "update", 5) != derive_seed(1, "update", 5)
    assert derive_seed(0, "update", 5) != derive_seed(0, "eval", 5)


def test_metrics_and_eval_are_logged_at_the_configured_steps(finished_run):
    run_dir, result = finished_run
    entries = read_metrics(run_dir / "metrics.jsonl")
    train_entries = _train_entries(run_dir)
    assert [e["step"] for e in train_entries] == [5, 10, 15, 20, 25, 30, 35, 40]
    eval_entries = [e for e in entries if "eval/mean_abs_error" in e]
    assert [e["step"] for e in eval_entries] == [20, 40]
    assert all(e["eval/num_samples"] == 256.0 for e in eval_entries)
    assert result.step == 40
    assert result.train_metrics == {k: train_entries[-1][k] for k in ("reward", "kl", "loss")}
    assert result.eval_metrics == {
        "mean_abs_error": eval_entries[-1]["eval/mean_abs_error"],
        "num_samples": 256.0,
    }
    # the dummy policy learns to move its samples onto the target
    assert train_entries[-1]["reward"] > train_entries[0]["reward"] + 1.0
    assert result.eval_metrics["mean_abs_error"] < 0.2
    assert _tb_steps(run_dir, "train/loss") == [5, 10, 15, 20, 25, 30, 35, 40]
    assert _tb_steps(run_dir, "eval/mean_abs_error") == [20, 40]


def test_checkpoint_contents(finished_run):
    run_dir, _ = finished_run
    ckpt_dir = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest", "step_000030", "step_000040"]
    assert (ckpt_dir / "latest").read_text() == "step_000040\n"
    latest = latest_checkpoint(ckpt_dir)
    assert set(load_file(latest / "model.safetensors")) == NET_KEYS
    optimizer = torch.load(latest / "optimizer.pt", weights_only=True)
    assert set(optimizer) == {"adam"}
    assert float(optimizer["adam"]["state"][0]["step"]) == 40.0
    assert optimizer["adam"]["param_groups"][0]["lr"] == 0.01
    rng = load_file(latest / "rng.safetensors")
    assert rng["cpu"].dtype == torch.uint8 and rng["cpu"].numel() == torch.get_rng_state().numel()
    assert json.loads((latest / "trainer_state.json").read_text()) == {
        "step": 40,
        "seed": 0,
        "extra_state": {
            "updates_done": 40,
            "mixed_precision": "no",
            "gradient_accumulation_steps": 1,
        },
    }


def test_eval_outputs_plots_and_summary(finished_run):
    run_dir, result = finished_run
    assert json.loads((run_dir / "eval" / "step_000040" / "sample_mean.json").read_text())
    assert (run_dir / "eval" / "step_000020" / "sample_mean.json").exists()
    assert json.loads((run_dir / "eval.json").read_text()) == {
        "step": 40,
        "num_samples": 256,
        "metrics": result.eval_metrics,
        "out_dir": "eval/step_000040",
    }
    for name in ("reward", "kl", "loss"):
        assert (run_dir / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (run_dir / "summary.md").read_text()
    assert "Dummy reward backprop towards a target point" in summary
    assert "rldiff run dummy" in summary and "Updates completed: 40" in summary
    assert f"| loss | {result.train_metrics['loss']:.6g} |" in summary
    assert f"| mean_abs_error | {result.eval_metrics['mean_abs_error']:.6g} |" in summary
    assert "![reward](plots/reward.png)" in summary


def test_evaluate_checkpoint_reproduces_the_final_evaluation(finished_run):
    run_dir, result = finished_run
    again = evaluate_checkpoint(_config(), run_dir)
    assert again.step == 40 and again.metrics == result.eval_metrics
    fewer = evaluate_checkpoint(_config(), run_dir, num_samples=32)
    assert fewer.metrics["num_samples"] == 32.0
    assert fewer.metrics["mean_abs_error"] != result.eval_metrics["mean_abs_error"]
    assert json.loads((run_dir / "eval.json").read_text())["num_samples"] == 32


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(finished_run, tmp_path):
    reference_dir, _ = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(reference_dir, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    # Fake a crash during update 37 that happened while checkpoint 40 was being written, with
    # checkpoint 30 committed: step_000040 is uncommitted, a temp folder and a torn line remain.
    (ckpt_dir / "latest").write_text("step_000030\n")
    (ckpt_dir / ".tmp-step_000040").mkdir()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 45, "loss": 1.0}\n{"step": 4')
    shutil.rmtree(run_dir / "plots")
    train(_config(), run_dir, resume=True, show_progress=False)

    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest", "step_000030", "step_000040"]
    reference = load_file(latest_checkpoint(reference_dir / "checkpoints") / "model.safetensors")
    resumed = load_file(latest_checkpoint(ckpt_dir) / "model.safetensors")
    assert all(torch.equal(reference[k], resumed[k]) for k in NET_KEYS)
    assert (run_dir / "metrics.jsonl").read_text() == (reference_dir / "metrics.jsonl").read_text()
    assert read_trainer_state(ckpt_dir / "step_000040").extra_state["updates_done"] == 40
    assert _tb_steps(run_dir, "train/loss") == [5, 10, 15, 20, 25, 30, 35, 40]
    assert (run_dir / "plots" / "loss.png").exists()


def test_resuming_a_finished_run_only_rewrites_the_summary(finished_run, tmp_path):
    reference_dir, result = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(reference_dir, run_dir)
    (run_dir / "summary.md").unlink()
    again = train(_config(), run_dir, resume=True, show_progress=False)
    assert again.train_metrics == result.train_metrics
    assert again.eval_metrics == result.eval_metrics
    assert (run_dir / "metrics.jsonl").read_text() == (reference_dir / "metrics.jsonl").read_text()
    assert f"| loss | {result.train_metrics['loss']:.6g} |" in (run_dir / "summary.md").read_text()


def test_non_finite_metric_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    config = _config("algorithm.nan_at_step=12", "logging.tensorboard=false")
    with pytest.raises(TrainingError) as info:
        train(config, tmp_path, show_progress=False)
    message = str(info.value)
    checkpoint = tmp_path / "checkpoints" / "step_000010"
    assert message.startswith("metric 'loss' is not finite at step 13 (reward=")
    assert (
        f"loss=nan); training stopped and the last checkpoint, {checkpoint}, is intact." in message
    )
    assert latest_checkpoint(tmp_path / "checkpoints") == checkpoint
    weights = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert [e["step"] for e in read_metrics(tmp_path / "metrics.jsonl")] == [5, 10]


def test_accelerator_settings_reach_the_algorithm(tmp_path):
    config = _config(
        "train.steps=2",
        "train.mixed_precision=bf16",
        "train.gradient_accumulation_steps=2",
        "train.eval_samples=0",
        "logging.tensorboard=false",
    )
    result = train(config, tmp_path, show_progress=False)
    state = read_trainer_state(latest_checkpoint(tmp_path / "checkpoints"))
    assert state.extra_state["mixed_precision"] == "bf16"
    assert state.extra_state["gradient_accumulation_steps"] == 2
    assert result.eval_metrics == {} and not (tmp_path / "eval.json").exists()


def test_a_component_that_breaks_the_protocol_is_named(tmp_path):
    config = _config("algorithm={_component_: tests.fixtures.components.record, name: x}")
    with pytest.raises(TrainingError) as info:
        train(config, tmp_path, show_progress=False)
    assert str(info.value) == (
        "tests.fixtures.components.record built a dict, which lacks modules, optimizers, sample: "
        "see rldiff.train.protocol.Algorithm for what the trainer calls"
    )


# --- checkpoint module on its own ----------------------------------------------------------------


class _Frozen:
    """An algorithm whose module has a frozen 'base' and a trainable 'head'."""

    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.net = nn.ModuleDict({"base": nn.Linear(4, 4), "head": nn.Linear(4, 2)})
        self.net["base"].requires_grad_(False)
        self.net.register_buffer("scale", torch.tensor([float(seed)]))
        self.opt = torch.optim.AdamW(self.net["head"].parameters(), lr=0.1)
        self.state = {"seen": seed}

    def modules(self):
        return {"policy": self.net}

    def optimizers(self):
        return {"adamw": self.opt}

    def step(self):
        self.net["head"](torch.ones(1, 4)).sum().backward()
        self.opt.step()

    def extra_state(self):
        return self.state

    def load_extra_state(self, state):
        self.state = state


def test_checkpoint_round_trip_skips_frozen_parameters(tmp_path):
    accelerator = Accelerator(cpu=True)
    saved = _Frozen(seed=1)
    saved.step()
    save_checkpoint(tmp_path, 7, saved, accelerator, seed=3, keep=2)
    expected_draw = torch.rand(3)
    keys = set(load_file(tmp_path / "step_000007" / "model.safetensors"))
    assert keys == {"policy.head.weight", "policy.head.bias", "policy.scale"}

    restored = _Frozen(seed=2)
    torch.rand(5)  # move the RNG on: loading must restore it
    state = load_checkpoint(tmp_path / "step_000007", restored, accelerator)
    assert (state.step, state.seed, state.extra_state) == (7, 3, {"seen": 1})
    assert restored.state == {"seen": 1}
    assert torch.equal(torch.rand(3), expected_draw)
    assert torch.equal(restored.net["head"].weight, saved.net["head"].weight)
    assert torch.equal(restored.net.scale, torch.tensor([1.0]))
    assert not torch.equal(restored.net["base"].weight, saved.net["base"].weight)  # not saved
    exp_avg = restored.opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(exp_avg, saved.opt.state_dict()["state"][0]["exp_avg"])


def test_checkpoints_are_pruned_and_uncommitted_ones_discarded(tmp_path):
    accelerator = Accelerator(cpu=True)
    algorithm = _Frozen(seed=0)
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, algorithm, accelerator, seed=0, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000020", "step_000030"]
    # a run killed after renaming step 40 into place but before committing `latest`
    shutil.copytree(tmp_path / "step_000030", tmp_path / "step_000040")
    (tmp_path / ".tmp-step_000050").mkdir()
    (tmp_path / ".tmp-latest").write_text("step_000050\n")
    removed = discard_uncommitted(tmp_path)
    assert sorted(p.name for p in removed) == [".tmp-latest", ".tmp-step_000050", "step_000040"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000030"
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) is None


def test_extra_state_must_be_json(tmp_path):
    algorithm = _Frozen(seed=0)
    algorithm.state = {"tensor": torch.zeros(1)}
    with pytest.raises(TypeError, match=r"_Frozen.extra_state\(\) must return JSON-serialisable"):
        save_checkpoint(tmp_path, 1, algorithm, Accelerator(cpu=True), seed=0, keep=1)
    assert latest_checkpoint(tmp_path) is None


def test_loading_into_a_different_algorithm_fails_clearly(tmp_path):
    accelerator = Accelerator(cpu=True)
    save_checkpoint(tmp_path, 1, _Frozen(seed=0), accelerator, seed=0, keep=1)
    other = _Frozen(seed=0)
    other.net = nn.ModuleDict({"head": nn.Linear(4, 3)})
    with pytest.raises(ValueError, match="does not match module 'policy'"):
        load_checkpoint(tmp_path / "step_000001", other, accelerator)


def test_truncate_metrics_drops_later_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5, "loss": 1.5}\n{"step": 10, "loss": 1.0}\n{"step": 15, "lo')
    assert truncate_metrics(path, 5) == 1
    assert path.read_text() == '{"step": 5, "loss": 1.5}\n'
    assert math.isclose(read_metrics(path)[0]["loss"], 1.5)
