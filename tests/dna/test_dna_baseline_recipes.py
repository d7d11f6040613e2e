"""The DNA baseline recipes (CFG, SVDD, DDPO, reward backprop) validate and run through the real
trainer for a couple of updates at tiny sizes; scripts/dna/results.py runs end to end (--quick)."""

from __future__ import annotations

import json

import pytest

from tests.dna._recipes import run_tiny

RECIPES = {
    "dna/cfg_cell_type": ["algorithm.batch_size=4", "train.steps=2"],
    "dna/svdd_cell_type": ["algorithm.num_candidates=2", "algorithm.batch_size=4"],
    "dna/ddpo_specificity": ["algorithm.batch_size=4", "train.steps=2"],
    "dna/backprop_specificity": ["algorithm.batch_size=4", "train.steps=2"],
}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs(name, tmp_path, fresh_accelerate_state):
    run_tiny(name, RECIPES[name], tmp_path)
    if "steps=2" in RECIPES[name]:
        from safetensors.torch import load_file

        tensors = load_file(str(next(tmp_path.glob("checkpoints/step_*")) / "model.safetensors"))
        assert tensors["y_embedding.weight"].abs().sum() > 0  # the zero-initialised y-embedding moved


def test_results_script_quick(tmp_path, fresh_accelerate_state):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "dna" / "results.py"
    spec = importlib.util.spec_from_file_location("dna_results", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    docs = tmp_path / "results.md"
    docs.write_text("# Results\n\n<!-- bench:results:digits -->\n## Digits\nkeep me\n<!-- /bench:results:digits -->\n")
    runs = tmp_path / "runs"
    rows = mod.main(["--quick", "--runs-dir", str(runs), "--docs", str(docs), "--only", "pretrained,cfg,svdd,ddpo"])
    assert set(rows) == {"pretrained", "cfg", "svdd", "ddpo"}
    text = docs.read_text()
    assert "keep me" in text and text.count("<!-- bench:results:dna -->") == 1 and "## DNA" in text
    assert "| DDPO, specificity" in text and "| CTRL" not in text and "| reward backprop" not in text
    # resuming: finished runs are reused (not run again); a killed run continues; --reuse
    before = (runs / "ddpo" / "eval.json").stat().st_mtime
    (runs / "cfg" / "eval.json").unlink()  # as if killed before its final evaluation
    rows = mod.main(["--quick", "--runs-dir", str(runs), "--docs", str(docs), "--reuse", f"ctrl={runs / 'svdd'}"])
    assert (runs / "ddpo" / "eval.json").stat().st_mtime == before
    assert json.loads((runs / "cfg" / "results_wall.json").read_text())["invocations"] == 2
    assert set(rows) == set(mod.METHODS) and rows["ctrl"]["metrics"] == rows["svdd"]["metrics"]
    text = docs.read_text()
    assert text.count("## DNA") == 1 and "keep me" in text and "| reward backprop" in text
    # --rescore: finished runs are evaluated again from their checkpoint (the same samples, so the same
    # metrics here), not read back from eval.json, and their time records are kept
    walls = {m: mod.wall_seconds(runs / m) for m in ("pretrained", "ddpo", "cfg")}
    (runs / "cfg" / "results_wall.json").unlink()  # a run timed by its files' times: kept as it was
    walls["cfg"] = mod.wall_seconds(runs / "cfg")
    ev = json.loads((runs / "ddpo" / "eval.json").read_text())
    (runs / "ddpo" / "eval.json").write_text(json.dumps({**ev, "metrics": {**ev["metrics"], "oracle_acc_min": -1.0}}))
    rows = mod.main(["--quick", "--runs-dir", str(runs), "--no-docs", "--rescore", "pretrained,ddpo,cfg"])
    assert rows["ddpo"]["metrics"]["oracle_acc_min"] == ev["metrics"]["oracle_acc_min"] != -1.0
    assert {m: mod.wall_seconds(runs / m) for m in walls} == walls
    with pytest.raises(SystemExit):
        mod.main(["--quick", "--runs-dir", str(runs), "--no-docs", "--rescore", "nope"])
