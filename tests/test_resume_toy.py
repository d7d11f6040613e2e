"""Kill-and-resume on the real CTRL algorithm (continuous toy): bit-identical final weights,
including the y-embedding and the optimizer-driven adapters."""

from __future__ import annotations

from pathlib import Path

import torch

import tests.test_resume as base

TOY = ["domain.num_steps=10", "algorithm.batch_size=32", "train.steps=30", "train.checkpoint_every=10",
       "train.log_every=5", "train.eval_samples=64", "logging.tensorboard=false"]


def test_ctrl_killed_and_resumed_is_bit_identical(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(base, "RECIPE", "toy/ctrl")
    monkeypatch.setattr(base, "OVERRIDES", TOY)
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    base._finish(base._start(reference_dir))
    first = base._start(run_dir)
    base._kill_when(first, lambda: base._latest(run_dir) == "step_000010", "checkpoint 10")
    base._finish(base._start(run_dir, f"resume={run_dir}"))
    ref = base.load_file(reference_dir / "checkpoints" / "step_000030" / "model.safetensors")
    got = base.load_file(run_dir / "checkpoints" / "step_000030" / "model.safetensors")
    assert sorted(got) == sorted(ref) and any(k.startswith("y_embedding") for k in ref)
    for key in ref:
        assert torch.equal(got[key], ref[key]), key
    assert ref["y_embedding.weight"].abs().sum() > 0  # it trained: the embedding left zero
