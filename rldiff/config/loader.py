"""Find a recipe, parse it keeping line numbers, apply `key=value` overrides and validate it.

Recipes are read with YAML 1.2 scalars: only `true`/`false` are booleans (`no` and `on` stay
strings) and `1e-3` is a float (YAML 1.1, which PyYAML follows, reads it as a string).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

import rldiff
from rldiff.config.instantiate import did_you_mean
from rldiff.config.schema import Problem, RecipeConfig, validate_config

#: Shipped recipes live at the repository root, next to the `rldiff` package.
RECIPES_DIR = Path(rldiff.__file__).resolve().parents[1] / "recipes"


class RecipeError(Exception):
    """A recipe that cannot be used, with every problem found, each located in the file.

    Attributes:
        source: The recipe file (or what the user named when no file was found).
        problems: The problems, each with its dotted key, line and/or override.
    """

    def __init__(self, source: str | Path, problems: Sequence[Problem]):
        self.source = str(source)
        self.problems = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [self._format_problem(p) for p in self.problems]
        if len(lines) == 1:
            return lines[0]
        return f"{self.source}: {len(lines)} problems\n" + "\n".join(f"  {line}" for line in lines)

    def _format_problem(self, problem: Problem) -> str:
        where = self.source if problem.line is None else f"{self.source}:{problem.line}"
        key = problem.key
        if problem.override is not None:
            key = f"{key} (from override '{problem.override}')"
        return f"{where}: {key}: {problem.message}" if key else f"{where}: {problem.message}"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A loaded, validated recipe.

    Attributes:
        config: The validated config; component arguments are converted to their annotated types.
        resolved: Plain data with overrides applied and section defaults filled in: what
            `rldiff run` prints and saves as `config.yaml`.
        path: The recipe file.
        name: The shipped name (`toy/ctrl`) or, for other files, the file name without `.yaml`.
        key_lines: The line of every dotted key in the file.
        key_overrides: The override that set each overridden dotted key.
    """

    config: RecipeConfig
    resolved: dict[str, Any]
    path: Path
    name: str
    key_lines: dict[str, int] = dataclasses.field(default_factory=dict, repr=False)
    key_overrides: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    def error(self, key: str, message: str) -> RecipeError:
        """A `RecipeError` about `key`, located at its line or the override that set it.

        Args:
            key: Dotted key, e.g. `output_dir`.
            message: What is wrong and what would be valid.

        Returns:
            The error, for the caller to raise.
        """
        return RecipeError(
            self.path, [_locate(Problem(key, message), self.key_lines, self.key_overrides)]
        )


class _RecipeYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and floats."""


_RecipeYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if not tag.endswith((":bool", ":float"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_RecipeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def shipped_recipes() -> dict[str, Path]:
    """Every shipped recipe by name (`toy/ctrl` for `recipes/toy/ctrl.yaml`), sorted by name."""
    if not RECIPES_DIR.is_dir():
        return {}
    paths = sorted(RECIPES_DIR.rglob("*.yaml"))
    return {p.relative_to(RECIPES_DIR).with_suffix("").as_posix(): p for p in paths}


def resolve_recipe(recipe: str | Path) -> Path:
    """The file a recipe argument names: an existing path, else a shipped recipe name.

    Args:
        recipe: A path to a YAML file, or a shipped name such as `toy/ctrl`.

    Returns:
        The path of the recipe file.

    Raises:
        RecipeError: Neither a file nor a shipped recipe (with close shipped names).
    """
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if str(recipe) in shipped:
        return shipped[str(recipe)]
    if path.is_dir():
        message = "is a directory; give a recipe YAML file or a shipped recipe name"
    elif path.suffix in (".yaml", ".yml"):
        message = "no such file"
    else:
        names = ", ".join(shipped) or "(none)"
        message = (
            f"no such file, and no shipped recipe of that name"
            f"{did_you_mean(str(recipe), list(shipped)) or '.'} Shipped recipes: {names}"
        )
    raise RecipeError(recipe, [Problem("", message)])


def recipe_name(path: Path) -> str:
    """The shipped name of a recipe file inside `recipes/`, else its file name without suffix."""
    try:
        return path.resolve().relative_to(RECIPES_DIR).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def load_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe; nothing is built or written.

    Args:
        recipe: A path to a YAML file, or a shipped name such as `toy/ctrl`.
        overrides: `dotted.key=value` strings; values are parsed as YAML (`train.steps=10`,
            `algorithm.betas=[0.9,0.99]`, `output_dir=null`).

    Returns:
        The validated recipe.

    Raises:
        RecipeError: Unreadable file, malformed YAML, malformed override, or invalid recipe;
            the message names the file, the dotted key, the line and what would be valid.
    """
    path = resolve_recipe(recipe)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(path, [Problem("", f"cannot read the recipe: {err}")]) from err
    data, lines = parse_recipe_text(text, path)
    origins: dict[str, str] = {}
    problems: list[Problem] = []
    if isinstance(data, dict):
        for override in overrides:
            problems += _apply_override(data, override, lines, origins)
    if not problems:
        config, problems = validate_config(data)
    if problems:
        raise RecipeError(path, [_locate(p, lines, origins) for p in problems])
    resolved = {
        **config.model_dump(mode="json"),
        "domain": data["domain"],
        "algorithm": data["algorithm"],
    }
    return Recipe(
        config=config,
        resolved=resolved,
        path=path,
        name=recipe_name(path),
        key_lines=lines,
        key_overrides=origins,
    )


