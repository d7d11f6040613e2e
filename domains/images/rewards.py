"""Image rewards and image classifiers for the Stable Diffusion domain.

Every reward here takes **images** `[B, 3, H, W]` in [-1, 1] (the VAE's output range) and returns
`[B]`; `domains.images.sd15` composes them with VAE decoding to act on latents.

- `JpegSize`: JPEG file size in kB at quality 95 (DDPO's compressibility reward is `-size`,
  incompressibility `+size`); not differentiable.
- `AestheticScore`: the LAION aesthetic predictor v2 (an MLP on L2-normalised CLIP ViT-L/14 image
  embeddings), CLIP and head weights from local files; differentiable.
- `LevelClasses`: maps a scalar measurement (JPEG kB, aesthetic score) to ordered classes at
  thresholds, e.g. the CTRL paper's 4 compressibility levels at 60 / 85 / 110 kB.
- `ImageClassifier` + `train_image_classifier`: p(y | image) fitted on an image folder with a labels
  CSV, or with labels computed from the images (e.g. their JPEG size class).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

# [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] (the PIL view of the images), under its old name here
from domains.images.metrics import to_uint8 as to_uint8_hwc
from rldiff.core.classifier import fit_classifier

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

#: CLIP's image normalisation (the same for ViT-B and ViT-L).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------- helpers
def jpeg_size_kb(image: np.ndarray | Image.Image, quality: int = 95) -> float:
    """Size in kB (1000 bytes) of one RGB image saved as JPEG at `quality`."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    pil.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


# ---------------------------------------------------------------------------------------- rewards
class JpegSize:
    """r(x) = sign * (JPEG size of x in kB at `quality`); sign -1 = compressibility, +1 = incompressibility.

    Not differentiable: use it with DDPO / CTRL's policy-gradient mode, or train a classifier on it.
    """

    differentiable = False

    def __init__(self, sign: float = -1.0, quality: int = 95) -> None:
        self.sign = float(sign)
        self.quality = quality

    def sizes(self, images: Tensor) -> Tensor:
        """[B] JPEG sizes in kB."""
        return torch.tensor([jpeg_size_kb(a, self.quality) for a in to_uint8_hwc(images)], dtype=torch.float32)

    def __call__(self, images: Tensor, cond: Any = None) -> Tensor:
        return (self.sign * self.sizes(images)).to(images.device)


def jpeg_compressibility(quality: Annotated[int, Field(ge=1, le=100)] = 95) -> JpegSize:
    """DDPO's compressibility reward: minus the JPEG size in kB."""
    return JpegSize(-1.0, quality)


def jpeg_incompressibility(quality: Annotated[int, Field(ge=1, le=100)] = 95) -> JpegSize:
    """DDPO's incompressibility reward: the JPEG size in kB."""
    return JpegSize(1.0, quality)


class AestheticMLP(nn.Module):
    """The LAION aesthetic predictor v2 head (improved-aesthetic-predictor), key-compatible with
    `sac+logos+ava1-l14-linearMSE.pth`: Linear(d,1024) Drop Linear(1024,128) Drop Linear(128,64)
    Drop Linear(64,16) Linear(16,1)."""

    def __init__(self, input_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embed: Tensor) -> Tensor:
        return self.layers(embed)


