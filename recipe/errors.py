"""The one error type a user sees for bad options or input: the message names the option or file and what to do."""


class RecipeConfigError(ValueError):
    """A recipe option or input is wrong; the message names it and says what to do."""
