"""Uploads to `umx serve`: written to disk as they arrive, hashed, and refused as soon as they
pass the size limit, never held in memory."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

from umx.errors import UmxError


class TooLarge(UmxError):
    """An upload over the size limit."""


class Upload:
    """An input being received: written to a hidden file under `uploads/` as it arrives, hashed
    and counted, and refused as soon as it passes the size limit.

    Args:
        directory: where the file goes.
        name: the client's name for it (display only).
        limit: the most bytes accepted.
        on_discard: called once, when it is discarded (see `discard`).
    """

    def __init__(
        self, directory: Path, name: str, limit: int, on_discard: Callable[[], None]
    ) -> None:
        self.name, self.limit = name, limit
        self._on_discard: Callable[[], None] | None = on_discard
        self.path = directory / f".{secrets.token_hex(8)}.part"
        self.size = 0
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = open(self.path, "xb")  # noqa: SIM115 (closed by finish)

    def write(self, data: bytes) -> None:
        """Append a piece of the body.

        Raises:
            TooLarge: the upload passed the limit; the file is removed.
        """
        self.size += len(data)
        if self.size > self.limit:
            self.discard()
            raise too_large(self.name, self.limit)
        assert self._file is not None
        self._file.write(data)
        self._hash.update(data)

    def finish(self) -> str:
        """Close the file, on disk for good; returns the content's SHA-256."""
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Close and remove the file (gone already once it is a job's), and call `on_discard`
        the first time."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
        if self._on_discard is not None:
            self._on_discard()
            self._on_discard = None


def megabytes(limit: int) -> str:
    """An upload limit in bytes as `--max-upload-mb` gives it (`int(MB * 2**20)` bytes): the
    shortest number of MiB that gives it back (0.1, not 0.0999994): the number given, unless
    it has more digits than the bytes tell apart."""
    for decimals in range(21):
        scaled = -(-limit * 10**decimals // 2**20)  # the smallest with these decimals above it
        whole, fraction = divmod(scaled, 10**decimals)
        text = f"{whole}.{fraction:0{decimals}d}" if decimals else str(whole)
        if int(float(text) * 2**20) == limit:
            return text
    return f"{limit / 2**20:g}"


def too_large(name: str, limit: int) -> TooLarge:
    """The refusal of an upload over `limit` bytes."""
    return TooLarge(
        f"{name} is larger than the upload limit of {megabytes(limit)} MB "
        "(umx serve --max-upload-mb)"
    )
