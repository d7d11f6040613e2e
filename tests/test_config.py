"""Recipe loading and validation: YAML rules, line numbers, overrides, signatures, did-you-mean.

The property tests at the end mutate a valid recipe in every way a user can break one and check
that `rldiff run` refuses it with exit status 2, names the broken key and creates nothing.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rldiff import cli
from rldiff.config import (
    ComponentError,
    RecipeError,
    dump_yaml,
    instantiate,
    load_recipe,
    loader,
    resolve_import_path,
    resolve_recipe,
    shipped_recipes,
)
from rldiff.config.loader import parse_recipe_text
from tests.fixtures import DUMMY_RECIPE, RECIPES, components

DUMMY_TEXT = DUMMY_RECIPE.read_text()


def _line_of(text: str, pattern: str) -> int:
    """1-based number of the first line of `text` matching the regex `pattern`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if re.search(pattern, line))


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


# --- parsing -------------------------------------------------------------------------------------


def test_yaml_12_scalars():
    data, _ = parse_recipe_text(
        "a: 1e-3\nb: no\nc: on\nd: true\ne: 10\nf: .5\ng: -2.5E+2\nh: 1_000\n"
    )
    assert data == {
        "a": 0.001,
        "b": "no",
        "c": "on",
        "d": True,
        "e": 10,
        "f": 0.5,
        "g": -250.0,
        "h": 1000,
    }


def test_line_of_every_key():
    text = "a: 1\nb:\n  c:\n    - x\n    - d: 2\n  e: 3\n"
    _, lines = parse_recipe_text(text)
    assert lines == {"a": 1, "b": 2, "b.c": 3, "b.c.0": 4, "b.c.1": 5, "b.c.1.d": 5, "b.e": 6}


def test_syntax_error_reports_line_and_text(tmp_path):
    text = DUMMY_TEXT.replace("  hidden: 16\n", "  hidden: [16\n")
    path = _write(tmp_path, text)
    message = _error(path)
    line = _line_of(text, r"hidden: \[16")
    # PyYAML notices the unclosed bracket at the next token; the message points at it.
    assert re.match(rf"{re.escape(str(path))}:(\d+): invalid YAML: ", message)
    assert int(re.match(rf"{re.escape(str(path))}:(\d+)", message).group(1)) in (line, line + 1)


def test_tab_indent_is_reported_on_its_line(tmp_path):
    text = DUMMY_TEXT.replace("  hidden: 16\n", "\thidden: 16\n")
    path = _write(tmp_path, text)
    line = _line_of(text, "\thidden")
    assert _error(path).startswith(
        f"{path}:{line}: invalid YAML: while scanning for the next token: found character '\\t'"
    )
    assert f"\n    {line} | \thidden: 16" in _error(path)


def test_duplicate_key_names_both_lines(tmp_path):
    text = DUMMY_TEXT.replace("  hidden: 16\n", "  hidden: 16\n  hidden: 32\n")
    path = _write(tmp_path, text)
    first = _line_of(text, "hidden: 16")
    assert _error(path) == (
        f"{path}:{first + 1}: algorithm.hidden: duplicate key (first set on line {first})"
    )


# --- the valid fixture ---------------------------------------------------------------------------


def test_fixture_recipe_validates_and_converts_values():
    recipe = load_recipe(DUMMY_RECIPE)
    config = recipe.config
    assert recipe.name == "dummy"
    assert config.algorithm["lr"] == 0.01 and isinstance(config.algorithm["lr"], float)
    assert config.train.mixed_precision == "no"
    assert config.domain["reward"] == {
        "_component_": "tests.fixtures.dummy.squared_distance_reward",
        "target": 1.5,
        "weight": 1.0,
    }
    assert recipe.resolved["train"]["steps"] == 40
    assert recipe.key_lines["algorithm.lr"] == _line_of(DUMMY_TEXT, r"^  lr:")


def test_missing_optional_sections_get_defaults(tmp_path):
    data, _ = parse_recipe_text(DUMMY_TEXT)
    for key in ("logging", "scale", "output_dir"):
        del data[key]
    for key in ("log_every", "keep_checkpoints", "mixed_precision", "cpu"):
        del data["train"][key]
    recipe = load_recipe(_write(tmp_path, dump_yaml(data)))
    assert recipe.resolved["logging"] == {
        "tensorboard": True,
        "wandb": False,
        "wandb_project": "rldiff",
    }
    assert recipe.resolved["train"]["log_every"] == 10
    assert recipe.resolved["train"]["keep_checkpoints"] == 2
    assert recipe.resolved["train"]["mixed_precision"] == "no"
    assert recipe.resolved["scale"] is None and recipe.resolved["output_dir"] is None


