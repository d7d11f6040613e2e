"""Rewards served by a pool of Ray actors: heavy reward models live in their own processes (or GPUs),
the training workers send them batches of samples, and the numbers are the ones the same reward
gives in-process.

In a recipe, wrap any reward that `rldiff.core.reward.load_reward` can load (a function
`f(x0, cond) -> Tensor[B]` or a class whose instances are such callables) by import path:

    domain:
      _component_: domains.images.sd15.build
      reward:
        _component_: rldiff.scale.reward_actors.RewardActorPool
        reward: domains.images.rewards.aesthetic_score   # import path, built inside each actor
        kwargs: {clip_path: models/clip, head_path: models/head.pth}
        num_actors: 2          # actors in the pool; requests go round-robin
        num_gpus: 1            # GPUs per actor (0 = CPU)
        batch_size: 32         # samples per request

The reward is built inside each actor (never in the training process) from its import path and
`kwargs` (plain values: the pool cannot take an already built object). Requests are split into
chunks of `batch_size` rows, sent to the actors round-robin and gathered in order; each chunk
carries its rows of the condition dict (tensors and lists are sliced, other values passed as they
are). Tensors travel through Ray's object store on the CPU; an actor with a GPU moves them there.

A pool's reward is not differentiable (gradients do not cross process boundaries): use it with
DDPO / CTRL Algorithm 1 (policy gradients), not with direct backprop.

Where Ray is not running yet, the first call connects as `rldiff.scale.cluster.connect(address)`
does (address None = a local Ray on 127.0.0.1). Inside a Ray Train worker the pool's actors join
the same cluster; each training worker then has its own pool.
"""

from __future__ import annotations

import contextlib
import os
import sys
import weakref
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor

from rldiff.core.reward import check_reward


class RewardActorError(RuntimeError):
    """The pool's actors could not be placed or built, or a request failed."""


class _RewardServer:
    """One actor of the pool: builds the reward once, scores batches (no gradients)."""

    def __init__(self, reward: str, kwargs: dict[str, Any], sys_path: list[str], cwd: str) -> None:
        for entry in reversed(sys_path):
            if entry and entry not in sys.path and os.path.isdir(entry):
                sys.path.insert(0, entry)
        if os.path.isdir(cwd):
            os.chdir(cwd)
        from rldiff.core.reward import load_reward

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.reward = load_reward(reward, **kwargs)
        inner = getattr(self.reward, "fn", self.reward)
        if isinstance(inner, torch.nn.Module):
            inner.to(self.device).eval()
        elif isinstance(self.reward, torch.nn.Module):
            self.reward.to(self.device).eval()

    def info(self) -> dict[str, Any]:
        import ray

        return {
            "pid": os.getpid(),
            "node": ray.util.get_node_ip_address(),
            "device": str(self.device),
            "resources": ray.get_runtime_context().get_assigned_resources(),
        }

    def score(self, x0: Tensor, cond: Any) -> tuple[Tensor, int]:
        with torch.no_grad():
            out = self.reward(x0.to(self.device), _to_device(cond, self.device))
        return torch.as_tensor(out).detach().cpu(), os.getpid()


