"""Train CTRL's classifier p(y | image) on an image folder (80/20 split, early stopping, temperature).

Labels come from a CSV (`--labels labels.csv`, columns filename,label; label = an integer or a name from
`--class-names`) or are computed from the images themselves:

    # the CTRL paper's compressibility classes (JPEG kB at q95: 4 levels at 60/85/110, or 2 at 70)
    python scripts/images/train_image_classifier.py --images data/sd15_images --compressibility 4 \
        --out models/compressibility_4class.safetensors
    # aesthetic levels (LAION score >= 5.7), an MLP on CLIP ViT-L/14 embeddings (the CTRL code's classifier)
    python scripts/images/train_image_classifier.py --images data/sd15_images --aesthetic-clip models/clip-vit-large-patch14 \
        --aesthetic-head models/sac+logos+ava1-l14-linearMSE.pth --out models/aesthetic_2class.safetensors

Everything is read and checked (unreadable images, unknown classes, unlisted files) before anything is
written. Writes `<out>` (.safetensors) and its .json (config, temperature, validation metrics).
"""

from __future__ import annotations

import argparse
import json

import torch

from domains.images import rewards


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of images (.png/.jpg/...)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels", help="CSV with columns filename,label")
    src.add_argument("--compressibility", type=int, choices=(2, 4), help="label = JPEG size class (paper thresholds)")
    src.add_argument("--aesthetic-clip", help="CLIP folder: label = LAION aesthetic level (needs --aesthetic-head)")
    p.add_argument("--aesthetic-head", help="LAION aesthetic head weights (.pth)")
    p.add_argument("--aesthetic-thresholds", type=float, nargs="+", default=[5.7])
    p.add_argument("--class-names", nargs="+", default=None, help="names of the classes, in label order")
    p.add_argument("--num-classes", type=int, default=None, help="for integer CSV labels")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--size", type=int, default=256, help="CNN input side (images are resized)")
    p.add_argument("--load-size", type=int, default=None, help="resize images to this side when reading")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    labeler, k, names, clip_head = None, a.num_classes, a.class_names, None
    if a.compressibility:
        labeler = rewards.compressibility_classes(a.compressibility)
        k, names = labeler.num_classes, names or labeler.names
    elif a.aesthetic_clip:
        if not a.aesthetic_head:
            p.error("--aesthetic-clip needs --aesthetic-head")
        labeler = rewards.aesthetic_classes(a.aesthetic_clip, a.aesthetic_head, a.aesthetic_thresholds)
        k, names, clip_head = labeler.num_classes, names or labeler.names, a.aesthetic_clip
    elif names is not None:
        k = len(names)
    if k is None:
        p.error("integer CSV labels need --num-classes or --class-names")
    x, y, files = rewards.image_dataset(a.images, a.labels, labeler, size=a.load_size, class_names=names, num_classes=k)
    counts = torch.bincount(y, minlength=k).tolist()
    print(f"{len(files)} images, class counts {counts}", flush=True)
    if clip_head is not None:
        clf, metrics = rewards.train_clip_head_classifier(clip_head, x, y, k, lr=a.lr, seed=a.seed)
    else:
        clf, metrics = rewards.train_image_classifier(x, y, k, size=a.size, epochs=a.epochs, lr=a.lr, seed=a.seed)
    metrics["class_counts"] = counts
    path = rewards.save_image_classifier(clf, a.out, metrics, class_names=names)
    print(json.dumps({"out": str(path), **metrics}))


if __name__ == "__main__":
    main()
