"""Connecting to Ray: a local single-machine Ray bound to 127.0.0.1, or an existing cluster.

Ray reads part of its configuration from the environment when it is *imported*, so everything
here sets the environment first and imports `ray` inside functions:

- `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` for a local Ray or a cluster on a loopback address: Ray then
  takes 127.0.0.1 as the node address, binds its servers there and hands it to the torch process
  group as MASTER_ADDR (by default it uses the host's interface address for all three).
- `GLOO_SOCKET_IFNAME=lo` for a local Ray on Linux, so gloo's own connections between workers use
  the loopback interface whatever the host name resolves to.
- `RAY_USAGE_STATS_ENABLED=0`: no usage reporting.
- `RAY_AUTH_MODE=token` unless set: token authentication stays on. A local Ray uses (and, if
  missing, writes) Ray's token file (`~/.ray/auth_token`, or `RAY_AUTH_TOKEN_PATH` /
  `RAY_AUTH_TOKEN`); a client of an existing cluster needs that cluster's token the same way.
  `RAY_AUTH_MODE=disabled` connects to a cluster started without authentication.

A local Ray gets its own temporary folder (`tempfile.mkdtemp(prefix="rldiff-ray-")`), removed
after a successful run and kept (its `session_*/logs`) after a failure.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayStartError(RuntimeError):
    """Ray could not be started or reached, or it did not stay on loopback when it had to."""


@dataclasses.dataclass
class RayConnection:
    """How this process is attached to Ray (`connect`'s result; pass it to `disconnect`).

    Attributes:
        address: What was asked for (None = a local Ray).
        started_local: This process started a local Ray (and `disconnect` stops it).
        temp_dir: The local Ray's temporary folder (None when connected to an existing cluster).
        already_connected: Ray was initialised before `connect` (e.g. inside a Ray worker): nothing
            is started or stopped.
        dashboard_url: The cluster's dashboard ("" when it runs none, None when unknown). Ray's
            state API, which Ray Train's placement-group cleaner polls, is served by it.
    """

    address: str | None
    started_local: bool = False
    temp_dir: Path | None = None
    already_connected: bool = False
    dashboard_url: str | None = None


def address_host(address: str) -> str | None:
    """The host of a Ray address (`host:port`, `ray://host:port`, `[::1]:port`); None for 'auto'."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1]
    if rest.startswith("["):  # [ipv6]:port
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def is_loopback(host: str | None) -> bool:
    """True for 'localhost' and addresses in 127.0.0.0/8 or ::1 (and IPv4-mapped 127.x)."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def prepare_environment(address: str | None) -> None:
    """Set the environment variables Ray reads at import and start-up (see the module docstring).

    Call before `import ray`. Values already in the environment win.

    Args:
        address: The Ray address that will be used (None = start a local Ray).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    local = address is None or address == "local"
    if local or is_loopback(address_host(address)):
        os.environ.setdefault(LOOPBACK_ENV, "0")
    if local and sys.platform.startswith("linux") and Path("/sys/class/net/lo").exists():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def connect(
    address: str | None = None,
    *,
    dashboard: bool = False,
    num_cpus: float | None = None,
    temp_dir: str | Path | None = None,
) -> RayConnection:
    """Start a local Ray on 127.0.0.1 or connect to an existing cluster.

    Args:
        address: None (or 'local') = start a local Ray in its own temporary folder; 'auto' = the
            running cluster named by RAY_ADDRESS or Ray's temp folder; 'host:port' = a cluster's
            GCS address; 'ray://host:port' = Ray Client. An unset `address` with RAY_ADDRESS in
            the environment connects to RAY_ADDRESS, as `ray.init()` does.
        dashboard: Start Ray's dashboard, bound to 127.0.0.1 (local Ray only; needs the
            dashboard's packages: `pip install "ray[default]"`).
        num_cpus: CPUs of a local Ray (default: all of this machine's).
        temp_dir: The local Ray's temporary folder (default: a new `rldiff-ray-*` folder).

    Returns:
        The connection, for `disconnect`.

    Raises:
        RayStartError: Ray could not start or connect, or a local Ray did not bind to loopback.
    """
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    local = address is None or address == "local"
    prepare_environment(address)
    import ray

    if ray.is_initialized():
        return RayConnection(address, already_connected=True)
    if local:
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:
            raise RayStartError(
                f"ray was imported before rldiff.scale set {LOOPBACK_ENV}=0, so a local Ray would "
                f"bind to this host's network address; set {LOOPBACK_ENV}=0 in the environment "
                "(or import rldiff.scale before ray)"
            )
        folder = Path(temp_dir) if temp_dir else Path(tempfile.mkdtemp(prefix="rldiff-ray-"))
        try:
            context = ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                _temp_dir=str(folder.resolve()),
                logging_level=logging.WARNING,
            )
        except Exception as err:
            raise RayStartError(
                f"could not start a local Ray (temp folder {folder}, logs in its session_*/logs): "
                f"{type(err).__name__}: {err}"
            ) from err
        outside = [
            n["NodeManagerAddress"] for n in ray.nodes() if not is_loopback(n["NodeManagerAddress"])
        ]
        if outside:
            ray.shutdown()
            raise RayStartError(f"the local Ray bound to {outside}, not to 127.0.0.1")
        return RayConnection(
            None, started_local=True, temp_dir=folder, dashboard_url=context.dashboard_url or ""
        )
    try:
        context = ray.init(address=address, logging_level=logging.WARNING)
    except Exception as err:
        hint = ""
        if "uthentication" in str(err):
            hint = (
                " (the cluster uses token authentication: give this process its token through "
                "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, with RAY_AUTH_MODE=token)"
            )
        raise RayStartError(
            f"could not connect to the Ray cluster at {address!r}: {type(err).__name__}: {err}{hint}"
        ) from err
    return RayConnection(address, dashboard_url=context.dashboard_url or "")


def disconnect(connection: RayConnection, *, keep_temp_dir: bool = False) -> None:
    """Undo `connect`: disconnect from a cluster, or stop the local Ray this process started.

    Args:
        connection: What `connect` returned.
        keep_temp_dir: Keep a local Ray's temporary folder (its logs), e.g. after a failure.
    """
    if connection.already_connected:
        return
    import ray

    ray.shutdown()
    if connection.temp_dir is not None and not keep_temp_dir:
        shutil.rmtree(connection.temp_dir, ignore_errors=True)
