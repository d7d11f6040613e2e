"""Rewards: one protocol for black-box and differentiable rewards.

A reward is any callable `reward(x0, cond) -> Tensor[B]`. Its `differentiable` attribute (default
False for plain functions) says whether gradients may flow from it into x0; direct-backprop
algorithms refuse non-differentiable rewards, policy-gradient algorithms take both.

A user's reward is a plain function or class named in a recipe by import path:

    reward:
      _component_: my_pkg.rewards.brightness   # def brightness(x0, cond): return x0.mean((1, 2, 3))

or, to pass the *function itself* (not call it), through `load_reward`:

    reward:
      _component_: rldiff.core.reward.load_reward
      fn: my_pkg.rewards.brightness   # def brightness(x0, cond) -> Tensor[B]
      differentiable: true

or wrapped in Python with `as_reward(fn, differentiable=True)`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Reward(Protocol):
    """`reward(x0, cond) -> Tensor[B]`, with a `differentiable` flag."""

    differentiable: bool

    def __call__(self, x0: Tensor, cond: Any = None) -> Tensor: ...


class FunctionReward:
    """Wrap a plain function `fn(x0, cond) -> Tensor[B]` (or `fn(x0)`) as a Reward."""

    def __init__(self, fn: Callable[..., Tensor], differentiable: bool = False, name: str | None = None) -> None:
        self.fn = fn
        self.differentiable = differentiable
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        try:
            n_params = len(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            n_params = 2
        self._takes_cond = n_params >= 2

    def __call__(self, x0: Tensor, cond: Any = None) -> Tensor:
        out = self.fn(x0, cond) if self._takes_cond else self.fn(x0)
        return check_reward(out, x0.shape[0], self.name)

    def __repr__(self) -> str:
        return f"FunctionReward({self.name}, differentiable={self.differentiable})"


def as_reward(fn: Callable[..., Tensor] | Reward, differentiable: bool | None = None) -> Reward:
    """Turn a function, a class instance or an nn.Module into a Reward.

    Args:
        fn: the reward; an object with a `differentiable` attribute keeps it.
        differentiable: override the flag (default: the object's own flag, else False).
    """
    if differentiable is None:
        differentiable = bool(getattr(fn, "differentiable", False))
    if isinstance(fn, Reward) and differentiable == fn.differentiable:
        return fn
    return FunctionReward(fn, differentiable=differentiable)


def load_reward(fn: str, differentiable: bool = False, **kwargs: Any) -> Reward:
    """A reward named by import path, for recipes.

    Args:
        fn: import path of a function `f(x0, cond) -> Tensor[B]` (or `f(x0)`), or of a class whose
            instances are such callables.
        differentiable: whether gradients may flow through it into x0 (functions only; a class
            instance keeps its own `differentiable` attribute).
        **kwargs: bound to the function (functools.partial) or passed to the class constructor.

    Returns:
        A Reward.
    """
    from rldiff.config.instantiate import resolve_import_path

    obj = resolve_import_path(fn)
    if inspect.isclass(obj):
        return as_reward(obj(**kwargs))
    if kwargs:
        obj = functools.update_wrapper(functools.partial(obj, **kwargs), obj)
    return FunctionReward(obj, differentiable=differentiable, name=fn)


def check_reward(values: Tensor, batch_size: int, name: str = "reward") -> Tensor:
    """Validate a reward output: shape [B], finite. Raises ValueError naming the reward otherwise."""
    if not isinstance(values, Tensor):
        values = torch.as_tensor(values, dtype=torch.float32)
    if values.shape != (batch_size,):
        raise ValueError(f"reward {name!r} returned shape {tuple(values.shape)}; expected ({batch_size},)")
    bad = ~torch.isfinite(values.detach())
    if bad.any():
        idx = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"reward {name!r} returned non-finite values (NaN/inf) at batch indices {idx}")
    return values


class WeightedSum:
    """sum_k w_k r_k(x0, cond); differentiable iff every term is."""

    def __init__(self, rewards: Sequence[Callable[..., Tensor]], weights: Sequence[float] | None = None) -> None:
        self.rewards = [as_reward(r) for r in rewards]
        self.weights = list(weights) if weights is not None else [1.0] * len(self.rewards)
        if len(self.weights) != len(self.rewards):
            raise ValueError(f"{len(self.rewards)} rewards but {len(self.weights)} weights")
        self.differentiable = all(r.differentiable for r in self.rewards)

    def __call__(self, x0: Tensor, cond: Any = None) -> Tensor:
        return sum(w * r(x0, cond) for w, r in zip(self.weights, self.rewards))


class ClassifierLogProb(nn.Module):
    """r(x, y) = log p(y | x) of a (temperature-calibrated) classifier: CTRL's reward.

    The label is read from `cond[label_key]`: a LongTensor [B] of class indices, or a float
    tensor [B, K] of class weights for a *continuous / soft* y (then r = sum_k w_k log p(k | x)).

    Args:
        classifier: module mapping x0 -> logits [B, K].
        label_key: key of y in the condition dict.
        temperature: logits are divided by it (from `fit_classifier`'s calibration).
        label: a fixed label to score instead of `cond[label_key]` (a single-target task reward).
    """

    differentiable = True

    def __init__(self, classifier: nn.Module | Callable[[Tensor], Tensor], label_key: str = "y", temperature: float = 1.0,
                 label: int | None = None) -> None:
        super().__init__()
        self.label = label
        self.classifier = classifier
        self.label_key = label_key
        self.temperature = float(temperature)

    def log_probs(self, x0: Tensor) -> Tensor:
        """[B, K] log p(. | x0)."""
        return torch.log_softmax(self.classifier(x0) / self.temperature, dim=-1)

    def forward(self, x0: Tensor, cond: Any = None) -> Tensor:
        lp = self.log_probs(x0)
        if self.label is not None:
            return lp[:, self.label]
        y = cond[self.label_key]
        if y.dtype.is_floating_point:  # soft / continuous label weights [B, K]
            return (y * lp).sum(-1)
        return lp.gather(-1, y.long()[:, None]).squeeze(-1)


class MultiLabelLogProb(nn.Module):
    """log p(y_1, ..., y_n | x) = sum_k log p(y_k | x) under conditional independence of the
    labels given x. Each classifier is trained on its own (x, y_k) dataset; no joint data needed.
    """

    differentiable = True

    def __init__(self, terms: Sequence[ClassifierLogProb]) -> None:
        super().__init__()
        self.terms = nn.ModuleList(terms)

    def forward(self, x0: Tensor, cond: Any = None) -> Tensor:
        return sum(term(x0, cond) for term in self.terms)
