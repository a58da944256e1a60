"""One job record for `umx batch` and `umx serve`: the status words, the JSON Lines manifest,
output verification, and `run_task`, which separates one input and describes what happened.

A record is a JSON object: `input` (the key of the input, or of the job), `status`, and as the
status says, `outputs` (`{stem: {path, sha256, bytes, mtime_ns}}`) or `error` (one line). The
manifest holds one record per line, appended and fsynced one at a time; the latest record of an
input is its state. A damaged line (cut short by a crash, garbage or NUL bytes a full disk or a
crash left, a record of the wrong JSON types) is skipped by readers and removed by `Manifest`,
which keeps every complete record and a copy of what it removed (`NAME.cut-TIME`). `Manifest`
also compacts the file, rewriting it atomically with only the latest record of each input once
the records it supersedes outnumber those (see `Manifest.compact`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from umx.api import separate_file, separator_for
from umx.audio import display_path
from umx.errors import UmxError
from umx.files import sha256_file, write_bytes_atomic
from umx.messages import plural, shown
from umx.model_hash import FolderState, folder_state
from umx.options import OutputOptions, SeparationOptions
from umx.separator import Separator

logger = logging.getLogger("umx")

QUEUED, RUNNING, DONE, FAILED, DELETED = "queued", "running", "done", "failed", "deleted"
"""The status of a job: waiting for a worker (the web queue); handed to a worker; outputs
written and hashed; an error; removed (by a user or the web's cache limit)."""
MANIFEST_STATUSES = (QUEUED, RUNNING, DONE, FAILED, DELETED)
"""The statuses a manifest records (`umx batch` writes running, done and failed)."""
COMPACT_MIN_SUPERSEDED = 100
"""Superseded records a manifest holds at least before `Manifest.append` compacts it (a small
manifest is not rewritten after every few records)."""
MAX_LOADED_SEPARATORS = 2
"""Separators a process keeps loaded (`loaded_separator`; the least recently used goes): a
batch worker uses one, `umx serve` one per model and stem mode in use."""
_CHUNKING = ("segment", "overlap", "whole_track")
"""The fields of `SeparationOptions` that do not change the loaded separator."""

_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "path": (str,),
    "attempt": (int,),
    "error": (str,),
    "started": (int, float),
    "finished": (int, float),
    "audio_seconds": (int, float, type(None)),
}
"""The optional fields of a record that readers use, with their JSON types."""
_OUTPUT_FIELDS = {"path": str, "sha256": str, "bytes": int, "mtime_ns": int}
"""What a done record keeps of each output."""


@dataclass
class ManifestScan:
    """What a manifest holds: its complete records, and the damaged lines among them.

    Attributes:
        records: the records (JSON objects of the right types), in order.
        kept: the bytes of the manifest once the damaged lines are removed.
        damaged: the damaged lines, as they were (a line holding NUL bytes is damaged, even
            where records around the NUL bytes are kept).
        first_problem: what is wrong with the first damaged line, with its number.
        intact: whether `kept` is the whole manifest (no damaged line, no empty line, and a
            newline at the end).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    kept: bytes = b""
    damaged: list[bytes] = field(default_factory=list)
    first_problem: str = ""
    intact: bool = True


def scan_manifest(path: str | os.PathLike) -> ManifestScan:
    """Read a manifest, telling its complete records from its damaged lines.

    Returns:
        the scan; empty if the manifest does not exist.

    Raises:
        UmxError: the manifest cannot be read.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return ManifestScan()
    except OSError as error:
        raise UmxError(
            f"cannot read the manifest {display_path(path)} ({error.strerror})"
        ) from None
    scan = ManifestScan()
    kept = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line:
            continue  # the end of the file, or an empty line
        pieces = line.split(b"\0")  # a record never holds a NUL byte: split around NUL runs
        problem = "NUL bytes" if len(pieces) > 1 else None
        for piece in filter(None, pieces):
            try:
                record = json.loads(piece)
            except (ValueError, RecursionError):
                problem = problem or "not JSON"
                continue
            reason = record_problem(record)
            if reason is None:
                scan.records.append(record)
                kept.append(piece + b"\n")
            else:
                problem = problem or reason
        if problem is not None:
            scan.damaged.append(line)
            scan.first_problem = scan.first_problem or f"line {number}: {problem}"
    scan.kept = b"".join(kept)
    scan.intact = scan.kept == data
    return scan


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete records of a manifest, in order; damaged lines are skipped.

    Returns:
        the records (JSON objects); none if the manifest does not exist.
    """
    return scan_manifest(path).records


def record_problem(record: object) -> str | None:
    """Why a manifest line's JSON is not a record readers can use.

    Returns:
        None for a record; else what is wrong with it, as a phrase.
    """
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record"
    if not isinstance(record.get("input"), str):
        return "no input"
    if record.get("status") not in MANIFEST_STATUSES:
        status = shown(json.dumps(record.get("status")))
        return f"status {status}, not queued, running, done, failed or deleted"
    for key, kinds in _RECORD_FIELDS.items():
        value = record.get(key)
        if key in record and (isinstance(value, bool) or not isinstance(value, kinds)):
            return f"{key} is {shown(json.dumps(value))}"
    if record["status"] == DONE:
        outputs = record.get("outputs")
        if not isinstance(outputs, dict) or not all(
            isinstance(output, dict)
            and all(isinstance(output.get(k), kind) for k, kind in _OUTPUT_FIELDS.items())
            for output in outputs.values()
        ):
            return "outputs is not a map of stems to their path, sha256, bytes and mtime_ns"
    if record["status"] == FAILED and "error" not in record:
        return "a failed record without its error"
    return None


def latest_records(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The latest record of each input, by its key."""
    return {record["input"]: record for record in records}


