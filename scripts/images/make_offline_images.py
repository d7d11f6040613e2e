"""Sample an offline image dataset from a Stable Diffusion pipeline (the (x, y) pairs CTRL's classifiers learn from).

    python scripts/images/make_offline_images.py --model runwayml/stable-diffusion-v1-5 --out data/sd15_images \
        --num 4096 --batch 16 --steps 50 --guidance 7.5

Writes `<out>/<index>.png` and `<out>/prompts.csv` (filename,prompt). Labels are computed later from
the images themselves (JPEG size, aesthetic score) by `train_image_classifier.py`, or given in a
labels CSV (filename,label). Nothing is written before the pipeline has loaded.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from PIL import Image

from domains.images.rewards import to_uint8_hwc
from domains.images.sd15 import build
from rldiff.core.rollout import rollout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local diffusers folder or hub id")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--prompts", default="simple_animals", help="shipped prompt set")
    p.add_argument("--prompt-file", default=None)
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    domain = build(a.model, dtype=a.dtype, prompts=a.prompts, prompt_file=a.prompt_file, num_steps=a.steps,
                   eta=a.eta, guidance_scale=a.guidance, resolution=a.resolution, lora_rank=0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(a.seed)
    rows = []
    with torch.no_grad():
        for start in range(0, a.num, a.batch):
            n = min(a.batch, a.num - start)
            cond = domain.sample_cond(n, g)
            x0 = rollout(domain.policy, n, cond, generator=g, shape=domain.sample_shape, device=domain.device,
                         keep_states=False).x0
            for i, arr in enumerate(to_uint8_hwc(domain.decode(x0))):
                name = f"{start + i:06d}.png"
                Image.fromarray(arr).save(out / name)
                rows.append((name, cond["prompt"][i]))
            print(f"{start + n}/{a.num}", flush=True)
    with open(out / "prompts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "prompt"])
        w.writerows(rows)


if __name__ == "__main__":
    main()