def load_aesthetic_head(path: str | Path) -> AestheticMLP:
    """Load the aesthetic MLP from a `.pth` state dict (LAION's file) or a `.safetensors` file.

    Raises:
        FileNotFoundError: naming the path and where the LAION weights come from.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"aesthetic head weights {path} not found: download sac+logos+ava1-l14-linearMSE.pth from "
            "https://github.com/christophschuhmann/improved-aesthetic-predictor and pass its local path"
        )
    sd = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    if "layers.0.weight" not in sd:
        raise ValueError(f"{path} is not an aesthetic-MLP state dict (no 'layers.0.weight'; keys: {sorted(sd)[:6]})")
    head = AestheticMLP(sd["layers.0.weight"].shape[1])
    head.load_state_dict(sd)
    return head.eval()


def _image_features(clip: nn.Module, pixel_values: Tensor) -> Tensor:
    """Projected CLIP image embeddings [B, D] (transformers 4 returns a tensor, 5 an output object)."""
    out = clip.get_image_features(pixel_values=pixel_values)
    return out if isinstance(out, Tensor) else out.pooler_output


def clip_preprocess(images: Tensor, size: int) -> Tensor:
    """Differentiable CLIP preprocessing: [-1, 1] images -> resize shortest side to `size`
    (bicubic, antialiased), centre crop, normalise with CLIP's mean / std."""
    x = (images.float() + 1) / 2
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def load_clip(path: str | Path) -> nn.Module:
    """A `transformers.CLIPModel` from a local folder (or a hub id when online), frozen, eval mode.

    Raises:
        FileNotFoundError: neither a local folder nor a reachable hub id (names the path).
    """
    from transformers import CLIPModel

    try:
        model = CLIPModel.from_pretrained(str(path))
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load a CLIP model from {path!r}: not a local folder with config.json + weights, and not "
            f"reachable on the hub (offline?). Download e.g. openai/clip-vit-large-patch14 and pass its folder. ({err})"
        ) from err
    return model.eval().requires_grad_(False)


class AestheticScore(nn.Module):
    """LAION aesthetic score of images in [-1, 1]: head(normalise(CLIP image embedding)). Differentiable.

    Args:
        clip: a CLIPModel (ViT-L/14 for the real head; any projection size matching the head).
        head: the AestheticMLP.
    """

    differentiable = True

    def __init__(self, clip: nn.Module, head: AestheticMLP) -> None:
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.head = head.eval().requires_grad_(False)
        self.size = int(clip.config.vision_config.image_size)

    def forward(self, images: Tensor, cond: Any = None) -> Tensor:
        dtype = next(self.clip.parameters()).dtype
        emb = _image_features(self.clip, clip_preprocess(images, self.size).to(dtype)).float()  # [B, D]
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return self.head(emb).squeeze(-1)


def aesthetic_score(clip_path: str, head_path: str) -> AestheticScore:
    """The LAION aesthetic reward from local files.

    Args:
        clip_path: folder of a CLIPModel (openai/clip-vit-large-patch14 for the real head).
        head_path: the MLP weights (`sac+logos+ava1-l14-linearMSE.pth` or a .safetensors copy).
    """
    clip, head = load_clip(clip_path), load_aesthetic_head(head_path)
    dim = _image_features(clip, torch.zeros(1, 3, clip.config.vision_config.image_size,
                                            clip.config.vision_config.image_size)).shape[-1]
    if head.layers[0].in_features != dim:
        raise ValueError(f"aesthetic head {head_path} expects {head.layers[0].in_features}-d embeddings but the CLIP "
                         f"model at {clip_path} gives {dim}-d ones (the LAION head needs ViT-L/14)")
    return AestheticScore(clip, head)


# ---------------------------------------------------------------------------------------- classes
class LevelClasses:
    """Ordered classes of a scalar measurement: class k = number of thresholds <= value.

    `LevelClasses(JpegSize(+1), (60, 85, 110))` gives the CTRL paper's 4 compressibility levels
    (class 0 = under 60 kB, ..., class 3 = 110 kB and more).

    Args:
        measure: images [B, 3, H, W] -> values [B] (e.g. `JpegSize(+1)` or `AestheticScore`).
        thresholds: increasing class boundaries.
        names: optional class names (len(thresholds) + 1).
    """

    def __init__(self, measure: Callable[..., Tensor], thresholds: Sequence[float], names: Sequence[str] | None = None) -> None:
        th = [float(t) for t in thresholds]
        if not th or any(b <= a for a, b in itertools.pairwise(th)):
            raise ValueError(f"thresholds must be a non-empty increasing list, got {list(thresholds)}")
        if names is not None and len(names) != len(th) + 1:
            raise ValueError(f"{len(th)} thresholds make {len(th) + 1} classes but {len(names)} names were given")
        self.measure, self.thresholds = measure, th
        self.names = list(names) if names is not None else [self._default_name(k) for k in range(len(th) + 1)]

    def _default_name(self, k: int) -> str:
        lo = self.thresholds[k - 1] if k > 0 else None
        hi = self.thresholds[k] if k < len(self.thresholds) else None
        return f"<{hi:g}" if lo is None else (f">={lo:g}" if hi is None else f"{lo:g}-{hi:g}")

    @property
    def num_classes(self) -> int:
        return len(self.thresholds) + 1

    def classify_values(self, values: Tensor) -> Tensor:
        """[B] values -> [B] long class indices."""
        return torch.bucketize(values.detach().float().cpu(), torch.tensor(self.thresholds), right=True)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return self.classify_values(self.measure(images))


