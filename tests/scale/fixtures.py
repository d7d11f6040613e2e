"""Components the scale-out tests name in recipes (the workers import them by path).

`RowBankCTRL` is CTRL whose random draws come from a *row bank*: for update `s` a generator seeded
by `(bank_seed, s)` draws the labels, base conditions, x_T and per-step noises of the whole global
batch `G = batch_size x world_size` at once, and process `r` takes rows `[r B, (r + 1) B)`. So
2 processes x batch B see exactly the rows 1 process x batch 2B sees, and the updates must agree
up to float reduction order. Everything else (the CTRL loss, backward, `sync_gradients`, clipping,
AdamW) is the unchanged `rldiff.algorithms.ctrl.CTRL` code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import Tensor

from rldiff.algorithms.common import expand_cond, index_cond
from rldiff.algorithms.ctrl import CTRL


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RowBankCTRL(CTRL):
    """CTRL drawing its batch rows from a bank shared by all data-parallel processes.

    Args:
        domain, accelerator, **kwargs: as for `CTRL` (`batch_size` is the per-process batch).
        bank_seed: seeds the bank of update `s` with `bank_seed * 1_000_003 + s`.
        leave_embedding_unsynced: reproduce the CTRL reference code's bug (the y-embedding's
            gradient is not averaged over processes), to show the equivalence test catches it.
        dump_dir: when given, every process writes its trainable parameters, the gradients the
            update applied (`grad/<name>`: averaged over processes and clipped) and its local loss
            after each update to `dump_dir/rank{r}_step{s}.safetensors`.
    """

    def __init__(self, domain: Any, accelerator: Any = None, *, bank_seed: int = 1234,
                 dump_dir: str | None = None, leave_embedding_unsynced: bool = False, **kwargs: Any) -> None:
        super().__init__(domain, accelerator, **kwargs)
        self.bank_seed, self.dump_dir = bank_seed, dump_dir
        if leave_embedding_unsynced:  # the CTRL reference code's bug: only the denoiser is synced
            self.params = list(self.adapter_params)
        self._bank: dict[str, Any] | None = None
        policy = self.policy
        initial_state, step = policy.initial_state, policy.step

        def banked_initial_state(batch_size: int, shape: tuple[int, ...], generator=None, device="cpu") -> Tensor:
            if self._bank is None:
                return initial_state(batch_size, shape, generator=generator, device=device)
            return self._bank["x_T"].to(device)

        def banked_step(x_t: Tensor, i: int, cond: Any = None, **kw: Any):
            if self._bank is not None and kw.get("prev") is None and not kw.get("reference"):
                kw["noise"] = self._bank["noise"][i].to(x_t.device, x_t.dtype)
            return step(x_t, i, cond, **kw)

        policy.initial_state, policy.step = banked_initial_state, banked_step
        self._grads: dict[str, Tensor] = {}
        names = {id(p): f"{m}.{n}" for m, mod in self.modules().items() for n, p in mod.named_parameters()}
        optimizer_step = self.optimizer.step

        def recording_step(*args: Any, **kw: Any):  # the gradients the update applies (synced, clipped)
            self._grads = {names[id(p)]: p.grad.detach().cpu().clone() for group in self.optimizer.param_groups
                           for p in group["params"] if p.grad is not None}
            return optimizer_step(*args, **kw)

        self.optimizer.step = recording_step

    def sample_labels(self, n: int, generator: torch.Generator) -> Tensor:
        if self._bank is None:
            return super().sample_labels(n, generator)
        return self._bank["y"].to(self.device)

    def make_cond(self, y: Tensor, generator: torch.Generator) -> dict[str, Any]:
        if self._bank is None:
            return super().make_cond(y, generator)
        return expand_cond(self._bank["cond"], y=y, class_emb=self.embedding(y))

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        rank, world = _rank_world()
        b = self.batch_size
        rows = torch.arange(rank * b, (rank + 1) * b)
        g = torch.Generator().manual_seed(self.bank_seed * 1_000_003 + step)
        total = b * world  # the global batch
        shape = tuple(self.domain.sample_shape)
        y = torch.randint(0, self.num_labels, (total,), generator=g)
        cond = self.domain.sample_cond(total, g)
        x_T = torch.randn((total, *shape), generator=g)
        noise = torch.randn((self.policy.num_steps, total, *shape), generator=g)
        self._bank = {"y": y[rows], "cond": index_cond(cond, rows), "x_T": x_T[rows], "noise": noise[:, rows]}
        try:
            metrics = super().update(step, generator)
        finally:
            self._bank = None
        if self.dump_dir is not None:
            tensors = {f"{m}.{n}": p.detach().cpu().contiguous() for m, mod in self.modules().items()
                       for n, p in mod.named_parameters() if p.requires_grad}
            tensors.update({f"grad/{k}": v.contiguous() for k, v in self._grads.items()})
            Path(self.dump_dir).mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(Path(self.dump_dir) / f"rank{rank}_step{step}.safetensors"),
                      metadata={"world_size": str(world), "loss": repr(metrics["loss"])})
        return metrics


def bump(x0: Tensor, cond: Any = None, center: float = 1.5) -> Tensor:
    """A black-box toy reward: -(x - center)^2 summed over dimensions ([B])."""
    return -((x0.float() - center) ** 2).flatten(1).sum(1)


class LabelledBump(torch.nn.Module):
    """A stateful reward module (a small random MLP plus the label in `cond['y']`), to serve from actors."""

    def __init__(self, dim: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, x0: Tensor, cond: Any = None) -> Tensor:
        out = self.net(x0.float().flatten(1)).squeeze(-1)
        if isinstance(cond, dict) and "y" in cond:
            out = out + cond["y"].float()
        return out
