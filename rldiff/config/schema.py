"""What a valid recipe is: the fixed sections (pydantic models) and signature-checked components.

The top-level sections are pydantic models with `extra="forbid"`. The `domain` and `algorithm`
sections are `_component_` mappings; each is checked against the signature of the callable it
names: the import path must resolve, every key must be a parameter, required parameters must be
given, and every value must match the parameter's type annotation (`typing.Annotated[float,
pydantic.Field(gt=0)]` gives a range check). Nested components are checked the same way.

Values are validated as pydantic's strict JSON mode does: no bool-to-int or string-to-number
coercion, but lists become tuples and strings become paths where the annotation asks for them.
The validated values (not the raw YAML ones) are what the components are later built with.

Nothing here knows about files or line numbers: problems carry a dotted key, and
`rldiff.config.loader` attaches where that key came from.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import types
import typing
from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

from rldiff.config.instantiate import (
    COMPONENT_KEY,
    ComponentError,
    did_you_mean,
    is_component,
    resolve_import_path,
)

#: Parameters the trainer passes to each section's callable itself; a recipe must not set them.
INJECTED: dict[str, tuple[str, ...]] = {"domain": (), "algorithm": ("domain", "accelerator")}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe.

    Attributes:
        key: Dotted key of the offending entry (`train.steps`, `algorithm.reward.weight`);
            "" for the recipe as a whole.
        message: What is wrong and what would be valid.
        line: 1-based line in the recipe file, when known.
        override: The command-line override the value came from, when it came from one.
    """

    key: str
    message: str
    line: int | None = None
    override: str | None = None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TrainSection(_Section):
    """The `train:` section: how long to train and how often to log, evaluate and checkpoint."""

    steps: Annotated[
        int, Field(ge=0, description="number of updates, an integer >= 0 (0 = sample only)")
    ]
    log_every: Annotated[
        int, Field(ge=1, description="write metrics every N updates, an integer >= 1")
    ] = 10
    eval_every: Annotated[
        int, Field(ge=0, description="evaluate every N updates; 0 = only at the end")
    ] = 0
    checkpoint_every: Annotated[
        int, Field(ge=0, description="checkpoint every N updates; 0 = only at the end")
    ] = 50
    keep_checkpoints: Annotated[
        int, Field(ge=1, description="how many of the newest checkpoints to keep, >= 1")
    ] = 2
    eval_samples: Annotated[
        int, Field(ge=0, description="samples drawn per evaluation; 0 = no evaluation")
    ] = 2000
    mixed_precision: Annotated[
        Literal["no", "fp16", "bf16"], Field(description="one of 'no', 'fp16', 'bf16'")
    ] = "no"
    gradient_accumulation_steps: Annotated[
        int, Field(ge=1, description="passed to accelerate.Accelerator, an integer >= 1")
    ] = 1
    cpu: Annotated[bool, Field(description="true = run on the CPU even if a GPU is present")] = (
        False
    )
    threads: Annotated[
        int,
        Field(ge=0, description="torch CPU threads, an integer >= 0 (0 = torch's default, one per core)"),
    ] = 0
    lr_schedule: Annotated[
        Literal["constant", "cosine", "linear"],
        Field(description="learning-rate decay over train.steps: 'constant', 'cosine' or 'linear'"),
    ] = "constant"
    warmup_steps: Annotated[
        int, Field(ge=0, description="linear learning-rate warm-up updates, an integer >= 0")
    ] = 0
    ema_decay: Annotated[
        float,
        Field(ge=0, lt=1, description="evaluate with an exponential moving average of the trainable "
              "parameters with this decay, a number in [0, 1) (0 = off; 0.98 averages ~50 updates)"),
    ] = 0.0
    ema_start: Annotated[
        int, Field(ge=0, description="updates before the moving average starts, an integer >= 0")
    ] = 0


class LoggingSection(_Section):
    """The `logging:` section: where metrics go besides `metrics.jsonl`."""

    tensorboard: Annotated[bool, Field(description="write TensorBoard events, true/false")] = True
    wandb: Annotated[
        bool, Field(description="log to Weights & Biases (needs `pip install wandb`), true/false")
    ] = False
    wandb_project: Annotated[str, Field(description="W&B project name, a string")] = "rldiff"


