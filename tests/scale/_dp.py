"""Run `rldiff.train.trainer.train` in N plain processes joined by a gloo process group on
127.0.0.1 (what `accelerate launch` / torchrun would do), without Ray.

    python -m tests.scale._dp RUN_DIR RECIPE [KEY=VALUE ...]     # one process; RANK etc. from env

`data_parallel(...)` starts the N processes and waits for them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_parallel(run_dir: Path, recipe: str, overrides: list[str], world_size: int = 2,
                  timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Train `recipe` with `overrides` on `world_size` gloo processes writing `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.scale._dp", str(run_dir), recipe, *overrides],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, ""))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def main(argv: list[str]) -> None:
    import torch

    from rldiff.config.loader import load_recipe
    from rldiff.train.trainer import train

    torch.set_num_threads(1)
    run_dir, recipe, overrides = Path(argv[0]), argv[1], argv[2:]
    config = load_recipe(recipe, overrides).config
    train(config, run_dir, show_progress=False)


if __name__ == "__main__":
    main(sys.argv[1:])
