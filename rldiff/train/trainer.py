"""The one training loop: build a recipe's domain and algorithm, update, log, checkpoint, evaluate.

Nothing here reads globals or assumes it owns the process beyond what `accelerate` needs, so the
same `train` runs in a plain process (`rldiff run`) or inside a distributed worker. Only the main
process writes files.

Randomness: the construction of domain and algorithm is seeded with `derive_seed(seed, "build")`;
update `i` receives `torch.Generator().manual_seed(derive_seed(seed, "update", i))` and the
evaluation after `n` updates `derive_seed(seed, "eval", n)`. Draws therefore depend only on the
seed and the step, and a resumed run reproduces an uninterrupted one bit for bit.

Data parallel (N processes: Ray Train workers, `accelerate launch`): process `r` builds the
algorithm with `batch_size / N` (`per_process_config`) and draws update `i` from
`derive_seed(seed, "update", i, r)` (`update_seed`), so each process samples its own share of the
batch; the algorithms average gradients over processes (`rldiff.algorithms.common.sync_gradients`)
and the trainer averages the returned metrics, so N processes x batch B/N follow the same
objective as one process x batch B. Only the main process (rank 0) writes files.

Run directory after `train`:

    config.yaml        (written by the CLI) the resolved recipe
    metrics.jsonl      one JSON object per logged step (`rldiff.train.logging`)
    tensorboard/       TensorBoard events (logging.tensorboard)
    checkpoints/       step_XXXXXX/ folders and the `latest` pointer (`rldiff.train.checkpoint`)
                       (with `train.ema_decay`, evaluations sample from the parameters' moving average)
    eval/step_XXXXXX/  what `domain.evaluate` wrote for each evaluation
    eval.json          the final evaluation's metrics
    plots/             reward.png, kl.png, loss.png
    summary.md         final metrics and the command
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from rldiff.config.instantiate import instantiate, resolve_import_path
from rldiff.config.schema import RecipeConfig
from rldiff.train.checkpoint import (
    checkpoint_name,
    discard_uncommitted,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from rldiff.train.ema import ParameterEMA
from rldiff.train.logging import (
    METRICS_FILE,
    MetricsLogger,
    read_metrics,
    truncate_metrics,
    write_summary,
)
from rldiff.train.plots import CURVES, plot_curves
from rldiff.train.protocol import Algorithm, Domain

CHECKPOINT_DIR = "checkpoints"
EVAL_DIR = "eval"
EVAL_FILE = "eval.json"
PLOTS_DIR = "plots"
SUMMARY_FILE = "summary.md"

#: `report(updates_done, metrics, checkpoint_folder_or_None)`, see `train`.
ReportFn = Callable[[int, dict[str, float], "Path | None"], None]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite metric, a component breaking the protocol, ...)."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train` returns.

    Attributes:
        run_dir: The run directory.
        step: Updates completed.
        train_metrics: The last update's metrics ({} when a resumed run had nothing left to do).
        eval_metrics: The final evaluation's metrics ({} when `train.eval_samples` is 0).
    """

    run_dir: Path
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """What `evaluate_checkpoint` returns.

    Attributes:
        step: Updates completed by the evaluated checkpoint.
        num_samples: Samples drawn.
        metrics: What `domain.evaluate` returned.
        out_dir: Where `domain.evaluate` wrote its outputs.
    """

    step: int
    num_samples: int
    metrics: dict[str, float]
    out_dir: Path


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed that depends only on `seed` and `keys` (BLAKE2b of their text).

    Args:
        seed: The run's seed.
        *keys: What the draw is for, e.g. `("update", 17)`.

    Returns:
        An integer in [0, 2**63) for `torch.Generator().manual_seed`.
    """
    text = ":".join(str(part) for part in (seed, *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def update_seed(seed: int, step: int, rank: int = 0, world_size: int = 1) -> int:
    """The seed of update `step`'s generator on process `rank` of `world_size`.

    One process draws from `derive_seed(seed, "update", step)`; with several data-parallel
    processes each draws its own share from `derive_seed(seed, "update", step, rank)`.

    Args:
        seed: The run's seed.
        step: The update index (0-based).
        rank: This process's index among the data-parallel processes.
        world_size: The number of data-parallel processes.

    Returns:
        A seed for `torch.Generator().manual_seed`.
    """
    if world_size == 1:
        return derive_seed(seed, "update", step)
    return derive_seed(seed, "update", step, rank)


def per_process_config(config: RecipeConfig, num_processes: int) -> RecipeConfig:
    """The recipe one of `num_processes` data-parallel processes runs: `algorithm.batch_size`
    (the recipe's value, or the algorithm's default) divided by `num_processes`.

    Algorithms without a `batch_size` parameter are left unchanged.

    Args:
        config: A validated recipe; its `algorithm.batch_size` is the global batch.
        num_processes: The number of data-parallel processes (>= 1).

    Returns:
        `config` itself for one process, otherwise a copy with the per-process batch size.

    Raises:
        TrainingError: The batch size is not a multiple of `num_processes`.
    """
    if num_processes == 1:
        return config
    algorithm = dict(config.algorithm)
    batch = algorithm.get("batch_size")
    if batch is None:
        try:
            params = inspect.signature(resolve_import_path(algorithm["_component_"])).parameters
        except (TypeError, ValueError):
            return config
        if "batch_size" not in params or params["batch_size"].default is inspect.Parameter.empty:
            return config
        batch = params["batch_size"].default
    if batch % num_processes:
        raise TrainingError(
            f"algorithm.batch_size={batch} (the global batch) is not a multiple of the "
            f"{num_processes} data-parallel processes; choose a batch size divisible by "
            f"{num_processes} or another number of workers"
        )
    algorithm["batch_size"] = batch // num_processes
    return config.model_copy(update={"algorithm": algorithm})


def make_accelerator(config: RecipeConfig) -> Accelerator:
    """The `accelerate.Accelerator` a recipe's `train:` section asks for (and its CPU threads:
    small models run several times faster on one thread than on oversubscribed cores)."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    return Accelerator(
        cpu=config.train.cpu,
        mixed_precision=config.train.mixed_precision,
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
    )


