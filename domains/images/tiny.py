"""Tiny stand-ins of the real image models, built from configs offline (for tests and dry runs).

    save_tiny_sd_pipeline(tmp / "sd")      # UNet2DConditionModel + AutoencoderKL + CLIPTextModel + CLIPTokenizer
    save_tiny_clip(tmp / "clip")           # CLIPModel + CLIPProcessor (CLIP score, aesthetic head, CLIP classifiers)
    save_tiny_aesthetic_head(tmp / "head.pth", dim=16)

They have the real classes and file layouts, so the code paths that load SD 1.5 and CLIP ViT-L/14
load them unchanged. transformers 5 builds a CLIPTokenizer from `vocab.json` + `merges.txt` files,
so the tokenizer is written to disk first (a byte-level vocabulary, no merges).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_DIM = 32  # hidden size of the tiny text encoders
PROJECTION_DIM = 16  # CLIP projection size of the tiny CLIP


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable-unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_tokenizer_files(folder: str | Path) -> tuple[Path, Path]:
    """Write a byte-level CLIP vocabulary (`vocab.json`, 514 tokens) and an empty `merges.txt`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder / "vocab.json", folder / "merges.txt"


def tiny_tokenizer(folder: str | Path):
    """A CLIPTokenizer over the tiny vocabulary (files written into `folder`)."""
    from transformers import CLIPTokenizer

    vocab, merges = write_tiny_tokenizer_files(folder)
    return CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=16)  # transformers 5 names


def _text_config(tok) -> dict:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                "hidden_size": TEXT_DIM, "intermediate_size": 37, "layer_norm_eps": 1e-5, "num_attention_heads": 4,
                "num_hidden_layers": 2, "vocab_size": len(tok), "max_position_embeddings": 16}


def save_tiny_sd_pipeline(folder: str | Path, seed: int = 0, sample_size: int = 8) -> Path:
    """Save a tiny SD-architecture `StableDiffusionPipeline` (diffusers layout) to `folder`.

    UNet2DConditionModel with block_out_channels (8, 16), AutoencoderKL with a 2x latent factor,
    a 2-layer CLIPTextModel, and SD 1.5's DDIM schedule. Images are `2 * sample_size` pixels wide.

    Returns:
        folder.
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, norm_num_groups=4, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=2 * sample_size,
    )
    tok = tiny_tokenizer(folder / "_tokenizer_src")
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(tok)))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def save_tiny_clip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny `CLIPModel` + `CLIPProcessor` (projection dim 16, 32-pixel images) to `folder`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    torch.manual_seed(seed)
    tok = tiny_tokenizer(folder / "_tokenizer_src")
    config = CLIPConfig(
        text_config=_text_config(tok),
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                           "image_size": image_size, "patch_size": 8},
        projection_dim=PROJECTION_DIM,
    )
    CLIPModel(config).save_pretrained(folder)
    try:
        from transformers import (
            CLIPImageProcessorPil as _ImageProcessor,  # transformers 5 without torchvision
        )
    except ImportError:  # pragma: no cover
        _ImageProcessor = CLIPImageProcessor
    image_processor = _ImageProcessor(size={"shortest_edge": image_size},
                                      crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return folder


def save_tiny_aesthetic_head(path: str | Path, dim: int = PROJECTION_DIM, seed: int = 0) -> Path:
    """Save a randomly initialised LAION-shaped aesthetic MLP for `dim`-d embeddings (a .pth state dict)."""
    from domains.images.rewards import AestheticMLP

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(AestheticMLP(dim).state_dict(), path)
    return path
