"""An exponential moving average of an algorithm's trainable parameters (`train.ema_decay`).

Reverse-KL fine-tuning with small batches leaves the parameters wandering around the optimum;
sampling from their running average removes most of that noise at no cost per update (docs/dna.md
measures it on the DNA main job). The average is diffusers' `EMAModel` over the trainable
parameters of `algorithm.modules()`; its decay ramps up as `(1 + s) / (10 + s)` after
`train.ema_start` updates and is capped at `train.ema_decay`.

Training always updates the raw parameters; evaluations (during training and `rldiff eval`) run
inside `ParameterEMA.averaged()`, which swaps the averages in and the raw values back afterwards.
Checkpoints store the averages in `ema.safetensors` (keys `<module>.<parameter>`, the update count
in the metadata), so a resumed run continues the same average.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

EMA_FILE = "ema.safetensors"


class ParameterEMA:
    """The moving average of every trainable parameter of `modules` (a name -> module dict).

    Args:
        modules: `algorithm.modules()`; parameters with `requires_grad` are averaged.
        decay: The largest per-update decay (0 < decay < 1); ~1 / (1 - decay) updates are averaged.
        start: Updates before averaging begins (the average is a copy of the parameters until then).
    """

    def __init__(self, modules: dict[str, nn.Module], decay: float, start: int = 0) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"train.ema_decay must be in (0, 1) to average, got {decay}")
        self.named = {
            f"{module_name}.{name}": p
            for module_name, module in modules.items()
            for name, p in module.named_parameters()
            if p.requires_grad
        }
        self.params = list(self.named.values())
        self.ema = EMAModel(self.params, decay=decay, update_after_step=start)

    @property
    def num_updates(self) -> int:
        return int(self.ema.optimization_step)

    @property
    def current_decay(self) -> float:
        """The decay the next update will use."""
        return float(self.ema.get_decay(self.ema.optimization_step + 1))

    def step(self) -> None:
        """Fold the current parameters into the average (call after each optimizer update)."""
        self.ema.step(self.params)

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside the block the parameters hold their averages; the raw values come back after."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def apply(self) -> None:
        """Write the averages into the parameters for good (a rebuilt model that only samples)."""
        self.ema.copy_to(self.params)

    def save(self, folder: Path) -> None:
        """Write `folder / ema.safetensors` (the caller fsyncs and commits the folder)."""
        tensors = {
            name: shadow.detach().to("cpu", copy=True).contiguous()
            for name, shadow in zip(self.named, self.ema.shadow_params)
        }
        save_file(tensors, Path(folder) / EMA_FILE, metadata={"num_updates": str(self.num_updates)})

    def load(self, folder: Path) -> bool:
        """Restore the average from `folder / ema.safetensors`.

        Returns:
            False when the checkpoint has no average (a run that did not use one): the average then
            restarts from the current parameters.

        Raises:
            ValueError: The file's parameters do not match the algorithm's.
        """
        path = Path(folder) / EMA_FILE
        if not path.is_file():
            self.ema = EMAModel(self.params, decay=self.ema.decay, update_after_step=self.ema.update_after_step)
            return False
        tensors = load_file(path)
        if set(tensors) != set(self.named):
            raise ValueError(
                f"{path} averages parameters {sorted(set(tensors) ^ set(self.named))[:5]} that the "
                f"algorithm does not have (or lacks ones it has)"
            )
        with torch.no_grad():
            for name, shadow in zip(self.named, self.ema.shadow_params):
                if tensors[name].shape != shadow.shape:
                    raise ValueError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, "
                                     f"the algorithm's {tuple(shadow.shape)}")
                shadow.copy_(tensors[name])
        with safe_open(path, framework="pt") as f:
            self.ema.optimization_step = int((f.metadata() or {}).get("num_updates", 0))
        return True
