"""Running a shipped DNA recipe for a couple of updates at tiny sizes, with the checks every one shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rldiff.config import load_recipe, shipped_recipes

#: overrides that shrink any DNA training recipe (sampler steps, evaluation, files written)
TINY = ["domain.num_steps=2", "domain.elbo_samples=1", "domain.eval_real_per_class=64", "train.eval_samples=8",
        "train.checkpoint_every=0", "logging.tensorboard=false"]
CELLS = ("GM12878", "hESC", "K562", "HepG2")


def run_tiny(name: str, overrides: list[str], out: Path) -> tuple[dict[str, float], str]:
    """Train recipe `name` with TINY + `overrides` into `out`; check the recipe's first line, the
    per-cell-line metrics, that eval.json matches the returned metrics and that the FASTA asks for
    two sequences per cell line. Returns (metrics, FASTA text)."""
    from rldiff.train.trainer import train

    assert shipped_recipes()[name].read_text().splitlines()[0] == f"# rldiff run {name}"
    cfg = load_recipe(name, [*TINY, *overrides, f"output_dir={out}"]).config
    assert cfg.description
    res = train(cfg, out, show_progress=False)
    m = json.loads((out / "eval.json").read_text())["metrics"]
    for c in CELLS:
        assert 0 <= m[f"oracle_acc_{c}"] <= 1 and f"motif_enrichment_{c}" in m and f"kmer3_corr_{c}" in m
    assert m["num_samples"] == 8 and res.eval_metrics == pytest.approx(m)
    fasta = next(out.glob("eval/step_*/samples.fasta")).read_text()
    assert fasta.count(">") == 8
    for c in CELLS:
        assert fasta.count(f"target={c}") == 2
    return m, fasta