def compressibility_classes(levels: Annotated[int, Field(ge=2, le=4)] = 4, quality: int = 95) -> LevelClasses:
    """The CTRL paper's compressibility classes from JPEG kB at quality 95: 4 levels at 60 / 85 / 110 kB,
    or 2 levels at 70 kB (class 0 = the more compressible images)."""
    thresholds = {4: (60.0, 85.0, 110.0), 2: (70.0,)}.get(levels)
    if thresholds is None:
        raise ValueError(f"compressibility levels must be 2 or 4 (the paper's settings), got {levels}")
    return LevelClasses(JpegSize(+1.0, quality), thresholds)


class ProductClasses:
    """Joint classes of independent labelings: y = y_1 * K_2 + y_2 (row-major), e.g. compressibility x aesthetic."""

    def __init__(self, parts: Sequence[Callable[[Tensor], Tensor]], sizes: Sequence[int]) -> None:
        self.parts, self.sizes = list(parts), [int(s) for s in sizes]

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.sizes))

    def split(self, y: Tensor) -> list[Tensor]:
        """Joint labels [B] -> one [B] tensor per part."""
        out, rest = [], y.long()
        for s in reversed(self.sizes):
            out.append(rest % s)
            rest = rest // s
        return out[::-1]

    def __call__(self, images: Tensor) -> Tensor:
        y = torch.zeros(images.shape[0], dtype=torch.long)
        for part, s in zip(self.parts, self.sizes):
            y = y * s + part(images).long().cpu()
        return y


# ---------------------------------------------------------------------------------------- classifiers
class ImageClassifier(nn.Module):
    """A small CNN p(y | image) for images in [-1, 1] of any size: resize to `size`, 4 stride-2 conv
    blocks, global average pooling, a linear head; `temperature` divides the logits (calibration).

    Args:
        num_classes: K.
        size: the side images are resized to (None = keep the input size).
        width: channels of the first block (doubling, capped at 8x).
    """

    def __init__(self, num_classes: int, size: int | None = 128, width: int = 32, temperature: float = 1.0) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "size": size, "width": width}
        chans = [3] + [width * min(2**i, 8) for i in range(4)]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(chans):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(min(8, b), b), nn.SiLU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(chans[-1], num_classes)
        self.temperature = float(temperature)

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def logits_uncalibrated(self, images: Tensor) -> Tensor:
        x = images.float()
        s = self.config["size"]
        if s is not None and tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return self.head(self.body(x))

    def forward(self, images: Tensor) -> Tensor:
        return self.logits_uncalibrated(images) / self.temperature


class _Uncalibrated(nn.Module):
    def __init__(self, clf: ImageClassifier) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, x: Tensor) -> Tensor:
        return self.clf.logits_uncalibrated(x)


