"""The `rldiff` command line, run in-process: help, ls, cp, validate, run, resume and eval."""

from __future__ import annotations

import json

import pytest
import yaml

from rldiff import cli
from rldiff.config import loader
from rldiff.train.logging import read_metrics
from tests.fixtures import DUMMY_RECIPE, RECIPES

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

FAST = [
    "train.steps=10",
    "train.eval_samples=64",
    "train.eval_every=0",
    "logging.tensorboard=false",
]


def _rldiff(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def shipped(monkeypatch):
    """Make the fixture recipes the shipped ones."""
    monkeypatch.setattr(loader, "RECIPES_DIR", RECIPES)
    monkeypatch.setattr(cli, "RECIPES_DIR", RECIPES)


@pytest.mark.parametrize(
    ("command", "phrases"),
    [
        ([], ["usage: rldiff", "run", "validate", "ls", "cp", "eval"]),
        (["run"], ["usage: rldiff run", "RECIPE", "KEY=VALUE", "resume=RUN_DIR", "train.steps"]),
        (["validate"], ["usage: rldiff validate", "without building"]),
        (["ls"], ["usage: rldiff ls", "description"]),
        (["cp"], ["usage: rldiff cp", "NAME", "DEST", "not overwritten"]),
        (["eval"], ["usage: rldiff eval", "RUN_DIR", "--samples N", "eval.json"]),
    ],
)
def test_help(capsys, command, phrases):
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for phrase in phrases:
        assert phrase in out


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_ls_lists_names_and_descriptions(capsys, monkeypatch, tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "ok.yaml").write_text("description: Does a thing.\nseed: 0\n")
    (tmp_path / "broken.yaml").write_text("description: [unclosed\n")
    monkeypatch.setattr(loader, "RECIPES_DIR", tmp_path)
    status, out, _ = _rldiff(capsys, "ls")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("broken  (cannot read: ")
    assert lines[1] == "toy/ok  Does a thing."


def test_cp_copies_and_never_overwrites(capsys, shipped, tmp_path):
    status, out, _ = _rldiff(capsys, "cp", "dummy", tmp_path)
    dest = tmp_path / "dummy.yaml"
    assert status == 0 and out == f"copied dummy to {dest}; run it with: rldiff run {dest}\n"
    copied, original = dest.read_text().splitlines(), DUMMY_RECIPE.read_text().splitlines()
    assert copied[0] == f"# rldiff run {dest}" and copied[1:] == original[1:]
    status, _, err = _rldiff(capsys, "cp", "dummy", dest)
    assert status == 2 and err == f"error: {dest} already exists; not overwriting it\n"
    status, _, err = _rldiff(capsys, "cp", "dumy", tmp_path / "x.yaml")
    assert status == 2
    assert err == "error: no shipped recipe 'dumy'; did you mean 'dummy'? Shipped recipes: dummy\n"


def test_validate(capsys, shipped):
    status, out, _ = _rldiff(capsys, "validate", "dummy", "train.steps=3")
    assert status == 0
    assert out.splitlines() == [
        f"{DUMMY_RECIPE}: valid",
        (
            "  description: Dummy reward backprop towards a target point; exercises the trainer in "
            "seconds."
        ),
        "  domain:      tests.fixtures.dummy.build_domain",
        "  algorithm:   tests.fixtures.dummy.DummyAlgorithm",
    ]
    status, out, err = _rldiff(capsys, "validate", "dummy", "train.steps=-3")
    assert status == 2 and out == ""
    assert err.startswith(f"error: {DUMMY_RECIPE}: train.steps (from override 'train.steps=-3'): ")


def test_run_resume_and_eval(capsys, shipped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = _rldiff(capsys, "run", "dummy", *FAST, "--no-progress")
    assert status == 0, err
    (run_dir,) = (tmp_path / "runs" / "dummy").iterdir()
    run_dir = run_dir.relative_to(tmp_path)
    assert out.startswith(f"# resolved config -> {run_dir}/config.yaml\n")
    saved = (run_dir / "config.yaml").read_text()
    assert saved.splitlines()[:2] == [
        "# rldiff run dummy " + " ".join(FAST),
        f"# continue this run: rldiff run {run_dir}/config.yaml resume={run_dir}",
    ]
    printed = out.split("\n\nDone:")[0]
    assert yaml.safe_load(printed) == yaml.safe_load(saved)
    assert yaml.safe_load(saved)["train"]["steps"] == 10
    assert f"Done: 10 updates. Outputs in {run_dir}/" in out
    assert "  summary.md      final metrics and the command" in out
    assert "  tensorboard/" not in out  # turned off
    final = json.loads((run_dir / "eval.json").read_text())["metrics"]
    assert f"Final evaluation: mean_abs_error={final['mean_abs_error']:.6g}, num_samples=64" in out
    assert out.endswith(f"Evaluate again: rldiff eval {run_dir}\n")

    status, out, _ = _rldiff(capsys, "eval", run_dir)
    assert status == 0
    assert out.splitlines()[0] == (
        f"step 10, 64 samples: mean_abs_error={final['mean_abs_error']:.6g}, num_samples=64"
    )
    status, out, _ = _rldiff(capsys, "eval", run_dir, "--samples", "16")
    assert status == 0 and "step 10, 16 samples: " in out
    assert json.loads((run_dir / "eval.json").read_text())["num_samples"] == 16

    # continue the finished run for 5 more updates, from its own config
    status, out, err = _rldiff(
        capsys,
        "run",
        run_dir / "config.yaml",
        f"resume={run_dir}",
        "train.steps=15",
        "--no-progress",
    )
    assert status == 0, err
    steps = [e["step"] for e in read_metrics(run_dir / "metrics.jsonl") if "loss" in e]
    assert steps == [5, 10, 15]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000015\n"
    assert list((tmp_path / "runs" / "dummy").iterdir()) == [tmp_path / run_dir]

    before = (run_dir / "config.yaml").read_text()
    status, _, err = _rldiff(capsys, "run", "dummy", *FAST, "algorithm.lr=0.5", f"resume={run_dir}")
    assert status == 2
    assert "resume (from override 'resume=" in err
    assert "these differ from" in err and "algorithm.lr: 0.01 in the run, 0.5 now" in err
    status, _, err = _rldiff(capsys, "run", "dummy", *FAST, f"resume={run_dir}")
    assert status == 2
    assert "the run being resumed has done 15 updates, more than train.steps=10" in err
    assert (run_dir / "config.yaml").read_text() == before


def test_run_refuses_a_used_output_dir(capsys, shipped, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    status, out, err = _rldiff(capsys, "run", "dummy", f"output_dir={used}")
    assert status == 2 and out == ""
    assert err.startswith(
        f"error: {DUMMY_RECIPE}: output_dir (from override 'output_dir={used}'): {used} already "
        "exists and is not an empty folder"
    )
    assert [p.name for p in used.iterdir()] == ["notes.txt"]


def test_bad_resume_and_eval_targets(capsys, shipped, tmp_path):
    status, _, err = _rldiff(capsys, "run", "dummy", f"resume={tmp_path}")
    assert status == 2 and f"{tmp_path} is not a run directory (no config.yaml)" in err
    status, _, err = _rldiff(capsys, "run", "dummy", "resume=a", "resume=b")
    assert status == 2 and "give resume=RUN_DIR at most once" in err
    status, _, err = _rldiff(capsys, "eval", tmp_path)
    assert (
        status == 2 and err == f"error: {tmp_path} is not a run directory: it has no config.yaml\n"
    )
    (tmp_path / "config.yaml").write_text(DUMMY_RECIPE.read_text())
    status, _, err = _rldiff(capsys, "eval", tmp_path)
    assert status == 2 and "has no checkpoint yet" in err
    with pytest.raises(SystemExit):
        cli.main(["eval", str(tmp_path), "--samples", "0"])
    assert "must be a positive integer, got 0" in capsys.readouterr().err


def test_training_failure_exits_1(capsys, shipped, tmp_path):
    status, _, err = _rldiff(
        capsys,
        "run",
        "dummy",
        *FAST,
        "algorithm.nan_at_step=2",
        f"output_dir={tmp_path / 'r'}",
        "--no-progress",
    )
    assert status == 1
    assert err.startswith("error: metric 'loss' is not finite at step 3 (reward=")
    assert "no checkpoint had been written yet" in err
