"""scripts/dna: motifs_by_tf.py (per-TF motif hits), anchor_pool.py (pool draws), moment_noise_floor.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from domains.dna.data import CELL_LINES
from domains.dna.domain import build
from domains.dna.evaluate import CELL_TYPE_MOTIFS, load_motifs

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "dna"


def _load():
    spec = importlib.util.spec_from_file_location("motifs_by_tf", SCRIPTS / "motifs_by_tf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pool_draws_follow_the_weights(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    from anchor_pool import pool_draws

    domain = build(num_steps=10, label_chroms="classifier")
    draws, ess = pool_draws(domain, exponent=30.0, pool=256, num=64, seed=0)
    assert ess.shape == (len(CELL_LINES),) and (ess >= 1).all() and (ess <= 256).all()
    assert set(draws) == set(CELL_LINES) and all(d.shape == (64, 200) for d in draws.values())
    # at e = 30 each cell line's draws are peaks the classifier calls for it
    from domains.dna.grelu_models import predict

    for k, c in enumerate(CELL_LINES):
        assert (predict(domain.classifier, draws[c]).argmax(-1) == k).float().mean() > 0.8


def test_planted_consensus_is_counted(tmp_path: Path, capsys, monkeypatch) -> None:
    """A run whose hESC samples each carry the best-scoring SOX2 site reads >= 1 SOX2 hit per sequence."""
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the script reads samples with its neighbours' helpers
    mod = _load()
    pwm = next(m for name, m in load_motifs(["SOX2"]).items())  # [4, w]
    site = "".join("ACGT"[i] for i in np.argmax(pwm, 0))
    g = torch.Generator().manual_seed(0)
    lines = []
    for c in CELL_LINES:
        for i in range(4):
            seq = "".join("ACGT"[int(b)] for b in torch.randint(4, (200,), generator=g))
            if c == "hESC":
                seq = seq[:90] + site + seq[90 + len(site):]
            lines += [f">{c}_{i} target={c}", seq]
    fasta = tmp_path / "run" / "eval" / "step_000001" / "samples.fasta"
    fasta.parent.mkdir(parents=True)
    fasta.write_text("\n".join(lines) + "\n")
    mod.main([str(tmp_path / "run"), "--pool", "256", "--num", "8"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert [r.split("|")[1:3] for r in rows] == [[f" {c} ", f" {tf} "] for c in CELL_LINES for tf in CELL_TYPE_MOTIFS[c]]
    sox2 = next(r for r in rows if r.split("|")[2].strip() == "SOX2")
    pretrained, _pool, run = (float(v) for v in sox2.strip().strip("|").split("|")[2:])
    assert run >= 1.0 > pretrained


def test_moment_noise_floor_batch_vs_unbiased(monkeypatch) -> None:
    """Batches drawn from the moment anchor's own target: the batch chi-square sits above zero and falls
    ~1/n with the batch size; the pairs-of-rows estimator averages ~0 at any size."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    from moment_noise_floor import floor

    from rldiff.algorithms.ctrl import CTRL

    domain = build(num_steps=10, label_chroms="classifier")
    algo = CTRL(domain, gamma=1.0, kl_weight=1.0, forward_weight=0.0, forward_moment_weight=1.0,
                forward_moment_k=2, forward_exponent=30.0, forward_moment_exponent=3.0, forward_pool=512)
    small, large = floor(algo, 16, 40, 0), floor(algo, 256, 40, 0)
    assert algo.forward_moment_unbiased is False  # the CTRL's own setting is restored
    assert small[False].min() > 0 and small[False].mean() > 4 * large[False].mean()
    for v in (small[True], large[True]):  # unbiased: mean within 3 standard errors of 0
        assert abs(float(v.mean())) < 3 * float(v.std()) / len(v) ** 0.5
    assert abs(float(small[True].mean())) < 0.3 * float(small[False].mean())