def list_images(folder: str | Path) -> list[Path]:
    """Image files in `folder` (sorted), by extension."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def load_images(paths: Sequence[Path], size: int | None = None) -> Tensor:
    """Read images into [N, 3, H, W] in [-1, 1] (resized to size x size when given).

    Raises:
        ValueError: listing every file that cannot be read as an image (nothing is returned).
    """
    arrays, bad = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BICUBIC)
                arrays.append(np.asarray(im))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            bad.append(f"{p.name} ({type(err).__name__}: {err})")
    if bad:
        raise ValueError(f"{len(bad)} unreadable image file(s): " + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"images have different sizes {sorted({a.shape for a in arrays})}; pass `size` to resize them")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


def read_labels_csv(path: str | Path, class_names: Sequence[str] | None = None,
                    num_classes: int | None = None) -> dict[str, int]:
    """Read `filename,label` rows (a header row with those names is required).

    Labels may be integers in [0, num_classes) or names from `class_names`.

    Raises:
        ValueError: a missing column, a duplicate file, or an unknown class (with the line number and
            the valid classes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV {path} not found")
    valid = list(class_names) if class_names is not None else None
    k = len(valid) if valid is not None else num_classes
    out: dict[str, int] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"filename", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs a header with columns 'filename' and 'label', got {reader.fieldnames}")
        for row in reader:
            line, name, raw = reader.line_num, row["filename"].strip(), row["label"].strip()
            if valid is not None and raw in valid:
                label = valid.index(raw)
            else:
                try:
                    label = int(raw)
                except ValueError:
                    label = -1
                if label < 0 or (k is not None and label >= k):
                    allowed = valid if valid is not None else (f"integers 0..{k - 1}" if k else "non-negative integers")
                    raise ValueError(f"{path}:{line}: unknown class {raw!r} for {name!r}; valid classes: {allowed}")
            if name in out:
                raise ValueError(f"{path}:{line}: file {name!r} is listed twice")
            out[name] = label
    if not out:
        raise ValueError(f"{path} has no label rows")
    return out


def image_dataset(folder: str | Path, labels_csv: str | Path | None = None,
                  labeler: Callable[[Tensor], Tensor] | None = None, size: int | None = None,
                  class_names: Sequence[str] | None = None, num_classes: int | None = None) -> tuple[Tensor, Tensor, list[str]]:
    """Images of a folder with labels from a CSV or computed by `labeler` (e.g. compressibility classes).

    With a CSV, every listed file must exist and be readable, and every image in the folder must
    be listed.

    Returns:
        (x [N, 3, H, W] in [-1, 1], y [N] long, file names).
    """
    if (labels_csv is None) == (labeler is None):
        raise ValueError("give exactly one of labels_csv (a filename,label CSV) or labeler (images -> labels)")
    files = list_images(folder)
    if labels_csv is not None:
        labels = read_labels_csv(labels_csv, class_names, num_classes)
        present = {p.name for p in files}
        missing = sorted(set(labels) - present)
        if missing:
            raise ValueError(f"{labels_csv} lists {len(missing)} file(s) not found as images in {folder}: {missing[:10]}")
        unlisted = sorted(present - set(labels))
        if unlisted:
            raise ValueError(f"{len(unlisted)} image(s) in {folder} have no row in {labels_csv}: {unlisted[:10]}")
        x = load_images(files, size)
        y = torch.tensor([labels[p.name] for p in files], dtype=torch.long)
    else:
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
        x = load_images(files, size)
        y = torch.cat([labeler(x[i:i + 64]).long().cpu() for i in range(0, len(x), 64)])
    return x, y, [p.name for p in files]


def train_image_classifier(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    size: int | None = 128,
    width: int = 32,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[ImageClassifier, dict[str, float]]:
    """Fit an ImageClassifier with `rldiff.core.classifier.fit_classifier` (80/20, early stopping,
    temperature scaling). Returns the calibrated classifier (frozen) and its validation metrics."""
    if int(y.max()) >= num_classes or int(y.min()) < 0:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    torch.manual_seed(seed)
    clf = ImageClassifier(num_classes, size=size, width=width)
    res = fit_classifier(_Uncalibrated(clf), x, y, epochs=epochs, batch_size=batch_size, lr=lr,
                         generator=torch.Generator().manual_seed(seed))
    clf.temperature = res.temperature
    metrics = {"val_accuracy": res.val_accuracy, "val_nll": res.val_nll, "temperature": res.temperature,
               "epochs_run": float(res.epochs_run), "num_examples": float(len(y))}
    return clf.eval().requires_grad_(False), metrics


class ClipHeadClassifier(nn.Module):
    """p(y | image) = softmax(MLP(L2-normalised CLIP image embedding) / T), the CTRL code's aesthetic
    classifier (the LAION head's shape with K outputs). Differentiable through CLIP.

    Args:
        clip: a CLIPModel (frozen).
        num_classes: K.
        clip_path: where `clip` was loaded from (saved with the head so it can be reloaded).
    """

    def __init__(self, clip: nn.Module, num_classes: int, clip_path: str | None = None, temperature: float = 1.0) -> None:
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.size = int(clip.config.vision_config.image_size)
        dim = int(clip.config.projection_dim)
        self.head = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                  nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, num_classes))
        self.config = {"kind": "clip_head", "num_classes": num_classes, "clip_path": clip_path}
        self.temperature = float(temperature)

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def embed(self, images: Tensor) -> Tensor:
        """[B, D] normalised CLIP image embeddings of images in [-1, 1]."""
        dtype = next(self.clip.parameters()).dtype
        e = _image_features(self.clip, clip_preprocess(images, self.size).to(dtype)).float()
        return e / e.norm(dim=-1, keepdim=True)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.embed(images)) / self.temperature


