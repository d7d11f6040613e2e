"""Stable Diffusion 1.5 as an rldiff domain: latent DDIM policy, LoRA, CTRL's y, rewards on decoded images.

    domain = build("runwayml/stable-diffusion-v1-5", reward=aesthetic_score(clip, head), dtype="fp16")

- **Policy**: `GaussianPolicy` over the UNet's latents (DDIM, eta = 1 by default, 50 steps),
  classifier-free guidance on prompts (`guidance_scale`, the unconditional branch = the empty
  prompt), LoRA via peft on the UNet, reference = the same UNet with its adapters disabled.
- **CTRL's y** enters through the UNet's class-embedding path: an `nn.Identity` class embedding
  adds `cond["class_emb"]` ([B, time_embed_dim]) to the time embedding. The algorithm owns the
  zero-initialised table (row K = the null label of the unconditional branch).
- **Rewards and classifiers** act on decoded images: `DecodedReward` / `DecodedClassifier` run the
  VAE decoder *with* gradients (frozen weights), then an image reward from `domains.images.rewards`.
- **Export**: `export_lora` writes the LoRA in diffusers' format (`load_lora_weights` reads it) and
  the y-embedding table; `attach_y_embedding` / `bake_label` make a plain pipeline reproduce the
  fine-tuned policy.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from domains.images.lora import ReferenceView, add_lora, lora_parameters
from domains.images.metrics import (
    BRISQUE_MIN_SIDE,
    brisque_score,
    label_agreement,
    save_class_grids,
)
from domains.images.rewards import LevelClasses, ProductClasses, to_uint8_hwc
from rldiff.core.gaussian import GaussianPolicy

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: LoRA targets of the diffusers SD LoRA training scripts (attention projections).
SD_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
Dtype = Literal["fp32", "fp16", "bf16"]


# ------------------------------------------------------------------------------------------ loading
def load_pipeline(model: str | os.PathLike, dtype: Dtype = "fp32", device: str | torch.device = "cpu") -> Any:
    """A `StableDiffusionPipeline` from a local folder or a hub id, with a DDIM scheduler, no safety checker.

    Args:
        model: a folder in diffusers layout (model_index.json, unet/, vae/, text_encoder/,
            tokenizer/, scheduler/) or a hub id such as "runwayml/stable-diffusion-v1-5".
        dtype: "fp32", "fp16" or "bf16" for the UNet, VAE and text encoder.
        device: where to put the pipeline.

    Raises:
        FileNotFoundError: neither a loadable local folder nor a reachable hub id; the message names
            the path and what a valid folder contains.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = Path(model).expanduser()
    looks_local = path.exists() or str(model).startswith((".", "/", "~")) or str(model).count("/") != 1
    if looks_local and not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"Stable Diffusion weights not found at {path}: expected a diffusers folder with model_index.json, "
            "unet/, vae/, text_encoder/, tokenizer/ and scheduler/ (e.g. `huggingface-cli download "
            "runwayml/stable-diffusion-v1-5 --local-dir DIR`), or a hub id like 'runwayml/stable-diffusion-v1-5'"
        )
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path) if looks_local else str(model), dtype=DTYPES[dtype], safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise FileNotFoundError(
            f"cannot load Stable Diffusion from {str(model)!r}: it is not a local diffusers folder and the hub "
            f"{'is disabled (HF_HUB_OFFLINE=1)' if offline else 'could not be reached'}. Download the model to a "
            f"folder and pass its path. ({type(err).__name__}: {str(err)[:300]})"
        ) from err
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.unet.requires_grad_(False)
    return pipe.to(device)


