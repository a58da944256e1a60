"""Files on the ground floor: atomic writes, SHA-256 hashes and safe file names.

Every file umx writes goes through a temporary file in the same folder that is renamed over the
target (`write_atomic`), so readers see either the old file or the complete new one, and a failure
leaves nothing behind. Folders are replaced the same way (`staged_folder`), and those made for
outputs are removed again when the outputs are not written (`output_folders`). This module
imports only the standard library and `umx.errors` (torch only inside `torch_save_atomic`).
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
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from umx.errors import UmxError, display_path, os_error_line, os_reason

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
    for leftover in unheld(path.parent, _hidden_beside(path, ".tmp")):
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


STAGE_SUFFIX, OLD_SUFFIX = ".partial", ".old"
"""The endings of a folder being filled by `staged_folder`, and of the one it replaces."""


@contextlib.contextmanager
def staged_folder(root: Path) -> Iterator[Path]:
    """A hidden folder beside `root` that replaces `root` on success and is removed on failure.

    The process filling it holds its lock (`hold_lock`): the next `staged_folder` of the same
    `root` removes those whose lock is free, left by a process killed outright (SIGKILL, the
    out-of-memory killer, a lost machine), which could not remove them itself.

    Yields:
        the staging folder to fill; once the block ends without error it becomes `root` (an
        existing `root` is moved aside first and deleted only after the swap).

    Raises:
        UmxError: another process is filling a staging folder of `root`, or the staging folder
            cannot be made or filled (a full disk; named as `root`, the folder the user gave).
    """
    with _making(root):
        root.parent.mkdir(parents=True, exist_ok=True)
    for stage in abandoned_stages(root):
        logger.info("removing %s, left by a run that was killed", stage)
        shutil.rmtree(stage, ignore_errors=True)
    live = sorted(filter(_hidden_beside(root, STAGE_SUFFIX).fullmatch, os.listdir(root.parent)))
    if live:  # the last to end would replace the other's root
        raise UmxError(
            f"another run is writing {display_path(root)} (into {live[0]}): wait for it to end, "
            "or choose another folder"
        )
    token = secrets.token_hex(4)
    stage = root.with_name(f".{root.name}.{token}{STAGE_SUFFIX}")
    with _making(root):
        stage.mkdir()
    lock = hold_lock(stage)
    try:
        try:
            yield stage
        except BaseException as error:
            shutil.rmtree(stage, ignore_errors=True)
            if isinstance(error, (UmxError, OSError)):  # a full disk, say
                message = os_error_line(error) if isinstance(error, OSError) else str(error)
                # a file is named where it was going in `root`, not in the stage just removed
                shown = message.replace(display_path(stage), display_path(root))
                if shown != message:
                    raise UmxError(shown) from None
            raise
        if root.exists():
            old = root.with_name(f".{root.name}.{token}{OLD_SUFFIX}")
            os.replace(root, old)
            os.replace(stage, root)
            shutil.rmtree(old)
        else:
            os.replace(stage, root)
    finally:
        if lock is not None:
            lock.close()


@contextlib.contextmanager
def _making(root: Path) -> Iterator[None]:
    """Says an `OSError` of the block (a read-only folder) as the failure to make `root`: not
    the hidden staging folder, which the user never named."""
    try:
        yield
    except OSError as error:
        reason = folder_refusal(root, error)
        raise UmxError(f"cannot create {display_path(root)}: {reason}") from None


def abandoned_stages(root: Path) -> list[Path]:
    """The staging folders of `root` (see `staged_folder`) that no process is filling, and,
    once `root` exists, the old `root`s that a run killed while deleting one left.

    Returns:
        their paths, sorted (see `unheld`).
    """
    endings = (STAGE_SUFFIX, OLD_SUFFIX) if root.exists() else (STAGE_SUFFIX,)
    return [path for path in unheld(root.parent, _hidden_beside(root, *endings)) if path.is_dir()]


def _hidden_beside(path: Path, *endings: str) -> re.Pattern[str]:
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
    pattern = _hidden_beside(path, ".tmp")
    try:
        temporaries = list(filter(pattern.fullmatch, os.listdir(path.parent)))
    except OSError:
        return False
    return LOCKS and len(temporaries) > len(unheld(path.parent, pattern))


def within(path: str, folder: str) -> bool:
    """Whether the absolute `path` is the absolute `folder` or lies inside it, by their names
    (resolve links first where they matter)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def overlap(first: str, second: str) -> bool:
    """Whether of two absolute paths one is the other or lies inside it (see `within`)."""
    return within(first, second) or within(second, first)


def not_a_folder(folder: Path) -> Path | None:
    """The nearest of `folder` and its parents that exists, if it is not a folder (a file, a
    dangling link, a link loop): what keeps `folder` from being made (where `mkdir` would say
    only "File exists"); None where nothing does."""
    for path in (folder, *folder.parents):
        if os.path.lexists(path):
            return None if path.is_dir() else path
    return None


def in_the_way(path: Path) -> str:
    """What `path`, found by `not_a_folder`, is, as a message says it: "a file", "a dangling
    link" (or a link loop) or "not a folder" (a pipe, a socket, a device)."""
    if path.is_file():
        return "a file"
    return "a dangling link" if path.is_symlink() else "not a folder"


