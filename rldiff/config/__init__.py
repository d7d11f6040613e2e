"""Recipes: YAML files that name every component by import path, validated before anything runs.

recipe = load_recipe("toy/ctrl", ["train.steps=100"])   # RecipeError if anything is wrong
domain = instantiate(recipe.config.domain)
"""

from rldiff.config.instantiate import ComponentError, instantiate, resolve_import_path
from rldiff.config.loader import (
    RECIPES_DIR,
    Recipe,
    RecipeError,
    dump_yaml,
    load_recipe,
    resolve_recipe,
    shipped_recipes,
)
from rldiff.config.schema import (
    LoggingSection,
    Problem,
    RecipeConfig,
    ScaleSection,
    TrainSection,
    check_component,
    validate_config,
)

__all__ = [
    "RECIPES_DIR",
    "ComponentError",
    "LoggingSection",
    "Problem",
    "Recipe",
    "RecipeConfig",
    "RecipeError",
    "ScaleSection",
    "TrainSection",
    "check_component",
    "dump_yaml",
    "instantiate",
    "load_recipe",
    "resolve_import_path",
    "resolve_recipe",
    "shipped_recipes",
    "validate_config",
]
