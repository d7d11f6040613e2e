"""The small pixel diffusion model of the digits domain: a diffusers `UNet2DModel` + `DDIMScheduler`.

`PixelDenoiser` adapts the UNet to rldiff's denoiser signature `(x_t, t, cond) -> eps` and adds
the CTRL adapter: `cond["class_emb"]` ([B, condition_dim]) is added to the UNet's time embedding
through its class-embedding path (an `nn.Identity` class embedding), and a missing or zero
embedding gives exactly the pre-trained model. Optionally (`num_labels > 0`) it also owns a
*label pathway*: zero-initialised per-label channel biases in every resnet block, driven by
`cond["y"]` (what `recipes/images/digits_ctrl.yaml` trains; see docs/images.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DModel
from diffusers.models.resnet import ResnetBlock2D
from torch import Tensor, nn

#: The architecture of the shipped digits model (~0.65M parameters; self-attention in the 8x8 mid block).
DIGITS_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "attention_head_dim": 16,
}

#: The noise schedule of the digits model: Stable Diffusion's. (A cosine schedule ends at
#: alpha-bar_999 ~ 2e-9, and a "trailing" DDIM step from t = 999 then amplifies eps errors ~1e4x.)
DIGITS_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "set_alpha_to_one": False,  # the last step lands on alpha-bar_0 < 1, so it keeps sigma > 0 (eta = 1)
    "timestep_spacing": "trailing",
    "prediction_type": "epsilon",
}

#: Training timesteps of the digits schedule (the label pathway's time knots span 0 .. N - 1).
NUM_TRAIN_TIMESTEPS = DIGITS_SCHEDULER_CONFIG["num_train_timesteps"]

#: Where the shipped weights live (a diffusers layout: unet/ and scheduler/ sub-folders).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "digits"

#: LoRA targets covering the UNet's attention and resnet layers.
DIGITS_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj")


def build_digits_unet(**overrides: Any) -> UNet2DModel:
    """A freshly initialised digits UNet (DIGITS_UNET_CONFIG with `overrides`)."""
    return UNet2DModel(**{**DIGITS_UNET_CONFIG, **overrides})


def build_digits_scheduler(**overrides: Any) -> DDIMScheduler:
    """The digits DDIMScheduler (DIGITS_SCHEDULER_CONFIG with `overrides`)."""
    return DDIMScheduler(**{**DIGITS_SCHEDULER_CONFIG, **overrides})


def load_digits_model(path: str | Path | None = None) -> tuple[UNet2DModel, DDIMScheduler]:
    """Load a pre-trained digits UNet and its scheduler from a diffusers-layout folder.

    Args:
        path: folder with `unet/` and `scheduler/` sub-folders; default the shipped weights.

    Returns:
        (unet in eval mode, scheduler).

    Raises:
        FileNotFoundError: the folder or its weights are missing (names the path and how to make them).
    """
    root = Path(path) if path is not None else WEIGHTS_DIR
    weights = root / "unet" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(
            f"no digits UNet weights at {weights}: expected a folder with unet/ (config.json + "
            "diffusion_pytorch_model.safetensors) and scheduler/ (scheduler_config.json). "
            "Make them with `python -m domains.images.pretrain --out DIR` "
            "(recipe images/digits_pretrain), or leave the path unset to use the shipped ones."
        )
    unet = UNet2DModel.from_pretrained(root / "unet")
    sched_dir = root / "scheduler"
    scheduler = DDIMScheduler.from_pretrained(sched_dir) if sched_dir.is_dir() else build_digits_scheduler()
    return unet.eval(), scheduler


class PixelDenoiser(nn.Module):
    """`(x_t [B, C, H, W], t [B] long, cond) -> eps` for a diffusers UNet2DModel.

    `cond` may be None or a dict; `cond["class_emb"]` ([B, condition_dim]) is added to the time
    embedding (zero / absent = pre-trained behaviour). With `num_labels > 0` the denoiser also owns
    a *label pathway*: every resnet block gets a zero-initialised table [num_labels, channels] whose
    row(s) for `cond["y"]` (LongTensor [B] of labels, or float [B, num_labels] label weights) are
    added to that block's projected time embedding, i.e. a per-label, per-block channel bias right
    after its first convolution. Zero tables / absent y = the pre-trained model exactly. The tables
    are multiplied by `label_scale` in the forward pass, which (under Adam) scales their effective
    learning rate by the same factor. With `label_knots = k > 1` each block has k tables at evenly
    spaced timesteps, linearly interpolated in t, so the label's effect can differ between the
    noisy steps (where the digit is chosen) and the final ones. Other keys are ignored.
    """

    def __init__(self, unet: UNet2DModel, num_labels: int = 0, label_scale: float = 1.0, label_knots: int = 1) -> None:
        super().__init__()
        if unet.class_embedding is None:
            unet.class_embedding = nn.Identity()  # parameter-free: the saved state dict is unchanged
        elif not isinstance(unet.class_embedding, nn.Identity):
            raise ValueError(f"the UNet already has a class embedding ({type(unet.class_embedding).__name__}); "
                             "PixelDenoiser needs an unconditional UNet (class_embed_type=None)")
        self.unet = unet
        self.num_labels = int(num_labels)
        self.label_scale = float(label_scale)
        self.label_knots = int(label_knots)
        if self.label_knots < 1:
            raise ValueError(f"label_knots must be >= 1, got {label_knots}")
        self.label_bias = nn.ParameterList()
        self._label_weights: Tensor | None = None  # [B, knots * num_labels] during a forward call
        if self.num_labels > 0:
            blocks = [m for m in unet.modules() if isinstance(m, ResnetBlock2D) and m.time_emb_proj is not None]
            for block in blocks:
                table = nn.Parameter(torch.zeros(self.label_knots * self.num_labels, block.time_emb_proj.out_features))
                self.label_bias.append(table)
                block.time_emb_proj.register_forward_hook(self._bias_hook(table))

    def _bias_hook(self, table: nn.Parameter):
        def hook(module: nn.Module, inputs: Any, out: Tensor) -> Tensor:
            w = self._label_weights
            if w is None:
                return out
            return out + self.label_scale * (w.to(out.dtype) @ table)  # [B, channels]
        return hook

    @property
    def condition_dim(self) -> int:
        """Width of the time embedding, i.e. of `cond["class_emb"]`."""
        return self.unet.time_embedding.linear_2.out_features

    def _weights(self, cond: Any, batch: int) -> Tensor | None:
        y = cond.get("y") if isinstance(cond, dict) else None
        if y is None or self.num_labels == 0:
            return None
        if y.dtype.is_floating_point:  # soft labels [B, K]
            w = y
        else:  # label `num_labels` (CTRL's null label) gets no bias
            w = torch.nn.functional.one_hot(y.long(), self.num_labels + 1)[:, : self.num_labels].float()
        if w.shape != (batch, self.num_labels):
            raise ValueError(f"cond['y'] must give {batch} labels in [0, {self.num_labels}), got shape {tuple(y.shape)}")
        return w

    def _knot_weights(self, t: Tensor) -> Tensor:
        """[B, knots] piecewise-linear (hat) weights of t / (N - 1) on `label_knots` evenly spaced knots."""
        k = self.label_knots
        if k == 1:
            return torch.ones(t.shape[0], 1)
        pos = t.float().cpu().clamp(0, NUM_TRAIN_TIMESTEPS - 1) / (NUM_TRAIN_TIMESTEPS - 1) * (k - 1)  # in [0, k - 1]
        return (1 - (pos[:, None] - torch.arange(k, dtype=torch.float)).abs()).clamp(min=0)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        emb = cond.get("class_emb") if isinstance(cond, dict) else None
        if emb is None:
            emb = x_t.new_zeros(x_t.shape[0], self.condition_dim)
        w = self._weights(cond, x_t.shape[0])
        if w is not None:  # [B, knots * labels]: label weights times the time knots' weights
            w = (self._knot_weights(t).to(w)[:, :, None] * w[:, None, :]).flatten(1)
        if w is not None and torch.is_grad_enabled() and any(
                getattr(m, "gradient_checkpointing", False) is True for m in self.unet.modules()):
            raise ValueError("the label pathway cannot run under diffusers' internal gradient checkpointing "
                             "(its recomputation would miss the labels); use the policy's gradient_checkpointing")
        self._label_weights = w
        try:
            return self.unet(x_t, t, class_labels=emb.to(x_t.dtype)).sample
        finally:
            self._label_weights = None