# --- overrides -----------------------------------------------------------------------------------


def test_overrides_parse_values_as_yaml():
    recipe = load_recipe(
        DUMMY_RECIPE,
        [
            "train.steps=7",
            "algorithm.lr=3e-4",
            "output_dir=null",
            "domain.reward.weight=2",
            "scale={num_workers: 2}",
            "logging.tensorboard=false",
        ],
    )
    assert recipe.config.train.steps == 7
    assert recipe.config.algorithm["lr"] == 3e-4
    assert recipe.config.domain["reward"]["weight"] == 2.0
    assert recipe.config.scale.num_workers == 2 and recipe.config.scale.cpus_per_worker == 1.0
    assert recipe.config.logging.tensorboard is False
    assert recipe.resolved["domain"]["reward"]["weight"] == 2


def test_override_of_unknown_key_names_the_override():
    message = _error(DUMMY_RECIPE, ("train.stepz=3",))
    assert message.startswith(
        f"{DUMMY_RECIPE}: train.stepz (from override 'train.stepz=3'): unknown key 'stepz' in "
        "'train'; did you mean 'steps'? Valid keys: steps, log_every,"
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.steps", "override 'train.steps' is not of the form dotted.key=value"),
        ("train..steps=1", "override 'train..steps=1' is not of the form dotted.key=value"),
        (
            "seed.x=1",
            "seed.x (from override 'seed.x=1'): cannot set 'seed.x': 'seed' is 0, not a mapping",
        ),
        (
            "algorithm.lr=[1, 2",
            "algorithm.lr (from override 'algorithm.lr=[1, 2'): the value is not valid YAML",
        ),
        (
            "algorithm.lr=abc",
            (
                "algorithm.lr (from override 'algorithm.lr=abc'): invalid value "
                "'abc' for parameter 'lr: float > 0' of "
                "tests.fixtures.dummy.DummyAlgorithm: Input should be a valid number"
            ),
        ),
    ],
)
def test_bad_overrides(override, expected):
    assert expected in _error(DUMMY_RECIPE, (override,))


def test_override_replacing_a_subtree_reports_against_the_override():
    override = "domain.reward={_component_: tests.fixtures.dummy.squared_distance_reward}"
    assert _error(DUMMY_RECIPE, (override,)) == (
        f"{DUMMY_RECIPE}: domain.reward.target (from override '{override}'): missing required "
        "parameter 'target' (float) of tests.fixtures.dummy.squared_distance_reward"
    )


# --- sections ------------------------------------------------------------------------------------


def test_unknown_section_key_did_you_mean_with_line(tmp_path):
    text = DUMMY_TEXT.replace("  log_every: 5\n", "  log_evry: 5\n")
    path = _write(tmp_path, text)
    line = _line_of(text, "log_evry")
    assert _error(path) == (
        f"{path}:{line}: train.log_evry: unknown key 'log_evry' in 'train'; did you mean "
        "'log_every' or 'eval_every'? Valid keys: steps, log_every, eval_every, checkpoint_every, "
        "keep_checkpoints, eval_samples, mixed_precision, gradient_accumulation_steps, cpu, threads, "
        "lr_schedule, warmup_steps, ema_decay, ema_start"
    )


def test_unknown_top_level_key(tmp_path):
    path = _write(tmp_path, DUMMY_TEXT + "sead: 3\n")
    line = len(DUMMY_TEXT.splitlines()) + 1
    assert _error(path).startswith(
        f"{path}:{line}: sead: unknown key 'sead' at the top level; did you mean 'seed'?"
    )


def test_missing_required_key_points_at_parent(tmp_path):
    text = DUMMY_TEXT.replace("  steps: 40                # number of updates\n", "")
    path = _write(tmp_path, text)
    assert _error(path) == (
        f"{path}:{_line_of(text, '^train:')}: train.steps: missing required key; expected "
        "number of updates, an integer >= 0 (0 = sample only)"
    )