def build(config: RecipeConfig, accelerator: Accelerator) -> tuple[Domain, Algorithm]:
    """Build a recipe's domain, then its algorithm (given `domain=` and `accelerator=`).

    Construction is seeded with `derive_seed(config.seed, "build")` so that parameters that are
    not checkpointed (frozen pre-trained weights, fixed datasets) come out the same every time
    (and on every data-parallel process). With several processes the algorithm gets the
    per-process batch size (`per_process_config`).

    Args:
        config: A validated recipe.
        accelerator: The run's accelerator.

    Returns:
        `(domain, algorithm)`.

    Raises:
        TrainingError: The built objects lack methods the training loop calls.
    """
    config = per_process_config(config, accelerator.num_processes)
    set_seed(derive_seed(config.seed, "build") % 2**32)
    domain = instantiate(config.domain)
    _require_methods(domain, Domain, config.domain["_component_"])
    algorithm = instantiate(config.algorithm, domain=domain, accelerator=accelerator)
    _require_methods(algorithm, Algorithm, config.algorithm["_component_"])
    return domain, algorithm


def train(
    config: RecipeConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    command: str = "",
    show_progress: bool = True,
    report: ReportFn | None = None,
) -> TrainResult:
    """Run (or continue) a training run.

    Runs unchanged in one process or in each of N data-parallel processes (Ray Train workers,
    `accelerate launch`); see the module docstring for how the batch and the draws are shared.

    Args:
        config: A validated recipe (`rldiff.config.load_recipe(...).config`).
        run_dir: The run directory; it must exist. Outputs are listed in this module's docstring.
        resume: Continue from the checkpoint `checkpoints/latest` names (from scratch if there is
            none): later checkpoints and `metrics.jsonl` entries of the interrupted run are dropped.
        command: The command line that started the run, for `summary.md`.
        show_progress: Show a tqdm progress bar (on the main process).
        report: Called on every process after each logged update and after each checkpoint, as
            `report(updates_done, metrics, checkpoint)`: the metrics logged for that step (train
            metrics, plus `eval/...` after an evaluation) and the checkpoint folder just committed
            (None when none was written). Every process calls it at the same steps, so it may be
            a collective such as `ray.train.report`.

    Returns:
        The steps completed and the final metrics.

    Raises:
        TrainingError: A metric was NaN or infinite (the last checkpoint is left intact), or the
            domain or algorithm does not implement the protocol.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    metrics_path = run_dir / METRICS_FILE
    t = config.train
    accelerator = make_accelerator(config)
    main = accelerator.is_main_process
    rank, world_size = accelerator.process_index, accelerator.num_processes
    domain, algorithm = build(config, accelerator)
    base_lrs = _base_learning_rates(algorithm)  # before a checkpoint overwrites them with decayed ones
    ema = make_ema(config, algorithm)

    start = 0
    if resume:
        if main:
            discard_uncommitted(ckpt_dir)
        accelerator.wait_for_everyone()
        checkpoint = latest_checkpoint(ckpt_dir)
        if checkpoint is not None:
            start = load_checkpoint(checkpoint, algorithm, accelerator, ema).step
        if main:
            truncate_metrics(metrics_path, start)
    if start > t.steps:
        raise TrainingError(
            f"{run_dir} has {start} updates done, more than train.steps={t.steps}; "
            f"set train.steps >= {start} to continue it"
        )

    train_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    logger = MetricsLogger(
        run_dir,
        tensorboard=config.logging.tensorboard,
        wandb_project=config.logging.wandb_project if config.logging.wandb else None,
        config=config.model_dump(mode="json"),
        resume_step=start if resume else None,
        enabled=main,
    )
    bar = tqdm(
        total=t.steps,
        initial=start,
        desc=run_dir.name,
        unit="update",
        dynamic_ncols=True,
        disable=not (show_progress and main),
    )
    with logger, bar:
        for step in range(start, t.steps):
            _set_learning_rates(algorithm, base_lrs, lr_factor(t.lr_schedule, step, t.steps, t.warmup_steps))
            generator = torch.Generator().manual_seed(update_seed(config.seed, step, rank, world_size))
            train_metrics = _mean_over_processes(
                {name: float(v) for name, v in algorithm.update(step, generator).items()},
                accelerator,
            )
            done = step + 1
            _check_finite(train_metrics, done, ckpt_dir)
            if ema is not None:
                ema.step()
            bar.set_postfix(
                {k: f"{train_metrics[k]:.4g}" for k in CURVES if k in train_metrics}, refresh=False
            )
            bar.update(1)
            last = done == t.steps
            logged: dict[str, float] = {}
            if done % t.log_every == 0 or last:
                logger.log(done, train_metrics)
                logged.update(train_metrics)
            if t.eval_samples and (last or (t.eval_every and done % t.eval_every == 0)):
                result = _evaluate(algorithm, domain, config, run_dir, done, t.eval_samples, main, ema)
                eval_metrics = result.metrics
                logger.log(done, {f"eval/{k}": v for k, v in eval_metrics.items()})
                logged.update({f"eval/{k}": v for k, v in eval_metrics.items()})
                if last and main:
                    _write_eval_json(run_dir, result)
            saved = None
            if last or (t.checkpoint_every and done % t.checkpoint_every == 0):
                saved = save_checkpoint(
                    ckpt_dir,
                    done,
                    algorithm,
                    accelerator,
                    seed=config.seed,
                    keep=t.keep_checkpoints,
                    ema=ema,
                )
            if report is not None and (logged or saved is not None):
                report(done, logged, saved)

        if t.steps == 0:  # a sampling-only recipe (guidance baselines): evaluate the built policy
            if t.eval_samples:
                result = _evaluate(algorithm, domain, config, run_dir, 0, t.eval_samples, main)
                eval_metrics = result.metrics
                logger.log(0, {f"eval/{k}": v for k, v in eval_metrics.items()})
                if main:
                    _write_eval_json(run_dir, result)
            saved = save_checkpoint(
                ckpt_dir, 0, algorithm, accelerator, seed=config.seed, keep=t.keep_checkpoints
            )
            if report is not None:
                report(0, {f"eval/{k}": v for k, v in eval_metrics.items()}, saved)

    if main:
        entries = read_metrics(metrics_path)
        if start == t.steps and t.steps > 0:  # resumed a finished run: report what it logged
            final = {k: v for e in entries if e["step"] == t.steps for k, v in e.items()}
            final.pop("step", None)
            train_metrics = {k: v for k, v in final.items() if not k.startswith("eval/")}
            eval_metrics = {
                k.removeprefix("eval/"): v for k, v in final.items() if k.startswith("eval/")
            }
        plots = plot_curves(entries, run_dir / PLOTS_DIR)
        write_summary(
            run_dir / SUMMARY_FILE,
            description=config.description,
            command=command,
            step=t.steps,
            train_metrics=train_metrics,
            eval_metrics=eval_metrics,
            plots=plots,
        )
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, t.steps, train_metrics, eval_metrics)


def evaluate_checkpoint(
    config: RecipeConfig, run_dir: Path, *, num_samples: int | None = None
) -> EvalResult:
    """Rebuild a run's domain and algorithm, load its latest checkpoint and evaluate it.

    Uses the same generator as the training run's evaluation at that step, so with the same
    number of samples it reproduces the training run's final evaluation exactly. Writes
    `<run_dir>/eval.json` and the domain's outputs into `<run_dir>/eval/step_XXXXXX/`.

    Args:
        config: The run's validated config (from its `config.yaml`).
        run_dir: The run directory.
        num_samples: Samples to draw; default `train.eval_samples`.

    Returns:
        The evaluation.

    Raises:
        TrainingError: The run has no checkpoint.
    """
    run_dir = Path(run_dir)
    run = load_run(config, run_dir)
    num = num_samples if num_samples is not None else config.train.eval_samples
    main = run.accelerator.is_main_process
    result = _evaluate(run.algorithm, run.domain, config, run_dir, run.step, num, main, run.ema)
    if main:
        _write_eval_json(run_dir, result)
    run.accelerator.wait_for_everyone()
    return result


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """What `load_run` returns: a run rebuilt from its recipe with its latest checkpoint loaded.

    Attributes:
        accelerator: The accelerator the run was rebuilt with.
        domain: The domain.
        algorithm: The algorithm, holding the checkpoint's raw (trained) parameters.
        ema: The checkpoint's parameter average (`train.ema_decay`), None without one; sample from
            what the run evaluates with `with run.ema.averaged(): ...`.
        step: Updates the checkpoint had completed.
    """

    accelerator: Accelerator
    domain: Domain
    algorithm: Algorithm
    ema: ParameterEMA | None
    step: int


def load_run(config: RecipeConfig, run_dir: Path) -> LoadedRun:
    """Rebuild a run's domain and algorithm from its config and load its latest checkpoint.

    Args:
        config: The run's validated config (from its `config.yaml`).
        run_dir: The run directory.

    Returns:
        The rebuilt run.

    Raises:
        TrainingError: The run has no checkpoint.
    """
    run_dir = Path(run_dir)
    checkpoint = latest_checkpoint(run_dir / CHECKPOINT_DIR)
    if checkpoint is None:
        raise TrainingError(f"{run_dir} has no checkpoint ({run_dir / CHECKPOINT_DIR}/latest)")
    accelerator = make_accelerator(config)
    domain, algorithm = build(config, accelerator)
    ema = make_ema(config, algorithm)
    step = load_checkpoint(checkpoint, algorithm, accelerator, ema).step
    return LoadedRun(accelerator, domain, algorithm, ema, step)


def make_ema(config: RecipeConfig, algorithm: Algorithm) -> ParameterEMA | None:
    """The moving average of the algorithm's trainable parameters that `train.ema_decay` asks for
    (None when it is 0)."""
    t = config.train
    return ParameterEMA(algorithm.modules(), t.ema_decay, t.ema_start) if t.ema_decay > 0 else None


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The learning-rate multiplier for update `step` (0-based) of `total`.

    Args:
        schedule: "constant", "cosine" (half cosine to 0) or "linear" (to 0).
        step: The update index.
        total: train.steps.
        warmup: Linear warm-up updates (from 1/(warmup+1) to 1).

    Returns:
        A factor in (0, 1].
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(total - warmup, 1)
    frac = min(max(step - warmup, 0) / span, 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    if schedule == "linear":
        return 1.0 - frac
    return 1.0


def _mean_over_processes(metrics: dict[str, float], accelerator: Accelerator) -> dict[str, float]:
    """Average scalar metrics over data-parallel processes (a no-op in one process).

    Each process reports metrics of its own share of the batch; their mean is the metric of the
    whole batch for means over samples (reward, loss, accuracy), and leaves quantities that are
    already synchronised (the gradient norm after `sync_gradients`) unchanged.
    """
    if accelerator.num_processes == 1 or not metrics:
        return metrics
    names = sorted(metrics)
    values = torch.tensor([metrics[n] for n in names], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean").cpu()
    mean = {name: float(v) for name, v in zip(names, values)}
    return {name: mean[name] for name in metrics}  # the algorithm's order


def _base_learning_rates(algorithm: Algorithm) -> dict[str, list[float]]:
    return {name: [g["lr"] for g in opt.param_groups] for name, opt in algorithm.optimizers().items()}


def _set_learning_rates(algorithm: Algorithm, base: dict[str, list[float]], factor: float) -> None:
    """Learning rates are a pure function of the step, so a resumed run needs no scheduler state."""
    for name, opt in algorithm.optimizers().items():
        for group, lr in zip(opt.param_groups, base[name]):
            group["lr"] = lr * factor


def _evaluate(
    algorithm: Algorithm,
    domain: Domain,
    config: RecipeConfig,
    run_dir: Path,
    step: int,
    num: int,
    main: bool,
    ema: ParameterEMA | None = None,
) -> EvalResult:
    """Sample on every process (collectives stay matched); the main process scores the samples.
    With a parameter average (`train.ema_decay`) the averaged parameters are in place throughout
    (the domain's exact analyses may call the policy again)."""
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "eval", step))
    out_dir = run_dir / EVAL_DIR / checkpoint_name(step)
    metrics: dict[str, float] = {}
    with ema.averaged() if ema is not None else contextlib.nullcontext():
        samples = algorithm.sample(num, generator)
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
            metrics = {k: float(v) for k, v in domain.evaluate(samples, out_dir).items()}
    return EvalResult(step=step, num_samples=num, metrics=metrics, out_dir=out_dir)


