"""Which TCP sockets a set of processes holds, read from /proc (works across network namespaces).

`/proc/<pid>/net/tcp{,6}` lists the sockets of <pid>'s network namespace; the socket inodes in
`/proc/<pid>/fd` say which process owns which. `SocketWatch` samples them in a background thread
while a Ray run goes on, so the tests can check every address Ray and gloo used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Self

ESTABLISHED, LISTEN = "01", "0A"


@dataclasses.dataclass(frozen=True)
class Socket:
    pid: int
    name: str  # /proc/<pid>/comm, e.g. "ray::RayTrainWo"
    state: str  # "ESTABLISHED" | "LISTEN" | other
    local: tuple[str, int]
    remote: tuple[str, int]


def _ip(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    ip = ipaddress.IPv6Address(words)
    return str(ip.ipv4_mapped or ip)


def _table(netns_pid: int) -> dict[int, tuple[str, tuple[str, int], tuple[str, int]]]:
    """inode -> (state, local, remote) for every TCP socket in `netns_pid`'s namespace."""
    out = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{netns_pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            (la, lp), (ra, rp), state, inode = f[1].split(":"), f[2].split(":"), f[3], int(f[9])
            label = {ESTABLISHED: "ESTABLISHED", LISTEN: "LISTEN"}.get(state, state)
            out[inode] = (label, (_ip(la), int(lp, 16)), (_ip(ra), int(rp, 16)))
    return out


def sockets_of(pids: Iterable[int]) -> list[Socket]:
    """The TCP sockets the processes `pids` hold (each process's own network namespace)."""
    found, tables = [], {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            netns = os.stat(f"/proc/{pid}/ns/net").st_ino
            inodes = set()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
            if inodes and netns not in tables:  # one read of the tables per namespace
                tables[netns] = _table(pid)
        except OSError:  # the process ended meanwhile
            continue
        table = tables.get(netns, {})
        found += [Socket(pid, name, *table[i]) for i in inodes if i in table]
    return found


def is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


class SocketWatch:
    """Sample the sockets of `pids()` every `interval` seconds until stopped (a context manager)."""

    def __init__(self, pids: Callable[[], Iterable[int]], interval: float = 1.0) -> None:
        self.pids, self.interval = pids, interval
        self.seen: set[Socket] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):  # a process exiting meanwhile: sample again
                self.seen.update(sockets_of(self.pids()))
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def off_loopback(self) -> list[Socket]:
        """Sockets bound to, or connected to, an address outside 127.0.0.0/8 and ::1."""
        bad = {}
        for s in self.seen:  # a process's title changes (ray::IDLE, ray::RayTrainWorker...): key by pid
            if (s.state == "LISTEN" and not is_loopback(s.local[0])) or (
                s.state == "ESTABLISHED" and not (is_loopback(s.local[0]) and is_loopback(s.remote[0]))
            ):
                bad.setdefault((s.pid, s.state, s.local, s.remote), s)
        return list(bad.values())

    def names(self, pid: int) -> set[str]:
        """Every title process `pid` was seen with."""
        return {s.name for s in self.seen if s.pid == pid}

    def clients_of(self, port: int) -> set[int]:
        """Processes seen with an established connection to 127.0.0.1:`port`."""
        return {s.pid for s in self.seen if s.state == "ESTABLISHED" and s.remote == ("127.0.0.1", port)}

    def links_between(self, prefix: str) -> list[tuple[Socket, Socket]]:
        """Established connections whose two ends belong to two different processes named `prefix*`."""
        ends = {(s.local, s.remote): s for s in self.seen if s.state == "ESTABLISHED" and s.name.startswith(prefix)}
        return [(a, ends[(a.remote, a.local)]) for (loc, rem), a in ends.items()
                if (rem, loc) in ends and ends[(rem, loc)].pid != a.pid]