def repair_manifest(path: Path) -> list[dict[str, Any]]:
    """The manifest's records, once its damaged lines are removed (every complete record is
    kept, and a copy of the damaged lines beside it), so that the next record starts on a line
    of its own.

    Raises:
        UmxError: the manifest cannot be read.
    """
    scan = scan_manifest(path)
    if scan.damaged:
        removed = b"\n".join(scan.damaged)
        copy = keep_copy(path, "cut", removed)
        write_bytes_atomic(path, scan.kept)
        logger.warning(
            "%s: removed %s (%s bytes; %s) and kept the %s; what was removed is in %s",
            display_path(path),
            plural(len(scan.damaged), "damaged line"),
            f"{len(removed):,}",
            scan.first_problem,
            plural(len(scan.records), "complete record"),
            display_path(copy),
        )
    elif not scan.intact:  # empty lines, or a complete last record without its newline
        write_bytes_atomic(path, scan.kept)
    return scan.records


def keep_copy(path: Path, why: str, data: bytes) -> Path:
    """Save `data` beside `path` as `NAME.WHY-TIME` (a free name), before `path` is repaired.

    Returns:
        the copy.
    """
    stamp = f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}"
    copy = path.with_name(stamp)
    number = 1
    while copy.exists():
        number += 1
        copy = path.with_name(f"{stamp}-{number}")
    write_bytes_atomic(copy, data)
    return copy