def test_out_of_range_and_wrong_literal(tmp_path):
    text = DUMMY_TEXT.replace("  steps: 40 ", "  steps: -3 ").replace(
        "mixed_precision: no ", "mixed_precision: fp8 "
    )
    path = _write(tmp_path, text)
    message = _error(path)
    steps, mp = _line_of(text, "  steps: -3"), _line_of(text, "mixed_precision")
    assert message.splitlines() == [
        f"{path}: 2 problems",
        (
            f"  {path}:{steps}: train.steps: invalid value -3: Input should be greater than or equal "
            "to 0; expected number of updates, an integer >= 0 (0 = sample only)"
        ),
        (
            f"  {path}:{mp}: train.mixed_precision: invalid value 'fp8': Input should be 'no', 'fp16' "
            "or 'bf16'; expected one of 'no', 'fp16', 'bf16'"
        ),
    ]


def test_bool_is_not_an_int(tmp_path):
    path = _write(tmp_path, DUMMY_TEXT.replace("  steps: 40 ", "  steps: true "))
    assert "train.steps: invalid value True: Input should be a valid integer" in _error(path)


def test_wandb_must_be_installed_when_enabled(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "wandb" else real(name, *args)

    monkeypatch.setattr("importlib.util.find_spec", find_spec)
    message = _error(DUMMY_RECIPE, ("logging.wandb=true",))
    assert message == (
        f"{DUMMY_RECIPE}: logging.wandb (from override 'logging.wandb=true'): wandb is not "
        "installed; install it (`pip install wandb`) or set logging.wandb=false"
    )


# --- components ----------------------------------------------------------------------------------


def test_unknown_parameter_did_you_mean_with_line(tmp_path):
    text = DUMMY_TEXT.replace("  kl_weight: 0.1\n", "  kl_wieght: 0.1\n")
    path = _write(tmp_path, text)
    assert _error(path) == (
        f"{path}:{_line_of(text, 'kl_wieght')}: algorithm.kl_wieght: 'kl_wieght' is not a "
        "parameter of tests.fixtures.dummy.DummyAlgorithm; did you mean 'kl_weight'? Valid "
        "parameters: lr: float > 0, hidden: int >= 1 = 16, batch_size: int >= 1 = 32, "
        "kl_weight: float >= 0 = 0.1, step_delay: float >= 0 = 0.0, "
        "checkpoint_delay: float >= 0 = 0.0, nan_at_step: int | None = None"
    )


def test_missing_required_parameter(tmp_path):
    text = DUMMY_TEXT.replace("  lr: 1e-2                       # YAML 1.2: a float\n", "")
    path = _write(tmp_path, text)
    assert _error(path) == (
        f"{path}:{_line_of(text, '^algorithm:')}: algorithm.lr: missing required parameter "
        "'lr' (float > 0) of tests.fixtures.dummy.DummyAlgorithm"
    )


def test_annotated_range_in_nested_component(tmp_path):
    text = DUMMY_TEXT.replace("    weight: 1.0\n", "    weight: -0.5\n")
    path = _write(tmp_path, text)
    assert _error(path) == (
        f"{path}:{_line_of(text, 'weight: -0.5')}: domain.reward.weight: invalid value -0.5 for "
        "parameter 'weight: float > 0' of tests.fixtures.dummy.squared_distance_reward: Input "
        "should be greater than 0"
    )


def test_injected_parameters_may_not_be_set():
    message = _error(DUMMY_RECIPE, ("algorithm.accelerator=cpu",))
    assert message.endswith(
        "algorithm.accelerator (from override 'algorithm.accelerator=cpu'): 'accelerator' is "
        "passed by the trainer; remove it from the recipe"
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "tests.fixtures.dumy.DummyAlgorithm",
            "'tests.fixtures' has no attribute or submodule 'dumy'; did you mean 'dummy'?",
        ),
        (
            "tests.fixtures.dummy.DummyAlgoritm",
            (
                "'tests.fixtures.dummy' has no attribute or submodule 'DummyAlgoritm'; did you mean "
                "'DummyAlgorithm'?"
            ),
        ),
        ("testz.fixtures.dummy.DummyAlgorithm", "no module named 'testz'; did you mean "),
        ("tests.fixtures.dummy.", "'tests.fixtures.dummy.' is not an import path"),
        ("tests.fixtures.DUMMY_RECIPE", None),  # resolves, but to a path: not a callable
    ],
)
def test_garbled_import_paths(tmp_path, path, expected):
    text = DUMMY_TEXT.replace("tests.fixtures.dummy.DummyAlgorithm", path)
    recipe = _write(tmp_path, text)
    line = _line_of(text, r"^  _component_: " + re.escape(path) + "$")
    message = _error(recipe)
    assert message.startswith(f"{recipe}:{line}: algorithm._component_: ")
    if expected is not None:
        assert f"cannot import '{path}': {expected}" in message
        assert "testz" not in path or "'tests'" in message  # a namespace package is suggested
    else:
        assert message.endswith("'tests.fixtures.DUMMY_RECIPE' is a PosixPath, not a callable")


