"""Pre-train the digits pixel diffusion model (standard eps-prediction loss, Ho et al. 2020 eq. 14).

    nice python -m domains.images.pretrain --out domains/images/weights/digits   # ~15 min, 1 core

writes a diffusers-layout folder (`unet/`, `scheduler/`) with the EMA weights, plus
`pretrain_log.json` (loss curve, settings, wall time). The recipe `images/digits_pretrain` runs
the same loss through the trainer (`build_pretrain` + `DigitsPretrain`); its final evaluation
writes the EMA weights to `<run>/eval/.../model`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from domains.images.data import load_digits
from domains.images.pixel import PixelDenoiser, build_digits_scheduler, build_digits_unet


def diffusion_loss(denoiser: nn.Module, x0: Tensor, alphas_cumprod: Tensor, generator: torch.Generator) -> Tensor:
    """E_{t, eps} |eps - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t)|^2 (Ho et al. eq. 14)."""
    B = x0.shape[0]
    t = torch.randint(0, len(alphas_cumprod), (B,), generator=generator)  # [B]
    eps = torch.randn(x0.shape, generator=generator)
    a = alphas_cumprod[t].view(B, 1, 1, 1).to(x0.dtype)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    return F.mse_loss(denoiser(x_t, t, None), eps)


def lr_at(step: int, progress: float, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 as `progress` goes 0 -> 1."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model with warm-up d = min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - d)


def pretrain_digits(
    out: str | Path,
    steps: int = 4000,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup: int = 100,
    ema_decay: float = 0.995,
    seed: int = 0,
    threads: int = 1,
    max_minutes: float = 15.0,
    log_every: int = 100,
) -> dict[str, Any]:
    """Train the digits UNet on the "train" split and save EMA weights to `out`.

    Args:
        out: output folder (diffusers layout: unet/, scheduler/).
        steps: optimizer steps.
        batch_size: images per step.
        lr: peak AdamW learning rate (warm-up, then cosine to 0).
        warmup: warm-up steps.
        ema_decay: decay of the exponential moving average that is saved.
        seed: seed of the initialisation and of every draw.
        threads: torch CPU threads.
        max_minutes: stop early (and save) after this much wall time.
        log_every: steps between log lines.

    Returns:
        The log dict also written to `out/pretrain_log.json`.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, _ = load_digits("train")  # labels are never used here
    unet = build_digits_unet()
    scheduler = build_digits_scheduler()
    ac = scheduler.alphas_cumprod.float()
    model = PixelDenoiser(unet).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    t0, losses, running = time.time(), [], 0.0
    for step in range(steps):
        # the schedule follows whichever runs out first, steps or wall time, so a time-capped run
        # still ends with a decayed learning rate
        progress = max(step / steps, (time.time() - t0) / 60 / max_minutes)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress, lr, warmup)
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        loss = diffusion_loss(model, x[idx], ac, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, ema_decay, step)
        running += loss.item()
        if (step + 1) % log_every == 0:
            losses.append({"step": step + 1, "loss": running / log_every, "minutes": (time.time() - t0) / 60})
            print(json.dumps(losses[-1]), flush=True)
            running = 0.0
        if (time.time() - t0) / 60 >= max_minutes:
            print(f"stopping at step {step + 1}: max_minutes={max_minutes} reached", flush=True)
            break
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ema.unet.class_embedding = None  # the Identity adapter is added back at load time
    ema.unet.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    log = {"steps_run": step + 1, "batch_size": batch_size, "lr": lr, "warmup": warmup, "ema_decay": ema_decay,
           "seed": seed, "threads": threads, "wall_minutes": (time.time() - t0) / 60, "losses": losses,
           "num_parameters": sum(p.numel() for p in unet.parameters())}
    (out / "pretrain_log.json").write_text(json.dumps(log, indent=1))
    return log


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (unet/, scheduler/)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=15.0)
    a = p.parse_args(argv)
    pretrain_digits(a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, ema_decay=a.ema_decay,
                    seed=a.seed, threads=a.threads, max_minutes=a.max_minutes)


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------------------------ trainer path
class PretrainDomain:
    """The digits pre-training "domain" for `rldiff run images/digits_pretrain`: the training images,
    a fresh UNet + its EMA copy, and an `evaluate` that judges EMA samples and saves the EMA weights.

    Attributes:
        denoiser / ema: PixelDenoiser being trained and its moving average (what gets saved).
        x: [N, 1, 16, 16] "train"-split digits (labels unused).
    """

    def __init__(self, num_steps: int = 20, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.x, _ = load_digits("train")
        self.scheduler = build_digits_scheduler()
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.denoiser = PixelDenoiser(build_digits_unet()).train()
        self.ema = copy.deepcopy(self.denoiser).eval().requires_grad_(False)
        self.num_steps = num_steps
        self.sample_shape = (1, 16, 16)

    def save(self, out: str | Path) -> Path:
        """Write the EMA model in the diffusers layout the digits domain loads (unet/, scheduler/)."""
        out = Path(out)
        unet = copy.deepcopy(self.ema.unet)
        unet.class_embedding = None
        unet.save_pretrained(out / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(out / "scheduler")
        return out

    @torch.no_grad()
    def evaluate(self, samples: dict[str, Any], out_dir: Path) -> dict[str, float]:
        """Save the EMA weights to `out_dir/model` and score the samples with the shipped independent
        classifier (class balance, FD to the held-out digits, diversity)."""
        from domains.images.digits import sample_quality

        self.save(Path(out_dir) / "model")
        return sample_quality(samples["x0"], Path(out_dir))


def build_pretrain(num_steps: Annotated[int, Field(ge=1)] = 20, seed: Annotated[int, Field(ge=0)] = 0) -> PretrainDomain:
    """The pre-training domain (fresh UNet, digits "train" split).

    Args:
        num_steps: DDIM steps of the samples drawn at evaluation.
        seed: initialisation seed.
    """
    return PretrainDomain(num_steps=num_steps, seed=seed)


class DigitsPretrain:
    """The eps-prediction loss as an `Algorithm` (`rldiff.train.protocol`), with an EMA of the weights.

    Args:
        domain: a PretrainDomain (injected by the trainer).
        accelerator: the run's accelerator (injected; optional).
        lr: AdamW learning rate (the trainer's `lr_schedule` / `warmup_steps` scale it).
        batch_size: images per update.
        ema_decay: EMA decay (with warm-up min(decay, (1 + step) / (10 + step))).
        grad_clip: gradient-norm clipping.
    """

    def __init__(self, domain: PretrainDomain, accelerator: Any = None, *,
                 lr: Annotated[float, Field(gt=0)] = 2e-3, batch_size: Annotated[int, Field(ge=1)] = 64,
                 ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.995,
                 grad_clip: Annotated[float, Field(gt=0)] = 1.0) -> None:
        self.domain = domain
        self.batch_size, self.ema_decay, self.grad_clip = batch_size, ema_decay, grad_clip
        self.optimizer = torch.optim.AdamW(domain.denoiser.parameters(), lr=lr, weight_decay=0.0)

    def modules(self) -> dict[str, nn.Module]:
        return {"denoiser": self.domain.denoiser, "ema": self.domain.ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self.optimizer}

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        d = self.domain
        idx = torch.randint(0, len(d.x), (self.batch_size,), generator=generator)
        loss = diffusion_loss(d.denoiser, d.x[idx], d.alphas_cumprod, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(d.denoiser.parameters(), self.grad_clip)
        self.optimizer.step()
        ema_update(d.ema, d.denoiser, self.ema_decay, step)
        return {"loss": loss.item(), "grad_norm": float(gnorm)}

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator) -> dict[str, Any]:
        from rldiff.core.gaussian import GaussianPolicy
        from rldiff.core.rollout import rollout

        d = self.domain
        policy = GaussianPolicy.from_scheduler(d.ema, d.scheduler, d.num_steps, eta=1.0)
        x0 = torch.cat([rollout(policy, min(500, num - i), None, generator=generator, shape=d.sample_shape,
                                keep_states=False).x0 for i in range(0, num, 500)])
        return {"x0": x0.clamp(-1, 1)}
