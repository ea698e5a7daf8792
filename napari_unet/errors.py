"""Exceptions whose message is one plain sentence meant for the user."""

import errno


class NapariUnetError(Exception):
    """Base class: ``str(error)`` is a complete sentence to show as is."""


class CheckpointError(NapariUnetError):
    """A checkpoint file is missing, corrupt, unsafe or does not fit its config."""


class InputError(NapariUnetError):
    """An image (or pair of images) cannot be used as given."""


class NapariUnetWarning(UserWarning):
    """A result that ran but may be wrong: ``str(warning)`` is one sentence naming what to try."""


class Cancelled(NapariUnetError):
    """The caller asked to stop."""


_OS_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the disk or this process may write",
    errno.EROFS: "the file system is read-only",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EEXIST: "it already exists",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EPIPE: "the output was closed",
}


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first non-empty line of a library's error text (at most ``limit`` characters), for
    quoting inside one sentence."""
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def os_error_sentence(exc: OSError, path: object = None) -> str:
    """One plain sentence for an OS error, naming the file and the reason (no traceback)."""
    where = path if path is not None else exc.filename
    reason = _OS_REASONS.get(exc.errno or 0) or (exc.strerror or type(exc).__name__).lower()
    return f"{where}: {reason}." if where is not None else f"{reason[0].upper()}{reason[1:]}."


class InvalidParameter(InputError, ValueError):
    """A number or option given by the user is of the wrong type or outside its range."""