def test_import_failure_inside_a_module_is_not_reported_as_a_typo(tmp_path, monkeypatch):
    (tmp_path / "broken_mod.py").write_text("import package_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ComponentError) as info:
        resolve_import_path("broken_mod.build")
    assert str(info.value) == (
        "importing module 'broken_mod' failed: No module named 'package_that_is_not_installed'"
    )


def test_module_annotation_needs_a_nested_component():
    override = "domain.reward={_component_: tests.fixtures.components.takes_module, net: 3}"
    assert _error(DUMMY_RECIPE, (override,)).endswith(
        "parameter 'net' of tests.fixtures.components.takes_module expects a Module, which a "
        "plain YAML value cannot be; give a mapping with `_component_:` that builds one"
    )
    nested = (
        "domain.reward={_component_: tests.fixtures.components.takes_module, "
        "net: {_component_: tests.fixtures.components.linear, in_features: 0}}"
    )
    assert _error(DUMMY_RECIPE, (nested,)).endswith(
        "domain.reward.net.in_features (from override '" + nested + "'): invalid value 0 for "
        "parameter 'in_features: int >= 1' of tests.fixtures.components.linear: Input should "
        "be greater than or equal to 1"
    )


def test_container_items_are_checked_individually():
    override = (
        "domain.reward={_component_: tests.fixtures.components.with_pairs, "
        "pairs: [[1, 2], [3, x]], weights: {a: 1, b: no}}"
    )
    message = _error(DUMMY_RECIPE, (override,))
    assert "domain.reward.pairs.1.1 (from override" in message
    assert "Input should be a valid number" in message
    assert "domain.reward.weights.b (from override" in message


def test_unevaluable_annotation_is_left_unchecked_and_positional_only_is_reported():
    override = (
        "domain.reward={_component_: tests.fixtures.components.unresolvable_annotation, "
        "table: [1], scale: x}"
    )
    message = _error(DUMMY_RECIPE, (override,))
    assert "domain.reward.table" not in message  # cannot be checked: no false alarm
    assert "domain.reward.scale (from override" in message  # the rest still is
    positional = "domain.reward={_component_: tests.fixtures.components.positional_only}"
    assert _error(DUMMY_RECIPE, (positional,)).endswith(
        "tests.fixtures.components.positional_only requires the positional-only parameter 'x', "
        "which a recipe cannot pass; wrap it in a function that takes keyword arguments"
    )


def test_instantiate_builds_nested_components_first_and_injects():
    components.BUILT.clear()
    config = {
        "_component_": "tests.fixtures.components.record",
        "name": "outer",
        "child": {"_component_": "tests.fixtures.components.record", "name": "inner"},
        "items": [{"_component_": "tests.fixtures.components.record", "name": "item"}, 3],
    }
    built = instantiate(config, extra="injected")
    assert components.BUILT == ["inner", "item", "outer"]
    assert built == {
        "name": "outer",
        "child": {"name": "inner"},
        "items": [{"name": "item"}, 3],
        "extra": "injected",
    }
    with pytest.raises(ComponentError, match="expected a mapping with a '_component_' key"):
        instantiate({"name": "x"})


# --- finding recipes -----------------------------------------------------------------------------


def test_shipped_names_resolve_and_typos_are_suggested(monkeypatch):
    monkeypatch.setattr(loader, "RECIPES_DIR", RECIPES)
    assert shipped_recipes() == {"dummy": DUMMY_RECIPE}
    assert resolve_recipe("dummy") == DUMMY_RECIPE
    assert load_recipe("dummy").name == "dummy"
    with pytest.raises(RecipeError) as info:
        resolve_recipe("dumy")
    assert str(info.value) == (
        "dumy: no such file, and no shipped recipe of that name; did you mean 'dummy'? "
        "Shipped recipes: dummy"
    )
    with pytest.raises(RecipeError, match="missing.yaml: no such file"):
        resolve_recipe("missing.yaml")


@pytest.mark.parametrize("name", list(shipped_recipes()))
def test_every_shipped_recipe_validates(name):
    assert load_recipe(name).config.description


@pytest.mark.parametrize("name", list(shipped_recipes()))
def test_every_shipped_recipe_opens_with_its_command(name):
    first_line = shipped_recipes()[name].read_text().splitlines()[0]
    assert first_line == f"# rldiff run {name}"


# --- property tests: every kind of broken recipe is refused, naming the key ----------------------

VALID, _ = parse_recipe_text(DUMMY_TEXT)
COMPONENTS = {
    "domain": "tests.fixtures.dummy.build_domain",
    "algorithm": "tests.fixtures.dummy.DummyAlgorithm",
    "domain.reward": "tests.fixtures.dummy.squared_distance_reward",
}
# (key deleted, key the message must name)
REQUIRED = [
    ("description", "description"),
    ("seed", "seed"),
    ("domain", "domain"),
    ("algorithm", "algorithm"),
    ("train", "train"),
    ("train.steps", "train.steps"),
    ("domain._component_", "domain._component_"),
    ("algorithm._component_", "algorithm._component_"),
    ("algorithm.lr", "algorithm.lr"),
    ("domain.reward.target", "domain.reward.target"),
    ("domain.reward._component_", "domain.reward"),  # left a plain mapping: not a reward
]
# mapping -> the keys it may hold
VALID_KEYS = {
    "": set(VALID),
    "train": set(VALID["train"]) | {"keep_checkpoints"},
    "logging": set(VALID["logging"]),
    "scale": {"num_workers", "cpus_per_worker", "gpus_per_worker", "address"},
    "domain": {"_component_", "dim", "target", "reward"},
    "algorithm": {
        "_component_",
        "lr",
        "hidden",
        "batch_size",
        "kl_weight",
        "step_delay",
        "checkpoint_delay",
        "nan_at_step",
    },
    "domain.reward": {"_component_", "target", "weight"},
}
_lists = st.lists(st.integers(), max_size=2)
_text = st.text(max_size=6)
NOT_INT = st.one_of(_text, st.booleans(), st.floats(allow_nan=False), _lists, st.none())
NOT_FLOAT = st.one_of(_text, st.booleans(), _lists, st.none())
NOT_BOOL = st.one_of(st.integers(), st.floats(allow_nan=False), _text, _lists, st.none())
NOT_STR = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), _lists)
WRONG_TYPE = {
    "description": st.one_of(NOT_STR, st.none()),
    "seed": NOT_INT,
    "output_dir": NOT_STR,
    "train.steps": NOT_INT,
    "train.log_every": NOT_INT,
    "train.eval_samples": NOT_INT,
    "train.cpu": NOT_BOOL,
    "train.mixed_precision": st.one_of(
        NOT_STR, _text.filter(lambda s: s not in ("no", "fp16", "bf16"))
    ),
    "logging.tensorboard": NOT_BOOL,
    "logging.wandb_project": st.one_of(NOT_STR, st.none()),
    "algorithm.lr": NOT_FLOAT,
    "algorithm.hidden": NOT_INT,
    "algorithm.kl_weight": NOT_FLOAT,
    "domain.dim": NOT_INT,
    "domain.target": NOT_FLOAT,
    "domain.reward.weight": NOT_FLOAT,
}
_negative = st.integers(max_value=-1)
OUT_OF_RANGE = {
    "seed": st.one_of(_negative, st.integers(min_value=2**63, max_value=2**70)),
    "train.steps": _negative,
    "train.log_every": st.integers(max_value=0),
    "train.eval_every": _negative,
    "train.keep_checkpoints": st.integers(max_value=0),
    "train.gradient_accumulation_steps": st.integers(max_value=0),
    "scale.num_workers": st.integers(max_value=0),
    "scale.cpus_per_worker": st.floats(max_value=0),
    "algorithm.lr": st.floats(max_value=0),
    "algorithm.hidden": st.integers(max_value=0),
    "algorithm.kl_weight": st.floats(max_value=-1e-300),
    "domain.dim": st.integers(max_value=0),
    "domain.reward.weight": st.floats(max_value=0),
}
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _get_parent(data: dict, key: str) -> tuple[dict, str]:
    *parents, last = key.split(".")
    for part in parents:
        if data.get(part) is None:
            data[part] = {}
        data = data[part]
    return data, last


