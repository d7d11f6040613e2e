"""Driver for `test_reward_actors.py`, run inside the test cluster's namespace:

    python -m tests.scale._reward_driver ADDRESS OUT_DIR

Writes OUT_DIR/result.json: the pool's and the in-process rewards' numbers, which actors served
which requests, what an unplaceable pool raised, and the metrics of two short DDPO runs that
differ only in how the recipe names the reward (in-process vs a pool of actors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(address: str, out: Path) -> None:
    import torch

    from rldiff.scale.cluster import connect

    torch.set_num_threads(1)
    connect(address)
    from rldiff.config.loader import load_recipe
    from rldiff.core.reward import load_reward
    from rldiff.scale.reward_actors import RewardActorError, RewardActorPool
    from rldiff.train.logging import read_metrics
    from rldiff.train.trainer import train

    result: dict = {}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 1, generator=g)
    cond = {"y": torch.randint(0, 3, (37,), generator=g), "prompt": [f"p{i}" for i in range(37)], "scale": 2.0}
    # a stateful module reading the condition (the plain function `bump` runs below, from a recipe)
    for name, kwargs in [("tests.scale.fixtures.LabelledBump", {"seed": 3})]:
        pool = RewardActorPool(name, kwargs=kwargs, num_actors=2, num_cpus=0.5, batch_size=8)
        actors = pool.start()
        pooled = pool(x, cond)
        local = load_reward(name, **kwargs)(x, cond)
        result[name] = {
            "pooled": pooled.tolist(), "local": local.tolist(), "equal": bool(torch.equal(pooled, local)),
            "actors": actors, "served_by": pool.served_by,
        }
        pool.close()

    try:
        RewardActorPool("tests.scale.fixtures.bump", num_gpus=1, num_cpus=0, ready_timeout_s=3).start()
        result["unplaceable"] = None
    except RewardActorError as err:
        result["unplaceable"] = str(err)

    common = ["algorithm.batch_size=32", "domain.num_steps=10", "train.steps=2", "train.log_every=1",
              "train.eval_samples=0", "train.checkpoint_every=0", "logging.tensorboard=false"]
    rewards = {
        "local": ["domain.reward._component_=rldiff.core.reward.load_reward", "domain.reward.fn=tests.scale.fixtures.bump"],
        "pool": ["domain.reward._component_=rldiff.scale.reward_actors.RewardActorPool",
                 "domain.reward.reward=tests.scale.fixtures.bump", "domain.reward.num_actors=2",
                 "domain.reward.num_cpus=0.5", "domain.reward.batch_size=8"],
    }
    for label, overrides in rewards.items():
        run_dir = out / label
        run_dir.mkdir(parents=True)
        recipe = load_recipe("toy/ddpo", [*common, *overrides])
        train(recipe.config, run_dir, show_progress=False)
        result[f"ddpo_{label}"] = read_metrics(run_dir / "metrics.jsonl")
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