def load_prompts(prompts: str | Sequence[str] = "simple_animals", prompt_file: str | os.PathLike | None = None) -> list[str]:
    """The prompt set: a shipped list by name ("simple_animals", "eval_simple_animals"), an explicit list,
    or a user file with one prompt per line (`prompt_file` wins; blank lines and `#` comments skipped).

    Raises:
        FileNotFoundError / ValueError: a missing file, an empty file, or an unknown set name.
    """
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {path} not found")
        lines = [s.strip() for s in path.read_text().splitlines()]
        out = [s for s in lines if s and not s.startswith("#")]
        if not out:
            raise ValueError(f"prompt file {path} contains no prompts (one prompt per line; blank and # lines are skipped)")
        return out
    if isinstance(prompts, str):
        shipped = sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))
        if prompts not in shipped:
            raise ValueError(f"unknown prompt set {prompts!r}; shipped sets: {shipped}, or pass prompt_file=PATH")
        return load_prompts(prompt_file=PROMPTS_DIR / f"{prompts}.txt")
    out = [str(p) for p in prompts]
    if not out:
        raise ValueError("the prompt list is empty")
    return out


# ------------------------------------------------------------------------------------------ the denoiser
class SDDenoiser(nn.Module):
    """`(x_t [B, 4, h, w], t [B], cond) -> eps` for a UNet2DConditionModel.

    `cond["prompt_embeds"]` ([B, L, D]) feeds cross-attention; `cond["class_emb"]` ([B, time_embed_dim])
    is added to the time embedding (absent or zero = the pre-trained UNet).
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        if unet.class_embedding is None:
            unet.class_embedding = nn.Identity()  # parameter-free adapter for cond["class_emb"]
        elif not isinstance(unet.class_embedding, nn.Identity):
            raise ValueError(f"this UNet already has a class embedding ({type(unet.class_embedding).__name__}); "
                             "CTRL needs the class-embedding path free")
        self.unet = unet

    @property
    def condition_dim(self) -> int:
        return self.unet.time_embedding.linear_2.out_features

    def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Any]) -> Tensor:
        dtype = self.unet.dtype
        emb = cond.get("class_emb")
        if emb is None:
            emb = torch.zeros(x_t.shape[0], self.condition_dim, device=x_t.device, dtype=dtype)
        out = self.unet(x_t.to(dtype), t, encoder_hidden_states=cond["prompt_embeds"].to(dtype),
                        class_labels=emb.to(dtype)).sample
        return out.to(x_t.dtype)


class LatentDecoder(nn.Module):
    """latents -> images in [-1, 1] through the frozen VAE decoder; gradients flow to the latents."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae.requires_grad_(False)

    def forward(self, latents: Tensor) -> Tensor:
        x = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(x).sample.float().clamp(-1, 1)


class DecodedReward(nn.Module):
    """r(latents, cond) = image_reward(decode(latents), cond); differentiable iff the image reward is."""

    def __init__(self, decoder: LatentDecoder, image_reward: Callable[..., Tensor]) -> None:
        super().__init__()
        self.decoder = decoder
        self.image_reward = image_reward
        self.differentiable = bool(getattr(image_reward, "differentiable", False))

    def forward(self, latents: Tensor, cond: Any = None) -> Tensor:
        if self.differentiable:
            return self.image_reward(self.decoder(latents), cond)
        with torch.no_grad():
            return self.image_reward(self.decoder(latents), cond)


