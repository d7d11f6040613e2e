"""Sampling and training throughput of the toy CTRL recipe on 1 vs 2 Ray Train workers.

    .venv/bin/python bench/ray_scaling.py                       # prints a Markdown table
    .venv/bin/python bench/ray_scaling.py --out bench/ray_scaling.md --repeats 3

Each configuration is one `TorchTrainer` fit on a local Ray (`rldiff.scale.cluster.connect`), with
the same per-worker code the training runs use (`rldiff.train.trainer.build` with
`per_process_config`, rank seeds from `update_seed`, gradients averaged by `sync_gradients`):

- training: `--updates` timed updates of the global batch `--batch` (each worker B / N
  trajectories of `--num-steps` DDIM steps, direct backprop through all of them), after 2 warm-up
  updates; throughput = trajectories per second over the slowest worker.
- sampling: `--samples` samples drawn by `algorithm.sample` without gradients, split over the
  workers; throughput = samples per second over the slowest worker.
- gradient sync: time per update spent in `rldiff.algorithms.common.sync_gradients` (the
  all-reduce of every trainable parameter's gradient; a no-op in one process), measured on rank 0.
- start-up: the fit's wall time minus the timed parts (Ray Train's worker group, process group,
  imports, building the domain).

Baselines without Ray: the same loop in this process with 1 torch thread (what one worker gets)
and with `--threads` threads. Every worker reserves 1 CPU and uses 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rldiff.scale.cluster import connect, disconnect, prepare_environment  # sets Ray's env first

prepare_environment(None)


def measure(recipe: str, overrides: list[str], updates: int, samples: int) -> dict[str, float]:
    """Time `updates` updates and drawing `samples` samples on this process's share."""
    import torch
    import torch.distributed as dist

    from rldiff.algorithms import common
    from rldiff.config.loader import load_recipe
    from rldiff.train.trainer import build, make_accelerator, update_seed

    synced = {"s": 0.0}
    sync_gradients = common.sync_gradients

    def timed_sync(params):  # clip_and_step looks sync_gradients up in `common` at call time
        start = time.perf_counter()
        sync_gradients(params)
        synced["s"] += time.perf_counter() - start

    config = load_recipe(recipe, overrides).config
    accelerator = make_accelerator(config)
    rank, world = accelerator.process_index, accelerator.num_processes
    _, algorithm = build(config, accelerator)  # per-process batch when world > 1

    def barrier() -> None:
        if world > 1:
            dist.barrier()

    for step in range(2):  # warm-up
        algorithm.update(step, torch.Generator().manual_seed(update_seed(config.seed, step, rank, world)))
    barrier()
    common.sync_gradients = timed_sync
    start = time.perf_counter()
    try:
        for step in range(2, 2 + updates):
            algorithm.update(step, torch.Generator().manual_seed(update_seed(config.seed, step, rank, world)))
        barrier()
    finally:
        common.sync_gradients = sync_gradients
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    algorithm.sample(samples // world, torch.Generator().manual_seed(rank))
    barrier()
    sample_s = time.perf_counter() - start
    return {"train_s": train_s, "sample_s": sample_s, "sync_ms": synced["s"] / updates * 1e3}


def _allreduce_process(rank: int, shapes: list[tuple[int, ...]], port: int, iters: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    grads = [torch.randn(shape) for shape in shapes]
    times = {}
    for mode in ("per_tensor", "flat"):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            if mode == "per_tensor":  # what sync_gradients does
                for g in grads:
                    dist.all_reduce(g)
            else:
                dist.all_reduce(torch.cat([g.flatten() for g in grads]))
        dist.barrier()
        times[mode] = (time.perf_counter() - start) / iters * 1e3
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def allreduce_cost(recipe: str, overrides: list[str], iters: int = 300) -> dict[str, float]:
    """ms per update to all-reduce the algorithm's gradients between 2 gloo processes on 127.0.0.1:
    one all-reduce per tensor (as `sync_gradients`) vs one of their concatenation."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    from rldiff.config.loader import load_recipe
    from rldiff.train.trainer import build, make_accelerator

    config = load_recipe(recipe, overrides).config
    _, algorithm = build(config, make_accelerator(config))
    shapes = [tuple(p.shape) for m in algorithm.modules().values() for p in m.parameters() if p.requires_grad]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = Path(tempfile.mkdtemp(prefix="rldiff-bench-")) / "allreduce.json"
    mp.spawn(_allreduce_process, args=(shapes, port, iters, str(out)), nprocs=2)
    return {**json.loads(out.read_text()), "tensors": len(shapes)}


def _worker(spec: dict) -> None:
    import ray.train
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, spec["repo"])
    metrics = measure(spec["recipe"], spec["overrides"], spec["updates"], spec["samples"])
    if ray.train.get_context().get_world_rank() == 0:
        Path(spec["result"]).write_text(json.dumps(metrics))


def ray_fit(workers: int, spec: dict) -> dict[str, float]:
    from ray.train import RunConfig, ScalingConfig

    from rldiff.scale.ray_train import _trainer_class

    spec = {**spec, "result": str(Path(spec["storage"]) / f"result_{workers}.json")}
    start = time.perf_counter()
    trainer = _trainer_class(state_api=False)(
        _worker,
        train_loop_config=spec,
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"bench_{workers}", storage_path=spec["storage"]),
    )
    trainer.fit()
    wall = time.perf_counter() - start
    metrics = json.loads(Path(spec["result"]).read_text())
    metrics["startup_s"] = wall - metrics["train_s"] - metrics["sample_s"]
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="toy/ctrl")
    parser.add_argument("--batch", type=int, default=256, help="global batch (trajectories per update)")
    parser.add_argument("--num-steps", type=int, default=50, help="DDIM steps per trajectory")
    parser.add_argument("--updates", type=int, default=20, help="timed updates")
    parser.add_argument("--samples", type=int, default=8192, help="samples drawn in the sampling test")
    parser.add_argument("--repeats", type=int, default=1, help="fits per configuration (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the in-process baseline")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()

    import tempfile

    import ray
    import torch

    overrides = [f"algorithm.batch_size={args.batch}", f"domain.num_steps={args.num_steps}", "train.cpu=true"]
    spec = {"recipe": args.recipe, "overrides": overrides, "updates": args.updates, "samples": args.samples,
            "repo": str(REPO), "storage": tempfile.mkdtemp(prefix="rldiff-bench-")}
    load_before = os.getloadavg()
    rows = []
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        runs = [measure(args.recipe, overrides, args.updates, args.samples) for _ in range(args.repeats)]
        rows.append((f"in-process, {threads} thread(s), no Ray", runs))
    connection = connect(None)
    try:
        for workers in (1, 2):
            rows.append((f"Ray Train, {workers} worker(s)", [ray_fit(workers, spec) for _ in range(args.repeats)]))
    finally:
        disconnect(connection)
    allreduce = allreduce_cost(args.recipe, overrides)
    load_after = os.getloadavg()

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    base = None
    lines = [
        ("| setup | training (trajectories/s) | sampling (samples/s) | training vs 1 worker "
         "| gradient sync (ms/update) | start-up (s) |"),
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, runs in rows:
        train = args.batch * args.updates / med(runs, "train_s")
        sample = args.samples / med(runs, "sample_s")
        if label.startswith("Ray Train, 1"):
            base = train
        speed = f"{train / base:.2f}x" if base and label.startswith("Ray") else ""
        startup = f"{med(runs, 'startup_s'):.1f}" if "startup_s" in runs[0] else ""
        sync = f"{med(runs, 'sync_ms'):.1f}"
        lines.append(f"| {label} | {train:,.0f} | {sample:,.0f} | {speed} | {sync} | {startup} |")
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor())
    notes = [
        (f"Machine: {os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.release()}; "
         f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (shared machine)."),
        f"Versions: Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}.",
        (f"Workload: `{args.recipe}`, global batch {args.batch}, {args.num_steps} DDIM steps, "
         f"{args.updates} timed updates, {args.samples} samples; median of {args.repeats} fit(s)."),
        (f"All-reduce of the {allreduce['tensors']} gradient tensors between 2 gloo processes on 127.0.0.1: "
         f"{allreduce['per_tensor']:.2f} ms per update one tensor at a time (as `sync_gradients`), "
         f"{allreduce['flat']:.2f} ms as one concatenated tensor."),
        "Command: `.venv/bin/python bench/ray_scaling.py " + " ".join(sys.argv[1:]) + "`",
    ]
    table = "\n".join(lines + [""] + notes) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
