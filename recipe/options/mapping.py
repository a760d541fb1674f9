"""Options that hold a mapping: YAML gives a mapping, the command line a JSON object."""

from __future__ import annotations

import json

from recipe.errors import RecipeConfigError


def parse_mapping_option(name: str, value: dict | str | None, example: str) -> dict:
    """`value` as a dict (empty when unset); `example` shows the JSON form in the error message."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise RecipeConfigError(f"{name} `{value}` is not JSON ({error.msg}): write it as '{example}'.") from error
    if not isinstance(parsed, dict):
        raise RecipeConfigError(f"{name} `{value}` must be a JSON object such as '{example}'.")
    return parsed