class ScaleSection(_Section):
    """The `scale:` section: data-parallel training on Ray (`rldiff.scale`, docs/ray.md).

    `rldiff run` trains in its own process unless `num_workers > 1` or an `address` is given; then
    `ray.train.torch.TorchTrainer` runs the same training loop on `num_workers` workers, each
    sampling `algorithm.batch_size / num_workers` trajectories per update.
    """

    num_workers: Annotated[int, Field(ge=1, description="Ray workers, an integer >= 1")] = 1
    cpus_per_worker: Annotated[float, Field(gt=0, description="CPUs per worker, > 0")] = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0, description="GPUs per worker, >= 0")] = 0.0
    address: Annotated[
        str | None,
        Field(
            description="Ray cluster address: null = start a local Ray on 127.0.0.1, 'auto' = "
            "the running cluster (RAY_ADDRESS), 'host:port' or 'ray://host:port'"
        ),
    ] = None
    max_failures: Annotated[
        int,
        Field(
            ge=-1,
            description="worker-group restarts from the last checkpoint after a worker dies, "
            "an integer >= 0 (-1 = unlimited)",
        ),
    ] = 0
    placement_strategy: Annotated[
        Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
        Field(description="how workers are placed on nodes: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD"),
    ] = "PACK"
    dashboard: Annotated[
        bool,
        Field(description="start Ray's dashboard (on 127.0.0.1) with a local Ray, true/false"),
    ] = False


class RecipeConfig(_Section):
    """A validated recipe. `domain` and `algorithm` hold validated component mappings."""

    description: Annotated[str, Field(description="one line saying what the recipe does")]
    seed: Annotated[
        int, Field(ge=0, lt=2**63, description="the seed every random draw derives from, >= 0")
    ]
    output_dir: Annotated[
        str | None,
        Field(description="run directory; null = runs/<recipe name>/<timestamp>"),
    ] = None
    domain: Annotated[
        dict[str, Any], Field(description="a mapping with `_component_` and its arguments")
    ]
    algorithm: Annotated[
        dict[str, Any], Field(description="a mapping with `_component_` and its arguments")
    ]
    train: Annotated[TrainSection, Field(description="the `train:` section (a mapping)")]
    logging: Annotated[LoggingSection, Field(description="the `logging:` section (a mapping)")] = (
        LoggingSection()
    )
    scale: Annotated[
        ScaleSection | None, Field(description="null, or a mapping for Ray-distributed runs")
    ] = None


def validate_config(data: Any) -> tuple[RecipeConfig | None, list[Problem]]:
    """Validate parsed recipe data: the fixed sections, then every component's signature.

    Args:
        data: The recipe as parsed from YAML, with overrides applied.

    Returns:
        `(config, [])` when the recipe is valid, else `(None, problems)` with every problem found.
    """
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {_type_name(type(data))}"
        return None, [
            Problem(
                "",
                f"a recipe must be a YAML mapping of sections "
                f"({', '.join(RecipeConfig.model_fields)}), got {got}",
            )
        ]
    problems: list[Problem] = []
    config = None
    try:
        config = RecipeConfig.model_validate_json(_to_json(data), strict=True)
    except ValidationError as err:
        problems += [_section_problem(e) for e in err.errors()]
    components = {}
    for section, injected in INJECTED.items():
        if isinstance(data.get(section), dict):
            components[section], found = check_component(data[section], section, injected)
            problems += found
    if config is not None and config.logging.wandb and importlib.util.find_spec("wandb") is None:
        problems.append(
            Problem(
                "logging.wandb",
                "wandb is not installed; install it (`pip install wandb`) or set "
                "logging.wandb=false",
            )
        )
    if problems or config is None:
        return None, problems
    return config.model_copy(update=components), []


