"""Evaluation metrics on hand-made sequences with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from domains.dna.data import encode, load_fasta
from domains.dna.evaluate import (
    CELL_TYPE_MOTIFS,
    diversity,
    evaluate_sequences,
    load_motifs,
    motif_counts,
    pairwise_hamming,
)
from domains.dna.kmers import kmer_correlation, kmer_counts


def test_kmer_counts_known():
    c = kmer_counts(encode(["AAAAC"]), 3)
    assert c[0] == 2  # AAA twice
    assert c[1] == 1  # AAC once
    assert c.sum() == 3


def test_kmer_correlation_self_is_one_and_complement_structure():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (50, 200), generator=g)
    assert kmer_correlation(a, a) == pytest.approx(1.0)
    assert kmer_correlation(a, torch.cat([a, a])) == pytest.approx(1.0)  # frequencies, not counts
    at_rich = encode(["ATATATATAT" * 20])
    gc_rich = encode(["GCGCGCGCGC" * 20])
    assert kmer_correlation(at_rich, gc_rich) < 0


def test_hamming_and_diversity_known_pairs():
    t = encode(["AAAA", "AAAT", "TTTT", "AAAA"])
    d = pairwise_hamming(t)
    assert d.tolist() == [[0, 1, 4, 0], [1, 0, 3, 1], [4, 3, 0, 4], [0, 1, 4, 0]]
    div = diversity(t)
    assert div["unique_fraction"] == 0.75
    assert div["hamming_mean"] == pytest.approx(float(d.sum()) / 12)


def test_load_motifs_reads_gReLU_hocomoco():
    m = load_motifs(["GATA1", "HNF4A"])
    assert {k.split(".")[0] for k in m} == {"GATA1", "HNF4A"}
    for ppm in m.values():
        assert ppm.shape[0] == 4 and np.allclose(ppm.sum(0), 1, atol=1e-3)
    with pytest.raises(ValueError, match="no motifs for"):
        load_motifs(["NOT_A_TF"])
    assert set(CELL_TYPE_MOTIFS) == {"GM12878", "hESC", "K562", "HepG2"}


def consensus(ppm):
    return "".join("ACGT"[i] for i in ppm.argmax(0))


def test_motif_counts_find_planted_consensus():
    motifs = load_motifs(["GATA1"])
    site = consensus(next(iter(motifs.values())))
    bg = "AC" * 50
    seqs = [bg[:40] + site + bg[40 + len(site):], bg]
    counts = motif_counts(seqs, motifs)
    assert counts["GATA1"][0] >= 1 and counts["GATA1"][1] == 0


class FirstBaseOracle(torch.nn.Module):
    """Predicts class = the first base's token (A->0, C->1, G->2, T->3), confidently."""

    def forward(self, x):
        tok = x[:, 0] if x.dim() == 2 else x[:, 0, :4].argmax(-1)
        return 10.0 * torch.nn.functional.one_hot(tok, 4).float()


def test_evaluate_sequences_known_answers(tmp_path):
    motifs = load_motifs(["HNF4A"])
    site = consensus(next(iter(motifs.values())))
    g = torch.Generator().manual_seed(0)
    rand = ["".join("ACGT"[i] for i in torch.randint(0, 4, (40,), generator=g).tolist()) for _ in range(4)]
    # requested HepG2 (3): two start with T (oracle says HepG2), one with A (GM12878); all carry an HNF4A site
    hep = ["T" + site + rand[0][: 39 - len(site)], "T" + site + rand[1][: 39 - len(site)],
           "A" + site + rand[2][: 39 - len(site)]]
    gm = ["A" + rand[3][:39]]
    x0 = encode(hep + gm)
    y = torch.tensor([3, 3, 3, 0])
    real = {3: encode(hep), 0: encode(gm)}
    base = encode([rand[0], rand[1]])  # "pre-trained" samples without the planted site
    m = evaluate_sequences(x0, y, tmp_path, oracle=FirstBaseOracle(), real_tokens=real, baseline_tokens=base,
                           motif_tfs={"HepG2": ("HNF4A",)}, elbo_fn=lambda t: -torch.ones(len(t)) * 50,
                           baseline_elbo=-40.0)
    assert m["oracle_acc_HepG2"] == pytest.approx(2 / 3)
    assert m["oracle_acc_GM12878"] == 1.0
    assert m["oracle_acc_min"] == pytest.approx(2 / 3)
    assert m["oracle_specificity_GM12878"] == pytest.approx(10.0, abs=1e-3)  # logp gap of 10-logit one-hot
    assert m["kmer3_corr_HepG2"] == pytest.approx(1.0) and m["kmer3_corr_GM12878"] == pytest.approx(1.0)
    assert m["motif_hits_HepG2"] >= 1.0
    assert m["motif_enrichment_HepG2"] > 100  # ~0 hits in the baseline
    assert m["elbo_per_seq"] == -50.0 and m["elbo_per_base"] == -50.0 / 40 and m["elbo_ratio"] == 1.25
    assert m["unique_fraction"] == 1.0
    assert all(isinstance(v, float) for v in m.values())
    back = load_fasta(tmp_path / "samples.fasta")
    assert back.sequences == hep + gm
    assert "target=HepG2 oracle=HepG2" in (tmp_path / "samples.fasta").read_text()
    assert (tmp_path / "motif_counts.png").stat().st_size > 1000
    assert json.loads((tmp_path / "metrics.json").read_text())["oracle_acc_GM12878"] == 1.0


def test_evaluate_rejects_masked_samples():
    x = torch.nn.functional.one_hot(torch.tensor([[0, 4, 1]]), 5).float()
    with pytest.raises(ValueError, match="masked positions"):
        evaluate_sequences(x, torch.tensor([0]), None)
