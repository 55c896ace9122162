"""Errors the CLI reports as one line on stderr with exit code 2 (never a traceback)."""


class UserError(Exception):
    """A problem with the user's input or environment that the user can fix."""
