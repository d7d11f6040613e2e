"""Rebuild the embedded DNase dataset (domains/dna/data/dnase_4cell.csv.gz) from the PyPI wheel.

    .venv/bin/python scripts/dna/build_dnase.py            # downloads dnadiffusion==0.0.0.dev0
    .venv/bin/python scripts/dna/build_dnase.py --wheel path/to/dnadiffusion-0.0.0.dev0-py3-none-any.whl

The wheel is only *downloaded* (`pip download --no-deps`, into a temporary folder) and read as a
zip; it is never installed (its dependencies pin an old torch). The output keeps five columns:

    chrom, start, end, cell_line, sequence

with cell lines renamed GM12878 / hESC / K562 / HepG2 (from the ENCODE sample tags) and is written
gzip-compressed with a zero mtime so that its md5 is reproducible. The split is by chromosome
(chr1 validation, chr2 test, the rest train) and is recomputed by the loader, not stored.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

WHEEL = "dnadiffusion==0.0.0.dev0"
MEMBER = "dnadiffusion/data/K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt"
LICENSE_MEMBER = "dnadiffusion-0.0.0.dev0.dist-info/licenses/LICENSE.md"
TAGS = {
    "GM12878_ENCLB441ZZZ": "GM12878",
    "hESCT0_ENCLB449ZZZ": "hESC",
    "K562_ENCLB843GMH": "K562",
    "HepG2_ENCLB029COU": "HepG2",
}
OUT_DIR = Path(__file__).resolve().parents[2] / "domains" / "dna" / "data"
OUT_NAME = "dnase_4cell.csv.gz"


def download_wheel(dest: Path) -> Path:
    """`pip download --no-deps` the wheel into `dest` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL, "-d", str(dest)]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("dnadiffusion-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download left no dnadiffusion wheel in {dest}")
    return wheels[0]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def build(wheel: Path, out_dir: Path) -> dict:
    """Read the table from the wheel, validate it, write the compact file; return provenance facts."""
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(MEMBER)
        licence = zf.read(LICENSE_MEMBER).decode()
    if "MIT License" not in licence:
        raise ValueError(f"{wheel}:{LICENSE_MEMBER} is not the MIT licence this script expects")
    df = pd.read_csv(io.BytesIO(raw), sep="\t")
    need = {"chr", "start", "end", "sequence", "TAG"}
    if not need <= set(df.columns):
        raise ValueError(f"{wheel}:{MEMBER} lacks columns {sorted(need - set(df.columns))}")
    unknown = set(df["TAG"]) - set(TAGS)
    if unknown:
        raise ValueError(f"{wheel}:{MEMBER} has unknown TAG values {sorted(unknown)}")
    lengths = df["sequence"].str.len()
    if (lengths != 200).any():
        raise ValueError(f"{wheel}:{MEMBER} has sequences of lengths {sorted(set(lengths))}; expected 200")
    bad = ~df["sequence"].str.fullmatch("[ACGT]+")
    if bad.any():
        raise ValueError(f"{wheel}:{MEMBER}: non-ACGT sequence on data row {int(bad.idxmax()) + 2}")
    out = pd.DataFrame({
        "chrom": df["chr"],
        "start": df["start"],
        "end": df["end"],
        "cell_line": df["TAG"].map(TAGS),
        "sequence": df["sequence"],
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / OUT_NAME
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz:
        gz.write(out.to_csv(index=False).encode())
    tmp.replace(path)  # nothing half-written
    split = out["chrom"].map(lambda c: "validation" if c == "chr1" else "test" if c == "chr2" else "train")
    return {
        "wheel": wheel.name,
        "wheel_md5": md5(wheel),
        "member_md5": hashlib.md5(raw).hexdigest(),
        "out": path,
        "out_md5": md5(path),
        "out_bytes": path.stat().st_size,
        "rows": len(out),
        "counts": pd.crosstab(out["cell_line"], split),
        "original_labels": pd.crosstab(df["chr"].where(df["chr"].isin(["chr1", "chr2"]), "other"), df["data_label"]),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help="an already downloaded dnadiffusion wheel (default: pip download it)")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        facts = build(wheel, args.out_dir)
    print(f"wheel      {facts['wheel']}  md5 {facts['wheel_md5']}")
    print(f"source     {MEMBER}  md5 {facts['member_md5']}")
    print(f"wrote      {facts['out']}  ({facts['out_bytes']} bytes, md5 {facts['out_md5']}, {facts['rows']} rows)")
    print(facts["counts"].to_string())
    print("original data_label column vs chromosome:")
    print(facts["original_labels"].to_string())


if __name__ == "__main__":
    main()