def _set(data: dict, key: str, value) -> dict:
    data = copy.deepcopy(data)
    parent, last = _get_parent(data, key)
    parent[last] = value
    return data


def _refused(text: str, key: str | None) -> str:
    """Run `rldiff run` on the text in an empty folder: status 2, key named, nothing created."""
    with tempfile.TemporaryDirectory() as recipe_dir, tempfile.TemporaryDirectory() as work:
        path = Path(recipe_dir) / "broken.yaml"
        path.write_text(text)
        stderr, stdout = io.StringIO(), io.StringIO()
        old = os.getcwd()
        os.chdir(work)
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
                status = cli.main(["run", str(path)])
        finally:
            os.chdir(old)
        assert status == 2, stderr.getvalue()
        assert os.listdir(work) == [], "a refused recipe must not create a run directory"
        assert stdout.getvalue() == ""
    message = stderr.getvalue()
    assert message.startswith(f"error: {path}")
    if key is not None:
        assert re.search(rf"(^|\s){re.escape(key)}[:. ]", message), message
    return message


@PROPERTY
@given(st.sampled_from(REQUIRED))
def test_deleting_a_required_key_is_refused(case):
    deleted, named = case
    data = copy.deepcopy(VALID)
    parent, last = _get_parent(data, deleted)
    del parent[last]
    _refused(dump_yaml(data), named)


