"""The worked examples in docs/ run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def code_blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_custom_reward_python_api() -> None:
    blocks = code_blocks(REPO / "docs" / "custom_rewards.md", "python")
    namespace: dict = {}
    exec(compile(blocks[0], "docs/custom_rewards.md", "exec"), namespace)  # noqa: S102 -- the doc's own code
    assert namespace["after"] > namespace["before"] + 0.5


def test_custom_reward_recipe(tmp_path: Path) -> None:
    doc = REPO / "docs" / "custom_rewards.md"
    module = code_blocks(doc, "python")[1]
    (tmp_path / "my_rewards.py").write_text(module)
    (tmp_path / "my_backprop.yaml").write_text(code_blocks(doc, "yaml")[0])
    command = code_blocks(doc, "bash")[0].split()
    assert command[:2] == ["rldiff", "run"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "rldiff.cli", *command[1:], "output_dir=run"], check=False, cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rewards = [json.loads(line)["reward"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               if "reward" in json.loads(line)]
    assert len(rewards) >= 2 and rewards[-1] > rewards[0] + 0.3, rewards
