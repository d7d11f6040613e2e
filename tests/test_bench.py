"""Smoke tests of the benchmark scripts in bench/: each core function on a tiny setting.

They check the tables' rows and that every number is finite (no timing assertions), and that the
docs writer keeps other sections. They use the DNA denoiser (with a small stand-in classifier where
a reward is needed) because it builds without importing diffusers or gReLU.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))


def _finite(*xs: float) -> bool:
    return all(math.isfinite(x) for x in xs)


def test_rollout_overhead_quick():
    import rollout_overhead

    res = rollout_overhead.run(quick=True, repeats=1, num_steps=2, models=("dna", "dna-null"))
    rows = res["rows"]
    assert [(r["null"], r["baseline"]) for r in rows] == [
        (False, "bare"), (False, "bare + reference"), (True, "bare"), (True, "bare + reference")]
    for r in rows:
        assert _finite(r["ours_ms"], r["bare_ms"], r["ratio_wall"], r["ratio_cpu"], r["per_step_us"])
        assert r["ours_ms"] > 0 and r["bare_ms"] > 0
        assert r["x0_diff"] == 0  # the bare loop makes the same computation as rollout
    assert "2 reference calls" in rows[1]["variant"]
    assert res["table"].count("\n") == 2 + len(rows) - 1


def test_backprop_step_quick():
    import backprop_step

    res = backprop_step.run(quick=True, repeats=1, num_steps=3, k=1, models=("dna-lite",))
    (row,), (calls,) = res["rows"], res["calls"]
    assert _finite(row["ours_ms"], row["bare_ms"], row["all_ms"], row["ratio_cpu"], row["all_ratio"])
    assert row["loss_ours"] == pytest.approx(row["loss_bare"], rel=1e-5, abs=1e-6)
    assert row["param_diff"] < 1e-6
    assert (calls["ours"], calls["ctrl_code"]) == (1, 3)  # kl="grad": K reference forwards, not T


def test_anchor_precision_quick():
    import anchor_precision

    res = anchor_precision.run(quick=True, repeats=1, batches=(8,))
    (row,) = res["rows"]
    assert _finite(row["fp32_ms"], row["bf16_ms"], row["speedup"], row["loss_rel"], row["cos"], row["norm"])
    assert 0 < row["loss_rel"] < 1e-2  # rounded, but only by bf16's precision
    assert row["cos"] > 0.99


def test_memory_quick():
    import memory

    res = memory.run(quick=True, steps=(2, 3), k=1, batch=1, models=("dna-lite",), no_ckpt_all_max_t=0)
    rows = res["rows"]
    assert {(r["T"], r["config"]) for r in rows} == {
        (T, c) for T in (2, 3) for c in ("last_k", "last_k + ckpt", "all + ckpt", "all + ckpt, no log-prob graph")}
    for r in rows:
        assert _finite(r["peak_mb"], r["saved_mb"], r["rss_before_mb"]) and r["peak_mb"] > 0
    by = {(r["T"], r["config"]): r for r in rows}
    assert by[(2, "last_k + ckpt")]["saved_mb"] < by[(2, "last_k")]["saved_mb"]  # checkpointing saves less
    assert by[(3, "all + ckpt, no log-prob graph")]["saved_mb"] < by[(3, "all + ckpt")]["saved_mb"]
    name, tbl = res["tables"][0]
    assert "DNA" in name and tbl.count("\n") == 2 + 2  # header, separator, 2 T rows, the ratio row


def test_logprob_reference_quick():
    import logprob_reference

    res = logprob_reference.run(quick=True, repeats=1, inner=1)
    assert len(res["numerics"]) == 4 and len(res["timing"]) == 4
    for r in res["numerics"]:
        # ours = D * ddpo's mean-over-dimensions value, up to float error
        assert r["formula_rel"] < 1e-5 and r["step_rel"] < 1e-4
        assert r["ours_max"] == pytest.approx(r["D"] * r["ddpo_max"], rel=1e-4)
    for r in res["timing"]:
        assert _finite(r["ours_us"], r["ddpo_us"], r["ratio"]) and r["ours_us"] > 0


def test_update_docs_keeps_other_sections(tmp_path):
    import _common as C

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## Ray: 1 vs 2 workers\n\nray table\n")
    rep = C.Report("memory", "Memory", "intro text", "| a |\n| --- |\n| 1 |", "cmd", (1, 1, 1), (2, 2, 2), "m", "v")
    C.update_docs(rep, doc)
    C.update_docs(C.Report("rollout_overhead", "Rollout", "i", "b", "cmd", (0, 0, 0), (0, 0, 0), "m", "v"), doc)
    C.update_docs(C.Report("logprob_reference", "Logprob", "i", "b", "cmd", (0, 0, 0), (0, 0, 0), "m", "v"), doc)
    C.update_docs(C.Report("backprop_step", "Backprop", "i", "b", "cmd", (0, 0, 0), (0, 0, 0), "m", "v"), doc)
    rep.body = "| a |\n| --- |\n| 2 |"
    C.update_docs(rep, doc)
    text = doc.read_text()
    assert text.count("## Memory") == 1 and "| 2 |" in text and "| 1 |" not in text
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## Rollout", "## Backprop", "## Memory", "## Logprob", "## Ray: 1 vs 2 workers"]
    for line in text.splitlines():  # every section starts with its marker, then its own heading
        if line.startswith("<!-- bench:"):
            nxt = text.split(line + "\n", 1)[1].splitlines()[0]
            assert nxt.startswith("## ")
    assert text.endswith("ray table\n")
