"""The digits label-budget study: budgeted offline data and reward classifier, the noisy classifier
for classifier guidance, CFG on the digits label pathway, and bench/sample_efficiency.py --quick."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

from domains.images.data import label_subset, load_digits
from domains.images.pixel import WEIGHTS_DIR

SHIPPED = str(WEIGHTS_DIR / "digits_classifier")
BENCH = Path(__file__).resolve().parents[2] / "bench"


def _domain(**kw):
    from domains.images.digits import build

    return build(**{"num_steps": 2, "reference_samples": 2, "lora_rank": 0, **kw})


def test_offline_data_is_the_budgeted_train_split():
    domain = _domain(label_budget=50, classifier=SHIPPED)
    x, y = domain.offline_data()
    xt, yt = load_digits("train")
    idx = label_subset(yt, 50, 0)
    assert x.shape == (50, 1, 16, 16) and torch.equal(x, xt[idx]) and torch.equal(y, yt[idx])
    assert torch.bincount(y, minlength=10).tolist() == [5] * 10  # class-balanced
    xh, _ = load_digits("heldout")
    assert not (x[:, None] == xh[None]).flatten(2).all(-1).any()  # no held-out (judge) digit
    with pytest.raises(ValueError, match="train"):
        domain.offline_data("heldout")
    full = _domain(label_budget=1197)  # "all": every train-split label, the shipped reward classifier
    assert full.label_index is None and len(full.offline_data()[0]) == 1197


def test_budget_classifier_sees_only_its_labels():
    from domains.images.classifiers import train_budget_classifier

    clf, metrics = train_budget_classifier(30, label_seed=1, epochs=2)
    assert metrics["num_labels"] == 30 and metrics["trained_on"] == "train" and metrics["label_seed"] == 1
    assert metrics["batch_size"] == 16 and metrics["epochs_run"] <= 2
    assert clf(torch.zeros(3, 1, 16, 16)).shape == (3, 10) and clf.temperature > 0


def test_noisy_classifier_trains_and_guides():
    from rldiff.algorithms.classifier_guidance import ClassifierGuidance

    domain = _domain(label_budget=40, classifier=SHIPPED)
    cg = ClassifierGuidance(domain, batch_size=16, lr=1e-3, scale=3.0)
    assert len(cg.x) == 40
    g = torch.Generator().manual_seed(0)
    before = [p.detach().clone() for p in cg.classifier.parameters()]
    stats = [cg.update(i, g) for i in range(3)]
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in stats)
    assert any((p - q).abs().max() > 0 for p, q in zip(cg.classifier.parameters(), before))
    x = torch.randn(4, 1, 16, 16, requires_grad=True)
    t = torch.tensor([0, 300, 600, 999])
    obj = cg.objective(x, t, torch.zeros_like(x), {"y": torch.tensor([0, 1, 2, 3])})
    (grad,) = torch.autograd.grad(obj.sum(), x)
    assert obj.shape == (4,) and grad.abs().amax(dim=(1, 2, 3)).min() > 0
    out = cg.sample(4, g)
    assert out["x0"].shape == (4, 1, 16, 16) and torch.isfinite(out["x0"]).all()


def test_cfg_trains_the_digits_label_pathway():
    from rldiff.algorithms.cfg import CFG

    torch.manual_seed(0)
    domain = _domain(label_pathway=True, label_budget=20, classifier=SHIPPED)
    algo = CFG(domain, batch_size=4, lr=1e-2, embedding_lr=1e-2, guidance_scale=3.0)
    tables = list(domain.denoiser.label_bias)
    assert all(any(p is q for q in algo.params) for p in tables)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        assert torch.isfinite(torch.tensor(algo.update(i, g)["loss"]))
    assert sum(float(p.detach().abs().sum()) for p in tables) > 0  # the pathway got the labels
    out = algo.sample(10, g)
    assert out["x0"].shape == (10, 1, 16, 16) and out["y"].tolist() == list(range(10))
    assert torch.isfinite(out["x0"]).all()
    pol = out["policy"]
    y = torch.arange(3)
    unc = pol.uncond({"y": y, "class_emb": algo.embedding(y)})
    assert unc["y"].tolist() == [10] * 3  # the unconditional branch gets the null label
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([5, 500, 900])
    with torch.no_grad():  # the null label is the pre-trained model up to the null embedding
        assert torch.equal(domain.denoiser(x, t, {**unc, "class_emb": torch.zeros(3, 128)}),
                           domain.policy.reference(x, t, None))


def test_sample_efficiency_quick_writes_its_tables(tmp_path):
    sys.path.insert(0, str(BENCH))
    import sample_efficiency

    real = [sample_efficiency.C.DOCS, sample_efficiency.RESULTS_DOCS]
    stamp = {p: p.stat().st_mtime_ns for p in real if p.exists()}
    bench_md, results_md = tmp_path / "benchmarks.md", tmp_path / "results.md"
    bench_md.write_text("# Benchmarks\n\nintro\n\n## Ray\n\nkept\n")
    other = "<!-- bench:results:dna -->\n## DNA\n\nanother domain's section\n<!-- /bench:results:dna -->\n"
    results_md.write_text(sample_efficiency.RESULTS_INTRO + other)
    argv = ["--quick", "--out-dir", str(tmp_path / "out"), "--docs", str(bench_md), "--results-docs", str(results_md)]
    start = time.process_time()  # CPU time: the shared test machine's load does not inflate it
    study = sample_efficiency.main(argv)
    assert time.process_time() - start < 60
    assert {(r["method"], r["budget"]) for r in study.results} == {
        (m, b) for m in ("ctrl", "cfg", "cg", "dps") for b in ("20", "all")}
    for r in study.results:
        for v in r["variants"].values():
            assert 0 <= v["accuracy"] <= 1 and v["fd_to_pretrained"] >= 0
    cfg = next(r for r in study.results if r["method"] == "cfg")
    assert set(cfg["variants"]) == {"1", "3"}
    assert next(r for r in study.results if r["budget"] == "all")["reward_classifier"].startswith("shipped")
    text = bench_md.read_text()
    assert "<!-- bench:sample_efficiency -->" in text and "| CTRL (gamma = 10) |" in text
    assert text.index("bench:sample_efficiency") < text.index("## Ray") and "kept" in text
    res = results_md.read_text()
    assert res.startswith("# Results") and "<!-- bench:results:digits -->" in res and "## Digits" in res
    assert other in res and res.index("/bench:results:dna") < res.index("bench:results:digits")  # kept whole
    assert "| CFG (w = 3) |" in res and "Command:" in res
    # a second run reuses every cached result and rewrites the same tables
    again = sample_efficiency.main(argv)
    assert [r["variants"] for r in again.results] == [r["variants"] for r in study.results]
    assert results_md.read_text().count("## Digits") == 1
    # --cached-only tabulates what is cached and computes nothing: a missing result shows as "not run"
    (tmp_path / "out" / "digits" / "n20" / "dps.json").unlink()
    part = sample_efficiency.main([*argv, "--cached-only"])
    assert ("dps", "20") not in {(r["method"], r["budget"]) for r in part.results} and len(part.results) == 7
    assert not (tmp_path / "out" / "digits" / "n20" / "dps.json").exists() and "not run" in results_md.read_text()
    assert {p: p.stat().st_mtime_ns for p in real if p.exists()} == stamp  # the real docs are untouched
