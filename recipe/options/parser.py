"""Parse recipe dataclasses from `<recipe.yaml> [--key value ...]`: the command line wins over the file."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from recipe.errors import RecipeConfigError
from recipe.options.arguments import DataArguments, ModelArguments, PretrainingArguments
from recipe.options.recipe import Recipe

_BARE_PERCENT = re.compile(r"%(?!\()")


class RecipeParser(HfArgumentParser):
    """`HfArgumentParser` that reads a YAML recipe, rejects unknown keys, and applies CLI overrides on top."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for action in self._actions:  # argparse formats help with `%`: a literal "20%" would crash --help
            if action.help and action.help is not argparse.SUPPRESS:
                action.help = _BARE_PERCENT.sub("%%", action.help)

    def parse_recipe(self, args: list[str] | None = None) -> tuple[Any, ...]:
        """The dataclasses, filled from the YAML file and then the command line."""
        return self.parse_with_explicit_keys(args)[0]

    def parse_with_explicit_keys(self, args: list[str] | None = None) -> tuple[tuple[Any, ...], frozenset[str]]:
        """The dataclasses, and the keys that the YAML file or the command line set."""
        args = list(sys.argv[1:] if args is None else args)
        yaml_path, args = _split_recipe_path(args)
        recipe = load_recipe_file(yaml_path) if yaml_path else {}
        self._check_recipe_keys(recipe, yaml_path)
        self.set_defaults(**recipe)
        *parsed, unused = self.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
        if unused:
            raise RecipeConfigError(self._unknown_arguments_message(unused))
        return tuple(parsed), frozenset(set(recipe) | _cli_keys(args, self.option_names()))

    def _unknown_arguments_message(self, unused: list[str]) -> str:
        first = next((arg for arg in unused if arg.startswith("-")), unused[0])
        key = first.lstrip("-").split("=", 1)[0].replace("-", "_")
        close = difflib.get_close_matches(key, self.option_names(), n=1)
        hint = f" Did you mean `--{close[0]}`?" if close else ""
        return (
            f"Unknown command-line argument(s): {' '.join(unused)}.{hint} Run `{self.prog} --help` for every option."
        )

    def option_names(self) -> dict[str, dataclasses.Field]:
        return {
            f.name: f for dataclass_type in self.dataclass_types for f in dataclasses.fields(dataclass_type) if f.init
        }

    def _declared_types(self) -> dict[str, Any]:
        """The annotations as written: `HfArgumentParser` narrows `Field.type` (e.g. `str | list[str]` to `str`)."""
        declared: dict[str, Any] = {}
        for dataclass_type in reversed(self.dataclass_types):
            for klass in reversed(dataclass_type.__mro__):
                declared.update(vars(klass).get("__annotations__", {}))
        return declared

    def _check_recipe_keys(self, recipe: dict[str, Any], path: str | None) -> None:
        options = self.option_names()
        for key, value in recipe.items():
            if key not in options:
                close = difflib.get_close_matches(key, options, n=1)
                hint = f" Did you mean `{close[0]}`?" if close else ""
                raise RecipeConfigError(
                    f"Unknown option `{key}` in {path}.{hint} Run `python run_pretrain.py --help` for every option."
                )
            _check_value_type(key, value, self._declared_types().get(key, options[key].type), path)


def load_recipe_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise RecipeConfigError(f"Recipe file {path} does not exist. Pass a YAML file such as recipe/configs/*.yaml.")
    try:
        recipe = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise RecipeConfigError(f"Recipe file {path} is not valid YAML: {error}") from error
    if not isinstance(recipe, dict):
        raise RecipeConfigError(f"Recipe file {path} must hold `key: value` pairs at its top level.")
    return recipe


def parse_pretraining_recipe(args: list[str] | None = None) -> Recipe:
    """`run_pretrain.py`'s options: `<recipe.yaml> [--key value ...]`, the command line winning over the file."""
    parser = RecipeParser((ModelArguments, DataArguments, PretrainingArguments))
    (model_args, data_args, training_args), explicit = parser.parse_with_explicit_keys(args)
    return Recipe(model=model_args, data=data_args, training=training_args, explicit_keys=explicit)


def _split_recipe_path(args: list[str]) -> tuple[str | None, list[str]]:
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2 :]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1 :]
    if args and not args[0].startswith("-") and args[0].endswith((".yaml", ".yml")):
        return args[0], args[1:]
    return None, args


def _cli_keys(args: list[str], options: dict[str, Any]) -> set[str]:
    keys = set()
    for arg in args:
        if arg.startswith("--"):
            key = arg[2:].split("=", 1)[0].replace("-", "_")
            if key.startswith("no_") and key[3:] in options:
                key = key[3:]
            keys.add(key)
    return keys


def _check_value_type(key: str, value: Any, annotation: Any, path: str | None) -> None:
    """argparse converts strings; catch YAML values of the wrong kind (a list for a number, say)."""
    if value is None or isinstance(value, str):
        return
    allowed = _allowed_types(annotation)
    if not allowed or any(_is_instance(value, t) for t in allowed):
        return
    names = ", ".join(sorted(t.__name__ for t in allowed))
    raise RecipeConfigError(
        f"Option `{key}` in {path} has the wrong type: got {type(value).__name__} {value!r}, expected {names}."
    )


def _allowed_types(annotation: Any) -> set[type]:
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, {**vars(typing), "dict": dict, "list": list})  # noqa: S307
        except Exception:  # noqa: BLE001 - unknown forward references are simply not checked
            return set()
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_allowed_types(a) for a in typing.get_args(annotation)))
    if origin is not None:
        return {origin} if isinstance(origin, type) else set()
    if isinstance(annotation, type):
        if issubclass(annotation, str):  # str-valued enums accept plain strings only
            return {str}
        return {annotation}
    return set()


def _is_instance(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is type(None):
        return value is None
    return isinstance(value, expected)
