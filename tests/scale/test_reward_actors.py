"""A reward named in a recipe runs as a pool of Ray actors and gives the in-process numbers."""

from __future__ import annotations

import json

import pytest

from rldiff.scale.reward_actors import RewardActorPool, _rows


def test_request_rows_split_tensors_lists_and_keep_shared_values():
    import torch

    cond = {"y": torch.arange(5), "prompt": list("abcde"), "embeds": torch.zeros(5, 2, 3), "w": 2.0,
            "table": torch.ones(3)}
    part = _rows(cond, torch.tensor([1, 3]), 5)
    assert part["y"].tolist() == [1, 3] and part["prompt"] == ["b", "d"] and part["embeds"].shape == (2, 2, 3)
    assert part["w"] == 2.0 and part["table"].shape == (3,)  # not per-sample: passed whole
    pool = RewardActorPool("tests.scale.fixtures.bump", num_actors=3, num_gpus=0.5, batch_size=4)
    assert not pool.differentiable and "num_gpus=0.5" in repr(pool)


@pytest.mark.timeout(600)
def test_pool_gives_the_in_process_numbers_and_runs_from_a_recipe(scale_runs):
    status, output = scale_runs.rewards.result(timeout=540)
    assert status == 0, output[-5000:]
    result = json.loads((scale_runs.rewards.cwd / "result.json").read_text())

    for name in ("tests.scale.fixtures.LabelledBump",):
        r = result[name]
        assert r["equal"], (r["pooled"], r["local"])  # bit for bit
        assert len(r["served_by"]) == 5  # 37 rows in requests of 8
        pids = {a["pid"] for a in r["actors"]}
        assert len(pids) == 2 and set(r["served_by"]) == pids  # round-robin over both actors
        assert all(a["node"] == "127.0.0.1" and a["resources"].get("CPU") == 0.5 and not a["resources"].get("GPU")
                   for a in r["actors"])
    assert len(set(r["local"])) > 30  # 37 different numbers: rows and labels matter

    # num_gpus is what the actors ask Ray for: a GPU pool cannot be placed on this CPU cluster
    assert result["unplaceable"] is not None and "1 GPU" in result["unplaceable"]
    assert "could not be placed" in result["unplaceable"]

    # the same DDPO recipe with the reward in-process or in a pool: identical metrics
    local, pooled = result["ddpo_local"], result["ddpo_pool"]
    assert [e["step"] for e in local] == [1, 2]
    assert local == pooled
    assert local[0]["reward"] != local[1]["reward"]
