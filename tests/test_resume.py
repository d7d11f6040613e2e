"""Kill `rldiff run` with SIGKILL at several points, resume it each time, and check that the final
weights are bit-identical to an uninterrupted run with the same seed.

Runs the real command line in subprocesses. To run it on a real recipe, point RECIPE at it (e.g.
`rldiff.config.loader.RECIPES_DIR / "toy" / "ctrl.yaml"`) and empty SLOW: the kill points are then
still reached, only with less margin for the polling.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from rldiff.train.logging import read_metrics
from tests.fixtures import DUMMY_RECIPE

RECIPE = DUMMY_RECIPE
OVERRIDES = [
    "train.steps=60",
    "train.log_every=5",
    "train.checkpoint_every=10",
    "train.keep_checkpoints=2",
    "train.eval_every=0",
    "train.eval_samples=64",
    "logging.tensorboard=false",
]
#: Fixture-only knobs that slow the run down (sleeps; they change no number) so that the polling
#: below reliably sees each kill point: 0.03 s per update, 0.3 s inside every checkpoint write.
SLOW = ["algorithm.step_delay=0.03", "algorithm.checkpoint_delay=0.3"]
REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "rldiff.cli",
        "run",
        str(RECIPE),
        *OVERRIDES,
        *extra,
        f"output_dir={run_dir}",
        "--no-progress",
    ]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"


def _kill_when(process: subprocess.Popen, condition, what: str) -> None:
    """SIGKILL the run as soon as `condition()` holds; fail if it ends or times out first."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"run ended (status {process.returncode}) before {what}:\n{err}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL


def _latest(run_dir: Path) -> str:
    pointer = run_dir / "checkpoints" / "latest"
    return pointer.read_text().strip() if pointer.exists() else ""


def _logged_steps(run_dir: Path) -> list[int]:
    return [e["step"] for e in read_metrics(run_dir / "metrics.jsonl") if "loss" in e]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "step_000060" / "model.safetensors")


def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    reference = _start(reference_dir)  # runs alongside the first killed run; no SLOW needed
    resume = f"resume={run_dir}"

    # 1. killed between checkpoints, after metrics past checkpoint 20 were logged
    first = _start(run_dir, *SLOW)
    _kill_when(
        first,
        lambda: _latest(run_dir) == "step_000020" and max(_logged_steps(run_dir), default=0) >= 25,
        "checkpoint 20 and metrics of step 25",
    )
    assert _latest(run_dir) == "step_000020"

    # 2. killed while checkpoint 40 is being written (inside the algorithm's extra_state call)
    partial = run_dir / "checkpoints" / ".tmp-step_000040" / "rng.safetensors"
    second = _start(run_dir, *SLOW, resume)
    _kill_when(second, partial.exists, "checkpoint 40 half-written")
    assert _latest(run_dir) == "step_000030" and partial.exists()

    # 3. resumed to the end
    _finish(_start(run_dir, *SLOW, resume))
    _finish(reference)

    expected, actual = _final_weights(reference_dir), _final_weights(run_dir)
    assert sorted(actual) == sorted(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
    assert _logged_steps(run_dir) == list(range(5, 65, 5))
    assert read_metrics(run_dir / "metrics.jsonl") == read_metrics(reference_dir / "metrics.jsonl")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "latest",
        "step_000050",
        "step_000060",
    ]
