"""ONNX graph files whose SHA-256 is recorded when they are written and checked before each use.

The onnxruntime backend runs a graph file only from bytes that match the SHA-256 recorded for
it, so a graph damaged on disk (a flipped byte, a truncated or empty file, another target's
graph in its place) is never run. Two places record the hashes:

- the backend's cache in the model cache: `<key>.onnx` beside `<key>.onnx.sha256`, one line in
  `sha256sum`'s format (`<64 hex digits>  <key>.onnx`), so the record also names the graph it
  belongs to (two swapped pairs do not verify);
- an export folder: `umx export` records each graph's SHA-256 in `umx-onnx.json`.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from umx.audio import display_path
from umx.errors import UmxError
from umx.files import sha256_bytes, write_bytes_atomic

RECORD_SUFFIX = ".sha256"
MAX_GRAPH_BYTES = 1 << 31
"""The largest graph read: protobuf's limit on one serialised ONNX model (2 GiB)."""
MAX_RECORD_BYTES = 1024
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DamagedGraph(UmxError):
    """A graph file that is not the one recorded: missing, unreadable, or other bytes."""


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file (never blocking on a pipe or a device).

    Raises:
        DamagedGraph: `path` is missing, not a regular file, unreadable or larger than `limit`.
    """
    shown = display_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DamagedGraph(f"{shown} is not a regular file")
            data = file.read(limit + 1)
    except OSError as error:
        raise DamagedGraph(f"cannot read {shown} ({error.strerror or error})") from None
    if len(data) > limit:
        raise DamagedGraph(f"{shown} is larger than {limit} bytes")
    return data


@dataclass(frozen=True)
class GraphFile:
    """A graph file and the SHA-256 recorded for it.

    Attributes:
        path: the graph file.
        sha256: its recorded SHA-256, 64 lowercase hex digits.
    """

    path: Path
    sha256: str

    def read(self) -> bytes:
        """The graph's bytes, checked against the recorded SHA-256.

        Raises:
            DamagedGraph: the file is missing, not a regular file, unreadable, or its bytes
                differ from the recorded ones.
        """
        data = _read_regular(self.path, MAX_GRAPH_BYTES)
        if sha256_bytes(data) != self.sha256:
            raise DamagedGraph(f"{display_path(self.path)} does not match its recorded SHA-256")
        return data


def plain_name(name: object) -> bool:
    """Whether `name` (from untrusted JSON) is the plain name of a file in a folder: a string
    with no path in it, not `.` or `..`, with no backslash or NUL."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and os.path.basename(name) == name
        and "\\" not in name
        and "\0" not in name
    )


def graph_bytes(graph: bytes | GraphFile) -> bytes:
    """A serialised graph: `graph` itself, or a `GraphFile`'s checked bytes."""
    return graph.read() if isinstance(graph, GraphFile) else graph


def record_path(path: Path) -> Path:
    """Where the SHA-256 of the cached graph `path` is recorded."""
    return path.with_name(path.name + RECORD_SUFFIX)


def recorded_graph(path: Path) -> GraphFile | None:
    """The cached graph `path` with its recorded SHA-256 (not yet checked: `GraphFile.read`).

    Returns:
        None when there is no graph file at `path` (nothing is cached).

    Raises:
        DamagedGraph: the graph is there but its record is missing, unreadable, or does not
            name it.
    """
    if not os.path.lexists(path):
        return None
    record = record_path(path)
    if not os.path.lexists(record):
        raise DamagedGraph(
            f"{display_path(path)} has no recorded SHA-256 ({record.name} is missing)"
        )
    text = _read_regular(record, MAX_RECORD_BYTES).decode("ascii", errors="replace")
    digest, _, name = text.strip().partition("  ")
    if not SHA256.match(digest) or name != path.name:
        raise DamagedGraph(f"{display_path(record)} is not a SHA-256 record of {path.name}")
    return GraphFile(path, digest)


def write_recorded(path: Path, graph: bytes) -> GraphFile:
    """Write the graph file `path` and its SHA-256 record, each atomically: the record first,
    so that an interrupted write leaves no graph without one (a record without its graph is
    nothing cached: `recorded_graph`); a record whose graph could not be written (a full disk)
    is removed.

    Raises:
        OSError: the files cannot be written.
    """
    digest = sha256_bytes(graph)
    line = f"{digest}  {path.name}\n".encode()
    record = record_path(path)
    write_bytes_atomic(record, line)
    try:
        write_bytes_atomic(path, graph)
    except OSError:
        record.unlink(missing_ok=True)
        raise
    return GraphFile(path, digest)
