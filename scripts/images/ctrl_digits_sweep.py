"""Quick CTRL-on-digits runs outside the trainer, for choosing the recipe's settings.

    nice python scripts/images/ctrl_digits_sweep.py --minutes 20 --batch 32 --gamma 5 --grad all --out /tmp/run

Trains CTRL (Algorithm 2) on the digits domain for a wall-clock budget, evaluating the independent
classifier's accuracy / macro-F1 on `--eval-samples` samples every `--eval-every` updates, and
writes a JSON log.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from domains.images.digits import build
from rldiff.algorithms.ctrl import CTRL


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--gamma", type=float, default=5.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embedding-lr", type=float, default=1e-2)
    p.add_argument("--grad", default="all")
    p.add_argument("--mode", default="backprop", help="backprop (Algorithm 2) | policy_gradient (Algorithm 1)")
    p.add_argument("--clip-range", type=float, default=0.2)
    p.add_argument("--inner-epochs", type=int, default=1)
    p.add_argument("--minibatches", type=int, default=1)
    p.add_argument("--normalize-advantages", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0, help="extra classifier temperature inside the reward")
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--targets", default="to_q,to_k,to_v,to_out.0,conv1,conv2,time_emb_proj")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    domain = build(num_steps=a.steps, lora_rank=a.lora_rank, lora_targets=tuple(a.targets.split(",")), reference_samples=200)
    algo = CTRL(domain, gamma=a.gamma, mode=a.mode, batch_size=a.batch, lr=a.lr, embedding_lr=a.embedding_lr,
                grad=a.grad, k=a.k, weight_decay=0.0, clip_range=a.clip_range, inner_epochs=a.inner_epochs,
                num_minibatches=a.minibatches, normalize_advantages=a.normalize_advantages,
                temperature=a.temperature, kl_weight=a.kl_weight)
    log, t0, step, train_s = [], time.time(), 0, 0.0
    g = torch.Generator().manual_seed(a.seed)
    while train_s / 60 < a.minutes:
        ts = time.time()
        m = algo.update(step, g)
        train_s += time.time() - ts
        step += 1
        if step % 5 == 0:
            print(json.dumps({"step": step, "train_min": round(train_s / 60, 2), **{k: round(v, 4) for k, v in m.items()}}), flush=True)
        if step % a.eval_every == 0 or train_s / 60 >= a.minutes:
            s = algo.sample(a.eval_samples, torch.Generator().manual_seed(123))
            ev = domain.evaluate(s, out / f"eval_{step:04d}")
            rec = {"step": step, "train_minutes": train_s / 60, "wall_minutes": (time.time() - t0) / 60,
                   **{k: v for k, v in ev.items() if not k.startswith("acc_class")}}
            log.append(rec)
            print("EVAL", json.dumps(rec), flush=True)
            (out / "log.json").write_text(json.dumps({"args": vars(a), "evals": log}, indent=1))


if __name__ == "__main__":
    main()