def _write_eval_json(run_dir: Path, result: EvalResult) -> None:
    data = {
        "step": result.step,
        "num_samples": result.num_samples,
        "metrics": result.metrics,
        "out_dir": str(result.out_dir.relative_to(run_dir)),
    }
    (run_dir / EVAL_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _check_finite(metrics: dict[str, float], step: int, ckpt_dir: Path) -> None:
    bad = [name for name, value in metrics.items() if not math.isfinite(value)]
    if not bad:
        return
    checkpoint = latest_checkpoint(ckpt_dir)
    kept = (
        f"the last checkpoint, {checkpoint}, is intact"
        if checkpoint is not None
        else "no checkpoint had been written yet"
    )
    values = ", ".join(f"{name}={value}" for name, value in metrics.items())
    raise TrainingError(
        f"metric {', '.join(repr(b) for b in bad)} is not finite at step {step} ({values}); "
        f"training stopped and {kept}. Lower the learning rate or check the reward, then start "
        f"again or continue with resume=<run dir>."
    )


def _require_methods(obj: Any, protocol: type, component: str) -> None:
    names = [n for n, v in vars(protocol).items() if not n.startswith("_") and callable(v)]
    missing = [n for n in names if not callable(getattr(obj, n, None))]
    if missing:
        raise TrainingError(
            f"{component} built a {type(obj).__name__}, which lacks {', '.join(missing)}: "
            f"see rldiff.train.protocol.{protocol.__name__} for what the trainer calls"
        )
