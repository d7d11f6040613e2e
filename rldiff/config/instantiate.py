"""Build objects from `_component_` mappings, the way torchtune recipes name their parts.

A component mapping names a callable by import path and gives its keyword arguments:

    {"_component_": "domains.toy.continuous.build", "dim": 2,
     "reward": {"_component_": "my_pkg.rewards.score", "weight": 2.0}}

Mappings with a `_component_` key may appear at any depth (inside other mappings or lists); they
are built innermost first, so the outer callable receives finished objects.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import pkgutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

COMPONENT_KEY = "_component_"


class ComponentError(ValueError):
    """An import path that does not resolve, or a mapping that is not a component."""


def resolve_import_path(path: str) -> Any:
    """Import the object that a dotted path such as `package.module.name` names.

    The longest prefix that imports as a module is imported; the rest is looked up as attributes.

    Args:
        path: Dotted import path of a module attribute (a function, class or other object).

    Returns:
        The object the path names.

    Raises:
        ComponentError: The path is malformed, a module does not exist (with close names of
            existing modules), importing a module failed, or an attribute is missing (with close
            attribute names).
    """
    parts = path.split(".") if isinstance(path, str) else []
    if not parts or not all(part.isidentifier() for part in parts):
        raise ComponentError(
            f"{path!r} is not an import path; expected dotted Python names such as "
            "'package.module.function'"
        )
    module, depth = None, 0
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # no such module: the remaining parts are attributes
                depth -= 1
                break
            raise ComponentError(f"importing module '{name}' failed: {err}") from err
        except Exception as err:  # user code: report whatever its import raised
            raise ComponentError(
                f"importing module '{name}' failed: {type(err).__name__}: {err}"
            ) from err
    if module is None:
        top = _importable_names(sys.path)
        raise ComponentError(f"no module named '{parts[0]}'{did_you_mean(parts[0], top)}")
    obj = module
    for i in range(depth, len(parts)):
        try:
            obj = getattr(obj, parts[i])
        except AttributeError:
            owner = ".".join(parts[:i])
            raise ComponentError(
                f"'{owner}' has no attribute or submodule '{parts[i]}'"
                f"{did_you_mean(parts[i], _member_names(obj))}"
            ) from None
    return obj


def instantiate(config: Mapping[str, Any], /, **injected: Any) -> Any:
    """Build the object that a `_component_` mapping describes.

    Nested component mappings in the arguments (inside mappings and lists, at any depth) are built
    first. No validation happens here: `rldiff.config.load_recipe` checks a recipe against the
    callables' signatures before anything is built.

    Args:
        config: Mapping with `_component_` (import path of a callable) and its keyword arguments.
        **injected: Extra keyword arguments supplied by the caller rather than the recipe, such as
            `domain=` and `accelerator=` for an algorithm.

    Returns:
        Whatever the callable returns.

    Raises:
        ComponentError: `config` has no `_component_` key or its import path does not resolve.
    """
    if not isinstance(config, Mapping) or COMPONENT_KEY not in config:
        raise ComponentError(
            f"expected a mapping with a '{COMPONENT_KEY}' key naming a callable, got {config!r}"
        )
    target = resolve_import_path(config[COMPONENT_KEY])
    kwargs = {k: _build(v) for k, v in config.items() if k != COMPONENT_KEY}
    return target(**kwargs, **injected)


def is_component(value: Any) -> bool:
    """Whether `value` is a mapping with a `_component_` key."""
    return isinstance(value, Mapping) and COMPONENT_KEY in value


def _build(value: Any) -> Any:
    if is_component(value):
        return instantiate(value)
    if isinstance(value, Mapping):
        return {k: _build(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_build(v) for v in value]
    return value


def _member_names(obj: Any) -> list[str]:
    names = {name for name in dir(obj) if not name.startswith("_")}
    if hasattr(obj, "__path__"):  # a package: its submodules are valid next parts too
        names.update(_importable_names(obj.__path__))
    return sorted(names)


def _importable_names(paths: Iterable[str]) -> list[str]:
    """Modules and packages (namespace packages included) directly under the given folders."""
    paths = list(paths)
    names = {info.name for info in pkgutil.iter_modules(paths)}
    for folder in paths:
        with contextlib.suppress(OSError):
            names.update(
                p.name for p in Path(folder).iterdir() if p.is_dir() and p.name.isidentifier()
            )
    return sorted(names)


def did_you_mean(name: str, candidates: list[str]) -> str:
    """A '; did you mean ...?' suffix naming up to three close candidates, or '' if none is close.

    Args:
        name: The misspelt name.
        candidates: Valid names.

    Returns:
        The suffix to append to an error message.
    """
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
