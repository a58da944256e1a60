"""Regular files only: a named pipe, a device or a socket is refused before it is opened
(reading one would block or never end), and a file swapped for one after the check too."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from umx.audio.messages import display_path
from umx.errors import UmxError

_SPECIAL_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular(path: Path, mode: int) -> None:
    """Refuses anything but a regular file: pipes and devices block or never end."""
    if not stat.S_ISREG(mode):
        kind = next((kind for test, kind in _SPECIAL_FILES if test(mode)), "a special file")
        raise UmxError(f"{display_path(path)} is {kind}, not a regular audio file")


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[tuple[int, int]]:
    """Opens a regular file for reading; yields its descriptor and size.

    The file is checked with :func:`os.stat` before it is opened, and again on the descriptor
    (opened non-blocking, so a file swapped for a pipe in between cannot block the open).
    """
    try:
        _check_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UmxError(f"{display_path(path)} does not exist") from None
    except OSError as error:
        raise UmxError(f"{display_path(path)} cannot be read ({error.strerror})") from None
    try:
        status = os.fstat(fd)
        _check_regular(path, status.st_mode)
        yield fd, status.st_size
    finally:
        os.close(fd)