def check_folder_option(option: str, folder: Path) -> None:
    """Refuse a folder option that is not a folder or lies in something that is not one
    (`not_a_folder`), before any work.

    Raises:
        UmxError: naming the option and what is in the way.
    """
    blocking = not_a_folder(folder)
    if blocking == folder:
        raise UmxError(f"{option} {display_path(folder)} is {in_the_way(folder)}, not a directory")
    if blocking is not None:
        raise UmxError(
            f"{option} {display_path(folder)} cannot be made: {display_path(blocking)} is "
            f"{in_the_way(blocking)}"
        )


def folder_refusal(folder: Path, error: OSError, long_names: str | None = None) -> str:
    """Why `folder` could not be made (`error`), with what to do: the file in its way
    (`not_a_folder`), where mkdir says only "File exists", or else `os_reason`; `long_names`,
    where given, is what to do about a name too long (the option that made it)."""
    blocker = not_a_folder(folder)
    if blocker is not None:
        name = "it" if blocker == folder else display_path(blocker)
        return f"{name} is {in_the_way(blocker)}; move it away, or write elsewhere"
    if long_names is not None and error.errno == errno.ENAMETOOLONG:
        return f"{error.strerror}; {long_names}"
    return os_reason(error)


def unwritable(folder: str | os.PathLike) -> OSError | None:
    """Why nothing can be written in the existing `folder`, as the error a write would raise
    there (EROFS on a read-only file system, else EACCES), or None where it can be."""
    if os.access(folder, os.W_OK):
        return None
    read_only = False
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    code = errno.EROFS if read_only else errno.EACCES
    return OSError(code, os.strerror(code), os.fsdecode(folder))


def check_writable(option: str, directory: Path) -> None:
    """Refuse a folder option whose folder cannot be made or written, before any work: its
    nearest existing parent is on a read-only file system or not writable (`unwritable`).

    Raises:
        UmxError: naming the option, the folder and why.
    """
    folder = directory.absolute()
    error = unwritable(next(path for path in (folder, *folder.parents) if path.exists()))
    if error is not None:
        raise UmxError(f"{option} {display_path(directory)} cannot be written ({os_reason(error)})")


def make_output_dirs(paths: Iterable[Path], long_names: str | None = None) -> None:
    """Create the directories of output files.

    Raises:
        UmxError: one cannot be created; `folder_refusal` says why.
    """
    for directory in {path.parent for path in paths}:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = folder_refusal(directory, error, long_names)
            raise UmxError(
                f"cannot create output directory {display_path(directory)}: {reason}"
            ) from None


@contextlib.contextmanager
def output_folders(paths: Iterable[Path], long_names: str | None = None) -> Iterator[None]:
    """Create the missing folders of `paths` for the duration of the block; if it ends in an
    exception (an error, Ctrl-C, a signal) those of them left empty are removed again, so that
    a separation or stream stopped before its files were written leaves no empty folder.
    `long_names` says what to do about a name too long (see `folder_refusal`).

    Raises:
        UmxError: a folder cannot be created.
    """
    paths = list(paths)
    folders = {path.parent for path in paths}
    created = {folder for parent in folders for folder in (parent, *parent.parents)}
    # os.path.lexists, not Path.exists: that raises for a name too long, before mkdir tells it
    created = sorted((f for f in created if not os.path.lexists(f)), key=lambda f: -len(f.parts))
    try:
        make_output_dirs(paths, long_names)  # its parents made before it failed are removed
        yield
    except BaseException:
        for folder in created:  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


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


LOCK_ENDING = ".lock"
"""The ending of the hidden lock files of `claimed_folder`."""


@contextlib.contextmanager
def claimed_folder(folder: Path, busy: str, name: str | None = None) -> Iterator[None]:
    """Hold `folder` (made if missing) for one run, for the block: its lock (`hold_lock`), or,
    with `name`, that of the hidden file `.NAME.lock` in it, removed again at the end, so that
    runs of other names share the folder (`umx train`'s targets). The folders made are removed
    again when the block fails and leaves them empty.

    Raises:
        UmxError: `busy` where another process holds it (nothing is made or removed then), or
            the folder cannot be made or its lock file written.
    """
    lock_path = folder if name is None else folder / f".{name}{LOCK_ENDING}"
    # os.path.lexists, not Path.exists: that raises for a name too long, before mkdir tells it
    made = [path for path in (folder, *folder.parents) if not os.path.lexists(path)]
    while True:
        with _making(folder):
            folder.mkdir(parents=True, exist_ok=True)
        try:
            lock = hold_lock(lock_path)
        except OSError as error:
            raise UmxError(f"cannot write in {display_path(folder)}: {os_reason(error)}") from None
        if lock is None:
            raise UmxError(busy)
        if lock.names(lock_path):  # not one its holder removed as it let it go
            break
        lock.close()
    try:
        try:
            yield
        finally:
            if name is not None:
                lock_path.unlink(missing_ok=True)
    except BaseException:
        for path in made:  # the deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    finally:
        lock.close()


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
