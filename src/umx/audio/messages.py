"""What users are told when audio cannot be read or written: printable paths, one-line errors.

Paths in messages go through :func:`display_path`, so that a file name that is not valid UTF-8
or holds control characters still gives a printable, one-line message; the lines ffmpeg prints
are made printable the same way (:func:`_ffmpeg_failure`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import soundfile

from umx.errors import UmxError

_FFMPEG_MISSING = "ffmpeg is not installed (apt-get install ffmpeg)"


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""What :func:`display_path` escapes: controls, line separators, bidi overrides, surrogates."""


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\ufffd" if "\ud800" <= char <= "\udfff" else repr(char)[1:-1]


def display_path(path: str | bytes | os.PathLike) -> str:
    """A path as printable, one-line text for messages.

    Bytes the file system encoding cannot decode (kept by :func:`os.fsdecode` as surrogate
    escapes) become U+FFFD, and control characters, line separators and bidirectional overrides
    are escaped (``\\n``, ``\\x1b``, ``\\u202e``): the text can be printed or logged to any UTF-8
    stream and stays on one line. Ordinary paths are returned as ``str(path)``.

    Args:
        path: a path as ``str``, ``bytes`` or path-like object.

    Returns:
        The text to show.
    """
    return _UNPRINTABLE.sub(_escape, os.fsdecode(path))


@contextlib.contextmanager
def _user_error(message: str) -> Iterator[None]:
    """Turns libsndfile and operating-system errors into an :class:`UmxError` with ``message``."""
    try:
        yield
    except soundfile.LibsndfileError as error:
        raise UmxError(f"{message} ({_libsndfile_reason(error)})") from error
    except OSError as error:
        raise UmxError(f"{message} ({error.strerror or error})") from error


def _libsndfile_reason(error: soundfile.LibsndfileError) -> str:
    return error.error_string.strip().rstrip(".")


def _undecodable(path: Path, reason: str) -> UmxError:
    return UmxError(f"{display_path(path)} is not decodable audio ({reason})")


def _truncated(path: Path, declared: float, held: float, about: bool = False) -> UmxError:
    """The error for a file holding ``held`` of the ``declared`` seconds its header declares."""
    return UmxError(
        f"{display_path(path)} is truncated: its header declares {declared:.2f} s but the file "
        f"holds {'about ' if about else ''}{min(held, declared):.2f} s"
    )


def _ffmpeg_failure(stderr: bytes, returncode: int, source: str | None = None) -> str:
    """The last line ffmpeg printed, less the ``source`` it names, or its exit status."""
    lines = stderr.strip().splitlines()
    if not lines:
        return f"exit status {returncode}"
    line, prefix = lines[-1], os.fsencode(source or "") + b": "
    if source is not None and line.startswith(prefix):
        line = line[len(prefix) :]
    return _UNPRINTABLE.sub(_escape, line.decode(errors="replace"))
