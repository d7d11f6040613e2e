"""`rldiff`: run, validate, list, copy and evaluate recipes.

    rldiff ls                                    shipped recipes and what they do
    rldiff run toy/ctrl train.steps=100          validate, then train; prints where outputs are
    rldiff run toy/ctrl resume=runs/toy/ctrl/X   continue an interrupted run in place
    rldiff run toy/ctrl scale.num_workers=2      train on 2 Ray workers (a local Ray on 127.0.0.1)
    rldiff launch toy/ctrl --address HOST:PORT   train on an existing Ray cluster (docs/ray.md)
    rldiff eval runs/toy/ctrl/X --samples 5000   evaluate a run's latest checkpoint
    rldiff validate my_recipe.yaml               check a recipe without running it
    rldiff cp toy/ctrl my_recipe.yaml            copy a shipped recipe to edit it

Exit status: 0 on success, 2 for an invalid recipe or command line (nothing is created), 1 when
training fails, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import rldiff
from rldiff.config.instantiate import did_you_mean
from rldiff.config.loader import (
    RECIPES_DIR,
    Recipe,
    RecipeError,
    dump_yaml,
    load_recipe,
    parse_recipe_text,
    shipped_recipes,
)
from rldiff.config.schema import Problem

CONFIG_FILE = "config.yaml"
RESUME_KEY = "resume"
#: Keys that may differ between a run's saved config and the config that resumes it: they change
#: how long the run goes on and what is recorded, never the numbers it computes.
RESUMABLE_CHANGES = (
    "description",
    "output_dir",
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_samples",
    "logging",
    "scale.address",
    "scale.max_failures",
    "scale.placement_strategy",
    "scale.dashboard",
)
_OUTPUTS = (
    ("config.yaml", "the resolved recipe"),
    ("metrics.jsonl", "one JSON line per logged step"),
    ("tensorboard/", "TensorBoard events: tensorboard --logdir {run_dir}"),
    ("checkpoints/", "step_XXXXXX/ folders and the `latest` pointer"),
    ("eval/", "what the domain wrote at each evaluation"),
    ("eval.json", "final evaluation metrics"),
    ("plots/", "reward / kl / loss curves"),
    ("summary.md", "final metrics and the command"),
)


class CommandError(Exception):
    """A command-line mistake that is not about a recipe's contents (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `rldiff` command line.

    Args:
        argv: Arguments without the program name; default `sys.argv[1:]`.

    Returns:
        The exit status.
    """
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]  # KEY=VALUE overrides given after options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args)
    except (RecipeError, CommandError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rldiff",
        description="Fine-tune diffusion models with RL, one YAML recipe per job.",
        epilog=f"Shipped recipes live in {RECIPES_DIR}; `rldiff ls` lists them.",
    )
    parser.add_argument("--version", action="version", version=f"rldiff {rldiff.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter
    overrides_help = (
        "overrides as dotted.key=value, values parsed as YAML: train.steps=100 "
        "algorithm.lr=3e-4 'domain.means=[[0,0],[2,2]]'"
    )

    run = commands.add_parser(
        "run",
        help="validate a recipe, then train",
        formatter_class=raw,
        description="Validate RECIPE with the overrides applied, print the resolved config, save\n"
        "it as config.yaml in a new run directory (output_dir, default\n"
        "runs/<recipe name>/<timestamp>) and train. Nothing is created if the recipe is\n"
        "invalid.\n\n"
        "Pass resume=RUN_DIR to continue an interrupted run in place from its latest\n"
        "checkpoint; the resumed run draws the same random numbers as an uninterrupted\n"
        f"one. Only these keys may differ from the run's config.yaml: "
        f"{', '.join(RESUMABLE_CHANGES)}.",
        epilog="examples:\n  rldiff run toy/ctrl\n  rldiff run toy/ctrl train.steps=50 seed=3\n"
        "  rldiff run toy/ctrl resume=runs/toy/ctrl/20250101-120000",
    )
    run.add_argument("recipe", metavar="RECIPE", help="shipped recipe name or path to a YAML file")
    run.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=overrides_help)
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.set_defaults(handler=_run)

    launch = commands.add_parser(
        "launch",
        help="train a recipe on a Ray cluster",
        formatter_class=raw,
        description="Like `rldiff run`, on the Ray cluster at ADDRESS: ray.train's TorchTrainer\n"
        "runs the training loop on the recipe's scale.num_workers workers (--workers\n"
        "overrides it), each sampling batch_size / workers trajectories per update. The\n"
        "run directory must be on a filesystem every node of the cluster sees. Token\n"
        "authentication: give this process the cluster's token (RAY_AUTH_TOKEN,\n"
        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). See docs/ray.md.\n\n"
        "`rldiff launch RECIPE --address A --workers N` is `rldiff run RECIPE\n"
        "scale.address=A scale.num_workers=N`; to start a local Ray instead, use\n"
        "`rldiff run RECIPE scale.num_workers=N`.",
        epilog="examples:\n  rldiff launch toy/ctrl --address 127.0.0.1:6379 --workers 2\n"
        "  rldiff launch toy/ctrl --address auto train.steps=100\n"
        "  ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\\n"
        "      rldiff launch toy/ctrl --address auto --workers 4",
    )
    launch.add_argument("recipe", metavar="RECIPE", help="shipped recipe name or YAML path")
    launch.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=overrides_help)
    launch.add_argument(
        "--address",
        default=None,
        help="Ray cluster: HOST:PORT (its GCS port), 'auto' or ray://HOST:PORT; default: the "
        "recipe's scale.address, else RAY_ADDRESS",
    )
    launch.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help="number of workers (scale.num_workers)")
    launch.add_argument("--cpus-per-worker", type=float, default=None, metavar="C",
                        help="CPUs per worker (scale.cpus_per_worker)")
    launch.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                        help="GPUs per worker (scale.gpus_per_worker)")
    launch.add_argument("--max-failures", type=int, default=None, metavar="K",
                        help="worker-group restarts from the last checkpoint (scale.max_failures)")
    launch.add_argument("--no-progress", action="store_true", help="hide the progress lines")
    launch.set_defaults(handler=_launch)

    validate = commands.add_parser(
        "validate",
        help="check a recipe without running it",
        description="Check RECIPE (with overrides) exactly as `rldiff run` does, without building "
        "or writing anything. Exit status 0 if valid, 2 with the problems otherwise.",
    )
    validate.add_argument("recipe", metavar="RECIPE", help="shipped recipe name or YAML path")
    validate.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=overrides_help)
    validate.set_defaults(handler=_validate)

    ls = commands.add_parser(
        "ls",
        help="list the shipped recipes",
        description="List every shipped recipe with its description.",
    )
    ls.set_defaults(handler=_ls)

    cp = commands.add_parser(
        "cp",
        help="copy a shipped recipe to edit it",
        description="Copy the shipped recipe NAME to DEST (a file, or a folder to copy into). "
        "Existing files are not overwritten.",
    )
    cp.add_argument("name", metavar="NAME", help="shipped recipe name, e.g. toy/ctrl")
    cp.add_argument("dest", metavar="DEST", type=Path, help="destination file or folder")
    cp.set_defaults(handler=_cp)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a run's latest checkpoint",
        description="Rebuild the domain and algorithm from RUN_DIR/config.yaml, load the latest "
        "checkpoint, draw samples, score them with the domain, write RUN_DIR/eval.json and "
        "print the metrics.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory")
    evaluate.add_argument(
        "--samples",
        type=_positive_int,
        default=None,
        metavar="N",
        help="samples to draw (default: the recipe's train.eval_samples)",
    )
    evaluate.set_defaults(handler=_eval)
    return parser


def _run(args: argparse.Namespace) -> int:
    overrides, resume = _split_resume(args.overrides)
    recipe = load_recipe(args.recipe, overrides)
    command = shlex.join(["rldiff", "run", args.recipe, *args.overrides])
    from rldiff.scale.ray_train import check_scale, wants_ray

    use_ray = wants_ray(recipe.config.scale)
    if use_ray and (problems := check_scale(recipe.config)):
        raise recipe.error(problems[0].key, problems[0].message)
    run_dir = _resume_dir(recipe, resume) if resume is not None else _new_run_dir(recipe)
    from rldiff.train.trainer import TrainingError, train  # heavy imports, only when training

    text = dump_yaml(recipe.resolved)
    print(f"# resolved config -> {run_dir / CONFIG_FILE}\n{text}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_line = shlex.join(["rldiff", "run", str(run_dir / CONFIG_FILE), f"resume={run_dir}"])
    header = f"# {command}\n# continue this run: {resume_line}\n"
    (run_dir / CONFIG_FILE).write_text(header + text, encoding="utf-8")
    try:
        if use_ray:
            from rldiff.scale.cluster import RayStartError
            from rldiff.scale.ray_train import train_distributed

            scale = recipe.config.scale
            where = f"the Ray cluster at {scale.address}" if scale.address else "a local Ray"
            print(f"training on {scale.num_workers} worker(s) on {where}", flush=True)
            try:
                result = train_distributed(
                    recipe.config,
                    run_dir,
                    resume=resume is not None,
                    command=command,
                    show_progress=not args.no_progress,
                )
            except RayStartError as err:
                raise TrainingError(str(err)) from err
        else:
            result = train(
                recipe.config,
                run_dir,
                resume=resume is not None,
                command=command,
                show_progress=not args.no_progress,
            )
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: {resume_line}", file=sys.stderr)
        return 130
    print(f"\nDone: {result.step} updates. Outputs in {run_dir}/")
    for name, what in _OUTPUTS:
        if (run_dir / name.rstrip("/")).exists():
            print(f"  {name:<15} {what.format(run_dir=run_dir)}")
    if result.eval_metrics:
        print("Final evaluation: " + _format_metrics(result.eval_metrics))
    print(f"Evaluate again: rldiff eval {shlex.quote(str(run_dir))}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    flags = {
        "scale.address": args.address,
        "scale.num_workers": args.workers,
        "scale.cpus_per_worker": args.cpus_per_worker,
        "scale.gpus_per_worker": args.gpus_per_worker,
        "scale.max_failures": args.max_failures,
    }
    extra = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    args.overrides = [*args.overrides, *extra]
    if args.address is None:
        overrides, _ = _split_resume(args.overrides)
        scale = load_recipe(args.recipe, overrides).config.scale
        if (scale is None or scale.address is None) and not os.environ.get("RAY_ADDRESS"):
            raise CommandError(
                "rldiff launch needs a Ray cluster: pass --address HOST:PORT (or 'auto'), set "
                "scale.address in the recipe, or set RAY_ADDRESS. To start a local Ray instead, "
                f"run: rldiff run {args.recipe} scale.num_workers=N"
            )
        if scale is None or scale.address is None:
            args.overrides.append(f"scale.address={json.dumps(os.environ['RAY_ADDRESS'])}")
    return _run(args)


def _validate(args: argparse.Namespace) -> int:
    overrides, _ = _split_resume(args.overrides)
    recipe = load_recipe(args.recipe, overrides)
    from rldiff.scale.ray_train import check_scale, wants_ray

    if wants_ray(recipe.config.scale) and (problems := check_scale(recipe.config)):
        raise recipe.error(problems[0].key, problems[0].message)
    print(f"{recipe.path}: valid")
    print(f"  description: {recipe.config.description}")
    print(f"  domain:      {recipe.config.domain['_component_']}")
    print(f"  algorithm:   {recipe.config.algorithm['_component_']}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    recipes = shipped_recipes()
    if not recipes:
        print(f"no recipes in {RECIPES_DIR}")
        return 0
    width = max(len(name) for name in recipes)
    for name, path in recipes.items():
        print(f"{name:<{width}}  {_description(path)}")
    return 0


def _cp(args: argparse.Namespace) -> int:
    recipes = shipped_recipes()
    if args.name not in recipes:
        raise CommandError(
            f"no shipped recipe '{args.name}'{did_you_mean(args.name, list(recipes)) or '.'} "
            f"Shipped recipes: {', '.join(recipes) or '(none)'}"
        )
    dest = args.dest / f"{Path(args.name).name}.yaml" if args.dest.is_dir() else args.dest
    if dest.exists():
        raise CommandError(f"{dest} already exists; not overwriting it")
    lines = recipes[args.name].read_text(encoding="utf-8").splitlines(keepends=True)
    if lines and lines[0].startswith("# rldiff run "):
        lines[0] = f"# rldiff run {dest}\n"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(lines), encoding="utf-8")
    print(f"copied {args.name} to {dest}; run it with: rldiff run {dest}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    if not (run_dir / CONFIG_FILE).is_file():
        raise CommandError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}")
    recipe = load_recipe(run_dir / CONFIG_FILE)
    from rldiff.train.checkpoint import latest_checkpoint
    from rldiff.train.trainer import CHECKPOINT_DIR, EVAL_FILE, evaluate_checkpoint

    if latest_checkpoint(run_dir / CHECKPOINT_DIR) is None:
        raise CommandError(f"{run_dir} has no checkpoint yet ({CHECKPOINT_DIR}/latest is missing)")
    result = evaluate_checkpoint(recipe.config, run_dir, num_samples=args.samples)
    print(f"step {result.step}, {result.num_samples} samples: {_format_metrics(result.metrics)}")
    print(f"wrote {run_dir / EVAL_FILE}; domain outputs in {result.out_dir}")
    return 0


def _split_resume(overrides: Sequence[str]) -> tuple[list[str], str | None]:
    """Separate `resume=RUN_DIR` from the recipe overrides."""
    rest, resume = [], []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key == RESUME_KEY:
            resume.append(value)
        else:
            rest.append(override)
    if len(resume) > 1 or (resume and not resume[0]):
        raise CommandError("give resume=RUN_DIR at most once, with the run directory to continue")
    return rest, resume[0] if resume else None


def _new_run_dir(recipe: Recipe) -> Path:
    """The directory a fresh run writes to; refuses one that already holds files."""
    if recipe.config.output_dir is not None:
        run_dir = Path(recipe.config.output_dir)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise recipe.error(
                "output_dir",
                f"{run_dir} already exists and is not an empty folder; choose another "
                f"output_dir, set output_dir=null for runs/<recipe>/<timestamp>, or continue "
                f"that run with resume={run_dir}",
            )
        return run_dir
    base = Path("runs") / recipe.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _resume_dir(recipe: Recipe, resume: str) -> Path:
    """Check that `resume` is a run this recipe may continue; returns its directory."""
    run_dir = Path(resume)
    origin = f"{RESUME_KEY}={resume}"
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        raise RecipeError(
            recipe.path,
            [
                Problem(
                    RESUME_KEY,
                    f"{run_dir} is not a run directory (no {CONFIG_FILE})",
                    override=origin,
                )
            ],
        )
    saved_data, _ = parse_recipe_text(saved_path.read_text(encoding="utf-8"), saved_path)
    saved, now = _flatten(saved_data), _flatten(recipe.resolved)
    changed = [
        key
        for key in sorted(set(saved) | set(now))
        if saved.get(key) != now.get(key)
        and not any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES)
    ]
    if changed:
        details = "; ".join(
            f"{key}: {saved.get(key)!r} in the run, {now.get(key)!r} now" for key in changed
        )
        raise RecipeError(
            recipe.path,
            [
                Problem(
                    RESUME_KEY,
                    f"a resumed run must keep its settings, but these differ from {saved_path}: "
                    f"{details}. Only {', '.join(RESUMABLE_CHANGES)} may change; resume with "
                    f"`rldiff run {saved_path} {origin}` to use the run's own config",
                    override=origin,
                )
            ],
        )
    from rldiff.train.checkpoint import latest_checkpoint, read_trainer_state
    from rldiff.train.trainer import CHECKPOINT_DIR

    latest = latest_checkpoint(run_dir / CHECKPOINT_DIR)
    done = read_trainer_state(latest).step if latest is not None else 0
    if done > recipe.config.train.steps:
        raise recipe.error(
            "train.steps",
            f"the run being resumed has done {done} updates, more than train.steps="
            f"{recipe.config.train.steps}; give train.steps={done} or more",
        )
    return run_dir


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        flat = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: data}


def _description(path: Path) -> str:
    try:
        data, _ = parse_recipe_text(path.read_text(encoding="utf-8"), path)
    except RecipeError as err:
        return f"(cannot read: {err})"
    description = data.get("description") if isinstance(data, dict) else None
    return str(description) if description else "(no description)"


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.6g}" for name, value in metrics.items())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
