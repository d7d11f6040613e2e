"""Train the shipped gReLU models on the embedded DNase set: the CTRL classifier and the oracle.

    .venv/bin/python scripts/dna/train_grelu.py classifier   # -> domains/dna/weights/classifier.safetensors
    .venv/bin/python scripts/dna/train_grelu.py oracle       # -> domains/dna/weights/oracle.safetensors

classifier: p(cell line | x), ConvModel, trained on chromosomes CLASSIFIER_CHROMS (odd-numbered
            autosomes + chrX) with a random 80/20 split for early stopping and temperature scaling.
oracle:     DilatedConvModel trained on the disjoint ORACLE_CHROMS (even-numbered autosomes +
            chrY); used only to evaluate generated sequences, never by a training step.
Both are scored on chr2 (test), overall and per cell line; the numbers go into the safetensors
metadata (`domains.dna.grelu_models.model_info`) and `<out>.json`.
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["classifier", "oracle"])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared CPU)")
    ap.add_argument("--out", type=Path, default=None, help="default domains/dna/weights/<which>.safetensors")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dnase()
    chroms = CLASSIFIER_CHROMS if args.which == "classifier" else ORACLE_CHROMS
    arch = CLASSIFIER_ARCH if args.which == "classifier" else ORACLE_ARCH
    train = data.subset(np.isin(np.array(data.chrom), chroms))
    test = data.split()["test"]
    t0 = time.time()
    model, fit = train_classifier(train, arch, epochs=args.epochs, patience=args.patience, lr=args.lr,
                                  batch_size=args.batch_size, seed=args.seed, progress=False)
    minutes = (time.time() - t0) / 60
    logits = predict(model, test.one_hot())
    acc = float((logits.argmax(-1) == test.labels).float().mean())
    nll = float(torch.nn.functional.cross_entropy(logits, test.labels))
    per = accuracy_by_class(logits, test.labels, len(CELL_LINES))
    info = {
        "which": args.which,
        "command": "python scripts/dna/train_grelu.py " + " ".join(sys.argv[1:] if argv is None else argv),
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
    }
    out = args.out or WEIGHTS / f"{args.which}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grelu(model, out, info)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