class DecodedClassifier(nn.Module):
    """latents -> logits [B, K] of an image classifier on the decoded images (CTRL's p(y | x))."""

    def __init__(self, decoder: LatentDecoder, image_classifier: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.image_classifier = image_classifier.requires_grad_(False)

    def forward(self, latents: Tensor) -> Tensor:
        return self.image_classifier(self.decoder(latents))


class JointClassifier(nn.Module):
    """Conditional independence (CTRL sec. 4.2): log p(y_1, y_2 | x) = log p(y_1 | x) + log p(y_2 | x).

    Returns joint log-probabilities [B, K_1 * K_2 * ...] (row-major: y = y_1 * K_2 + y_2); they are
    already normalised, so a softmax of them is the product of the parts' distributions.
    """

    def __init__(self, classifiers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(classifiers)

    @property
    def num_classes(self) -> int:
        n = 1
        for clf in self.parts:
            n *= int(clf.num_classes)
        return n

    def forward(self, x: Tensor) -> Tensor:
        out = None
        for clf in self.parts:
            lp = torch.log_softmax(clf(x).float(), dim=-1)  # [B, K_i]
            out = lp if out is None else (out[:, :, None] + lp[:, None, :]).flatten(1)
        return out


# ------------------------------------------------------------------------------------------ the domain
class SD15Domain:
    """Stable Diffusion (1.5 or any SD-architecture pipeline) as an `RLDomain`.

    Attributes:
        pipe: the diffusers pipeline.
        policy: GaussianPolicy over latents with CFG on prompts; reference = adapters disabled.
        trainable: {"unet": the UNet} (only LoRA parameters require gradients).
        sample_shape: (4, H / 8, W / 8) for SD 1.5 at `resolution`.
        reward: latents -> [B] (image reward composed with differentiable VAE decoding), or None.
        classifier: latents -> logits [B, num_labels] (CTRL's p(y | x)), or None.
        num_labels: number of classes of y (0 without a classifier).
        measure: images -> measured labels for evaluation (e.g. JPEG size classes), or None.
    """

    def __init__(
        self,
        pipe: Any,
        prompts: Sequence[str],
        *,
        num_steps: int = 50,
        eta: float = 1.0,
        guidance_scale: float | None = 7.5,
        resolution: int | None = None,
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] = SD_LORA_TARGETS,
        gradient_checkpointing: bool = False,
        reward: Callable[..., Tensor] | None = None,
        classifier: nn.Module | None = None,
        measure: Callable[[Tensor], Tensor] | None = None,
        label_names: Sequence[str] | None = None,
        clip_model: str | None = None,
        brisque: bool = False,
    ) -> None:
        self.pipe = pipe
        self.prompts = list(prompts)
        self.device = pipe.unet.device
        unet = pipe.unet
        if lora_rank > 0:
            add_lora(unet, rank=lora_rank, alpha=lora_alpha, target_modules=tuple(lora_targets))
            for p in lora_parameters(unet):  # train adapters in fp32 even when the base runs in half precision
                p.data = p.data.float()
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.denoiser = SDDenoiser(unet)
        self.decoder = LatentDecoder(pipe.vae)
        side = resolution or unet.config.sample_size * pipe.vae_scale_factor
        if side % pipe.vae_scale_factor:
            raise ValueError(f"resolution {side} is not a multiple of the VAE factor {pipe.vae_scale_factor}")
        self.resolution = side
        self.sample_shape = (unet.config.in_channels, side // pipe.vae_scale_factor, side // pipe.vae_scale_factor)
        self._null_embeds = self._encode([""])  # [1, L, D] the empty prompt: CFG's unconditional branch
        self.policy = GaussianPolicy.from_scheduler(
            self.denoiser, pipe.scheduler, num_steps, eta=eta,
            guidance_scale=guidance_scale, uncond=self.uncond if guidance_scale is not None else None,
            reference=ReferenceView(self.denoiser, unet), gradient_checkpointing=gradient_checkpointing,
            condition_dim=self.denoiser.condition_dim,
        )
        self.trainable = {"unet": unet}
        self.reward = DecodedReward(self.decoder, reward) if reward is not None else None
        self.image_classifier = classifier
        self.classifier = DecodedClassifier(self.decoder, classifier) if classifier is not None else None
        self.measure = measure
        k = 0
        if classifier is not None:
            k = getattr(classifier, "num_classes", None)
            if k is None:  # probe an arbitrary image classifier once
                with torch.no_grad():
                    k = classifier(torch.zeros(1, 3, side, side, device=self.device)).shape[-1]
        self.num_labels = int(k)
        self.label_names = list(label_names) if label_names is not None else (
            list(measure.names) if isinstance(measure, LevelClasses) else [str(i) for i in range(k)])
        self.clip_model = clip_model
        self.brisque = brisque
        self._embed_cache: dict[str, Tensor] = {}

    # -------------------------------------------------------------- conditions
    @torch.no_grad()
    def _encode(self, prompts: Sequence[str]) -> Tensor:
        tok = self.pipe.tokenizer(list(prompts), padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")
        return self.pipe.text_encoder(tok.input_ids.to(self.device))[0]

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """[B, L, D] text-encoder states (cached per prompt, frozen)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embed_cache]
        if missing:
            for p, e in zip(missing, self._encode(missing)):
                self._embed_cache[p] = e
        return torch.stack([self._embed_cache[p] for p in prompts])

    def sample_cond(self, num: int, generator: torch.Generator) -> dict[str, Any]:
        """`num` prompts drawn uniformly from the prompt set: {"prompt": [str], "prompt_embeds": [B, L, D]}."""
        idx = torch.randint(0, len(self.prompts), (num,), generator=generator).tolist()
        prompts = [self.prompts[i] for i in idx]
        return {"prompt": prompts, "prompt_embeds": self.encode_prompts(prompts)}

    def uncond(self, cond: dict[str, Any]) -> dict[str, Any]:
        """CFG's unconditional branch: the empty prompt. (CTRL replaces `class_emb` by its null label.)"""
        b = cond["prompt_embeds"].shape[0]
        out = {k: v for k, v in cond.items() if k not in ("prompt_embeds", "prompt")}
        out["prompt_embeds"] = self._null_embeds.expand(b, -1, -1)
        return out

    # -------------------------------------------------------------- decoding / evaluation
    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int = 8) -> Tensor:
        """latents -> images [N, 3, H, W] in [-1, 1] (no gradient; use `self.decoder` for gradients)."""
        return torch.cat([self.decoder(latents[i:i + batch_size].to(self.device)).cpu()
                          for i in range(0, len(latents), batch_size)])

    @torch.no_grad()
    def evaluate(self, samples: dict[str, Any], out_dir: Path) -> dict[str, float]:
        """Decode, measure and score samples; write grids per label and `metrics.json`.

        Args:
            samples: {"x0": latents [N, 4, h, w], "y": requested labels [N] (optional),
                "prompt": [N] prompts (optional, needed for the CLIP score)}.

        Returns:
            accuracy / macro_f1 / acc_class_<k> of the measured label vs the requested one (when a
            `measure` and y are given), reward_mean, clip_score (with `clip_model`), brisque (with
            `brisque=True`; `domains.images.metrics.brisque_score`).
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        images = self.decode(samples["x0"])  # [N, 3, H, W]
        metrics: dict[str, float] = {"num_samples": float(len(images))}
        y = samples.get("y")
        labels = torch.zeros(len(images), dtype=torch.long)
        if y is not None:
            y = torch.as_tensor(y).cpu()
            labels = y.argmax(-1) if y.dtype.is_floating_point and y.ndim == 2 else y.long()
        if self.measure is not None:
            measured = torch.cat([self.measure(images[i:i + 16]) for i in range(0, len(images), 16)])
            if y is not None:
                k = self.num_labels or int(labels.max()) + 1
                metrics.update(label_agreement(measured, labels, k))
                if isinstance(self.measure, ProductClasses):  # per-attribute accuracy for joint labels
                    for j, (m_j, y_j) in enumerate(zip(self.measure.split(measured), self.measure.split(labels))):
                        metrics[f"accuracy_attribute_{j}"] = float((m_j == y_j).float().mean())
            else:
                counts = torch.bincount(measured, minlength=len(self.label_names))
                metrics.update({f"frac_measured_{k}": float(c) / len(measured) for k, c in enumerate(counts.tolist())})
            if isinstance(self.measure, LevelClasses):
                values = self.measure.measure(images).float()
                metrics["measured_value_mean"] = float(values.mean())
        if self.reward is not None:
            try:  # rewards that need the condition (e.g. a label) are skipped here
                r = torch.cat([self.reward.image_reward(images[i:i + 16].to(self.device), None).float().cpu()
                               for i in range(0, len(images), 16)])
                metrics["reward_mean"] = float(r.mean())
            except (KeyError, TypeError, ValueError):
                pass
        prompts = samples.get("prompt")
        if self.clip_model is not None and prompts is not None:
            metrics["clip_score"] = clip_score(images, list(prompts), self.clip_model)
        if self.brisque:
            if min(images.shape[-2:]) >= BRISQUE_MIN_SIDE:
                metrics["brisque"] = brisque_score(images)
            else:  # a metric must not cost the run its evaluation
                warnings.warn(f"BRISQUE skipped: images are {images.shape[-2]}x{images.shape[-1]} pixels, "
                              f"it needs at least {BRISQUE_MIN_SIDE}", stacklevel=2)
        classes = sorted(set(labels.tolist()))
        save_class_grids(images, labels, out_dir, classes, per_class=16)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics

    # -------------------------------------------------------------- export
    def export_lora(self, out_dir: str | os.PathLike, y_embedding: Tensor | None = None) -> Path:
        """Write the LoRA (diffusers format, `pytorch_lora_weights.safetensors`) and, for CTRL, the y-embedding.

        Args:
            out_dir: target folder (created).
            y_embedding: CTRL's table [num_labels + 1, time_embed_dim] (last row = null label), or None.

        Returns:
            out_dir. A plain pipeline then reproduces the policy with
            `pipe.load_lora_weights(out_dir)` plus `attach_y_embedding(pipe.unet, out_dir)` (or
            `bake_label(pipe.unet, out_dir, y)` for one fixed label).
        """
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        unet = self.pipe.unet
        if lora_parameters(unet):
            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            meta = unet.peft_config["default"].to_dict()
            meta = {k: (list(v) if isinstance(v, (set, tuple)) else v) for k, v in meta.items()}
            StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, unet_lora_adapter_metadata=meta,
                                                      safe_serialization=True)
        if y_embedding is not None:
            save_file({"weight": y_embedding.detach().float().cpu().contiguous()}, str(out / "y_embedding.safetensors"),
                      metadata={"null_label": str(y_embedding.shape[0] - 1),
                                "label_names": json.dumps(self.label_names)})
        return out


def attach_y_embedding(unet: nn.Module, path: str | os.PathLike) -> nn.Embedding:
    """Give a plain UNet2DConditionModel CTRL's y-embedding as its class embedding.

    After this, `unet(x, t, encoder_hidden_states=e, class_labels=y)` (y a LongTensor, the last index
    = null label) computes the fine-tuned model's noise prediction for label y.
    """
    file = Path(path) / "y_embedding.safetensors" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no y-embedding at {file} (written by SD15Domain.export_lora for CTRL runs)")
    w = load_file(str(file))["weight"]
    emb = nn.Embedding(w.shape[0], w.shape[1]).to(device=unet.device, dtype=unet.dtype)
    emb.weight.data.copy_(w)
    unet.class_embedding = emb.requires_grad_(False)
    return emb


@torch.no_grad()
def bake_label(unet: nn.Module, path: str | os.PathLike, label: int) -> None:
    """Fold label y's embedding into the time-embedding bias so a *plain* pipeline call (`pipe(prompt)`)
    samples the fine-tuned model for that label (the guided branch and the unguided one both get it;
    for CTRL's null-label unconditional branch use `attach_y_embedding` and call the UNet yourself)."""
    file = Path(path) / "y_embedding.safetensors" if Path(path).is_dir() else Path(path)
    w = load_file(str(file))["weight"]
    if not 0 <= label < w.shape[0]:
        raise ValueError(f"label {label} outside the embedding table's {w.shape[0]} rows")
    unet.time_embedding.linear_2.bias.add_(w[label].to(unet.time_embedding.linear_2.bias))


# ------------------------------------------------------------------------------------------ metrics
class _TensorFeatures(nn.Module):
    """Adapts transformers 5's CLIPModel (whose get_*_features return output objects) to torchmetrics."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.model.get_image_features(*args, **kwargs)
        return out if isinstance(out, Tensor) else out.pooler_output

    def get_text_features(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.model.get_text_features(*args, **kwargs)
        return out if isinstance(out, Tensor) else out.pooler_output


def clip_score(images: Tensor, prompts: Sequence[str], clip_model: str | os.PathLike) -> float:
    """torchmetrics' CLIP score, max(100 * mean cosine(image, text), 0), with a CLIP model from a local folder.

    Args:
        images: [N, 3, H, W] in [-1, 1].
        prompts: N captions.
        clip_model: folder of a CLIPModel + CLIPProcessor (e.g. openai/clip-vit-large-patch14), or a hub id.
    """
    from torchmetrics.functional.multimodal import clip_score as tm_clip_score
    from transformers import CLIPProcessor

    from domains.images.rewards import load_clip

    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    model = load_clip(clip_model)
    try:
        processor = CLIPProcessor.from_pretrained(str(clip_model))
    except OSError as err:
        raise FileNotFoundError(f"no CLIPProcessor (tokenizer + image processor) at {clip_model}: {err}") from err
    u8 = torch.from_numpy(to_uint8_hwc(images)).permute(0, 3, 1, 2)  # [N, 3, H, W] uint8
    score = tm_clip_score(list(u8), list(prompts), model_name_or_path=lambda: (_TensorFeatures(model), processor))
    return float(score)


# ------------------------------------------------------------------------------------------ builders
def build(
    model: str = "runwayml/stable-diffusion-v1-5",
    dtype: Dtype = "fp32",
    device: str = "auto",
    prompts: str | list[str] = "simple_animals",
    prompt_file: str | None = None,
    num_steps: Annotated[int, Field(ge=1, le=1000)] = 50,
    eta: Annotated[float, Field(gt=0)] = 1.0,
    guidance_scale: Annotated[float, Field(ge=0)] | None = 7.5,
    resolution: Annotated[int, Field(ge=8)] | None = None,
    lora_rank: Annotated[int, Field(ge=0)] = 4,
    lora_alpha: Annotated[float, Field(gt=0)] | None = None,
    lora_targets: tuple[str, ...] = SD_LORA_TARGETS,
    gradient_checkpointing: bool = False,
    reward: Any = None,
    classifier: Any = None,
    measure: Any = None,
    label_names: list[str] | None = None,
    clip_model: str | None = None,
    brisque: bool = False,
) -> SD15Domain:
    """Build the Stable Diffusion domain.

    Args:
        model: local diffusers folder or hub id.
        dtype: "fp32" | "fp16" | "bf16" for the frozen networks (LoRA stays fp32).
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
        prompts: shipped prompt set name or a list of prompts.
        prompt_file: a file with one prompt per line (overrides `prompts`).
        num_steps: DDIM steps (paper: 50).
        eta: DDIM eta (paper: 1.0; > 0 for log-probs and KL).
        guidance_scale: classifier-free guidance weight on prompts (paper: 7.5); null = off.
        resolution: image side in pixels (default: the UNet's sample size x VAE factor, 512 for SD 1.5).
        lora_rank, lora_alpha, lora_targets: LoRA on the UNet (rank 0 = none).
        gradient_checkpointing: recompute UNet activations in backward (policy-level and diffusers').
        reward: image reward (images [-1, 1] -> [B]), e.g. `rewards.aesthetic_score`; composed with decoding.
        classifier: image classifier (images -> logits) for CTRL, e.g. `rewards.load_image_classifier`.
        measure: images -> measured labels for evaluation, e.g. `rewards.compressibility_classes`.
        label_names: names of y's classes for grids and reports.
        clip_model: local CLIP folder for the evaluation's CLIP score (None = skip).
        brisque: report the mean BRISQUE of the samples (the `brisque` package; images >= 32 px).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(model, dtype=dtype, device=device)
    return SD15Domain(
        pipe, load_prompts(prompts, prompt_file), num_steps=num_steps, eta=eta, guidance_scale=guidance_scale,
        resolution=resolution, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
        gradient_checkpointing=gradient_checkpointing, reward=reward, classifier=classifier, measure=measure,
        label_names=label_names, clip_model=clip_model, brisque=brisque,
    )


def joint_classifier(classifiers: list[Any]) -> JointClassifier:
    """Recipe helper: the conditional-independence product of several image classifiers."""
    return JointClassifier(classifiers)


def joint_measure(measures: list[Any]) -> ProductClasses:
    """Recipe helper: joint measured labels of several LevelClasses (row-major, like `joint_classifier`)."""
    return ProductClasses(measures, [m.num_classes for m in measures])
