"""Loaders, validation errors (file + line), encoding, chromosome splits, the embedded DNase set."""

from __future__ import annotations

import gzip

import pytest
import torch

from domains.dna import data as D


def write(path, text):
    path.write_text(text)
    return path


def test_encode_decode_roundtrip_and_order():
    t = D.encode(["ACGT", "tgca"])
    assert t.tolist() == [[0, 1, 2, 3], [3, 2, 1, 0]]
    assert D.decode(t) == ["ACGT", "TGCA"]
    assert D.decode(torch.tensor([[0, 4]])) == ["AN"]  # mask written as N
    assert D.decode(torch.nn.functional.one_hot(t, 5).float()) == ["ACGT", "TGCA"]


def test_encode_n_policy():
    with pytest.raises(D.DNADataError, match="sequence 1 has N at position 2"):
        D.encode(["ACGT", "ACNT"])
    t = D.encode(["ACNT"], n="random", generator=torch.Generator().manual_seed(0))
    assert t[0, [0, 1, 3]].tolist() == [0, 1, 3] and 0 <= int(t[0, 2]) <= 3


def test_csv_with_labels_and_chrom(tmp_path):
    f = write(tmp_path / "x.csv", "chrom,sequence,label\nchr1,ACGT,b\n2,acgg,a\nchr3,TTTT,b\n")
    ds = D.load_table(f, label_col="label", chrom_col="chrom")
    assert ds.sequences == ["ACGT", "ACGG", "TTTT"]
    assert ds.label_names == ("a", "b") and ds.labels.tolist() == [1, 0, 1]
    assert ds.chrom == ["chr1", "chr2", "chr3"]  # "2" normalised
    sp = D.chromosome_split(ds)
    assert sp["validation"].tolist() == [0] and sp["test"].tolist() == [1] and sp["train"].tolist() == [2]
    parts = ds.split()
    assert parts["train"].sequences == ["TTTT"] and parts["train"].labels.tolist() == [1]


def test_tsv_detected_by_extension(tmp_path):
    f = write(tmp_path / "x.tsv", "sequence\tlabel\nACGT\tK562\nCCCC\tHepG2\n")
    ds = D.load_sequences(f, label_col="label", label_names=["GM12878", "hESC", "K562", "HepG2"])
    assert ds.labels.tolist() == [2, 3]


def test_gzipped_table(tmp_path):
    f = tmp_path / "x.csv.gz"
    f.write_bytes(gzip.compress(b"sequence\nACGT\n"))
    assert D.load_table(f).sequences == ["ACGT"]


def test_mpra_schema(tmp_path):
    f = write(tmp_path / "mpra.csv", "chrom,seq,hepg2,k562,sknsh\n1,ACGT,0.5,-1,2\nX,AAAA,1.5,0,0\n")
    ds = D.load_mpra(f)
    assert ds.activity_names == ("hepg2", "k562", "sknsh")
    assert torch.allclose(ds.activities, torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, 0.0]]))
    assert ds.chrom == ["chr1", "chrX"]


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("bad_char.csv", "sequence\nACGT\nACXT\n", r"bad_char.csv, line 3: invalid character 'X' at position 2"),
        ("mixed.csv", "sequence\nACGT\nACG\n", r"mixed.csv, line 3: sequence length 3 differs"),
        ("missing.csv", "seq,label\nACGT,a\n", r"missing.csv, line 1 \(header\): missing column\(s\) \['sequence'\]"),
        ("empty.csv", "", r"empty.csv: the file is empty"),
        ("header_only.csv", "sequence\n", r"header_only.csv: the table has a header but no data rows"),
        ("blank_seq.csv", "sequence,label\nACGT,a\n,b\n", r"blank_seq.csv, line 3: empty or missing sequence"),
    ],
)
def test_table_bad_input(tmp_path, name, text, match):
    f = write(tmp_path / name, text)
    with pytest.raises(D.DNADataError, match=match):
        D.load_table(f, seq_col="sequence")


def test_mpra_bad_activity_and_missing_column(tmp_path):
    f = write(tmp_path / "m.csv", "chrom,seq,hepg2,k562,sknsh\n1,ACGT,0.5,oops,2\n")
    with pytest.raises(D.DNADataError, match=r"m.csv, line 2: column 'k562' has non-numeric value 'oops'"):
        D.load_mpra(f)
    g = write(tmp_path / "n.csv", "chrom,seq,hepg2,k562\n1,ACGT,0.5,1\n")
    with pytest.raises(D.DNADataError, match=r"missing column\(s\) \['sknsh'\]"):
        D.load_mpra(g)


def test_required_length(tmp_path):
    f = write(tmp_path / "x.csv", "sequence\nACGT\n")
    with pytest.raises(D.DNADataError, match="line 2: sequence length 4 differs from required length 200"):
        D.load_table(f, length=200)


def test_unknown_label(tmp_path):
    f = write(tmp_path / "x.csv", "sequence,label\nACGT,K562\nACGT,Liver\n")
    with pytest.raises(D.DNADataError, match=r"line 3: label 'Liver'"):
        D.load_table(f, label_col="label", label_names=D.CELL_LINES)


def test_fasta_with_labels(tmp_path):
    f = write(tmp_path / "x.fa", ">s1 label=K562 chrom=chr4\nACGT\nAC\n>s2 label=HepG2 chrom=chr2\nACGTAC\n")
    ds = D.load_fasta(f, label_names=D.CELL_LINES)
    assert ds.sequences == ["ACGTAC", "ACGTAC"] and ds.ids == ["s1", "s2"]
    assert ds.labels.tolist() == [2, 3] and ds.chrom == ["chr4", "chr2"]


def test_fasta_bad_input(tmp_path):
    bad = write(tmp_path / "bad.fasta", ">a\nACGT\n>b\nAC-T\n")
    with pytest.raises(D.DNADataError, match=r"bad.fasta, record 2 \('b', line 3\): invalid character '-'"):
        D.load_fasta(bad)
    mixed = write(tmp_path / "mixed.fa", ">a\nACGT\n>b\nACGTA\n")
    with pytest.raises(D.DNADataError, match=r"record 2 \('b', line 3\): sequence length 5"):
        D.load_fasta(mixed)
    with pytest.raises(D.DNADataError, match="the file is empty"):
        D.load_fasta(write(tmp_path / "empty.fa", "\n"))
    with pytest.raises(D.DNADataError, match="not a FASTA file|no FASTA records"):
        D.load_fasta(write(tmp_path / "plain.fa", "ACGT\n"))
    with pytest.raises(D.DNADataError, match="no such file"):
        D.load_fasta(tmp_path / "absent.fa")


def test_write_fasta_roundtrip(tmp_path):
    p = D.write_fasta(tmp_path / "o.fasta", ["ACGT", "TTTT"], ["a", "b"], ["label=K562", "label=HepG2"])
    ds = D.load_fasta(p, label_names=D.CELL_LINES)
    assert ds.sequences == ["ACGT", "TTTT"] and ds.labels.tolist() == [2, 3]


def test_embedded_dnase_counts():
    ds = D.load_dnase()
    assert len(ds) == 47872 and ds.seq_len == 200 and ds.label_names == D.CELL_LINES
    assert torch.bincount(ds.labels).tolist() == [11968] * 4
    parts = ds.split()
    assert {k: len(v) for k, v in parts.items()} == {"train": 39254, "validation": 4565, "test": 4053}
    assert set(parts["validation"].chrom) == {"chr1"} and set(parts["test"].chrom) == {"chr2"}
