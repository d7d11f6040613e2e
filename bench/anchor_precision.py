"""CTRL's MDLM-loss anchor in bf16 (`forward_autocast: bf16`) against fp32, on the shipped DNA model.

    .venv/bin/python bench/anchor_precision.py             # prints the table, updates docs/benchmarks.md
    .venv/bin/python bench/anchor_precision.py --quick --no-docs

The anchor term of `dna/ctrl_cell_type` is `diffusion_loss(policy, x0, cond, t_weights=...)` on pool
rows, forward and backward through the LoRA'd denoiser. Both variants draw the same t and masks (same
generator seed) on the same rows; `bf16` runs the term inside `torch.autocast("cpu", bfloat16)` as
`CTRL._forward_nelbo` does. Reported: median time of forward + backward, the relative difference
of the loss and the cosine and norm ratio of the LoRA gradients (bf16 vs fp32).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import torch

from rldiff.algorithms.common import diffusion_loss

#: the recipe's anchor weights: the last three of ten sampler steps (t <= 0.3)
T_WEIGHTS = [1.0, 1.0, 1.0] + [0.0] * 7


def run(quick: bool, repeats: int | None, batches: tuple[int, ...]) -> dict[str, Any]:
    repeats = repeats or (1 if quick else 5)
    m = C.dna(10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: LoRA up-projections away from zero
        for p in m.trainable["denoiser"].parameters():
            if p.requires_grad:
                p.normal_(0, 0.02, generator=g)
    params = [p for p in m.trainable["denoiser"].parameters() if p.requires_grad]
    rows = []
    for batch in batches[:1] if quick else batches:
        x0 = torch.randint(4, (batch, m.policy.seq_len), generator=g)

        def step(bf16: bool, x0: torch.Tensor = x0) -> tuple[float, torch.Tensor]:
            for p in params:
                p.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = diffusion_loss(m.policy, x0, None, torch.Generator().manual_seed(1), torch.device("cpu"),
                                      t_weights=T_WEIGHTS).float().mean()
            loss.backward()
            return loss.item(), torch.cat([p.grad.flatten() for p in params])

        (l32, g32), (l16, g16) = step(False), step(True)
        tm = C.interleaved({"fp32": lambda: step(False), "bf16": lambda: step(True)}, repeats)
        rows.append({"batch": batch, "fp32_ms": 1e3 * tm.median("fp32"), "bf16_ms": 1e3 * tm.median("bf16"),
                     "speedup": tm.ratio("fp32", "bf16"), "loss_rel": abs(l16 - l32) / abs(l32),
                     "cos": float(torch.nn.functional.cosine_similarity(g32, g16, 0)),
                     "norm": float(g16.norm() / g32.norm())})
    tbl = C.table(["anchor rows", "fp32 fwd+bwd (ms)", "bf16 fwd+bwd (ms)", "speed-up", "loss rel. diff",
                   "grad cosine", "grad norm ratio"],
                  [[r["batch"], C.fmt(r["fp32_ms"], 0), C.fmt(r["bf16_ms"], 0), f"{r['speedup']:.2f}x",
                    f"{r['loss_rel']:.1e}", f"{r['cos']:.6f}", f"{r['norm']:.4f}"] for r in rows])
    return {"rows": rows, "table": tbl, "settings": f"{m.name}, LoRA rank 8, t-weights {T_WEIGHTS[:3]} + 7 x 0, "
            f"{repeats} repetitions, {C.machine()}"}


INTRO = """\
The MDLM-loss anchor of `dna/ctrl_cell_type` (256 pool rows per update, forward and backward)
was ~35% of an update in fp32. `CTRL(forward_autocast="bf16")` runs only that term under bf16
autocast; the rollout, the reward and the exact KL stay fp32."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    ap = C.parser(__doc__)
    ap.add_argument("--batches", default="128,256", help="comma-separated anchor batch sizes")
    args = ap.parse_args(argv)
    C.setup_torch(args.threads)
    load0 = C.load_average()
    res = run(args.quick, args.repeats, tuple(int(b) for b in args.batches.split(",")))
    load1 = C.load_average()
    print(f"Anchor precision ({res['settings']}):\n")
    print(res["table"])
    if not (args.quick or args.no_docs):
        body = "\n".join([f"{res['settings']}:", "", res["table"]])
        C.update_docs(C.Report("anchor_precision", "CTRL's MDLM-loss anchor in bf16 (`bench/anchor_precision.py`)",
                               INTRO, body, C.command_line("anchor_precision.py", argv), load0, load1))
    return res


if __name__ == "__main__":
    main()
