"""scripts/dna/nearest_peak.py: the memorisation check finds a copied training peak (distance 0)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from domains.dna.data import CELL_LINES
from domains.dna.domain import build

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "dna"


def _load():
    path = SCRIPTS / "nearest_peak.py"
    spec = importlib.util.spec_from_file_location("nearest_peak", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_nearest_distances_formula() -> None:
    mod = _load()
    peaks = torch.tensor([[0, 1, 2, 3], [3, 3, 3, 3]])
    samples = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0], [3, 3, 0, 0], [1, 0, 1, 0]])
    assert mod.nearest_distances(samples, peaks, chunk=3).tolist() == [0, 1, 2, 4]


def test_a_copied_peak_is_found(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the script reads samples with its neighbours' helpers
    mod = _load()
    peaks = build(num_steps=10, label_chroms="classifier").offline_data("train")[0].long()
    g = torch.Generator().manual_seed(0)
    lines = []
    for k, c in enumerate(CELL_LINES):  # per cell line: a copy of peak k and two random sequences
        for i, seq in enumerate([peaks[k], *torch.randint(4, (2, 200), generator=g)]):
            lines += [f">s{k}_{i} target={c}", "".join("ACGT"[int(b)] for b in seq)]
    fasta = tmp_path / "run" / "eval" / "step_000001" / "samples.fasta"
    fasta.parent.mkdir(parents=True)
    fasta.write_text("\n".join(lines) + "\n")
    mod.main([str(tmp_path / "run")])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    assert len(cells) == len(CELL_LINES)
    for cell in cells:
        low, _, median = (int(v) for v in cell.split(" / "))
        assert low == 0 and median > 50  # the copy at 0; the random sequences far from every peak
