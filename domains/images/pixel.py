"""The small pixel diffusion model of the digits domain: a diffusers `UNet2DModel` + `DDIMScheduler`.

`PixelDenoiser` adapts the UNet to rldiff's denoiser signature `(x_t, t, cond) -> eps` and adds
the CTRL adapter: `cond["class_emb"]` ([B, condition_dim]) is added to the UNet's time embedding
through its class-embedding path (an `nn.Identity` class embedding), and a missing or zero
embedding gives exactly the pre-trained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import DDIMScheduler, UNet2DModel
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
    embedding (zero / absent = pre-trained behaviour). Other keys are ignored.
    """

    def __init__(self, unet: UNet2DModel) -> None:
        super().__init__()
        if unet.class_embedding is None:
            unet.class_embedding = nn.Identity()  # parameter-free: the saved state dict is unchanged
        elif not isinstance(unet.class_embedding, nn.Identity):
            raise ValueError(f"the UNet already has a class embedding ({type(unet.class_embedding).__name__}); "
                             "PixelDenoiser needs an unconditional UNet (class_embed_type=None)")
        self.unet = unet

    @property
    def condition_dim(self) -> int:
        """Width of the time embedding, i.e. of `cond["class_emb"]`."""
        return self.unet.time_embedding.linear_2.out_features

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        emb = cond.get("class_emb") if isinstance(cond, dict) else None
        if emb is None:
            emb = x_t.new_zeros(x_t.shape[0], self.condition_dim)
        return self.unet(x_t, t, class_labels=emb.to(x_t.dtype)).sample
