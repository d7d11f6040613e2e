"""The DNA label-budget study: the balanced label pool on the CTRL classifier's chromosomes, CFG's
budgeted offline data, and bench/sample_efficiency.py --domain dna --quick on the tiny models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from domains.dna.domain import offline_labels
from domains.dna.grelu_models import CLASSIFIER_CHROMS, ORACLE_CHROMS

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_offline_labels_are_balanced_nested_and_off_the_oracle_chromosomes():
    pool = offline_labels(CLASSIFIER_CHROMS)
    assert len(pool) == 20353 and set(pool.chrom) <= set(CLASSIFIER_CHROMS)  # the shipped classifier's pool
    small, big = offline_labels(CLASSIFIER_CHROMS, 100), offline_labels(CLASSIFIER_CHROMS, 1000)
    assert torch.bincount(small.labels, minlength=4).tolist() == [25] * 4
    assert torch.bincount(big.labels, minlength=4).tolist() == [250] * 4
    assert set(small.sequences) <= set(big.sequences)  # one seed: the budgets are nested
    assert not set(big.chrom) & (set(ORACLE_CHROMS) | {"chr1", "chr2"})
    assert offline_labels(CLASSIFIER_CHROMS, 100, seed=1).sequences != small.sequences
    with pytest.raises(ValueError, match="validation / test"):
        offline_labels(["chr1", "chr3"])


def test_cfg_gets_the_same_balanced_subset(build_tiny):
    from rldiff.algorithms.cfg import CFG

    d = build_tiny(label_chroms=list(CLASSIFIER_CHROMS), label_budget=40)
    x, y = d.offline_data()
    ref = offline_labels(CLASSIFIER_CHROMS, 40)
    assert x.shape == (40, 200) and torch.bincount(y, minlength=4).tolist() == [10] * 4
    assert sorted(map(tuple, x.tolist())) == sorted(map(tuple, ref.tokens().tolist()))
    algo = CFG(d, batch_size=4)
    assert len(algo.x) == 40
    with pytest.raises(ValueError, match="train split"):
        d.offline_data("test")
    assert len(build_tiny().offline_data()[0]) > 39000  # unchanged without the options


def test_dna_study_quick(tmp_path, build_tiny, monkeypatch):
    sys.path.insert(0, str(BENCH))
    import sample_efficiency as se

    from domains.dna import grelu_models

    build_tiny()  # writes the tiny denoiser / classifier / baseline into tmp_path
    tiny = {"denoiser": str(tmp_path / "d.safetensors"), "oracle": str(tmp_path / "c.safetensors"),
            "classifier": str(tmp_path / "c.safetensors"), "baseline_samples": str(tmp_path / "base.txt.gz"),
            "lora_rank": 2}
    real_settings = se.dna_settings

    def settings(quick):
        s = real_settings(quick)
        s["domain_overrides"], s["shipped_classifier"] = tiny, tiny["classifier"]
        return s

    seen = []
    real_train = grelu_models.train_classifier

    def spy(data, *a, **kw):
        seen.append((len(data), sorted(data.sequences)))
        return real_train(data, *a, **kw)

    monkeypatch.setattr(se, "dna_settings", settings)
    monkeypatch.setattr(grelu_models, "train_classifier", spy)
    bench_md, results_md = tmp_path / "benchmarks.md", tmp_path / "results.md"
    bench_md.write_text("# Benchmarks\n\n<!-- bench:sample_efficiency -->\ndigits table\n"
                        "<!-- /bench:sample_efficiency -->\n\n## Ray\n\nkept\n")
    other = "<!-- bench:results:dna -->\n## DNA\n\nthe DNA results\n<!-- /bench:results:dna -->\n"
    results_md.write_text(se.RESULTS_INTRO + other)
    out = tmp_path / "out"
    argv = ["--domain", "dna", "--quick", "--out-dir", str(out), "--remark", "A remark on the runs.",
            "--docs", str(bench_md), "--results-docs", str(results_md)]
    study = se.main(argv)

    by = {(r["method"], r["budget"]): r for r in study.results}
    assert set(by) == {(m, b) for m in ("ctrl", "cfg") for b in ("20", "all")}
    for r in study.results:
        for v in r["variants"].values():
            assert v["num_samples"] == 8
            for c in se.CELL_LINES:
                assert 0 <= v[f"oracle_acc_{c}"] <= 1
            assert v["oracle_acc_min"] <= v["oracle_acc_mean"] <= 1 and np.isfinite(v["kmer3_corr_mean"])
    assert set(by["cfg", "20"]["variants"]) == {"1", "4"} and set(by["ctrl", "20"]["variants"]) == {"default"}
    for v in by["cfg", "20"]["variants"].values():  # tiny models' samples: no copies of the 20 labelled peaks
        assert 50 < v["nearest_label_hamming_min"] <= v["nearest_label_hamming_median"] <= 200

    # CTRL's classifier at 20 labels: trained once, on exactly the balanced 20 that CFG got
    sub = offline_labels(CLASSIFIER_CHROMS, 20)
    assert len(seen) == 1 and seen[0] == (20, sorted(sub.sequences))
    cm = by["ctrl", "20"]["reward_classifier_metrics"]
    assert cm["num_labels"] == 20 and cm["label_counts"] == [5] * 4
    assert cm["sequence_digest"] == se.sequence_digest(sub.sequences)
    assert set(cm["chromosomes"]) <= set(CLASSIFIER_CHROMS)
    clf_path = by["ctrl", "20"]["config"]["domain"]["classifier"]
    assert clf_path == str(out / "dna" / "n20" / "reward_classifier.safetensors")
    assert grelu_models.model_info(clf_path)["num_labels"] == 20
    assert by["ctrl", "all"]["config"]["domain"]["classifier"] == tiny["classifier"]  # "all": the shipped one
    assert by["cfg", "20"]["cfg_labels"] == {"num_labels": 20, "label_counts": [5] * 4}
    assert by["cfg", "all"]["cfg_labels"]["num_labels"] == by["cfg", "all"]["num_labels"] == 20353
    assert by["cfg", "20"]["config"]["domain"]["label_budget"] == 20

    res = results_md.read_text()
    assert other in res and "<!-- bench:results:dna_label_budget -->" in res  # the ## DNA section kept whole
    assert "## DNA label budget" in res and "| CFG (w = 4) |" in res and "Command:" in res
    assert "--domain dna" in res and "A remark on the runs." in res
    text = bench_md.read_text()
    assert "digits table" in text and "<!-- bench:sample_efficiency_dna -->" in text
    assert text.index("/bench:sample_efficiency -->") < text.index("bench:sample_efficiency_dna") < text.index("## Ray")

    # resumable: a second run reuses every cached result (nothing trained or sampled again)
    monkeypatch.setattr(se, "_dna_method", lambda *a, **k: pytest.fail("recomputed a cached result"))
    again = se.main([*argv[:-4], "--no-docs"])
    assert [r["variants"] for r in again.results] == [r["variants"] for r in study.results] and len(seen) == 1
    (out / "dna" / "nall" / "cfg.json").unlink()
    part = se.main([*argv[:-4], "--no-docs", "--cached-only"])
    assert len(part.results) == 3 and "not run" in part.body
    assert json.loads((out / "dna" / "n20" / "ctrl.json").read_text())["num_labels"] == 20


def test_nearest_label_distance_finds_copies():
    sys.path.insert(0, str(BENCH))
    from sample_efficiency import nearest_label_distance

    g = torch.Generator().manual_seed(0)
    labelled = torch.randint(0, 4, (5000, 200), generator=g)
    samples = torch.randint(0, 4, (4, 200), generator=g)
    samples[1] = labelled[4321]
    samples[2] = labelled[17]
    samples[2, :7] = (samples[2, :7] + 1) % 4  # 7 mutations
    d = nearest_label_distance(samples, labelled, chunk=1000)
    assert d[1] == 0 and d[2] == 7 and d[0] > 100 and d[3] > 100
