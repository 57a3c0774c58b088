"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a path, a file, an option). The message names the thing and the reason, in one line."""

    exit_code = 2