@PROPERTY
@given(
    where=st.sampled_from(sorted(VALID_KEYS)),
    name=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    value=st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none()),
)
def test_an_unknown_key_is_refused(where, name, value):
    assume(name not in VALID_KEYS[where])
    key = f"{where}.{name}" if where else name
    _refused(dump_yaml(_set(VALID, key, value)), key)


@PROPERTY
@given(st.data())
def test_a_wrongly_typed_value_is_refused(data):
    key = data.draw(st.sampled_from(sorted(WRONG_TYPE)))
    value = data.draw(WRONG_TYPE[key])
    _refused(dump_yaml(_set(VALID, key, value)), key)


@PROPERTY
@given(st.data())
def test_an_out_of_range_number_is_refused(data):
    key = data.draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    value = data.draw(OUT_OF_RANGE[key])
    message = _refused(dump_yaml(_set(VALID, key, value)), key)
    assert re.search(r"Input should be (greater|less) than", message), message


@PROPERTY
@given(
    component=st.sampled_from(sorted(COMPONENTS)),
    position=st.integers(min_value=0, max_value=200),
    replacement=st.sampled_from(["", "x", "_", ".", "1", "Q", "ss"]),
)
def test_a_garbled_import_path_is_refused(component, position, replacement):
    path = COMPONENTS[component]
    position %= len(path)
    garbled = path[:position] + replacement + path[position + 1 :]
    assume(garbled != path)
    with contextlib.suppress(ComponentError):
        resolve_import_path(garbled)
        assume(False)  # still resolves (to something else): not a garbled path
    message = _refused(
        dump_yaml(_set(VALID, f"{component}._component_", garbled)), f"{component}._component_"
    )
    assert f"'{garbled}'" in message


BREAKERS = [
    "key: [1, 2",
    '"unclosed',
    "\tindented: 1",
    "- item",
    "{a: 1",
    "bad: value: x",
    "  : orphan",
]


@PROPERTY
@given(
    line=st.integers(min_value=1, max_value=len(DUMMY_TEXT.splitlines())),
    breaker=st.sampled_from(BREAKERS),
)
def test_broken_yaml_syntax_is_refused_with_a_line(line, breaker):
    lines = DUMMY_TEXT.splitlines()
    lines.insert(line, breaker)
    text = "\n".join(lines) + "\n"
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        pass
    else:
        assume(False)  # this insertion happens to be valid YAML
    message = _refused(text, None)
    number = int(re.match(r"error: .*?broken\.yaml:(\d+): invalid YAML: ", message).group(1))
    assert line + 1 <= number <= len(lines) + 1  # at or after the inserted line
