"""A dilated-convolution masked-diffusion denoiser for 200 bp DNA, sized for a CPU, with LoRA.

The denoiser follows `rldiff.core.masked.MaskedDenoiser`:

    (x_t one-hot [B, L, V+1], t [B] float in (0, 1], cond) -> logits [B, L, V]      (V = 4, ACGT)

It is time-conditioned: a sinusoidal embedding of t goes through an MLP to `cond_dim` channels,
and every residual block reads it through a FiLM layer (per-channel scale and shift). CTRL's
adapter enters there: `cond["class_emb"]` [B, cond_dim] is *added* to the time embedding, so a
zero class embedding (or none) gives exactly the pre-trained network.

LoRA (`with_lora`) puts zero-initialised low-rank adapters on the Conv1d / Linear layers of the
residual blocks and returns the adapted network and a `ReferenceView` that runs the same module with the
adapters disabled, so the frozen pre-trained model is a *view*, not a copy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VOCAB = 4  # A, C, G, T; the mask token is index 4


@dataclass
class DenoiserConfig:
    """Sizes of the denoiser. Defaults are the shipped model (~0.53M parameters)."""

    channels: int = 64  # width of the residual stream
    cond_dim: int = 128  # time-embedding width = CTRL's condition_dim
    kernel_size: int = 5  # dilated conv kernel
    dilations: Sequence[int] = field(default_factory=lambda: (1, 2, 4, 8, 16, 32, 1, 2, 4, 8, 16, 32))
    dropout: float = 0.0
    vocab_size: int = VOCAB
    seq_len: int = 200


def _channel_norm(h: Tensor) -> Tensor:
    """LayerNorm over channels of [B, C, L] (no affine: FiLM provides it)."""
    return F.layer_norm(h.transpose(1, 2), h.shape[1:2]).transpose(1, 2)


class _Block(nn.Module):
    """norm -> FiLM(t) -> dilated conv -> GELU -> 1x1 conv -> residual."""

    def __init__(self, channels: int, cond_dim: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.film = nn.Linear(cond_dim, 2 * channels)
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2)
        self.proj = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).unsqueeze(-1).chunk(2, dim=1)  # [B, C, 1] each
        z = _channel_norm(h) * (1 + scale) + shift
        z = self.proj(F.gelu(self.conv(z)))
        return h + self.drop(z)


class DNADenoiser(nn.Module):
    """Masked-diffusion denoiser: one-hot x_t [B, L, V+1] and t [B] -> logits [B, L, V]."""

    def __init__(self, config: DenoiserConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or DenoiserConfig()
        if overrides:
            cfg = DenoiserConfig(**{**asdict(cfg), **overrides})
        self.config = cfg
        C, E = cfg.channels, cfg.cond_dim
        self.embed = nn.Conv1d(cfg.vocab_size + 1, C, 1)
        self.time_mlp = nn.Sequential(nn.Linear(E, E), nn.SiLU(), nn.Linear(E, E))
        self.blocks = nn.ModuleList(_Block(C, E, cfg.kernel_size, d, cfg.dropout) for d in cfg.dilations)
        self.head = nn.Conv1d(C, cfg.vocab_size, 1)

    @property
    def condition_dim(self) -> int:
        return self.config.cond_dim

    def time_embedding(self, t: Tensor) -> Tensor:
        """Sinusoidal features of t in (0, 1] -> MLP -> [B, cond_dim]."""
        half = self.config.cond_dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        ang = 1000.0 * t.float()[:, None] * freqs[None]  # [B, half]
        return self.time_mlp(torch.cat([ang.sin(), ang.cos()], dim=-1))

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Args: x_t [B, L, V+1] (one-hot or straight-through soft), t [B], cond dict or None.
        Returns: logits [B, L, V]."""
        emb = self.time_embedding(t.to(x_t.device).expand(x_t.shape[0]))  # [B, E]
        if isinstance(cond, dict) and cond.get("class_emb") is not None:
            emb = emb + cond["class_emb"].to(emb.dtype)  # CTRL adapter: zero = pre-trained model
        emb = F.silu(emb)
        h = self.embed(x_t.transpose(1, 2).float())  # [B, C, L]
        for block in self.blocks:
            h = block(h, emb)
        return self.head(_channel_norm(h)).transpose(1, 2)  # [B, L, V]


