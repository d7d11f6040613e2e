"""LoRA on a diffusers UNet via peft, and the frozen *reference view* (adapters disabled).

The reference policy of KL-regularized fine-tuning is the pre-trained UNet. Instead of copying it,
`ReferenceView` calls the same module with every LoRA layer switched off for the duration of the
call, so the pre-trained weights exist once in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def add_lora(
    model: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: Sequence[str] | str = ("to_q", "to_k", "to_v", "to_out.0"),
    dropout: float = 0.0,
    init: str | bool = "gaussian",
) -> nn.Module:
    """Freeze `model` and inject LoRA adapters named "default" into `target_modules`.

    LoRA's B matrices start at zero, so the adapted model equals the pre-trained one until trained.
    Models with diffusers' `PeftAdapterMixin` (UNet2DConditionModel) go through `add_adapter`,
    which `save_lora_weights` / `load_lora_weights` understand; others (UNet2DModel) through
    `peft.inject_adapter_in_model`.

    Args:
        model: the network (modified in place).
        rank: LoRA rank r.
        alpha: LoRA alpha (scale alpha / r); default = rank (scale 1).
        target_modules: module-name suffixes to adapt, or a regex string (peft semantics).
        dropout: LoRA dropout.
        init: peft `init_lora_weights` ("gaussian" as in the diffusers training scripts).

    Returns:
        The same model; only the LoRA parameters require gradients.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=targets,
                        lora_dropout=dropout, init_lora_weights=init)
    model.requires_grad_(False)
    try:
        if hasattr(model, "add_adapter") and hasattr(model, "disable_adapters"):
            model.add_adapter(config)
        else:
            inject_adapter_in_model(config, model)
    except ValueError as err:  # peft: "Target modules ... not found in the base model"
        names = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))})
        raise ValueError(f"LoRA target_modules {targets!r} match no layer of {type(model).__name__}: {err}. "
                         f"Linear/Conv2d layer names present: {names}") from err
    n = sum(p.numel() for p in lora_parameters(model))
    if n == 0:
        raise ValueError(f"LoRA target_modules {targets!r} matched no layer of {type(model).__name__}")
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters (lora_A / lora_B) of a model."""
    return [p for n, p in model.named_parameters() if "lora_" in n]


def tuner_layers(model: nn.Module) -> list[BaseTunerLayer]:
    """Every peft tuner layer in `model`."""
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every LoRA layer of `model` computes the pre-trained function.

    Only peft's on/off flag is flipped: unlike `enable_adapters`, this leaves each parameter's
    `requires_grad` untouched, so frozen-vs-trainable choices survive. It also switches off
    diffusers' internal gradient checkpointing for the block, whose recomputation in backward
    would otherwise run with the adapters back on.
    """
    layers = tuner_layers(model)
    saved = [_flag(m) for m in layers]
    ckpt = [(m, m.gradient_checkpointing) for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    try:
        for m in layers:
            _set_flag(m, True)
        for m, _ in ckpt:
            m.gradient_checkpointing = False
        yield model
    finally:
        for m, s in zip(layers, saved):
            _set_flag(m, s)
        for m, s in ckpt:
            m.gradient_checkpointing = s


def _flag(layer: BaseTunerLayer) -> bool:
    return bool(getattr(layer, "_disable_adapters", getattr(layer, "disable_adapters", False)))


def _set_flag(layer: BaseTunerLayer, disabled: bool) -> None:
    if hasattr(layer, "_disable_adapters"):
        layer._disable_adapters = disabled  # peft >= 0.7 stores the switch here
    else:  # pragma: no cover - older peft
        layer.disable_adapters = disabled


class ReferenceView:
    """A denoiser callable that runs `denoiser` with the LoRA adapters of `model` disabled.

    A view, not a copy: it shares every weight with the trainable denoiser. The reference never
    receives the new condition: `cond["class_emb"]` (GaussianPolicy strips it) and the label
    `cond[k]` for k in `strip` (a denoiser's own label pathway, stripped here) are removed, so it
    is the pre-trained model.

    Args:
        denoiser: the trainable denoiser `(x_t, t, cond) -> eps` built on `model`.
        model: the module carrying the LoRA layers.
        strip: condition keys the reference never sees.
    """

    def __init__(self, denoiser: Callable[[Tensor, Tensor, Any], Tensor], model: nn.Module,
                 strip: Sequence[str] = ("class_emb", "y")) -> None:
        self.denoiser = denoiser
        self.model = model
        self.strip = tuple(strip)

    def _run(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        if isinstance(cond, dict) and any(k in cond for k in self.strip):
            cond = {k: v for k, v in cond.items() if k not in self.strip}
        with adapters_disabled(self.model):
            return self.denoiser(x, t, cond)

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        internal_ckpt = any(getattr(m, "gradient_checkpointing", False) is True for m in self.model.modules())
        if internal_ckpt and torch.is_grad_enabled():
            # keep the memory saving, but recompute with the adapters off as well
            return checkpoint(self._run, x, t, cond, use_reentrant=False)
        return self._run(x, t, cond)
