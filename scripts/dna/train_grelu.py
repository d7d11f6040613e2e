"""Train the shipped gReLU models on the embedded DNase set: the CTRL classifier and the oracle.

The shipped weights (domains/dna/weights/README.md has the numbers) come from

    .venv/bin/python scripts/dna/train_grelu.py classifier --arch conv_gru --epochs 10 --schedule cosine \
        --lr 2e-3 --label-smoothing 0.05 --rc-average --patience 3 --max-minutes 22
    .venv/bin/python scripts/dna/train_grelu.py oracle     --arch conv_gru --epochs 10 --schedule cosine \
        --lr 2e-3 --label-smoothing 0.05 --rc-average --patience 3 --max-minutes 22

(without options: the first, smaller models — ConvModel classifier, DilatedConvModel oracle,
constant learning rate, single-strand prediction).

classifier: p(cell line | x), trained on chromosomes CLASSIFIER_CHROMS (odd-numbered autosomes +
            chrX) with a random 80/20 split for early stopping and temperature scaling.
oracle:     trained on the disjoint ORACLE_CHROMS (even-numbered autosomes + chrY); used only to
            evaluate generated sequences, never by a training step.
chr1 (validation) and chr2 (test) are in neither. Both are scored on chr2, overall and per cell
line; the numbers go into the safetensors metadata (`domains.dna.grelu_models.model_info`) and
`<out>.json` (with the per-epoch validation history).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from domains.dna.data import CELL_LINES, load_dnase
from domains.dna.grelu_models import (
    CLASSIFIER_ARCH,
    CLASSIFIER_CHROMS,
    ORACLE_ARCH,
    ORACLE_CHROMS,
    accuracy_by_class,
    predict,
    save_grelu,
    train_classifier,
)

WEIGHTS = Path(__file__).resolve().parents[2] / "domains" / "dna" / "weights"

#: Architectures compared in the pilots (see domains/dna/weights/README.md); all CPU-feasible.
ARCHS: dict[str, dict] = {
    "conv_small": CLASSIFIER_ARCH,  # the first shipped classifier (45k parameters)
    "dilated_small": ORACLE_ARCH,  # the first shipped oracle (67k parameters)
    "conv_pool": {"model_type": "ConvModel", "stem_channels": 128, "stem_kernel_size": 15, "n_conv": 4,
                  "channel_init": 128, "kernel_size": 5, "act_func": "gelu", "norm": True, "residual": True,
                  "dropout": 0.2, "pool_func": "max", "pool_size": 2, "final_pool_func": "avg"},
    "conv_gru": {"model_type": "ConvGRUModel", "stem_channels": 96, "stem_kernel_size": 15, "n_conv": 3,
                 "channel_init": 96, "kernel_size": 5, "conv_norm": True, "residual": True, "pool_func": "max",
                 "pool_size": 2, "n_gru": 1, "dropout": 0.2, "final_pool_func": "max"},
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["classifier", "oracle"])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared CPU)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default=None,
                    help="default: conv_small for the classifier, dilated_small for the oracle")
    ap.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                    help="cosine: one epoch of linear warm-up, then cosine decay to 0 at --epochs")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--rc-average", action="store_true",
                    help="average logits over both strands (validation, calibration and every later prediction)")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop after the first epoch past this wall time")
    ap.add_argument("--out", type=Path, default=None, help="default domains/dna/weights/<which>.safetensors")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dnase()
    chroms = CLASSIFIER_CHROMS if args.which == "classifier" else ORACLE_CHROMS
    arch_name = args.arch or ("conv_small" if args.which == "classifier" else "dilated_small")
    arch = ARCHS[arch_name]
    train = data.subset(np.isin(np.array(data.chrom), chroms))
    test = data.split()["test"]
    history: list[dict] = []

    def log(h: dict) -> None:
        history.append(h)
        print(json.dumps(h), flush=True)

    t0 = time.time()
    model, fit = train_classifier(train, arch, epochs=args.epochs, patience=args.patience, lr=args.lr,
                                  batch_size=args.batch_size, seed=args.seed, progress=False,
                                  schedule=args.schedule, label_smoothing=args.label_smoothing,
                                  rc_average=args.rc_average, max_minutes=args.max_minutes, log=log)
    minutes = (time.time() - t0) / 60
    logits = predict(model, test.one_hot())
    acc = float((logits.argmax(-1) == test.labels).float().mean())
    nll = float(torch.nn.functional.cross_entropy(logits, test.labels))
    per = accuracy_by_class(logits, test.labels, len(CELL_LINES))
    info = {
        "which": args.which,
        "command": "python scripts/dna/train_grelu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "arch": arch_name,
        "rc_average": args.rc_average,
        "train_chromosomes": list(chroms),
        "train_sequences": len(train),
        "test": "chr2",
        "test_sequences": len(test),
        "test_accuracy": acc,
        "test_nll_calibrated": nll,
        **{f"test_accuracy_{CELL_LINES[k]}": v for k, v in per.items()},
        **{f"fit_{k}": v for k, v in fit.items()},
        "train_minutes": minutes,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": args.threads,
        "history": history,
    }
    out = args.out or WEIGHTS / f"{args.which}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grelu(model, out, info)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