def train_clip_head_classifier(clip_path: str, x: Tensor, y: Tensor, num_classes: int, *, epochs: int = 100,
                               lr: float = 1e-3, seed: int = 0) -> tuple[ClipHeadClassifier, dict[str, float]]:
    """Fit a ClipHeadClassifier: CLIP embeddings computed once, the MLP trained with `fit_classifier`."""
    torch.manual_seed(seed)
    clf = ClipHeadClassifier(load_clip(clip_path), num_classes, clip_path=str(clip_path))
    with torch.no_grad():
        emb = torch.cat([clf.embed(x[i:i + 32]) for i in range(0, len(x), 32)])
    res = fit_classifier(clf.head, emb, y, epochs=epochs, lr=lr, generator=torch.Generator().manual_seed(seed))
    clf.temperature = res.temperature
    metrics = {"val_accuracy": res.val_accuracy, "val_nll": res.val_nll, "temperature": res.temperature,
               "epochs_run": float(res.epochs_run), "num_examples": float(len(y))}
    return clf.eval().requires_grad_(False), metrics


def save_image_classifier(clf: ImageClassifier | ClipHeadClassifier, path: str | Path, metrics: dict[str, Any] | None = None,
                          class_names: Sequence[str] | None = None) -> Path:
    """Write `path` (.safetensors) with the weights and `path`.json with config, temperature, metrics."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": clf.config, "temperature": clf.temperature, "metrics": metrics or {},
            "class_names": list(class_names) if class_names is not None else None}
    state = clf.head.state_dict() if isinstance(clf, ClipHeadClassifier) else clf.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return path


def load_image_classifier(path: str | Path, clip_path: str | None = None) -> ImageClassifier | ClipHeadClassifier:
    """Load a classifier written by `save_image_classifier` (frozen, eval mode, calibrated).

    Args:
        path: the .safetensors file (its .json sits next to it).
        clip_path: for CLIP-head classifiers, where the CLIP model is now (default: the saved path).

    Raises:
        FileNotFoundError: naming the missing file and how to make it.
    """
    path = Path(path).with_suffix(".safetensors")
    for p in (path, path.with_suffix(".json")):
        if not p.is_file():
            raise FileNotFoundError(f"image classifier file {p} not found; train one with "
                                    "`python scripts/images/train_image_classifier.py` (see docs/images.md)")
    meta = json.loads(path.with_suffix(".json").read_text())
    cfg = dict(meta["config"])
    if cfg.pop("kind", None) == "clip_head":
        cp = clip_path or cfg["clip_path"]
        clf = ClipHeadClassifier(load_clip(cp), cfg["num_classes"], clip_path=cp, temperature=meta["temperature"])
        clf.head.load_state_dict(load_file(str(path)))
    else:
        clf = ImageClassifier(**cfg, temperature=meta["temperature"])
        clf.load_state_dict(load_file(str(path)))
    return clf.eval().requires_grad_(False)


def aesthetic_classes(clip_path: str, head_path: str, thresholds: list[float] = [5.7]) -> LevelClasses:  # noqa: B006
    """Aesthetic levels measured by the LAION predictor: 2 classes at 5.7 (the CTRL code's threshold)."""
    return LevelClasses(aesthetic_score(clip_path, head_path), thresholds,
                        names=None if len(thresholds) != 1 else [f"aesthetic<{thresholds[0]:g}", f"aesthetic>={thresholds[0]:g}"])
