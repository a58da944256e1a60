"""The exception umx raises for problems a user can fix (bad files, bad options, missing models),
and the checks of the values that users give: numbers, yes-or-no flags, paths, target lists."""

from __future__ import annotations

import errno
import math
import numbers
import os
import re
import reprlib
from collections.abc import Iterable, Mapping

MIN_RATE, MAX_RATE = 1000.0, 768000.0
"""The sample rates umx accepts anywhere (audio given to the API, raw PCM, model files), in Hz."""

MAX_TARGET_NAME = 64
"""The longest target name, in characters: target names become file names."""
_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
"""Characters a target name must not hold: path separators and control characters."""

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""What :func:`printable` escapes: controls, line separators, bidi overrides, surrogates."""


class _ShortRepr(reprlib.Repr):
    """`reprlib.Repr` keeping each value on one line: an object whose repr spans lines (a torch
    module's, a tensor's) is shown by its type's name, and other objects' reprs are made
    `printable`."""

    def repr_instance(self, x: object, level: int) -> str:
        text = super().repr_instance(x, level)
        return type(x).__name__ if "\n" in text else printable(text)


short = _ShortRepr()
short.maxstring = short.maxother = 40
"""Untrusted values in messages, cut short, on one line: `short.repr(value)`."""


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\ufffd" if "\ud800" <= char <= "\udfff" else repr(char)[1:-1]


def printable(text: str) -> str:
    """Text made printable on one line: lone surrogates become U+FFFD, and control characters,
    line separators and bidirectional overrides are escaped (``\\n``, ``\\x1b``, ``\\u202e``)."""
    return _UNPRINTABLE.sub(_escape, text)


def display_path(path: str | bytes | os.PathLike) -> str:
    """A path as printable, one-line text for messages.

    Bytes the file system encoding cannot decode (kept by :func:`os.fsdecode` as surrogate
    escapes) become U+FFFD, and control characters, line separators and bidirectional overrides
    are escaped (see :func:`printable`): the text can be printed or logged to any UTF-8 stream
    and stays on one line. Ordinary paths are returned as ``str(path)``.

    Args:
        path: a path as ``str``, ``bytes`` or path-like object.

    Returns:
        The text to show.
    """
    return printable(os.fsdecode(path))


class UmxError(Exception):
    """A user error: its message is one sentence, shown by the CLI without a traceback."""


def already_exists(path: str | os.PathLike) -> UmxError:
    """The refusal to write over `path` without the user's consent (`--force`)."""
    return UmxError(f"{display_path(path)} already exists (use --force to overwrite)")


FULL_DISK_HINT = "free some space, or write elsewhere"
_WHAT_TO_DO = {
    errno.ENOSPC: FULL_DISK_HINT,
    errno.EDQUOT: FULL_DISK_HINT,
    errno.EROFS: "write elsewhere",
    errno.EACCES: "check its permissions, or write elsewhere",
    errno.EPERM: "check its permissions, or write elsewhere",
    errno.ENAMETOOLONG: "use a shorter name",
}


def os_reason(error: OSError) -> str:
    """Why the operating system refused (a full disk, a read-only folder), with what to do
    where that helps."""
    reason = error.strerror or str(error) or type(error).__name__
    hint = _WHAT_TO_DO.get(error.errno)
    return f"{reason}; {hint}" if hint else reason


def os_error_line(error: OSError) -> str:
    """An error of the operating system as one line: the file it names, and `os_reason`."""
    if error.filename is None:
        return os_reason(error)
    return f"{display_path(error.filename)}: {os_reason(error)}"


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
) -> None:
    """Refuse a number a user gave that is not finite, not of the right kind, or out of range.

    Args:
        name: how the user knows the value, e.g. `--niter`; the message names it.
        value: the value to check: a real number (`numbers.Real`, numpy's scalars included);
            booleans (Python's and numpy's) and strings are refused.
        minimum: the smallest value allowed, inclusive.
        above: a bound the value must exceed, exclusive.
        maximum: the largest value allowed, inclusive.
        integer: only whole numbers (`numbers.Integral`: ints, numpy's integers) are allowed.

    Raises:
        UmxError: the value breaks one of these rules.
    """
    kinds = numbers.Integral if integer else numbers.Real  # numpy's scalars too
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise UmxError(f"{name} must be {kind}, not {short.repr(value)}")
    if not math.isfinite(value):
        raise UmxError(f"{name} must be a finite number, not {value}")
    if minimum is not None and value < minimum:
        raise UmxError(f"{name} must be at least {_shown(minimum)}, not {_shown(value)}")
    if above is not None and value <= above:
        raise UmxError(f"{name} must be greater than {_shown(above)}, not {_shown(value)}")
    if maximum is not None and value > maximum:
        raise UmxError(f"{name} must be at most {_shown(maximum)}, not {_shown(value)}")


