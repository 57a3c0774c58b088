"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a path, a file, an option). The message names the thing and the reason, in one line."""

    exit_code = 2


class TrainingStopped(UserError):
    """The run cannot go on (e.g. non-finite steps again after a rollback): exit code 3."""

    exit_code = 3
