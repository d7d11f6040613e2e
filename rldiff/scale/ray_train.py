"""Data-parallel training on Ray: `ray.train.torch.TorchTrainer` runs the one training loop
(`rldiff.train.trainer.train`) unchanged on N workers.

    result = train_distributed(config, run_dir)      # config.scale says how many workers, where

Inside each worker Ray Train has set up the torch process group (gloo on CPU, nccl on GPU) and the
RANK / WORLD_SIZE / LOCAL_RANK variables `accelerate` reads, so `train` sees N processes: each
builds the algorithm with `batch_size / N`, draws its own share of trajectories from
`derive_seed(seed, "update", step, rank)`, gradients are averaged over workers
(`rldiff.algorithms.common.sync_gradients`, which includes CTRL's y-embedding), metrics are
averaged, and only rank 0 writes the run directory.

Checkpoints go through Ray Train's checkpoint API in the usual format: Ray's storage is the run
directory (`storage_path=<run_dir>`, run name `checkpoints`), rank 0 writes
`checkpoints/step_XXXXXX/` atomically as in a one-process run, and every worker then calls
`ray.train.report(..., checkpoint=<that folder>, checkpoint_upload_mode=NO_UPLOAD)`, which registers
the folder in place (nothing is copied). When a worker dies, Ray Train restarts the worker group
(`scale.max_failures` times) and `train(resume=True)` continues from `checkpoints/latest`, the last
committed checkpoint, which is never older than the one Ray registered; a resumed run reproduces
an uninterrupted one bit for bit. Besides `step_*` and `latest`, `checkpoints/` holds Ray's
bookkeeping (`checkpoint_manager_snapshot.json`, `.validate_storage_marker`).

On a multi-node cluster the run directory must be on a filesystem every node sees (NFS, a mounted
bucket), as Ray Train requires of a local `storage_path`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from rldiff.config.schema import Problem, RecipeConfig, ScaleSection
from rldiff.train.checkpoint import latest_checkpoint, read_trainer_state
from rldiff.train.logging import read_metrics
from rldiff.train.trainer import (
    CHECKPOINT_DIR,
    EVAL_FILE,
    TrainingError,
    TrainResult,
    per_process_config,
)

#: Metrics the rank-0 progress line shows, when present.
PROGRESS_METRICS = ("reward", "kl", "loss", "accuracy")


def wants_ray(scale: ScaleSection | None) -> bool:
    """Whether a recipe's `scale:` section asks for Ray: more than one worker, or a cluster address."""
    return scale is not None and (scale.num_workers > 1 or scale.address is not None)


def check_scale(config: RecipeConfig) -> list[Problem]:
    """Problems with running `config` on `config.scale.num_workers` workers (before starting Ray).

    Args:
        config: A validated recipe.

    Returns:
        Problems keyed `scale.num_workers` (an empty list when the recipe can run).
    """
    workers = config.scale.num_workers if config.scale is not None else 1
    try:
        per_process_config(config, workers)
    except TrainingError as err:
        return [Problem("scale.num_workers", str(err))]
    return []


def train_distributed(
    config: RecipeConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    command: str = "",
    show_progress: bool = True,
) -> TrainResult:
    """Train `config` on Ray workers as `config.scale` asks; same outputs as `train`.

    Args:
        config: A validated recipe (`scale` may be None: one worker on a local Ray).
        run_dir: The run directory; it must exist (the CLI has written `config.yaml` into it).
        resume: Continue the run from `checkpoints/latest` (a fresh run directory starts at 0).
        command: The command line, for `summary.md`.
        show_progress: Rank 0 prints a progress line at every logged update.

    Returns:
        The steps completed and the final metrics (read back from the run directory).

    Raises:
        TrainingError: The recipe cannot be split over the workers, or training failed on a
            worker more often than `scale.max_failures` allows (the worker's error is included).
        RayStartError: Ray could not be started or reached.
    """
    from rldiff.scale.cluster import connect, disconnect

    scale = config.scale or ScaleSection()
    run_dir = Path(run_dir).resolve()
    per_process_config(config, scale.num_workers)  # fail before starting Ray
    connection = connect(scale.address, dashboard=scale.dashboard)
    ok = False
    try:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

        resources = {"CPU": scale.cpus_per_worker}
        if scale.gpus_per_worker:
            resources["GPU"] = scale.gpus_per_worker
        trainer_class = _trainer_class(state_api=connection.dashboard_url != "")
        trainer = trainer_class(
            _worker_loop,
            train_loop_config={
                "config": config,
                "run_dir": str(run_dir),
                "command": command,
                "resume": resume,
                "show_progress": show_progress,
                "sys_path": list(sys.path),
                "cwd": os.getcwd(),
                "threads": max(1, int(scale.cpus_per_worker)),
            },
            scaling_config=ScalingConfig(
                num_workers=scale.num_workers,
                use_gpu=scale.gpus_per_worker > 0,
                resources_per_worker=resources,
                placement_strategy=scale.placement_strategy,
            ),
            run_config=RunConfig(
                name=CHECKPOINT_DIR,
                storage_path=str(run_dir),
                failure_config=FailureConfig(max_failures=scale.max_failures),
                # rank 0's save_checkpoint deletes old checkpoints (train.keep_checkpoints)
                checkpoint_config=CheckpointConfig(num_to_keep=None),
            ),
        )
        try:
            trainer.fit()
        except Exception as err:  # ray.train.TrainingFailedError and its subclasses
            raise TrainingError(_failure_message(err, scale)) from err
        ok = True
    finally:
        disconnect(connection, keep_temp_dir=not ok)
    return _result_from_run_dir(config, run_dir)