class Manifest:
    """A manifest open for appending, repaired first (see `repair_manifest`), that keeps the
    latest record of each input to compact itself.

    Args:
        path: the manifest, created if missing.

    Attributes:
        records: its complete records when it was opened, in order.
        latest: the latest record of each input but the deleted ones, as now.

    Raises:
        UmxError: the manifest cannot be read.
        OSError: it cannot be repaired or opened.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # a compaction cut short
            leftover.unlink(missing_ok=True)
        self.records = repair_manifest(path)
        self.latest: dict[str, Mapping[str, Any]] = {}
        for record in self.records:
            self._keep(record)
        self._nb_records = len(self.records)
        self._compact_from = 0  # superseded records that make `append` compact
        self._fd = _open_append(path)

    @property
    def superseded(self) -> int:
        """The records on file that a later one replaced (or that say deleted)."""
        return self._nb_records - len(self.latest)

    def append(self, record: Mapping[str, Any]) -> None:
        """Add a record, on disk (fsynced) when this returns, then compact the manifest if its
        superseded records outnumber the live ones (and `COMPACT_MIN_SUPERSEDED`).

        Raises:
            OSError: the record could not be written (a full disk): the file is as it was.
        """
        line = _line(record)
        size = os.fstat(self._fd).st_size
        try:
            written = 0
            while written < len(line):
                written += os.write(self._fd, line[written:])
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):  # no half line for the next record to follow
                os.ftruncate(self._fd, size)
            raise
        self._nb_records += 1
        self._keep(record)
        due = max(len(self.latest), COMPACT_MIN_SUPERSEDED, self._compact_from)
        if self.superseded > due:
            try:
                self.compact()
            except OSError as error:  # the records are safe: compaction waits for more of them
                self._compact_from = 2 * self.superseded
                logger.warning(
                    "%s: cannot compact it (%s); it is kept as it is",
                    display_path(self.path),
                    error.strerror or error,
                )

    def compact(self) -> None:
        """Rewrite the manifest with only the latest record of each input, deleted inputs left
        out, in the order they were last recorded; atomically (a crash leaves the old file).

        Raises:
            OSError: it cannot be rewritten; the manifest is as it was.
        """
        write_bytes_atomic(self.path, b"".join(_line(r) for r in self.latest.values()))
        os.close(self._fd)
        self._fd = _open_append(self.path)
        self._nb_records, self._compact_from = len(self.latest), 0

    def close(self) -> None:
        """Close the file."""
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _keep(self, record: Mapping[str, Any]) -> None:
        self.latest.pop(record["input"], None)  # the order of the last changes
        if record["status"] != DELETED:
            self.latest[record["input"]] = record


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)


def _line(record: Mapping[str, Any]) -> bytes:
    """A record as a manifest line."""
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str)
    return (text + "\n").encode()


def describe_output(path: str | os.PathLike) -> dict[str, Any]:
    """What a record keeps of an output file to verify it later: path, SHA-256, size and
    modification time."""
    stat = os.stat(path)
    return {
        "path": os.path.abspath(path),
        "sha256": sha256_file(path),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def describe_input(path: str | os.PathLike) -> dict[str, Any]:
    """What a record keeps of its input to tell later whether the file changed: `input_bytes`,
    `input_mtime_ns` and `input_sha256` (the hash costs one read of the file, about 50 ms for a
    60 MB WAV, next to seconds of separation); `input_bytes` None where it cannot be read."""
    try:
        stat = os.stat(path)
        digest = sha256_file(path)
    except OSError:
        return {"input_bytes": None}
    return {"input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns, "input_sha256": digest}


def input_changed(
    record: Mapping[str, Any], path: str | os.PathLike, full: bool = False
) -> str | None:
    """Whether the input of a done record is no longer the file that was separated.

    A file whose size and modification time are those recorded is trusted without reading it;
    any other is hashed and compared with the recorded SHA-256 (a copy that kept the bytes is
    the same input), and with `full` every file is. Records of versions that kept only the size
    are compared by size; an input that cannot be read now is not said to have changed (its
    separation fails, if it is ever run again).

    Returns:
        None if it is the same input (or it cannot be told); else how it changed, as a phrase.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    size, mtime, digest = (record.get(f"input_{k}") for k in ("bytes", "mtime_ns", "sha256"))
    if _is_int(size) and stat.st_size != size:
        return f"the input changed since it was separated ({size:,} bytes, now {stat.st_size:,})"
    if not isinstance(digest, str):
        return None
    if not full and _is_int(mtime) and stat.st_mtime_ns == mtime:
        return None
    try:
        same = sha256_file(path) == digest
    except OSError:
        return None
    return None if same else "the input changed since it was separated (other content)"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def verify_outputs(record: Mapping[str, Any], full: bool = False) -> str | None:
    """Check that the outputs of a done record are the files that were written.

    A file whose size and modification time are those recorded is trusted without reading it
    (hashing every stem of a large job again would take as long as copying it); any other file
    is hashed and compared with the recorded SHA-256, and with `full` every file is.

    Returns:
        None if every output is there and intact; else why not, as a phrase.
    """
    for output in record.get("outputs", {}).values():
        path = output["path"]
        try:
            stat = os.stat(path)
        except OSError:
            return f"its output {display_path(path)} is missing"
        if not full and stat.st_size == output["bytes"] and stat.st_mtime_ns == output["mtime_ns"]:
            continue
        try:
            same = sha256_file(path) == output["sha256"]
        except OSError as error:
            return f"its output {display_path(path)} cannot be read ({error.strerror})"
        if not same:
            return f"its output {display_path(path)} changed since it was written"
    return None


@dataclass(frozen=True)
class TaskOptions:
    """What `run_task` separates an input with, and how it writes its stems.

    Attributes:
        separation: the model and how it separates (its chunks included).
        output: where the stems go and how they are written.
        aggregate: groups of targets to write instead of the targets.
        downmix, match_input: see `umx.api.separate_file`.
        start, duration: the excerpt of the input to separate, in seconds.
    """

    separation: SeparationOptions
    output: OutputOptions
    aggregate: Mapping[str, Sequence[str]] | None = None
    downmix: bool = False
    match_input: bool = False
    start: float = 0.0
    duration: float | None = None

    def file_options(self) -> dict[str, Any]:
        """The keyword arguments of `umx.api.separate_file` but the separator and `on_progress`."""
        return {
            **self.output.as_kwargs(),
            "aggregate": self.aggregate,
            "downmix": self.downmix,
            "match_input": self.match_input,
            "start": self.start,
            "duration": self.duration,
            "segment": self.separation.chunk_seconds,
            "overlap": self.separation.overlap,
        }


