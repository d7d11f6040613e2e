"""`rldiff run toy/ctrl scale.num_workers=2` trains on two Ray workers of a local Ray, in the host's
own network namespace, and everything Ray and gloo open stays on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rldiff.config.loader import load_recipe
from rldiff.train.trainer import build, make_accelerator, per_process_config, update_seed
from tests.scale.conftest import TOY_CTRL


@pytest.mark.timeout(600)
def test_run_toy_ctrl_on_two_local_workers(scale_runs, fresh_accelerate_state):
    status, output = scale_runs.local.result(timeout=540)
    assert status == 0, output[-5000:]
    run = scale_runs.local.run_dir
    assert "training on 2 worker(s) on a local Ray" in output
    assert "[rldiff] update 40/40 (2 workers)" in output  # progress from rank 0 ...
    assert output.count("[rldiff] update 40/40") == 1  # ... once

    # the usual run directory, written by rank 0
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "summary.md", "plots/loss.png", "tensorboard"):
        assert (run / name).exists(), name
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000040"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000032", "step_000040"]
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_entries = [e for e in entries if "loss" in e]
    assert [e["step"] for e in train_entries] == list(range(1, 41))
    weights = load_file(str(run / "checkpoints" / "step_000040" / "model.safetensors"))
    assert float(weights["y_embedding.weight"][:-1].abs().max()) > 1e-3  # CTRL's new condition was learned

    # each worker sampled its own half of the batch: the logged first update is the mean of the two
    # workers' local updates (64 trajectories each, drawn from derive_seed(0, "update", 0, rank))
    config = load_recipe("toy/ctrl", TOY_CTRL).config
    local = []
    for rank in range(2):
        accelerator = make_accelerator(config)
        _, algorithm = build(per_process_config(config, 2), accelerator)
        assert algorithm.batch_size == 64
        local.append(algorithm.update(0, torch.Generator().manual_seed(update_seed(0, 0, rank, 2))))
    assert local[0]["loss"] != local[1]["loss"]
    for key in ("loss", "reward", "accuracy"):
        assert train_entries[0][key] == pytest.approx((local[0][key] + local[1][key]) / 2, rel=1e-5, abs=1e-7)

    # loopback only: every connection the CLI's process tree (Ray's processes, the two workers)
    # had was between 127.0.0.1 and 127.0.0.1, the workers' gloo link among them, and every Ray
    # port was bound to 127.0.0.1. The one listener on all interfaces is torch's TCPStore (the
    # process group's rendezvous server on rank 0; torch binds it so whatever MASTER_ADDR says),
    # and both workers reached it at 127.0.0.1.
    watch = scale_runs.local.info["watch"]
    assert len(watch.seen) > 10 and any(s.state == "LISTEN" for s in watch.seen)
    off = watch.off_loopback()
    assert all(s.state == "LISTEN" for s in off), off
    assert len(off) <= 1, off
    for store in off:
        clients = watch.clients_of(store.local[1])
        workers = {pid for pid in clients | {store.pid} if "ray::RayTrainWo" in watch.names(pid)}
        assert store.pid in workers and len(clients) == 2 and clients <= workers, (store, clients)
    links = watch.links_between("ray::RayTrainWo")
    assert links and all(a.local[0] == "127.0.0.1" and a.remote[0] == "127.0.0.1" for a, _ in links)


def test_cli_refuses_what_cannot_run_before_creating_anything(tmp_path, capsys, monkeypatch):
    from rldiff import cli

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "run"
    # 256 trajectories cannot be split over 3 workers: a recipe error naming scale.num_workers
    for command in ("run", "validate"):
        assert cli.main([command, "toy/ctrl", "scale.num_workers=3", f"output_dir={out}"]) == 2
        err = capsys.readouterr().err
        assert "scale.num_workers" in err and "not a multiple of the 3" in err
    # launch needs a cluster address
    assert cli.main(["launch", "toy/ctrl", f"output_dir={out}"]) == 2
    assert "rldiff launch needs a Ray cluster" in capsys.readouterr().err
    assert not out.exists()
    # options and KEY=VALUE overrides may come in any order; unknown options are still refused
    with pytest.raises(SystemExit):
        cli.main(["validate", "toy/ctrl", "--bogus"])
    assert cli.main(["validate", "toy/ctrl", "scale.num_workers=2", "scale.placement_strategy=SPREAD"]) == 0
