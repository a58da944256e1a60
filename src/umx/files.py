"""Files on the ground floor: atomic writes, locks, SHA-256 hashes and safe file names.

Every file umx writes goes through a temporary file in the same folder that is renamed over the
target (`write_atomic`), so readers see either the old file or the complete new one, and a failure
leaves nothing behind (folders: `umx.folders`). This module imports only the standard library and
`umx.errors` (torch only inside `torch_save_atomic`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: locks are not taken
    fcntl = None

logger = logging.getLogger("umx")

HASH_CHUNK = 1 << 20
"""Bytes read at a time when hashing a file."""

_UNSAFE_FILE_CHARS = re.compile(r"[^\w.-]+")
MAX_STEM = 100
"""Characters a `safe_stem` keeps."""


NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
"""The errors `os.link` gives where a file system has no hard links (FAT, some network ones)."""


def rename_no_replace(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename `source` to `path` unless `path` exists: a file another process put there since
    it was last checked is kept.

    A hard link then an unlink, as the link fails if `path` exists, atomically. Where the file
    system has no hard links, `path` is checked and then `source` renamed: a file that appears
    between the two is replaced.

    Raises:
        FileExistsError: `path` exists; `source` is left where it is.
    """
    try:
        os.link(source, path, follow_symlinks=False)
    except OSError as error:
        if error.errno not in NO_HARD_LINKS:
            raise
        if os.path.lexists(path):
            raise FileExistsError(
                errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path)
            ) from None
        os.replace(source, path)
    else:
        os.unlink(source)


def write_atomic(
    path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, replace: bool = True
) -> None:
    """Write through a temporary file in the same folder, then rename it over `path`.

    Readers see either the old file or the complete new one; on any failure the temporary file
    is removed and `path` is untouched. The temporary file is locked while it is written, and
    those that writers of `path` killed outright left are removed first.

    Args:
        path: the file to create or replace; its folder must exist.
        write: writes the contents to the binary file it is given.
        replace: False where the user did not consent to overwriting: a `path` that exists when
            the file is complete (another process wrote it meanwhile) is kept
            (`rename_no_replace`).

    Raises:
        FileExistsError: `path` exists and `replace` is False.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        with _open_locked(tmp) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        (os.replace if replace else rename_no_replace)(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:  # named after the file written
            raise OSError(error.errno, error.strerror, os.fspath(path)) from error
        raise


def _temporary(path: Path) -> Path:
    """A new temporary name beside `path`, `.NAME.<8 hex digits>.tmp`, once those that writers
    of `path` killed outright left are removed (see `unheld`)."""
    for leftover in unheld(path.parent, hidden_beside(path, ".tmp")):
        leftover.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _open_locked(tmp: Path) -> IO[bytes]:
    """Create the temporary file `tmp` for writing, locked until it is closed (see `unheld`)."""
    # The umask is honoured, unlike by tempfile's 0600; the caller closes the file.
    file = open(tmp, "xb")  # noqa: SIM115
    if LOCKS:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            file.close()
            raise
    return file


@contextlib.contextmanager
def written_aside(files: Mapping[Path, bytes]) -> Iterator[dict[Path, Path]]:
    """Write each file's data to a temporary file beside it (named as `write_atomic`'s), for
    the block to rename into place once all are written: a set of files replaced together
    (`umx.onnx.export`), where a write that fails (a full disk) changes none of them.

    The temporary files stay locked until the block ends, so that no other writer takes them
    for leftovers; those the block has not renamed are then removed, as are all of them when a
    write fails.

    Yields:
        each path's temporary file, complete and synced to disk, in the order of `files`.

    Raises:
        OSError: a file cannot be written, named after its path (not its temporary file).
    """
    temporaries: dict[Path, Path] = {}
    try:
        with contextlib.ExitStack() as held:
            for path, data in files.items():
                temporaries[path] = _temporary(path)
                try:
                    file = held.enter_context(_open_locked(temporaries[path]))
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                except OSError as error:
                    if error.errno is None:
                        raise
                    raise OSError(error.errno, error.strerror, os.fspath(path)) from error
                if not LOCKS:  # nothing to hold; and an open file cannot be renamed on Windows
                    file.close()
            yield temporaries
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> None:
    """Write `data` to `path` atomically (temporary file + rename; `replace` as `write_atomic`)."""
    write_atomic(path, lambda file: file.write(data), replace=replace)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` as UTF-8 to `path` atomically (temporary file + rename)."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically (temporary file + rename).

    Values JSON cannot represent (paths, for example) are written as their `str`.
    """
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to `path` atomically (temporary file + rename).

    Raises:
        OSError: the file cannot be written (torch itself says only "unexpected pos").
    """
    import torch  # only where tensors are saved: this module stays importable without torch

    def save(file: IO[bytes]) -> None:
        kept = _KeptWriteError(file)
        try:
            torch.save(obj, kept)
        except RuntimeError:
            if kept.error is not None:
                raise kept.error from None
            raise

    write_atomic(path, save)


class _KeptWriteError:
    """A binary file whose write errors are kept, for `torch_save_atomic`."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def hidden_beside(path: Path, *endings: str) -> re.Pattern[str]:
    """The names of the hidden files and folders made beside `path` (`write_atomic`'s
    temporary files, `staged_folder`'s folders): `.NAME.`, 8 hex digits, one of `endings`."""
    ending = "|".join(map(re.escape, endings))
    return re.compile(re.escape(f".{path.name}.") + f"[0-9a-f]{{8}}(?:{ending})")