def parse_recipe_text(text: str, source: str | Path = "<recipe>") -> tuple[Any, dict[str, int]]:
    """Parse recipe YAML, recording the line of every key.

    Args:
        text: The YAML text.
        source: The file name used in error messages.

    Returns:
        The data, and a map from each dotted key (`algorithm.lr`, list items as `a.0`) to its
        1-based line.

    Raises:
        RecipeError: Malformed YAML (with its line and the offending text) or a duplicate key.
    """
    loader = _RecipeYamlLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        what = ": ".join(part for part in (err.context, err.problem) if part)
        shown = text.splitlines()[line - 1] if line and line <= len(text.splitlines()) else ""
        excerpt = f"\n    {line} | {shown}" if shown else ""
        raise RecipeError(source, [Problem("", f"invalid YAML: {what}{excerpt}", line)]) from None
    except yaml.YAMLError as err:
        raise RecipeError(source, [Problem("", f"invalid YAML: {err}")]) from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    duplicates: list[Problem] = []
    if node is not None:
        _record_lines(node, "", lines, duplicates)
    if duplicates:
        raise RecipeError(source, duplicates)
    return data, lines


def parse_override_value(text: str) -> Any:
    """Parse an override's value with the same YAML rules as recipe files.

    Raises:
        yaml.YAMLError: The value is not valid YAML.
    """
    return yaml.load(text, Loader=_RecipeYamlLoader)


def dump_yaml(data: Any) -> str:
    """YAML text for plain data, keeping key order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _record_lines(node: yaml.Node, prefix: str, lines: dict[str, int], dups: list[Problem]):
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = f"{prefix}.{key_node.value}" if prefix else key_node.value
            line = key_node.start_mark.line + 1
            if key in lines:
                dups.append(Problem(key, f"duplicate key (first set on line {lines[key]})", line))
            lines[key] = line
            _record_lines(value_node, key, lines, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix}.{i}" if prefix else str(i)
            lines[key] = item.start_mark.line + 1
            _record_lines(item, key, lines, dups)


def _apply_override(
    data: dict, override: str, lines: dict[str, int], origins: dict[str, str]
) -> list[Problem]:
    """Set one `dotted.key=value` in `data` in place; returns the problems (none on success)."""
    key, sep, text = override.partition("=")
    parts = key.split(".")
    if not sep or not all(parts):
        return [
            Problem(
                "",
                f"override '{override}' is not of the form dotted.key=value (e.g. train.steps=100)",
            )
        ]
    try:
        value = parse_override_value(text)
    except yaml.YAMLError as err:
        return [Problem(key, f"the value is not valid YAML: {err}", override=override)]
    parent: Any = data
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(parent, dict):
            parent = parent.setdefault(part, {})
        elif isinstance(parent, list) and part.isdigit() and int(part) < len(parent):
            parent = parent[int(part)]
        else:
            return [
                Problem(here, f"cannot set '{key}': '{here}' does not exist", override=override)
            ]
        if not isinstance(parent, (dict, list)):
            return [
                Problem(
                    key,
                    f"cannot set '{key}': '{here}' is {parent!r}, not a mapping",
                    override=override,
                )
            ]
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif last.isdigit() and int(last) < len(parent):
        parent[int(last)] = value
    else:
        return [
            Problem(
                key,
                f"index {last} is out of range for a list of {len(parent)} items",
                override=override,
            )
        ]
    for stale in [k for k in lines if k == key or k.startswith(key + ".")]:
        del lines[stale]
    for stale in [k for k in origins if k.startswith(key + ".")]:
        del origins[stale]
    origins[key] = override
    return []


def _locate(problem: Problem, lines: dict[str, int], origins: dict[str, str]) -> Problem:
    """Attach the line (or override) of the problem's key or, failing that, its nearest parent."""
    if problem.line is not None or problem.override is not None:
        return problem
    parts = problem.key.split(".") if problem.key else []
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        if prefix in origins:
            return dataclasses.replace(problem, override=origins[prefix])
        if prefix in lines:
            return dataclasses.replace(problem, line=lines[prefix])
    return problem