def check_component(
    config: dict[str, Any], key: str, injected: Collection[str] = ()
) -> tuple[dict[str, Any], list[Problem]]:
    """Check a `_component_` mapping (and the components nested in it) against signatures.

    Args:
        config: The mapping, e.g. the recipe's `algorithm:` section.
        key: Its dotted key, used to name problems (`algorithm`, `domain.reward`).
        injected: Parameters the caller supplies itself (`domain`, `accelerator`); the mapping
            must not set them and need not give them even when they are required.

    Returns:
        The mapping with values validated (and converted) by their annotations, and the problems.
    """
    component_key = f"{key}.{COMPONENT_KEY}"
    if COMPONENT_KEY not in config:
        return config, [
            Problem(
                component_key,
                f"missing: '{key}' needs `{COMPONENT_KEY}: <import path of a callable>` "
                "(e.g. `my_package.module.build`); its other keys are that callable's arguments",
            )
        ]
    path = config[COMPONENT_KEY]
    if not isinstance(path, str):
        return config, [
            Problem(
                component_key,
                f"must be an import path string like 'package.module.name', got {path!r}",
            )
        ]
    try:
        target = resolve_import_path(path)
    except ComponentError as err:
        return config, [Problem(component_key, f"cannot import '{path}': {err}")]
    if not callable(target):
        return config, [
            Problem(component_key, f"'{path}' is a {_type_name(type(target))}, not a callable")
        ]
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # e.g. some builtins: nothing to check against
        return config, []

    params = signature.parameters
    takes_any_kwarg = any(p.kind is p.VAR_KEYWORD for p in params.values())
    settable = {
        name: p
        for name, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in injected
    }
    annotations = _annotations(target, signature)
    checked: dict[str, Any] = {COMPONENT_KEY: path}
    problems: list[Problem] = []
    for name, value in config.items():
        if name == COMPONENT_KEY:
            continue
        sub = f"{key}.{name}"
        if name in injected:
            problems.append(
                Problem(sub, f"'{name}' is passed by the trainer; remove it from the recipe")
            )
        elif name not in settable and not takes_any_kwarg:
            problems.append(
                Problem(
                    sub,
                    f"'{name}' is not a parameter of {path}"
                    f"{did_you_mean(str(name), list(settable)) or '.'} "
                    f"Valid parameters: {_describe_parameters(settable, annotations)}",
                )
            )
        elif _contains_component(value):
            checked[name], found = _check_nested(value, sub)
            problems += found
        else:
            checked[name], found = _check_value(value, annotations.get(name), sub, name, path)
            problems += found
    for name, p in params.items():
        if p.default is not p.empty or name in injected or name in config:
            continue
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            hint = f" ({_type_name(annotations[name])})" if name in annotations else ""
            problems.append(
                Problem(f"{key}.{name}", f"missing required parameter '{name}'{hint} of {path}")
            )
        elif p.kind is p.POSITIONAL_ONLY:
            problems.append(
                Problem(
                    key,
                    f"{path} requires the positional-only parameter '{name}', which a recipe "
                    "cannot pass; wrap it in a function that takes keyword arguments",
                )
            )
    return checked, problems


def _check_nested(value: Any, key: str) -> tuple[Any, list[Problem]]:
    """Check the components inside a value that holds some (plain values pass unchecked)."""
    if is_component(value):
        return check_component(value, key)
    problems: list[Problem] = []
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out[k], found = _check_nested(v, f"{key}.{k}")
            problems += found
        return out, problems
    if isinstance(value, list):
        items = []
        for i, v in enumerate(value):
            item, found = _check_nested(v, f"{key}.{i}")
            items.append(item)
            problems += found
        return items, problems
    return value, problems


def _check_value(
    value: Any, annotation: Any, key: str, name: str, path: str
) -> tuple[Any, list[Problem]]:
    """Validate one argument against its parameter's annotation (strict JSON semantics)."""
    if annotation is None or annotation is Any:
        return value, []
    adapter = _type_adapter(annotation)
    if adapter is None:
        return value, []
    try:
        return adapter.validate_json(_to_json(value), strict=True), []
    except ValidationError as err:
        errors = err.errors()
    except TypeError:  # e.g. isinstance() against a Protocol that is not runtime-checkable
        return value, []
    expected = _type_name(annotation)
    if all(e["type"] == "needs_python_object" for e in errors):
        return value, [
            Problem(
                key,
                f"parameter '{name}' of {path} expects a {expected}, which a plain YAML value "
                f"cannot be; give a mapping with `{COMPONENT_KEY}:` that builds one",
            )
        ]
    problems = []
    for e in errors:
        sub = ".".join([key, *(str(part) for part in e["loc"])])
        problems.append(
            Problem(
                sub,
                f"invalid value {e['input']!r} for parameter '{name}: {expected}' of {path}: "
                f"{e['msg']}",
            )
        )
    return value, problems


