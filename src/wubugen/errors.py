"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a path, a file, an option). The message names the thing and the reason, in one line."""

    exit_code = 2


class TrainingStopped(UserError):
    """The run cannot go on (e.g. non-finite steps again after a rollback): exit code 3."""

    exit_code = 3


class Interrupted(Exception):
    """A run stopped on SIGINT or SIGTERM after saving its progress: the CLI prints the message as one line and exits
    with 128 + the signal's number (130, 143), as a shell reports a process ended by that signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class SignalAbort(KeyboardInterrupt):
    """SIGTERM outside a training loop (or a second Ctrl-C inside one): stop at once. A KeyboardInterrupt, so that
    `except Exception` blocks do not swallow it and `finally` blocks (atomic writes) still clean up."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_OS_ADVICE = {
    "ENOSPC": "the disk is full: free space there or write somewhere else",
    "EDQUOT": "the disk quota is used up: free space there or write somewhere else",
    "EROFS": "the file system is read-only: write somewhere else",
    "EACCES": "make it writable for this user, or write somewhere else",
    "EPERM": "make it writable for this user, or write somewhere else",
    "ENOTDIR": "a part of the path is a file, not a directory: give another path",
    "EEXIST": "a file is in the way: give another path",
    "EISDIR": "a directory is where a file should be: give another path",
    "EIO": "check the disk",
    "ENAMETOOLONG": "give a shorter path",
}


def os_error_message(e: OSError, where: str | None = None) -> str:
    """One line for an OSError: the path it concerns (else `where`), what happened and what to do."""
    import errno
    import os

    path = e.filename if e.filename is not None else where
    reason = e.strerror or (os.strerror(e.errno) if e.errno else (str(e).splitlines() or [type(e).__name__])[0])
    advice = _OS_ADVICE.get(errno.errorcode.get(e.errno or 0, ""))
    shown = os.fsdecode(path) if path is not None else "a file"
    if getattr(e, "filename2", None):
        shown += f" -> {os.fsdecode(e.filename2)}"
    return f"{shown}: {reason}" + (f" ({advice})" if advice else "")