class RewardActorPool:
    """A reward computed by `num_actors` Ray actors; same call and numbers as the reward itself.

    Args:
        reward: import path of the reward: a function `f(x0, cond) -> Tensor[B]` (or `f(x0)`) or a
            class whose instances are such callables (see `rldiff.core.reward.load_reward`).
        kwargs: arguments for it (bound to a function, passed to a class), plain values only.
        num_actors: actors in the pool, >= 1.
        num_cpus: CPUs each actor reserves.
        num_gpus: GPUs each actor reserves (fractions share a GPU; 0 = CPU only).
        batch_size: rows per request; a call with B rows makes ceil(B / batch_size) requests.
        address: the Ray cluster to connect to when this process is not connected yet
            (None = a local Ray, as `rldiff.scale.cluster.connect`).
        ready_timeout_s: how long to wait for the actors to be placed and built.
        request_timeout_s: how long one call may take.

    Attributes:
        differentiable: always False.
        served_by: after a call, the actor process id that computed each request (in order).
    """

    differentiable = False

    def __init__(
        self,
        reward: str,
        kwargs: dict[str, Any] | None = None,
        num_actors: Annotated[int, Field(ge=1)] = 1,
        num_cpus: Annotated[float, Field(ge=0)] = 1.0,
        num_gpus: Annotated[float, Field(ge=0)] = 0.0,
        batch_size: Annotated[int, Field(ge=1)] = 64,
        address: str | None = None,
        ready_timeout_s: Annotated[float, Field(gt=0)] = 300.0,
        request_timeout_s: Annotated[float, Field(gt=0)] = 600.0,
    ) -> None:
        self.reward, self.kwargs = reward, dict(kwargs or {})
        self.num_actors, self.num_cpus, self.num_gpus = num_actors, num_cpus, num_gpus
        self.batch_size, self.address = batch_size, address
        self.ready_timeout_s, self.request_timeout_s = ready_timeout_s, request_timeout_s
        self.name = reward
        self.served_by: list[int] = []
        self._actors: list[Any] = []

    def __repr__(self) -> str:
        return (
            f"RewardActorPool({self.reward}, num_actors={self.num_actors}, num_gpus={self.num_gpus}, "
            f"batch_size={self.batch_size})"
        )

    # ------------------------------------------------------------------ actors
    def start(self) -> list[dict[str, Any]]:
        """Create the actors (if not yet) and wait until each has built the reward.

        Returns:
            Per actor: its process id, node address, device and assigned resources.

        Raises:
            RewardActorError: the actors could not be placed within `ready_timeout_s` (e.g. more
                GPUs asked for than the cluster has) or building the reward failed.
        """
        import ray

        if not ray.is_initialized():
            from rldiff.scale.cluster import connect

            connect(self.address)
        if not self._actors:
            server = ray.remote(_RewardServer).options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus
            )
            self._actors = [
                server.remote(self.reward, self.kwargs, list(sys.path), os.getcwd())
                for _ in range(self.num_actors)
            ]
            weakref.finalize(self, _kill_actors, list(self._actors))
        try:
            return ray.get([a.info.remote() for a in self._actors], timeout=self.ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            available = ray.available_resources()
            self.close()
            raise RewardActorError(
                f"the {self.num_actors} reward actor(s) for {self.reward} (each {self.num_cpus} CPU, "
                f"{self.num_gpus} GPU) could not be placed within {self.ready_timeout_s:g} s; the "
                f"cluster has {available} free. Lower num_actors / num_gpus / num_cpus or add nodes."
            ) from None
        except ray.exceptions.RayActorError as err:
            self.close()
            raise RewardActorError(
                f"building the reward {self.reward} in an actor failed: {err}"
            ) from err

    def close(self) -> None:
        """Kill the actors (a later call starts new ones)."""
        _kill_actors(self._actors)
        self._actors = []

    # ------------------------------------------------------------------ calls
    def __call__(self, x0: Tensor, cond: Any = None) -> Tensor:
        """Score `x0` [B, ...] with condition `cond` on the actors: a Tensor [B] on x0's device."""
        import ray

        if not self._actors:
            self.start()
        x = x0.detach().cpu()
        cpu_cond = _to_device(cond, torch.device("cpu"))
        n = x.shape[0]
        futures = []
        for k, start in enumerate(range(0, n, self.batch_size)):
            rows = torch.arange(start, min(start + self.batch_size, n))
            actor = self._actors[k % len(self._actors)]
            futures.append(actor.score.remote(x[rows], _rows(cpu_cond, rows, n)))
        try:
            results = ray.get(futures, timeout=self.request_timeout_s)
        except ray.exceptions.RayTaskError as err:
            raise RewardActorError(f"reward {self.reward} failed in an actor: {err}") from err
        self.served_by = [pid for _, pid in results]
        values = torch.cat([r.reshape(-1) for r, _ in results]) if results else torch.zeros(0)
        return check_reward(values.to(x0.device), n, self.reward)

    def __getstate__(self) -> dict[str, Any]:  # actor handles belong to the process that made them
        state = dict(self.__dict__)
        state["_actors"] = []
        return state


def _kill_actors(actors: list[Any]) -> None:
    if not actors:
        return
    import ray

    with contextlib.suppress(Exception):  # at interpreter shutdown Ray may be gone already
        if ray.is_initialized():
            for actor in actors:
                ray.kill(actor)


def _to_device(cond: Any, device: torch.device) -> Any:
    if isinstance(cond, Tensor):
        return cond.to(device)
    if isinstance(cond, dict):
        return {k: _to_device(v, device) for k, v in cond.items()}
    return cond


def _rows(cond: Any, rows: Tensor, n: int) -> Any:
    """Rows `rows` of every per-sample entry (first dimension / length n) of a condition."""
    if isinstance(cond, Tensor):
        return cond[rows] if cond.ndim > 0 and cond.shape[0] == n else cond
    if isinstance(cond, dict):
        return {k: _rows(v, rows, n) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)) and len(cond) == n:
        return [cond[int(i)] for i in rows]
    return cond
