"""DNA sequence data: the embedded DNase set, MPRA tables, FASTA and CSV/TSV files, splits.

Everything loads into a `SequenceSet` (sequences + optional class labels, activities and
chromosomes). Every loader validates its input and raises `DNADataError` naming the file and the
line (or FASTA record) of the first problem:

- an empty file, a table without data rows, a FASTA file without records;
- a missing column (the message lists the columns found);
- a character outside A, C, G, T (and N, unless ``allow_n=False``); lower case is accepted;
- a sequence whose length differs from ``length`` (when given) or from the first sequence's.

Tokens: A=0, C=1, G=2, T=3 (gReLU's order); the masked-diffusion mask token is 4.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

ALPHABET = "ACGT"
#: The four cell lines of the embedded DNase set, in label-index order.
CELL_LINES: tuple[str, ...] = ("GM12878", "hESC", "K562", "HepG2")
#: Gosai et al. (2024) MPRA table: chromosome, sequence, and one activity column per cell line.
MPRA_COLUMNS: tuple[str, ...] = ("chrom", "seq", "hepg2", "k562", "sknsh")
MPRA_ACTIVITIES: tuple[str, ...] = ("hepg2", "k562", "sknsh")
DNASE_PATH = Path(__file__).resolve().parent / "data" / "dnase_4cell.csv.gz"
SEQ_LEN = 200

_LUT = np.full(256, -1, dtype=np.int64)
for _i, _b in enumerate(ALPHABET):
    _LUT[ord(_b)] = _i
    _LUT[ord(_b.lower())] = _i


class DNADataError(ValueError):
    """Bad DNA input; the message names the file and the line or record."""


@dataclass
class SequenceSet:
    """Sequences with optional labels, activities and chromosomes (all aligned by row).

    Attributes:
        sequences: upper-case strings over ACGT(N), all of one length.
        labels: LongTensor [N] class indices into `label_names`, or None.
        label_names: the class names.
        activities: FloatTensor [N, K] measured activities (columns `activity_names`), or None.
        activity_names: names of the activity columns.
        chrom: chromosome of each sequence ("chr5"), or None.
        source: where the data came from (for messages).
    """

    sequences: list[str]
    labels: Tensor | None = None
    label_names: tuple[str, ...] = ()
    activities: Tensor | None = None
    activity_names: tuple[str, ...] = ()
    chrom: list[str] | None = None
    source: str = "<memory>"
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def seq_len(self) -> int:
        return len(self.sequences[0]) if self.sequences else 0

    def subset(self, index: Sequence[int] | Tensor | np.ndarray) -> SequenceSet:
        """Rows `index` (ints or a boolean mask) as a new SequenceSet."""
        idx = torch.as_tensor(np.asarray(index))
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        rows = idx.tolist()
        return replace(
            self,
            sequences=[self.sequences[i] for i in rows],
            labels=self.labels[idx] if self.labels is not None else None,
            activities=self.activities[idx] if self.activities is not None else None,
            chrom=[self.chrom[i] for i in rows] if self.chrom is not None else None,
            ids=[self.ids[i] for i in rows] if self.ids else [],
        )

    def tokens(self, n: str = "error", generator: torch.Generator | None = None) -> Tensor:
        """LongTensor [N, L] of A=0, C=1, G=2, T=3.

        Args:
            n: what to do with N: "error" (raise) or "random" (a uniformly random base).
        """
        return encode(self.sequences, n=n, generator=generator, source=self.source)

    def one_hot(self, n: str = "error", generator: torch.Generator | None = None) -> Tensor:
        """FloatTensor [N, L, 4] (the mask channel is not included)."""
        return torch.nn.functional.one_hot(self.tokens(n, generator), 4).float()

    def split(self, validation: Sequence[str] = ("chr1",), test: Sequence[str] = ("chr2",)) -> dict[str, SequenceSet]:
        """{"train", "validation", "test"} by chromosome (see `chromosome_split`)."""
        return {k: self.subset(v) for k, v in chromosome_split(self, validation, test).items()}


# ------------------------------------------------------------------------------- encoding
def encode(sequences: Sequence[str], n: str = "error", generator: torch.Generator | None = None,
           source: str = "<memory>") -> Tensor:
    """Strings over ACGT(N) -> LongTensor [N, L] (A=0, C=1, G=2, T=3).

    Args:
        n: "error" raises on N; "random" replaces each N by a uniformly random base.
    """
    if len(sequences) == 0:
        return torch.zeros(0, 0, dtype=torch.long)
    lengths = {len(s) for s in sequences}
    if len(lengths) != 1:
        raise DNADataError(f"{source}: sequences of mixed lengths {sorted(lengths)[:5]}; one length is needed")
    buf = np.frombuffer("".join(sequences).encode("ascii", errors="replace"), dtype=np.uint8)
    tok = _LUT[buf].reshape(len(sequences), -1)  # [N, L], -1 = not ACGT
    bad = tok < 0
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        ch = sequences[row][col]
        if ch.upper() != "N":
            raise DNADataError(f"{source}: sequence {row} has {ch!r} at position {col}; valid: A, C, G, T, N")
        if n != "random":
            raise DNADataError(f"{source}: sequence {row} has N at position {col}; pass n='random' to replace Ns")
        fill = torch.randint(0, 4, (int(bad.sum()),), generator=generator).numpy()
        tok[bad] = fill
    return torch.from_numpy(tok.copy())


def decode(x: Tensor) -> list[str]:
    """Tokens [N, L] (0-3; 4 = mask, written as N) or one-hot [N, L, >=4] -> strings."""
    if x.dim() == 3:
        x = x.argmax(-1)
    lut = np.array(list(ALPHABET + "N" * 252))
    arr = lut[x.clamp(min=0, max=4).cpu().numpy()]
    return ["".join(row) for row in arr]


def validate_sequences(sequences: Sequence[str], source: str, where: Sequence[str],
                       length: int | None = None, allow_n: bool = True) -> list[str]:
    """Upper-case and check sequences; raise DNADataError naming `source` and `where[i]`.

    Args:
        sequences: raw strings.
        source: the file (for messages).
        where: per-sequence location, e.g. "line 7" or "record 3 (line 12)".
        length: required length; None = all equal to the first sequence's length.
        allow_n: accept N.

    Returns:
        the upper-cased sequences.
    """
    valid = "ACGTN" if allow_n else "ACGT"
    pattern = re.compile(f"[^{valid}]")
    out = []
    for i, raw in enumerate(sequences):
        if not isinstance(raw, str) or raw == "":
            raise DNADataError(f"{source}, {where[i]}: empty or missing sequence")
        s = raw.strip().upper()
        m = pattern.search(s)
        if m:
            raise DNADataError(
                f"{source}, {where[i]}: invalid character {m.group()!r} at position {m.start()}; "
                f"valid: {', '.join(valid)}")
        want = length if length is not None else (len(out[0]) if out else len(s))
        if len(s) != want:
            what = "required" if length is not None else f"the first sequence's ({where[0]})"
            raise DNADataError(f"{source}, {where[i]}: sequence length {len(s)} differs from {what} length {want}")
        out.append(s)
    return out


# ------------------------------------------------------------------------------- loaders
def load_dnase(split: str | None = None, path: str | Path = DNASE_PATH) -> SequenceSet:
    """The embedded DNase set (47,872 x 200 bp, 4 cell lines; see data/PROVENANCE.md).

    Args:
        split: None (all rows), "train", "validation" (chr1) or "test" (chr2).

    Returns:
        SequenceSet with labels indexing `CELL_LINES`.
    """
    ds = load_table(path, seq_col="sequence", label_col="cell_line", chrom_col="chrom",
                    label_names=CELL_LINES, length=SEQ_LEN, allow_n=False)
    if split is None:
        return ds
    parts = ds.split()
    if split not in parts:
        raise ValueError(f"unknown split {split!r}; valid: train, validation, test, or None")
    return parts[split]


def load_mpra(path: str | Path, activity_cols: Sequence[str] = MPRA_ACTIVITIES, seq_col: str = "seq",
              chrom_col: str = "chrom", length: int | None = None, sep: str | None = None) -> SequenceSet:
    """A Gosai et al. MPRA table (columns chrom, seq, hepg2, k562, sknsh) as a SequenceSet with
    `activities` [N, 3] (log2 fold changes) in `activity_cols` order."""
    return load_table(path, seq_col=seq_col, activity_cols=activity_cols, chrom_col=chrom_col,
                      length=length, sep=sep)


def load_table(path: str | Path, seq_col: str = "sequence", label_col: str | None = None,
               activity_cols: Sequence[str] | None = None, chrom_col: str | None = None,
               label_names: Sequence[str] | None = None, length: int | None = None,
               allow_n: bool = True, sep: str | None = None) -> SequenceSet:
    """A CSV / TSV file (optionally .gz) with a sequence column and labels and/or activities.

    Args:
        path: the file; the separator is a tab for .tsv/.txt (optionally .gz), else a comma,
            unless `sep` is given.
        seq_col: column holding the sequences.
        label_col: column of class names (strings) -> `labels`.
        activity_cols: numeric columns -> `activities` [N, K].
        chrom_col: column of chromosome names (needed for chromosome splits).
        label_names: the allowed class names in index order (default: sorted unique values).
        length: required sequence length (default: all equal).
        allow_n: accept N in sequences.

    Raises:
        DNADataError: empty file, missing column, bad label / activity, bad sequence (with line).
    """
    path = Path(path)
    src = str(path)
    text = _read_text(path)
    if sep is None:
        stem = path.name.removesuffix(".gz")
        sep = "\t" if stem.endswith((".tsv", ".txt")) else ","
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DNADataError(f"{src}: cannot parse as a {'TSV' if sep == chr(9) else 'CSV'} table: {err}") from err
    if len(df) == 0:
        raise DNADataError(f"{src}: the table has a header but no data rows")
    wanted = [seq_col, label_col, chrom_col, *(activity_cols or [])]
    missing = [c for c in wanted if c is not None and c not in df.columns]
    if missing:
        raise DNADataError(f"{src}, line 1 (header): missing column(s) {missing}; found {list(df.columns)}")
    where = [f"line {i + 2}" for i in range(len(df))]  # line 1 is the header
    seqs = validate_sequences(df[seq_col].tolist(), src, where, length=length, allow_n=allow_n)
    labels, names = None, ()
    if label_col is not None:
        vals = df[label_col].str.strip()
        names = tuple(label_names) if label_names is not None else tuple(sorted(set(vals)))
        lookup = {n: i for i, n in enumerate(names)}
        bad = ~vals.isin(lookup)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DNADataError(f"{src}, {where[i]}: label {vals.iloc[i]!r} in column {label_col!r} is not one of {list(names)}")
        labels = torch.tensor(vals.map(lookup).to_numpy(), dtype=torch.long)
    acts, act_names = None, ()
    if activity_cols:
        cols = []
        for c in activity_cols:
            num = pd.to_numeric(df[c].str.strip(), errors="coerce")
            bad = num.isna().to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DNADataError(f"{src}, {where[i]}: column {c!r} has non-numeric value {df[c].iloc[i]!r}")
            cols.append(num.to_numpy(dtype=np.float32))
        acts, act_names = torch.from_numpy(np.stack(cols, axis=1)), tuple(activity_cols)
    chrom = None
    if chrom_col is not None:
        chrom = [_norm_chrom(c) for c in df[chrom_col].tolist()]
    return SequenceSet(seqs, labels, names, acts, act_names, chrom, src)


def load_fasta(path: str | Path, label_names: Sequence[str] | None = None, length: int | None = None,
               allow_n: bool = True) -> SequenceSet:
    """A FASTA file (optionally .gz), parsed with Biopython's `SeqIO`.

    Header fields of the form ``key=value`` are read: ``label=`` (or ``cell_line=``) gives the
    class and ``chrom=`` the chromosome, e.g. ``>peak7 label=HepG2 chrom=chr5``. Labels are set
    only if every record has one.

    Args:
        label_names: allowed classes in index order (default: sorted unique labels).
        length: required sequence length (default: all equal).
    """
    from Bio import SeqIO

    path = Path(path)
    src = str(path)
    text = _read_text(path)
    header_lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(">")]
    try:
        records = list(SeqIO.parse(io.StringIO(text), "fasta"))
    except ValueError as err:
        raise DNADataError(f"{src}: not a FASTA file ({err})") from err
    if not records:
        raise DNADataError(f"{src}: no FASTA records (no line starts with '>')")
    where = [f"record {i + 1} ({r.id!r}, line {header_lines[i]})" for i, r in enumerate(records)]
    seqs = validate_sequences([str(r.seq) for r in records], src, where, length=length, allow_n=allow_n)
    fields = [dict(kv.split("=", 1) for kv in r.description.split()[1:] if "=" in kv) for r in records]
    labels, names = None, ()
    raw_labels = [f.get("label", f.get("cell_line")) for f in fields]
    if all(lab is not None for lab in raw_labels):
        names = tuple(label_names) if label_names is not None else tuple(sorted(set(raw_labels)))
        lookup = {n: i for i, n in enumerate(names)}
        for i, lab in enumerate(raw_labels):
            if lab not in lookup:
                raise DNADataError(f"{src}, {where[i]}: label {lab!r} is not one of {list(names)}")
        labels = torch.tensor([lookup[lab] for lab in raw_labels], dtype=torch.long)
    elif label_names is not None:
        i = next(i for i, lab in enumerate(raw_labels) if lab is None)
        raise DNADataError(f"{src}, {where[i]}: no 'label=' field in the header, but labels were requested")
    chroms = [f.get("chrom") for f in fields]
    chrom = [_norm_chrom(c) for c in chroms] if all(c is not None for c in chroms) else None
    return SequenceSet(seqs, labels, names, None, (), chrom, src, ids=[r.id for r in records])


def load_sequences(path: str | Path, **kwargs) -> SequenceSet:
    """Dispatch on the extension: .fa/.fasta/.fna (optionally .gz) -> `load_fasta`, else `load_table`."""
    name = Path(path).name.lower()
    stem = name.removesuffix(".gz")
    if stem.endswith((".fa", ".fasta", ".fna")):
        return load_fasta(path, **kwargs)
    return load_table(path, **kwargs)


def write_fasta(path: str | Path, sequences: Sequence[str], ids: Sequence[str] | None = None,
                descriptions: Sequence[str] | None = None) -> Path:
    """Write sequences as FASTA with Biopython (written to a temporary name, then renamed)."""
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqRecord import SeqRecord

    path = Path(path)
    ids = ids or [f"seq{i}" for i in range(len(sequences))]
    descriptions = descriptions or [""] * len(sequences)
    records = [SeqRecord(Seq(s), id=i, description=d) for s, i, d in zip(sequences, ids, descriptions)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        SeqIO.write(records, fh, "fasta")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------- splits
def chromosome_split(data: SequenceSet | Sequence[str], validation: Sequence[str] = ("chr1",),
                     test: Sequence[str] = ("chr2",)) -> dict[str, Tensor]:
    """Row indices of train / validation / test by chromosome (default chr1 validation, chr2 test).

    Returns:
        {"train": LongTensor, "validation": LongTensor, "test": LongTensor}.
    """
    chrom = data.chrom if isinstance(data, SequenceSet) else list(data)
    if chrom is None:
        src = data.source if isinstance(data, SequenceSet) else "<memory>"
        raise DNADataError(f"{src}: no chromosome column, so no chromosome split; pass chrom_col= when loading")
    val, tst = {_norm_chrom(c) for c in validation}, {_norm_chrom(c) for c in test}
    if val & tst:
        raise ValueError(f"validation and test chromosomes overlap: {sorted(val & tst)}")
    arr = np.array(chrom)
    is_val, is_test = np.isin(arr, list(val)), np.isin(arr, list(tst))
    return {
        "train": torch.from_numpy(np.flatnonzero(~is_val & ~is_test)),
        "validation": torch.from_numpy(np.flatnonzero(is_val)),
        "test": torch.from_numpy(np.flatnonzero(is_test)),
    }


def _norm_chrom(c: str) -> str:
    c = str(c).strip()
    return c if c.lower().startswith("chr") else f"chr{c}"


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DNADataError(f"{path}: no such file")
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DNADataError(f"{path}: not a valid gzip file ({err})") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DNADataError(f"{path}: not UTF-8 text (byte {err.start})") from err
    if not text.strip():
        raise DNADataError(f"{path}: the file is empty")
    return text