# ---------------------------------------------------------------------------------------- LoRA
# peft 0.21's LoRA for Conv1d builds lora_A without the base layer's `dilation`, so on a dilated
# conv the adapter's output length differs from the layer's (RuntimeError 200 vs 204). The adapter
# below is the same math (Hu et al. 2021: y = W x + (alpha / r) B A x, B zero-initialised), with
# A carrying the base conv's kernel, dilation and padding.
LORA_TARGETS = ("conv", "proj", "film")  # attribute names inside each residual block


class LoRA(nn.Module):
    """A frozen Conv1d / Linear plus a zero-initialised low-rank residual.

    With `num_labels` K > 0 the up-projection is per label: K + 1 zero-initialised matrices B_y
    (row K = the null label, used when no label is set) share one down-projection A, and the
    layer computes W x + (alpha / r) B_y A x with y = `self.labels` ([B] long, or soft [B, K]
    mixing the K label matrices), set by `LoRADenoiser.forward` from `cond["y"]`.
    """

    def __init__(self, base: nn.Conv1d | nn.Linear, rank: int, alpha: float, num_labels: int = 0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if num_labels < 0:
            raise ValueError(f"num_labels must be >= 0, got {num_labels}")
        self.base = base
        self.scaling = alpha / rank
        self.enabled = True
        self.num_labels = num_labels
        self.labels: Tensor | None = None
        if isinstance(base, nn.Conv1d):
            self.lora_A = nn.Conv1d(base.in_channels, rank, base.kernel_size, dilation=base.dilation,
                                    padding=base.padding, bias=False)
            self.lora_B = nn.Conv1d(rank, base.out_channels, 1, bias=False)
        elif isinstance(base, nn.Linear):
            self.lora_A = nn.Linear(base.in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        else:
            raise TypeError(f"LoRA supports nn.Conv1d and nn.Linear, got {type(base).__name__}")
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)  # zero-init: the adapted layer starts equal to the base
        if num_labels:
            out_dim = self.lora_B.weight.shape[0]
            del self.lora_B
            self.lora_B_y = nn.Parameter(torch.zeros(num_labels + 1, out_dim, rank))  # [K+1, out, r]

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if not self.enabled:
            return out
        a = self.lora_A(x)  # [B, r, L] (conv) or [B, r]
        if not self.num_labels:
            return out + self.scaling * self.lora_B(a)
        y = self.labels
        if y is None:
            B = self.lora_B_y[self.num_labels].expand(a.shape[0], -1, -1)
        elif y.is_floating_point():
            B = torch.einsum("bk,kor->bor", y.to(a.dtype), self.lora_B_y[: self.num_labels])
        else:
            B = self.lora_B_y[y.long()]
        if B.shape[0] != a.shape[0]:
            raise ValueError(f"LoRA: {B.shape[0]} labels for a batch of {a.shape[0]}")
        return out + self.scaling * torch.einsum("bor,br...->bo...", B, a)


class LoRADenoiser(nn.Module):
    """A frozen DNADenoiser with LoRA adapters on its residual blocks.

    Only the adapters require grad. `disable_adapter()` is a context in which the module computes
    the pre-trained network exactly (used by `ReferenceView`).
    """

    def __init__(self, base: DNADenoiser, rank: int = 8, alpha: float = 16.0,
                 targets: Sequence[str] = LORA_TARGETS, num_labels: int = 0) -> None:
        super().__init__()
        for p in base.parameters():
            p.requires_grad_(False)
        for block in base.blocks:
            for name in targets:
                layer = getattr(block, name, None)
                if layer is None:
                    raise ValueError(f"LoRA target {name!r} is not a layer of the residual block; valid: {LORA_TARGETS}")
                setattr(block, name, LoRA(layer, rank, alpha, num_labels))
        self.base = base
        self.rank, self.alpha, self.num_labels = rank, alpha, num_labels

    @property
    def config(self) -> DenoiserConfig:
        return self.base.config

    @property
    def condition_dim(self) -> int:
        return self.base.condition_dim

    def adapters(self) -> list[LoRA]:
        return [m for m in self.modules() if isinstance(m, LoRA)]

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the pre-trained network (adapters off) inside the context."""
        layers = self.adapters()
        before = [m.enabled for m in layers]
        for m in layers:
            m.enabled = False
        try:
            yield
        finally:
            for m, e in zip(layers, before):
                m.enabled = e

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if not self.num_labels:
            return self.base(x_t, t, cond)
        y = cond.get("y") if isinstance(cond, dict) else None
        if torch.is_tensor(y):
            y = y.to(x_t.device).expand(x_t.shape[0], *y.shape[1:]) if y.shape[0] == 1 else y.to(x_t.device)
        layers = self.adapters()
        for m in layers:
            m.labels = y if torch.is_tensor(y) else None
        try:
            return self.base(x_t, t, cond)
        finally:
            for m in layers:
                m.labels = None


class ReferenceView(nn.Module):
    """The pre-trained network as a frozen *view* of a LoRA'd one: the same module, adapters off.

    The wrapped module is held in a list so it is not registered (nor checkpointed) twice.
    """

    def __init__(self, adapted: LoRADenoiser) -> None:
        super().__init__()
        self._adapted = [adapted]

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        adapted = self._adapted[0]
        with adapted.disable_adapter():
            return adapted(x_t, t, cond)


def with_lora(base: DNADenoiser, rank: int = 8, alpha: float = 16.0,
              targets: Sequence[str] = LORA_TARGETS, num_labels: int = 0) -> tuple[LoRADenoiser, ReferenceView]:
    """Freeze `base` (in place) and add zero-initialised LoRA adapters to its residual blocks.

    Args:
        base: the pre-trained denoiser.
        rank, alpha: LoRA rank and scale (the update is alpha / rank * B A).
        targets: which layers of each block to adapt ("conv" dilated conv, "proj" 1x1 conv,
            "film" the time/condition FiLM Linear).
        num_labels: K > 0 gives every adapter one up-projection per label (`LoRA`), chosen by
            `cond["y"]`; 0 = one adapter shared by all labels.

    Returns:
        (adapted, reference): `adapted(x_t, t, cond)` is the trainable denoiser (only LoRA
        parameters require grad); `reference(x_t, t, cond)` runs the same module with the
        adapters disabled, i.e. exactly `base` as loaded.
    """
    adapted = LoRADenoiser(base, rank, alpha, targets, num_labels)
    return adapted, ReferenceView(adapted)


# ---------------------------------------------------------------------------------------- I/O
def save_denoiser(model: DNADenoiser, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save the weights (safetensors) with the config in the metadata."""
    from safetensors.torch import save_file

    cfg = asdict(model.config)
    cfg["dilations"] = list(cfg["dilations"])
    meta = {"config": _json(cfg), **(metadata or {})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)


def load_denoiser(path: str | Path, map_location: str = "cpu") -> DNADenoiser:
    """Build a DNADenoiser from a safetensors file written by `save_denoiser`."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"denoiser weights not found: {path}")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path}: no 'config' in the safetensors metadata; was it written by save_denoiser?")
    model = DNADenoiser(DenoiserConfig(**json.loads(meta["config"])))
    model.load_state_dict(load_file(str(path), device=map_location))
    return model.eval()


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
