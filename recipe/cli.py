"""Entry points as a user meets them: a mistake in the options or the data is one line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from recipe.errors import RecipeConfigError

USAGE_ERROR_EXIT_CODE = 2  # what argparse exits with for a bad option


def run_script(main: Callable[[], Any], script: str) -> None:
    """Run `main`; a `RecipeConfigError` (bad option, file or data, raised on purpose with what to do) prints
    its message and exits 2. Any other exception keeps its traceback: it is a bug to report."""
    try:
        main()
    except RecipeConfigError as error:
        print(f"{script}: error: {error}", file=sys.stderr)
        sys.exit(USAGE_ERROR_EXIT_CODE)