def _trainer_class(state_api: bool) -> type:
    """`TorchTrainer`, or without a dashboard a `TorchTrainer` minus Ray Train's placement-group
    cleaner: that detached actor polls Ray's state API, which the dashboard serves, and without one
    logs a warning every second for the whole run. Ray Train still removes the run's placement
    group when the run ends; only a crashed controller would leave it behind."""
    from ray.train.torch import TorchTrainer

    if state_api or not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer

    class TorchTrainerWithoutStateApi(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if type(c).__name__ != "PlacementGroupCleanerCallback"]

    return TorchTrainerWithoutStateApi


def _worker_loop(spec: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the unchanged training loop, reporting checkpoints to Ray."""
    _adopt_driver_environment(spec)
    import logging

    import ray.train
    import torch

    try:  # Ray Train logs every report's metrics at INFO (to a logger named by its file)
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass

    from rldiff.train.trainer import train

    torch.set_num_threads(spec["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    run_dir = Path(spec["run_dir"])
    if not run_dir.is_dir():
        raise TrainingError(
            f"the run directory {run_dir} does not exist on node {ray.util.get_node_ip_address()}: "
            "on a multi-node cluster put output_dir on a filesystem every node mounts"
        )
    ours = latest_checkpoint(run_dir / CHECKPOINT_DIR)
    if ours is not None and rank == 0:  # a resumed run, or a worker group Ray Train restarted
        registered = ray.train.get_checkpoint()  # Ray's last registered one: never newer than ours
        why = "resuming the run" if spec["resume"] else "the worker group was restarted"
        sys.stdout.write(
            f"[rldiff] {why}: continuing from {ours.name} ({read_trainer_state(ours).step} updates; "
            f"Ray Train's last registered checkpoint: "
            f"{Path(registered.path).name if registered is not None else 'none'})\n"
        )
        sys.stdout.flush()
    config: RecipeConfig = spec["config"]
    reporter = _Reporter(rank, world, config.train.steps, spec["show_progress"])
    train(
        config, run_dir, resume=True, command=spec["command"], show_progress=False, report=reporter
    )


class _Reporter:
    """The `report` hook of `train` inside a Ray worker: checkpoints to Ray, progress from rank 0."""

    def __init__(self, rank: int, world: int, total: int, show_progress: bool) -> None:
        self.rank, self.world, self.total, self.show = rank, world, total, show_progress
        self.start = time.monotonic()
        self.first_step: int | None = None

    def __call__(self, done: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        import ray.train

        if checkpoint is not None:  # the same steps on every worker: report is a collective
            from ray.train import Checkpoint, CheckpointUploadMode

            ray.train.report(
                {"step": done, **metrics},
                checkpoint=Checkpoint.from_directory(str(checkpoint)) if self.rank == 0 else None,
                checkpoint_dir_name=checkpoint.name,
                checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
            )
        if self.rank == 0 and self.show and any(not k.startswith("eval/") for k in metrics):
            # not print(): Ray Train patches print() in workers and the line would show twice
            sys.stdout.write(self._progress_line(done, metrics) + "\n")
            sys.stdout.flush()

    def _progress_line(self, done: int, metrics: dict[str, float]) -> str:
        if self.first_step is None:
            self.first_step, self.start = done, time.monotonic()
        elapsed = time.monotonic() - self.start
        rate = (done - self.first_step) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {(self.total - done) / rate:.0f} s" if rate > 0 and done < self.total else ""
        shown = "  ".join(
            f"{name}={metrics[name]:.4g}" for name in PROGRESS_METRICS if name in metrics
        )
        evaluated = "  (evaluated)" if any(k.startswith("eval/") for k in metrics) else ""
        return (
            f"[rldiff] update {done}/{self.total} ({self.world} workers)  {shown}{evaluated}"
            f"  [{elapsed:.0f} s{eta}]"
        )


def _adopt_driver_environment(spec: dict[str, Any]) -> None:
    """Make the worker import and resolve paths as the driver does (same machine or shared FS)."""
    for entry in reversed(spec["sys_path"]):
        if entry and entry not in sys.path and os.path.isdir(entry):
            sys.path.insert(0, entry)
    if os.path.isdir(spec["cwd"]):
        os.chdir(spec["cwd"])


def _failure_message(err: Exception, scale: ScaleSection) -> str:
    failures = getattr(err, "worker_failures", None) or {}
    if failures:
        rank, first = min(failures.items())
        cause = getattr(first, "cause", None) or first
        detail = f"worker {rank}: {type(cause).__name__}: {cause}"
    else:
        detail = f"{type(err).__name__}: {err}"
    retries = "unlimited" if scale.max_failures < 0 else f"scale.max_failures={scale.max_failures}"
    return f"training on Ray failed ({retries} restarts allowed): {detail}"


def _result_from_run_dir(config: RecipeConfig, run_dir: Path) -> TrainResult:
    """What `train` returned on rank 0, read back from the files it wrote."""
    import json

    steps = config.train.steps
    final: dict[str, float] = {}
    for entry in read_metrics(run_dir / "metrics.jsonl"):
        if entry["step"] == steps:
            final.update({k: v for k, v in entry.items() if k != "step"})
    train_metrics = {k: v for k, v in final.items() if not k.startswith("eval/")}
    eval_metrics: dict[str, float] = {}
    eval_file = run_dir / EVAL_FILE
    if eval_file.is_file():
        data = json.loads(eval_file.read_text())
        if data.get("step") == steps:
            eval_metrics = {k: float(v) for k, v in data["metrics"].items()}
    return TrainResult(run_dir, steps, train_metrics, eval_metrics)