def _shown(number: float) -> str:
    """A bound or value as a message shows it: whole numbers in full (99999999, not 1e+08), and
    others with the digits that tell them apart (2.0000001, not 2, beside a bound of 2)."""
    if float(number).is_integer():
        return str(int(number)) if abs(number) < 1e15 else f"{number:g}"
    return repr(float(number))


def check_flag(option: str, value: object) -> None:
    """Refuse a yes-or-no option that is not a bool: the text "false" or "no" is true in Python,
    and would overwrite files or change the output unasked.

    Raises:
        UmxError: naming the option as the command line spells it (`--force`).
    """
    if not isinstance(value, bool):
        raise UmxError(f"{option} must be True or False, not {short.repr(value)}")


def check_flags(flags: Mapping[str, object]) -> None:
    """`check_flag` of each option and its value."""
    for option, value in flags.items():
        check_flag(option, value)


def check_path(option: str, value: object, *, optional: bool = False, what: str = "a path") -> None:
    """Refuse a path option that is not text or a path-like object (None too with `optional`);
    the message says the option must be `what`.

    Raises:
        UmxError: naming the option as the command line spells it (`--outdir`).
    """
    if not (isinstance(value, str | os.PathLike) or (optional and value is None)):
        raise UmxError(f"{option} must be {what}, not {short.repr(value)}")


def check_targets(targets: object) -> tuple[str, ...] | None:
    """A `--targets` value as a tuple, or None (all of the model's), refusing text (a tuple of
    its letters) and an empty list; the names themselves are the model's to check.

    Raises:
        UmxError: naming `--targets`.
    """
    if isinstance(targets, str):
        raise UmxError(f"targets must be a list of names, not the text {targets!r}")
    if targets is None:
        return None
    names = tuple(targets) if isinstance(targets, Iterable) else None
    if names is None or not all(isinstance(name, str) for name in names):
        raise UmxError(f"targets must be a list of names, not {short.repr(targets)}")
    if not names:
        raise UmxError("--targets is empty: name at least one target, or leave it out for all")
    return names


def check_target_name(name: object, source: str) -> str:
    """Refuse a target name that is not a safe file-name stem (stems are written under it).

    Args:
        name: the name, from untrusted input.
        source: where it comes from, for the message, e.g. a file.

    Returns:
        the name.

    Raises:
        UmxError: not a string, empty, too long, with a path separator or a control character,
            starting with a dot or a space, or ending with a space.
    """
    if not isinstance(name, str):
        raise UmxError(f"{source} has a target name that is not a string: {short.repr(name)}")
    if (
        not name
        or len(name) > MAX_TARGET_NAME
        or _UNSAFE_NAME.search(name)
        or name.startswith(".")
        or name != name.strip()
    ):
        raise UmxError(
            f"{source} has an unsafe target name {short.repr(name)}: a target name is written "
            f"as a file name, so it must have 1 to {MAX_TARGET_NAME} characters, no / or \\ or "
            "control characters, and not start with a dot or a space"
        )
    return name


MAX_SECONDS = 1e9
"""The latest start and the longest duration of an excerpt, in seconds: 30 years, past any file,
while `seconds * rate` stays a whole number of frames."""


def check_excerpt(start: object, duration: object) -> None:
    """Refuse an excerpt (`--start`, `--duration`, in seconds) that is no number, negative, empty
    (a duration of 0) or beyond `MAX_SECONDS`; a duration of None (to the end) passes.

    Raises:
        UmxError: naming the option as the command line spells it.
    """
    check_number("--start", start, minimum=0, maximum=MAX_SECONDS)
    if duration is not None:
        check_number("--duration", duration, above=0, maximum=MAX_SECONDS)
