"""What users are told when audio cannot be read or written: printable paths, one-line errors.

Paths in messages go through :func:`display_path`, so that a file name that is not valid UTF-8
or holds control characters still gives a printable, one-line message; the lines ffmpeg prints
are made printable the same way (:func:`_ffmpeg_failure`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import soundfile

from umx.errors import FULL_DISK_HINT, UmxError, display_path, os_reason, printable

if TYPE_CHECKING:
    from umx.audio.reading import AudioFileInfo

_FFMPEG_MISSING = "ffmpeg is not installed (apt-get install ffmpeg)"


NEARLY_FULL = 64 * 2**20
"""Free bytes below which a disk is said to be full when a write fails with no other reason."""


@contextlib.contextmanager
def io_errors(message: str, folder: Path | None = None) -> Iterator[None]:
    """Turns libsndfile and operating-system errors into an :class:`UmxError` with ``message``.

    Args:
        folder: where a file is being written: libsndfile says only "System error" when the
            disk is full, so its free space is then told.
    """
    try:
        yield
    except soundfile.LibsndfileError as error:
        reason = _libsndfile_reason(error)
        if folder is not None:
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(folder).free
                if free < NEARLY_FULL:
                    reason += f": the disk is full ({free / 2**20:.1f} MB free); {FULL_DISK_HINT}"
        raise UmxError(f"{message} ({reason})") from error
    except OSError as error:
        raise UmxError(f"{message} ({os_reason(error)})") from error


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


def _past_the_end(shown: str, start: float, info: AudioFileInfo) -> str:
    """Why an excerpt from `start` seconds of a file holds no audio, with the --start to give.

    Args:
        shown: the file, as messages show it.
        info: what the file says of its audio; its length may be unknown.
    """
    if info.nb_frames is None:
        return f"{shown} ends before {start} s: give a --start below its length"
    return (
        f"{shown} is {round(info.nb_frames / info.sample_rate, 3)} s long: give a --start below it"
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
