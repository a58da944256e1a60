"""The files of `umx serve`'s data directory: checking that it takes files, that a job's stems are
those separated, the size of a job's folder, and removals that a crash cannot leave half done."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from umx.audio import display_path
from umx.errors import UmxError
from umx.files import HeldLock, hold_lock, sha256_file
from umx.folders import in_the_way, not_a_folder
from umx.messages import shown

PROBE_BYTES = 1 << 16
"""Bytes written (and removed) at start to check that the data directory takes files."""


def check_data_dir(root: Path, folders: Sequence[Path]) -> None:
    """Create the data directory's `folders` and make sure files can be written in them. When
    they cannot be, the folders made here (the data directory and its parents included) are
    removed again, so that a refused `--data-dir` leaves nothing behind.

    Raises:
        UmxError: it cannot be used (a file, in a file, not creatable, read-only, full, a name
            too long), in one sentence that names it (shortened) and says what to do.
    """
    where = f"the data directory {shown(os.fsdecode(root))}"
    # os.path.lexists, not Path.exists: that raises for a name too long
    made = {path for folder in folders for path in (folder, *folder.parents)}
    made = sorted((path for path in made if not os.path.lexists(path)), key=lambda f: -len(f.parts))
    try:
        if os.path.lexists(root) and not root.is_dir():
            raise UmxError(f"{where} is not a folder; choose another with --data-dir")
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe.{secrets.token_hex(4)}.tmp"
            try:
                with open(probe, "xb") as file:
                    file.write(bytes(PROBE_BYTES))
                    file.flush()
                    os.fsync(file.fileno())
            finally:
                probe.unlink(missing_ok=True)
    except BaseException as error:
        for folder in made:  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        if not isinstance(error, OSError):
            raise
        raise UmxError(_refusal(root, error)) from None


def _refusal(root: Path, error: OSError) -> str:
    """Why the data directory `root` cannot be used (`error`), and what to do."""
    if error.errno == errno.ENAMETOOLONG:  # the path shown cut short: the message stays short
        return (
            f"cannot write in the data directory {shown(os.fsdecode(root), 40)}: "
            f"{error.strerror}; give a shorter --data-dir"
        )
    where = f"the data directory {shown(os.fsdecode(root))}"
    blocker = not_a_folder(Path(os.fsdecode(error.filename))) if error.filename else None
    if blocker is not None:  # where mkdir says "File exists" or "Not a directory"
        blocking = f"{shown(os.fsdecode(blocker))} is {in_the_way(blocker)}"
        return f"cannot write in {where}: {blocking}; choose another with --data-dir"
    return f"cannot write in {where}: {error.strerror or error}; choose another with --data-dir"


def lock_data_dir(root: Path) -> HeldLock:
    """Hold the data directory's lock (see `umx.files.hold_lock`), so that two servers never
    share one: their queues and manifests would overwrite each other's jobs.

    Returns:
        the lock; `close` releases it.

    Raises:
        UmxError: another `umx serve` holds it, or it cannot be created.
    """
    where = f"the data directory {shown(os.fsdecode(root))}"
    try:
        lock = hold_lock(root)
    except OSError as error:
        raise UmxError(f"cannot write in {where}: {error.strerror or error}") from None
    if lock is None:
        raise UmxError(
            f"{where} is in use by another umx serve; stop that one, or choose another "
            "folder with --data-dir"
        )
    return lock


def as_named(message: str, path: Path, name: str) -> str:
    """An error message about a stored file, naming it as the user knows it."""
    return message.replace(display_path(path), display_path(name))


def stem_damage(
    stems: Mapping[str, Path],
    outputs: Mapping[str, Mapping[str, Any]],
    hashed: dict[Path, tuple[int, int]] | None = None,
) -> str | None:
    """Why a finished job's stems are not the files that were separated, or None if they are.

    Each stem must have its record (`umx.jobs.describe_output`) and be as large, and as old, as
    it was written: one that differs is hashed, and kept only if it has the recorded SHA-256
    (touched, not changed). With `hashed`, a stem is also hashed once while its size and time
    stay those `hashed` keeps for it (updated here): a change that kept both is caught the
    first time the stem is used after it.

    Args:
        stems: each stem's name to its file.
        outputs: each stem's name to its record.
        hashed: the size and modification time each file had when its hash was last found
            right, by path; None: trust a size and time that match the record.

    Returns:
        why not, as a phrase ("its stem drums.wav is missing"), or None.
    """
    for name, path in stems.items():
        record, shown = outputs.get(name), f"its stem {path.name}"
        if record is None:
            return f"{shown} has no record of what was written"
        try:
            stat = path.stat()
            seen = (stat.st_size, stat.st_mtime_ns)
            if seen == (record["bytes"], record["mtime_ns"]) and (
                hashed is None or hashed.get(path) == seen
            ):
                continue
            if sha256_file(path) != record["sha256"]:
                return f"{shown} changed since it was separated"
        except FileNotFoundError:
            return f"{shown} is missing"
        except OSError as error:
            return f"{shown} cannot be read ({error.strerror or error})"
        if hashed is not None:
            hashed[path] = seen
    return None


def _files(directory: Path) -> Iterator[Path]:
    """Every file under `directory`."""
    for root, _, names in os.walk(directory):
        for name in names:
            yield Path(root) / name


def folder_size(directory: Path) -> int:
    """The bytes of the files under `directory` (0 where it is gone)."""
    total = 0
    for path in _files(directory):
        with contextlib.suppress(OSError):  # removed meanwhile
            total += path.lstat().st_size
    return total


def remove(path: Path) -> None:
    """Remove a file or a folder: first renamed to a hidden name, so that a crash in the middle
    leaves a leftover removed at the next start, never a half job."""
    if path.is_dir() and not path.is_symlink():
        hidden = path.with_name(f".{path.name}.{secrets.token_hex(4)}.gone")
        try:
            os.replace(path, hidden)
        except OSError:
            return
        shutil.rmtree(hidden, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
