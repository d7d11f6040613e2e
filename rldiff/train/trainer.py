"""The one training loop: build a recipe's domain and algorithm, update, log, checkpoint, evaluate.

Nothing here reads globals or assumes it owns the process beyond what `accelerate` needs, so the
same `train` runs in a plain process (`rldiff run`) or inside a distributed worker. Only the main
process writes files.

Randomness: the construction of domain and algorithm is seeded with `derive_seed(seed, "build")`;
update `i` receives `torch.Generator().manual_seed(derive_seed(seed, "update", i))` and the
evaluation after `n` updates `derive_seed(seed, "eval", n)`. Draws therefore depend only on the
seed and the step, and a resumed run reproduces an uninterrupted one bit for bit.

Run directory after `train`:

    config.yaml        (written by the CLI) the resolved recipe
    metrics.jsonl      one JSON object per logged step (`rldiff.train.logging`)
    tensorboard/       TensorBoard events (logging.tensorboard)
    checkpoints/       step_XXXXXX/ folders and the `latest` pointer (`rldiff.train.checkpoint`)
    eval/step_XXXXXX/  what `domain.evaluate` wrote for each evaluation
    eval.json          the final evaluation's metrics
    plots/             reward.png, kl.png, loss.png
    summary.md         final metrics and the command
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from rldiff.config.instantiate import instantiate
from rldiff.config.schema import RecipeConfig
from rldiff.train.checkpoint import (
    checkpoint_name,
    discard_uncommitted,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
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


def make_accelerator(config: RecipeConfig) -> Accelerator:
    """The `accelerate.Accelerator` a recipe's `train:` section asks for."""
    return Accelerator(
        cpu=config.train.cpu,
        mixed_precision=config.train.mixed_precision,
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
    )


def build(config: RecipeConfig, accelerator: Accelerator) -> tuple[Domain, Algorithm]:
    """Build a recipe's domain, then its algorithm (given `domain=` and `accelerator=`).

    Construction is seeded with `derive_seed(config.seed, "build")` so that parameters that are
    not checkpointed (frozen pre-trained weights, fixed datasets) come out the same every time.

    Args:
        config: A validated recipe.
        accelerator: The run's accelerator.

    Returns:
        `(domain, algorithm)`.

    Raises:
        TrainingError: The built objects lack methods the training loop calls.
    """
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
) -> TrainResult:
    """Run (or continue) a training run.

    Args:
        config: A validated recipe (`rldiff.config.load_recipe(...).config`).
        run_dir: The run directory; it must exist. Outputs are listed in this module's docstring.
        resume: Continue from the checkpoint `checkpoints/latest` names (from scratch if there is
            none): later checkpoints and `metrics.jsonl` entries of the interrupted run are dropped.
        command: The command line that started the run, for `summary.md`.
        show_progress: Show a tqdm progress bar (on the main process).

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
    domain, algorithm = build(config, accelerator)
    base_lrs = _base_learning_rates(algorithm)  # before a checkpoint overwrites them with decayed ones

    start = 0
    if resume:
        if main:
            discard_uncommitted(ckpt_dir)
        accelerator.wait_for_everyone()
        checkpoint = latest_checkpoint(ckpt_dir)
        if checkpoint is not None:
            start = load_checkpoint(checkpoint, algorithm, accelerator).step
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
            generator = torch.Generator().manual_seed(derive_seed(config.seed, "update", step))
            train_metrics = {
                name: float(v) for name, v in algorithm.update(step, generator).items()
            }
            done = step + 1
            _check_finite(train_metrics, done, ckpt_dir)
            bar.set_postfix(
                {k: f"{train_metrics[k]:.4g}" for k in CURVES if k in train_metrics}, refresh=False
            )
            bar.update(1)
            last = done == t.steps
            if done % t.log_every == 0 or last:
                logger.log(done, train_metrics)
            if t.eval_samples and (last or (t.eval_every and done % t.eval_every == 0)):
                result = _evaluate(algorithm, domain, config, run_dir, done, t.eval_samples, main)
                eval_metrics = result.metrics
                logger.log(done, {f"eval/{k}": v for k, v in eval_metrics.items()})
                if last and main:
                    _write_eval_json(run_dir, result)
            if last or (t.checkpoint_every and done % t.checkpoint_every == 0):
                save_checkpoint(
                    ckpt_dir,
                    done,
                    algorithm,
                    accelerator,
                    seed=config.seed,
                    keep=t.keep_checkpoints,
                )

        if t.steps == 0:  # a sampling-only recipe (guidance baselines): evaluate the built policy
            if t.eval_samples:
                result = _evaluate(algorithm, domain, config, run_dir, 0, t.eval_samples, main)
                eval_metrics = result.metrics
                logger.log(0, {f"eval/{k}": v for k, v in eval_metrics.items()})
                if main:
                    _write_eval_json(run_dir, result)
            save_checkpoint(ckpt_dir, 0, algorithm, accelerator, seed=config.seed, keep=t.keep_checkpoints)

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
    checkpoint = latest_checkpoint(run_dir / CHECKPOINT_DIR)
    if checkpoint is None:
        raise TrainingError(f"{run_dir} has no checkpoint ({run_dir / CHECKPOINT_DIR}/latest)")
    accelerator = make_accelerator(config)
    domain, algorithm = build(config, accelerator)
    step = load_checkpoint(checkpoint, algorithm, accelerator).step
    num = num_samples if num_samples is not None else config.train.eval_samples
    result = _evaluate(algorithm, domain, config, run_dir, step, num, accelerator.is_main_process)
    if accelerator.is_main_process:
        _write_eval_json(run_dir, result)
    accelerator.wait_for_everyone()
    return result


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
) -> EvalResult:
    """Sample on every process (collectives stay matched); the main process scores the samples."""
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "eval", step))
    samples = algorithm.sample(num, generator)
    out_dir = run_dir / EVAL_DIR / checkpoint_name(step)
    metrics: dict[str, float] = {}
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