def unheld(folder: Path, names: re.Pattern[str]) -> list[Path]:
    """The files and folders in `folder` whose names match `names` and whose lock
    (`hold_lock`) no process holds: those that processes killed outright (SIGKILL, the
    out-of-memory killer, a lost machine) left, having had no time to remove them. Without
    locks (`LOCKS` false: Windows) none are known to be left.

    Returns:
        their paths, sorted; none if `folder` is missing.
    """
    if not LOCKS:
        return []
    try:
        matching = sorted(filter(names.fullmatch, os.listdir(folder)))
    except OSError:
        return []
    found = []
    for name in matching:
        path = folder / name
        with contextlib.suppress(OSError):
            if not path.is_symlink() and (lock := hold_lock(path, create=False)) is not None:
                lock.close()
                found.append(path)
    return found


def being_written(path: Path) -> bool:
    """Whether a live process is writing `path` now: one of its temporary files
    (`write_atomic`'s, `written_aside`'s) is locked. Without locks (Windows) never known."""
    pattern = hidden_beside(path, ".tmp")
    try:
        temporaries = list(filter(pattern.fullmatch, os.listdir(path.parent)))
    except OSError:
        return False
    return LOCKS and len(temporaries) > len(unheld(path.parent, pattern))


class HeldLock:
    """An exclusive lock (`hold_lock`), held until `close` or the end of the process."""

    def __init__(self, descriptor: int | None) -> None:
        self._descriptor = descriptor

    def close(self) -> None:
        """Release the lock (again: nothing)."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def names(self, path: str | os.PathLike) -> bool:
        """Whether `path` still names the file or folder locked: not where it was removed (and
        perhaps made again) since it was opened, by the holder that let it go (`claimed_folder`).
        Without a lock (Windows) it is taken to."""
        if self._descriptor is None:
            return True
        try:
            return os.path.samestat(os.fstat(self._descriptor), os.stat(path))
        except FileNotFoundError:
            return False


LOCKS = fcntl is not None
"""Whether `hold_lock` locks anything here (not on Windows)."""

LOCK_POLL = 0.01
"""Seconds between two tries of a lock that `hold_lock` waits for."""


def hold_lock(path: str | os.PathLike, create: bool = True, wait: float = 0.0) -> HeldLock | None:
    """Take the exclusive lock (`flock`) of a folder, or of a file (created if missing, with
    `create`), waiting for it at most `wait` seconds. A folder's lock leaves nothing in it.

    Returns:
        the lock, or None where another process (or another `hold_lock`) holds it (still,
        after `wait`). Without `fcntl` (Windows) nothing is locked.

    Raises:
        OSError: it cannot be opened (it or its folder is missing, for example).
    """
    if fcntl is None:
        return HeldLock(None)
    flags = os.O_RDONLY if os.path.isdir(path) else os.O_RDWR | (os.O_CREAT if create else 0)
    descriptor = os.open(path, flags, 0o666)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return HeldLock(descriptor)
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(descriptor)
                    return None
            time.sleep(LOCK_POLL)
    except BaseException:  # a stop while it waits
        os.close(descriptor)
        raise


def sha256_bytes(data: bytes) -> str:
    """The SHA-256 of `data`, as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, as 64 lowercase hex digits (read in chunks of `HASH_CHUNK`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safe_stem(name: str, default: str = "song") -> str:
    """A name as a safe file name without its extension: letters, digits, `_`, `-` and `.`
    only, not starting or ending with a dot, at most `MAX_STEM` characters, `default` if
    nothing is left (for downloads: zip folders, attachments)."""
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return _UNSAFE_FILE_CHARS.sub("_", stem).strip("._")[:MAX_STEM] or default
