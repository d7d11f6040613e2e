"""Ray for the scale-out tests: one two-node cluster on 127.0.0.1 shared by the whole session, and
the Ray runs the tests check, started together in the background (`scale_runs`).

The cluster lives in a network namespace this fixture makes (`unshare --net --uts`): its only
interface is `lo` and its host name is `localhost`, so nothing it does can leave the machine and
every Ray address is 127.0.0.1. Inside it:

    ray start --head --node-ip-address=127.0.0.1 --port=6379 --num-cpus=4 ...   (head node)
    ray start --address=127.0.0.1:6379 --node-ip-address=127.0.0.1 --num-cpus=2   (second node)

each with its own temp folder, token authentication on (`RAY_AUTH_MODE=token` with a token file
of the test's own, `RAY_AUTH_TOKEN_PATH`), usage stats off. Drivers (`rldiff launch`, small
scripts) run in the namespace through `nsenter`. Teardown kills every process in the namespace by
pid. A cluster that cannot start fails the tests that use it; nothing is skipped.

A second namespace is not needed for `rldiff run ... scale.num_workers=2` (a local Ray): it runs in
the host namespace, where `rldiff.scale` keeps Ray on 127.0.0.1 by itself (`test_cli_ray.py`
checks every socket it opens).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PORT = 6379


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: scripts/test.sh runs `-m "not scale"`, then `-m scale`
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder `scale` (Ray: its background runs load both cores)."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.scale)


def ray_env(token_path: Path, **extra: str) -> dict[str, str]:
    """The environment of every Ray process and driver in these tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "GLOO_"))}
    env.update(
        # Ray Train: poll workers (and so take reports, notice dead workers) every 0.5 s, and give
        # worker groups time to start on a busy 2-core machine
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5",
        RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="300",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DEDUP_LOGS="0",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def ray_token(tmp_path_factory) -> Path:
    """A token file of this test session's own (never ~/.ray/auth_token)."""
    path = tmp_path_factory.mktemp("ray_auth") / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


@dataclasses.dataclass
class Cluster:
    """The session's two-node Ray cluster inside its own network namespace."""

    holder: subprocess.Popen  # `sleep` holding the namespace; nsenter targets its pid
    root: Path  # temp folders of both nodes
    token: Path
    address: str = f"127.0.0.1:{PORT}"
    nodes: list[dict] = dataclasses.field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return ray_env(self.token, **extra)

    def netns_inode(self) -> int:
        return os.stat(f"/proc/{self.holder.pid}/ns/net").st_ino

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the cluster's network and UTS namespaces."""
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-u", *argv]

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(self.command(argv), env=env or self.env(), cwd=REPO, capture_output=True,
                             text=True, timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out

    def popen(self, argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        kw = {"cwd": REPO, "text": True, **kw}
        return subprocess.Popen(self.command(argv), env=env or self.env(), **kw)

    def pids(self) -> list[int]:
        """Every process in the cluster's network namespace except the holder."""
        inode, out = self.netns_inode(), []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.holder.pid:
                try:
                    if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                        out.append(int(entry))
                except OSError:
                    continue
        return out

    def worker_pids(self, cwd: Path, prefix: str = "ray::RayTrainWo") -> list[int]:
        """Ray Train workers of the run whose driver ran in `cwd` (workers adopt the driver's cwd)."""
        found = []
        for pid in self.pids():
            try:
                title = Path(f"/proc/{pid}/comm").read_text()
                if title.startswith(prefix) and os.readlink(f"/proc/{pid}/cwd") == str(cwd):
                    found.append(pid)
            except OSError:
                continue
        return found


def _kill_all(cluster: Cluster) -> None:
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        pids = cluster.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while cluster.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not cluster.pids():
            break


_NODES_SCRIPT = """
import json, ray
ray.init(address="{address}", logging_level="ERROR")
nodes = [dict(ip=n["NodeManagerAddress"], alive=n["Alive"], cpus=n["Resources"].get("CPU", 0)) for n in ray.nodes()]
print("NODES " + json.dumps(nodes))
"""



def start_cluster(token: Path):
    """Start the two-node loopback cluster (a generator: yields it, then stops everything in it)."""
    root = Path(tempfile.mkdtemp(prefix="rldiff-rt-"))  # short: Ray's unix socket paths must fit in 107 bytes
    holder = subprocess.Popen(
        ["unshare", "--net", "--uts", "sh", "-c", "ip link set lo up && hostname localhost && exec sleep 3600"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    c = Cluster(holder=holder, root=root, token=token)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the holder runs `sleep` inside the namespace
            if holder.poll() is not None:
                raise RuntimeError(f"could not create a network namespace: {holder.stdout.read()}")
            if Path(f"/proc/{holder.pid}/comm").read_text().strip() == "sleep":
                break
            time.sleep(0.05)
        links = c.run(["ip", "-o", "link"], timeout=10).stdout.strip().splitlines()
        assert [line.split(":")[1].strip() for line in links] == ["lo"], links
        ray = str(VENV_BIN / "ray")
        # the head: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes it take and bind 127.0.0.1 as given
        c.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}", "--num-cpus=4",
               f"--temp-dir={root / 'head'}", "--include-dashboard=false", "--disable-usage-stats"],
              timeout=120, env=c.env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", GLOO_SOCKET_IFNAME="lo"))
        # the second node (that variable would forbid joining): its address resolves to 127.0.0.1
        # through the host name `localhost`, the namespace having no route anywhere else
        c.run([ray, "start", f"--address={c.address}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
               f"--temp-dir={root / 'node2'}", "--disable-usage-stats"],
              timeout=120, env=c.env(GLOO_SOCKET_IFNAME="lo"))
        deadline = time.monotonic() + 60
        while True:
            out = c.run([sys.executable, "-c", _NODES_SCRIPT.format(address=c.address)], timeout=60, check=False)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("NODES ")), None)
            c.nodes = json.loads(line[6:]) if line else []
            if sum(n["alive"] for n in c.nodes) == 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert sum(n["alive"] for n in c.nodes) == 2, f"the second node did not join: {c.nodes}\n{out.stderr[-2000:]}"
        yield c
    finally:
        _kill_all(c)
        holder.kill()
        holder.wait()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------ the runs
#: toy/ctrl as the CLI run and the kill-a-worker run both train it (the second must reproduce the
#: first bit for bit): 40 updates of 2 x 64 trajectories over 50 steps, a checkpoint every 8.
TOY_CTRL = ["domain.num_steps=50", "algorithm.batch_size=128", "train.steps=40", "train.log_every=1",
            "train.checkpoint_every=8", "train.keep_checkpoints=2", "train.eval_samples=256", "seed=0"]
#: CTRL on the toy drawing its rows from a bank (tests.scale.fixtures.RowBankCTRL), 3 updates.
ROW_BANK = ["algorithm._component_=tests.scale.fixtures.RowBankCTRL", "algorithm.batch_size=64",
            "domain.num_steps=10", "train.steps=3", "train.eval_samples=0", "train.log_every=1",
            "train.checkpoint_every=0", "logging.tensorboard=false"]
KILL_AFTER = 8  # kill a worker once this many updates are checkpointed


@dataclasses.dataclass
class Job:
    """A command running in the background; `result()` waits for it and returns (status, output)."""

    proc: subprocess.Popen
    log: Path
    cwd: Path
    run_dir: Path
    on_exit: list = dataclasses.field(default_factory=list)  # callables run once it has ended
    info: dict = dataclasses.field(default_factory=dict)

    def result(self, timeout: float) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                _kill_tree(self.proc.pid)
                self.proc.wait()
            while self.on_exit:
                self.on_exit.pop()()
        return self.proc.returncode, self.log.read_text()


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _kill_tree(pid: int) -> None:
    for child in reversed(_descendants(pid)):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _committed_step(run_dir: Path) -> int:
    from rldiff.train.checkpoint import latest_checkpoint, read_trainer_state

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    return read_trainer_state(ckpt).step if ckpt is not None else 0


def _killer(cluster: Cluster, job: Job, steps: int) -> None:
    """Kill one of the job's two workers once `KILL_AFTER` updates are committed (before the end)."""
    while job.proc.poll() is None:
        done = _committed_step(job.run_dir)
        workers = cluster.worker_pids(job.cwd)
        if KILL_AFTER <= done < steps and len(workers) == 2:
            import psutil

            raylets = {psutil.Process(w).ppid() for w in workers}  # a worker's parent: its node's raylet
            os.kill(workers[0], signal.SIGKILL)
            job.info.update(killed=workers[0], killed_at=done, raylets=raylets)
            return
        time.sleep(0.05)


@dataclasses.dataclass
class ScaleRuns:
    local: Job  # rldiff run toy/ctrl scale.num_workers=2 (a local Ray, host namespace)
    cluster: Cluster
    watch: object  # SocketWatch over every process in the cluster's namespace
    equivalence: Job  # rldiff launch, RowBankCTRL, 2 workers on the 2 nodes
    fault: Job  # rldiff launch toy/ctrl with max_failures=1; a worker gets killed
    rewards: Job  # tests/scale/_reward_driver.py


@pytest.fixture(scope="session")
def scale_runs(ray_token, tmp_path_factory) -> ScaleRuns:
    """Start every Ray run of the scale tests at once (they overlap on the 2 cores) and stop them
    and the cluster at the end. The tests wait for the run they check."""
    from tests.scale._net import SocketWatch

    root = tmp_path_factory.mktemp("scale_runs")
    rldiff = str(VENV_BIN / "rldiff")

    def job(name: str, argv: list[str], popen) -> Job:
        cwd = root / name
        cwd.mkdir()
        log = cwd / "output.log"
        with open(log, "w") as f:
            proc = popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        return Job(proc, log, cwd, cwd / "run")

    jobs: list[Job] = []
    local = job("local", [rldiff, "run", "toy/ctrl", "scale.num_workers=2", *TOY_CTRL, "output_dir=run"],
                lambda argv, **kw: subprocess.Popen(argv, env=ray_env(ray_token), text=True, **kw))
    jobs.append(local)
    local_watch = SocketWatch(lambda: _descendants(local.proc.pid)).__enter__()
    local.info["watch"] = local_watch
    local.on_exit.append(lambda: local_watch.__exit__(None, None, None))
    clusters = start_cluster(ray_token)
    try:
        cluster = next(clusters)
        watch = SocketWatch(cluster.pids).__enter__()

        def in_cluster(argv, **kw):
            return cluster.popen(argv, **kw)

        launch = [rldiff, "launch", "toy/ctrl", "--address", cluster.address, "--workers", "2",
                  "scale.placement_strategy=STRICT_SPREAD"]
        dumps = root / "equivalence" / "dumps"
        jobs.append(job("equivalence", [*launch, *ROW_BANK, f"algorithm.dump_dir={dumps}", "output_dir=run",
                                        "--no-progress"], in_cluster))
        jobs.append(job("fault", [*launch, "--max-failures", "1", *TOY_CTRL, "output_dir=run"], in_cluster))
        threading.Thread(target=_killer, args=(cluster, jobs[-1], 40), daemon=True).start()
        jobs.append(job("rewards", [sys.executable, "-m", "tests.scale._reward_driver", cluster.address, "."],
                        in_cluster))
        yield ScaleRuns(local, cluster, watch, *jobs[1:])
        watch.__exit__(None, None, None)
    finally:
        for j in jobs:
            if j.proc.poll() is None:
                _kill_tree(j.proc.pid)
        local_watch.__exit__(None, None, None)
        for _ in clusters:  # runs start_cluster's cleanup
            pass
