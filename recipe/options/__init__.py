"""Recipe options: the argument dataclasses, the `Recipe` that holds them, their parser and checks."""