def _type_adapter(annotation: Any) -> TypeAdapter | None:
    """A strict adapter for an annotation, or None when pydantic cannot check that type."""
    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except PydanticUserError:  # models, dataclasses and TypedDicts carry their own config
        pass
    except PydanticSchemaGenerationError:
        return None
    try:
        return TypeAdapter(annotation)
    except (PydanticUserError, PydanticSchemaGenerationError):
        return None


def _annotations(target: Any, signature: inspect.Signature) -> dict[str, Any]:
    """Parameter annotations with string (postponed) annotations evaluated where possible."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception:  # noqa: BLE001 - third-party annotations may fail in any way
        hints = {}
    namespace = getattr(function, "__globals__", {})
    for name, p in signature.parameters.items():
        if name in hints or p.annotation is p.empty:
            continue
        annotation = p.annotation
        if isinstance(annotation, str):  # postponed: evaluate this one on its own
            try:
                annotation = eval(annotation, dict(namespace))  # the callable's own annotation
            except Exception:  # noqa: BLE001, S112 - unevaluable: leave it unchecked
                continue
        hints[name] = annotation
    hints.pop("return", None)
    return hints


def _contains_component(value: Any) -> bool:
    if is_component(value):
        return True
    if isinstance(value, dict):
        return any(_contains_component(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_component(v) for v in value)
    return False


def _section_problem(error: dict[str, Any]) -> Problem:
    """Turn one pydantic error on the fixed sections into a Problem with a helpful message."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    parent = _model_at(loc[:-1])
    field = parent.model_fields.get(loc[-1]) if parent is not None else None
    expected = f"; expected {field.description}" if field is not None and field.description else ""
    if error["type"] == "missing":
        return Problem(key, f"missing required key{expected}")
    if error["type"] == "extra_forbidden":
        valid = list(parent.model_fields) if parent is not None else []
        where = f"in '{'.'.join(loc[:-1])}'" if len(loc) > 1 else "at the top level"
        return Problem(
            key,
            f"unknown key '{loc[-1]}' {where}{did_you_mean(loc[-1], valid) or '.'} "
            f"Valid keys: {', '.join(valid)}",
        )
    return Problem(key, f"invalid value {error['input']!r}: {error['msg']}{expected}")


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    """The section model that the location `loc` (a path of field names) points into."""
    model: type[BaseModel] = RecipeConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = [a for a in (field.annotation, *typing.get_args(field.annotation)) if _is_model(a)]
        if not inner:
            return None
        model = inner[0]
    return model


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _describe_parameters(params: dict[str, inspect.Parameter], annotations: dict) -> str:
    described = []
    for name, p in params.items():
        text = f"{name}: {_type_name(annotations[name])}" if name in annotations else name
        described.append(text if p.default is p.empty else f"{text} = {p.default!r}")
    return ", ".join(described) if described else "(none)"


_BOUND_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "multiple_of": "multiple of"}


def _type_name(annotation: Any) -> str:
    """A short readable name for an annotation: `float > 0`, `int | None`, `list[float]`."""
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        bounds = []
        for extra in extras:
            for item in getattr(extra, "metadata", [extra]):
                for attr, symbol in _BOUND_SYMBOLS.items():
                    if getattr(item, attr, None) is not None:
                        bounds.append(f"{symbol} {getattr(item, attr)}")
        return " ".join([_type_name(base), *bounds])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if inspect.isclass(annotation) and not typing.get_args(annotation):
        return "None" if annotation is type(None) else annotation.__name__
    return repr(annotation).replace("typing.", "")


def _to_json(value: Any) -> str:
    # YAML may hold dates; pydantic parses their ISO text back where a date is annotated.
    return json.dumps(value, default=str)
