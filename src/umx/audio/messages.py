"""What users are told when audio cannot be read or written: printable paths, one-line errors.

Paths in messages go through :func:`display_path`, so that a file name that is not valid UTF-8
or holds control characters still gives a printable, one-line message; the lines ffmpeg prints
are made printable the same way (:func:`_ffmpeg_failure`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import soundfile

from umx.errors import UmxError, display_path, printable

_FFMPEG_MISSING = "ffmpeg is not installed (apt-get install ffmpeg)"


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
    return printable(line.decode(errors="replace"))