_separators: collections.OrderedDict[tuple, tuple[Separator, FolderState | None]] = (
    collections.OrderedDict()
)  # each separator with its model folder's state when it was loaded
_separators_lock = threading.Lock()


def loaded_separator(options: SeparationOptions, *, reload_changed: bool = False) -> Separator:
    """The separator of `options`, loaded once per process (`umx.api.separator_for`, without
    a progress bar) and kept for the next input; options that differ only in their chunks
    share it. At most `MAX_LOADED_SEPARATORS` stay loaded, the least recently used dropped.

    Args:
        options: the model and how it separates.
        reload_changed: load a model folder again when its files changed since it was loaded
            (`umx.model_hash.folder_state`: retrained, replaced), as `umx serve` does; a batch
            worker keeps the weights its job's hash was checked against.

    Raises:
        UmxError: the model cannot be loaded.
    """
    key = tuple(
        (f.name, getattr(options, f.name)) for f in fields(options) if f.name not in _CHUNKING
    )
    with _separators_lock:  # a model loads once even when threads ask for it together
        entry = _separators.pop(key, None)
        state = folder_state(options.model) if reload_changed or entry is None else None
        if entry is None or (reload_changed and entry[1] != state):
            entry = None  # dropped before the new one loads: one copy in memory at a time
            while len(_separators) >= MAX_LOADED_SEPARATORS:
                _separators.popitem(last=False)
            # the state taken before loading: a change during the load is loaded next time
            entry = separator_for(options, progress=False), state
        _separators[key] = entry
        return entry[0]


def run_task(
    input_path: str | os.PathLike,
    options: TaskOptions,
    on_progress: Callable[[float, float], None] | None = None,
    *,
    log_traceback: bool = False,
    separator: Separator | None = None,
) -> dict[str, Any]:
    """Separate one input with `umx.api.separate_file` and describe what happened as a record.

    The separator comes from `loaded_separator`, so a process loads each model once. An input
    that cannot be separated (a model that cannot be loaded, an input unreadable or corrupt, an
    output that exists) gives a failed record with the one-line error, and so does an
    unexpected error (a bug, a resource error), as its type and first line; the caller goes on
    with its next input. Interruptions (`KeyboardInterrupt`, and any exception that is not an
    `Exception`, such as a caller's cancellation raised by `on_progress`) pass through, the
    stems cleaned up by the writers.

    Args:
        input_path: the mixture.
        options: the model, the separation and the stem files.
        on_progress: called after each chunk with the seconds of audio done and in all.
        log_traceback: log an unexpected error with its traceback (on a server's terminal)
            as well as recording it; batch workers only record it (their output holds no
            traceback).
        separator: the separator to use, loaded with `options.separation` (the caller checked
            its weights); None: `loaded_separator`'s.

    Returns:
        the record: `status` (`done` or `failed`), what it keeps of the input (see
        `describe_input`), `audio_seconds`, `seconds`
        (wall time), `finished` (Unix time), and `outputs` (`{name: {path, sha256, bytes,
        mtime_ns}}`, see `describe_output`) or `error`.
    """
    started = time.time()
    audio = [0.0]

    def progress(done: float, total: float) -> None:
        audio[0] = total
        if on_progress is not None:
            on_progress(done, total)

    record: dict[str, Any] = describe_input(input_path)  # before it is read: a later change shows
    try:
        if separator is None:
            separator = loaded_separator(options.separation)
        reports = separate_file(
            input_path, separator, **options.file_options(), on_progress=progress
        )
        names = separator.output_names(options.aggregate)  # the order of the reports
        record["status"] = DONE
        record["outputs"] = {
            name: describe_output(report.path) for name, report in zip(names, reports, strict=True)
        }
    except UmxError as error:
        record.update(status=FAILED, error=str(error))
    except Exception as error:  # a bug or a resource error: recorded, and the caller goes on
        if log_traceback:
            logger.exception("%s: separation failed", display_path(input_path))
        lines = str(error).strip().splitlines()
        message = f"{type(error).__name__}: {lines[0] if lines else 'no message'}"
        record.update(status=FAILED, error=f"the separation failed unexpectedly: {message}")
    record.update(
        audio_seconds=round(audio[0], 3),
        seconds=round(time.time() - started, 3),
        finished=round(time.time(), 3),
    )
    return record
