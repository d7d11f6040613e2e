"""Ray Train's failure handling: `rldiff launch ... --max-failures 1` on the two-node cluster; the
test kills one of its two worker processes (SIGKILL) once 8 of 40 updates are checkpointed
(`conftest._killer`). The run must finish from its last checkpoint with the full step count and
lose nothing: its metrics, weights, optimizer state and evaluation are bit-identical to the
uninterrupted two-worker run of the same recipe (`scale_runs.local`, the CLI test's run)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.scale._net import is_loopback
from tests.scale.conftest import KILL_AFTER, _committed_step

STEPS = 40


@pytest.mark.timeout(600)
def test_killed_worker_resumes_from_its_last_checkpoint_and_loses_nothing(scale_runs):
    job = scale_runs.fault
    status, output = job.result(timeout=540)
    killed, killed_at = job.info.get("killed"), job.info.get("killed_at")
    assert killed is not None, f"the run ended before a worker could be killed:\n{output[-3000:]}"
    assert status == 0, output[-5000:]
    assert not os.path.exists(f"/proc/{killed}")
    assert KILL_AFTER <= killed_at < STEPS
    restarts = [line for line in output.splitlines() if "[rldiff] the worker group was restarted" in line]
    assert len(restarts) == 1, output[-5000:]  # Ray Train restarted the worker group once ...
    resumed_from = int(restarts[0].split("updates;")[0].rsplit("(", 1)[1])
    assert killed_at <= resumed_from < STEPS  # ... from the last committed checkpoint
    assert len(job.info["raylets"]) == 2  # the two workers ran on the two nodes (two raylets)
    assert f"[rldiff] update {STEPS}/{STEPS} (2 workers)" in output

    # the full step count, each update logged exactly once
    run = job.run_dir
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries if "loss" in e] == list(range(1, STEPS + 1))
    assert _committed_step(run) == STEPS

    # nothing lost: bit-identical to the uninterrupted two-worker run
    ref_status, ref_output = scale_runs.local.result(timeout=300)
    assert ref_status == 0, ref_output[-3000:]
    ref = scale_runs.local.run_dir
    assert entries == [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    name = f"step_{STEPS:06d}"
    ours, theirs = (load_file(str(d / "checkpoints" / name / "model.safetensors")) for d in (run, ref))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    opt = [torch.load(d / "checkpoints" / name / "optimizer.pt", weights_only=True)["ctrl"]["state"] for d in (run, ref)]
    assert opt[0].keys() == opt[1].keys()
    assert all(torch.equal(opt[0][k][m], opt[1][k][m]) for k in opt[0] for m in ("exp_avg", "exp_avg_sq", "step"))
    assert json.loads((run / "eval.json").read_text())["metrics"] == json.loads((ref / "eval.json").read_text())["metrics"]

    # on loopback: the cluster's namespace has no interface but lo, and every connection seen there
    # (the two workers' gloo link across the two nodes included) had 127.0.0.1 at both ends
    established = [s for s in scale_runs.watch.seen if s.state == "ESTABLISHED"]
    assert established and all(is_loopback(s.local[0]) and is_loopback(s.remote[0]) for s in established)
    assert scale_runs.watch.links_between("ray::RayTrainWo")
