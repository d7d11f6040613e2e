"""Atomic, resumable checkpoints of an algorithm's modules, optimizers, RNG and extra state.

Layout of `<run_dir>/checkpoints/`:

    step_000050/
        model.safetensors     trainable parameters and buffers of every module, keys `<module>.<name>`
        optimizer.pt          {optimizer name: state_dict}, loaded with torch.load(weights_only=True)
        rng.safetensors       torch CPU RNG state (`cpu`), plus `cuda.<i>` per GPU when present
        ema.safetensors       the parameters' moving average, with `train.ema_decay` (`rldiff.train.ema`)
        trainer_state.json    {"step": 50, "seed": 0, "extra_state": {...}}
    latest                    text file naming the newest committed checkpoint (`step_000050`)

A checkpoint is written into `.tmp-step_XXXXXX/`, every file and the folder are fsync'ed, the folder
is renamed into place with `os.replace`, and finally `latest` is replaced atomically. Writing
`latest` is the commit: a run killed at any moment resumes from the checkpoint `latest` names, and
`discard_uncommitted` removes anything newer.

Frozen parameters (`requires_grad=False`, e.g. a pre-trained base under LoRA adapters) are not
saved: they are rebuilt from the recipe, whose construction is seeded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rldiff.train.ema import EMA_FILE, ParameterEMA
from rldiff.train.protocol import Algorithm

LATEST = "latest"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


@dataclasses.dataclass(frozen=True)
class TrainerState:
    """What `trainer_state.json` holds.

    Attributes:
        step: Updates completed when the checkpoint was written.
        seed: The run's seed.
        extra_state: What the algorithm's optional `extra_state()` returned ({} without one).
    """

    step: int
    seed: int
    extra_state: dict[str, Any]


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after `step` updates: `step_000050`."""
    return f"step_{step:06d}"


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    algorithm: Algorithm,
    accelerator: Any,
    *,
    seed: int,
    keep: int,
    ema: ParameterEMA | None = None,
) -> Path:
    """Write a checkpoint atomically, point `latest` at it and delete all but the newest `keep`.

    Only the main process writes; every process waits until the checkpoint is committed.

    Args:
        ckpt_dir: The run's `checkpoints/` folder (created if missing).
        step: Updates completed.
        algorithm: The algorithm whose `modules()`, `optimizers()` and optional `extra_state()`
            are saved.
        accelerator: The run's `accelerate.Accelerator`.
        seed: The run's seed, recorded in `trainer_state.json`.
        keep: How many of the newest checkpoints to keep (>= 1).
        ema: The run's parameter average (`train.ema_decay`), saved as `ema.safetensors`.

    Returns:
        The checkpoint folder.
    """
    final = Path(ckpt_dir) / checkpoint_name(step)
    if accelerator.is_main_process:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{final.name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(
            _model_tensors(algorithm, accelerator), tmp / MODEL_FILE, metadata={"format": "pt"}
        )
        _fsync(tmp / MODEL_FILE)
        with open(tmp / OPTIMIZER_FILE, "wb") as f:
            torch.save({name: opt.state_dict() for name, opt in algorithm.optimizers().items()}, f)
            f.flush()
            os.fsync(f.fileno())
        save_file(_rng_state(), tmp / RNG_FILE)
        _fsync(tmp / RNG_FILE)
        if ema is not None:
            ema.save(tmp)
            _fsync(tmp / EMA_FILE)
        extra = algorithm.extra_state() if hasattr(algorithm, "extra_state") else {}
        try:
            state_text = json.dumps({"step": step, "seed": seed, "extra_state": extra}, indent=2)
        except (TypeError, ValueError) as err:
            shutil.rmtree(tmp)
            raise TypeError(
                f"{type(algorithm).__name__}.extra_state() must return JSON-serialisable data "
                f"(dicts, lists, str, numbers, bool, None): {err}"
            ) from err
        _write_synced(tmp / STATE_FILE, state_text)  # written last: marks the folder complete
        _fsync(tmp)
        if final.exists():  # left by a run killed before it committed this step
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(final.parent)
        pointer_tmp = final.parent / f".tmp-{LATEST}"
        _write_synced(pointer_tmp, final.name + "\n")
        os.replace(pointer_tmp, final.parent / LATEST)
        _fsync(final.parent)
        for old in _step_dirs(final.parent)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The committed checkpoint that `latest` names, or None when there is none."""
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def read_trainer_state(checkpoint: Path) -> TrainerState:
    """Read a checkpoint's `trainer_state.json`."""
    state = json.loads((Path(checkpoint) / STATE_FILE).read_text())
    return TrainerState(step=state["step"], seed=state["seed"], extra_state=state["extra_state"])


def load_checkpoint(
    checkpoint: Path, algorithm: Algorithm, accelerator: Any, ema: ParameterEMA | None = None
) -> TrainerState:
    """Restore modules, optimizers, RNG state and the algorithm's extra state from a checkpoint.

    Args:
        checkpoint: A checkpoint folder (e.g. `latest_checkpoint(ckpt_dir)`).
        algorithm: The freshly built algorithm to restore into.
        accelerator: The run's `accelerate.Accelerator`.
        ema: The run's parameter average, restored from `ema.safetensors` (restarted from the
            loaded parameters when the checkpoint has none).

    Returns:
        The checkpoint's trainer state.

    Raises:
        ValueError: The checkpoint does not match the algorithm's modules or optimizers.
    """
    checkpoint = Path(checkpoint)
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(checkpoint / MODEL_FILE).items():
        module_name, _, name = key.partition(".")
        by_module.setdefault(module_name, {})[name] = tensor
    modules = algorithm.modules()
    if set(by_module) - set(modules):
        raise ValueError(
            f"{checkpoint / MODEL_FILE} has weights for modules "
            f"{sorted(set(by_module) - set(modules))} that the algorithm does not have "
            f"(its modules: {sorted(modules)})"
        )
    for name, module in modules.items():
        _load_module(accelerator.unwrap_model(module), by_module.get(name, {}), name, checkpoint)
    if ema is not None:
        ema.load(checkpoint)
    saved = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizers = algorithm.optimizers()
    if set(saved) != set(optimizers):
        raise ValueError(
            f"{checkpoint / OPTIMIZER_FILE} holds optimizers {sorted(saved)} but the algorithm has "
            f"{sorted(optimizers)}"
        )
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(saved[name])
    _set_rng_state(load_file(checkpoint / RNG_FILE))
    state = read_trainer_state(checkpoint)
    if hasattr(algorithm, "load_extra_state"):
        algorithm.load_extra_state(state.extra_state)
    return state


def discard_uncommitted(ckpt_dir: Path) -> list[Path]:
    """Delete temporary folders and checkpoints newer than `latest` (left by a killed run).

    Args:
        ckpt_dir: The run's `checkpoints/` folder.

    Returns:
        The deleted paths.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    latest = latest_checkpoint(ckpt_dir)
    committed = read_trainer_state(latest).step if latest is not None else -1
    doomed = [p for p in ckpt_dir.iterdir() if p.name.startswith(".tmp-")]
    doomed += [p for p in _step_dirs(ckpt_dir) if _step_of(p) > committed]
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return doomed


def _model_tensors(algorithm: Algorithm, accelerator: Any) -> dict[str, torch.Tensor]:
    """Trainable parameters and buffers of every module, keyed `<module>.<name>`, on the CPU."""
    tensors = {}
    for module_name, module in algorithm.modules().items():
        if "." in module_name:
            raise ValueError(f"module name {module_name!r} must not contain '.'")
        module = accelerator.unwrap_model(module)
        frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
        for name, tensor in module.state_dict().items():
            if name not in frozen:
                # copy=True: tied weights must not share storage in a safetensors file
                tensors[f"{module_name}.{name}"] = tensor.detach().to("cpu", copy=True).contiguous()
    return tensors


def _load_module(
    module: torch.nn.Module, state: dict[str, torch.Tensor], name: str, checkpoint: Path
) -> None:
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(
            f"{checkpoint / MODEL_FILE} does not match module '{name}': {err}"
        ) from err
    missing = [key for key in result.missing_keys if key not in frozen]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{checkpoint / MODEL_FILE} does not match module '{name}': missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda.{i}"] = cuda_state
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = [state[f"cuda.{i}"] for i in range(len(state)) if f"cuda.{i}" in state]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _step_dirs(ckpt_dir: Path) -> list[Path]:
    """Committed-looking `step_*` folders, oldest first."""
    return sorted((p for p in ckpt_dir.iterdir() if _STEP_DIR.match(p.name)), key=_step_of)


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    """fsync a file or a folder (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
