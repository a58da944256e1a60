"""Folders on the ground floor: output folders checked before any work, made for outputs and
removed again when the outputs are not written (`output_folders`), replaced whole
(`staged_folder`), and held by one run at a time (`claimed_folder`). This module imports only
the standard library and the ground floor (`umx.errors`, `umx.files`, `umx.workers`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from umx.errors import UmxError, display_path, os_error_line, os_reason
from umx.files import hidden_beside, hold_lock, unheld
from umx.workers import stops_deferred

logger = logging.getLogger("umx")


STAGE_SUFFIX, OLD_SUFFIX = ".partial", ".old"
"""The endings of a folder being filled by `staged_folder`, and of the one it replaces."""


@contextlib.contextmanager
def staged_folder(root: Path) -> Iterator[Path]:
    """A hidden folder beside `root` that replaces `root` on success and is removed on failure.

    The process filling it holds its lock (`hold_lock`): the next `staged_folder` of the same
    `root` removes those whose lock is free, left by a process killed outright (SIGKILL, the
    out-of-memory killer, a lost machine), which could not remove them itself. The swap (two
    renames, then the old `root` deleted) is one step for a stop signal (`stops_deferred`); a
    process killed outright between the renames leaves `root` moved aside, which the next
    `staged_folder` puts back.

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
    live = sorted(filter(hidden_beside(root, STAGE_SUFFIX).fullmatch, os.listdir(root.parent)))
    if live:  # the last to end would replace the other's root
        raise UmxError(
            f"another run is writing {display_path(root)} (into {live[0]}): wait for it to end, "
            "or choose another folder"
        )
    _put_back(root)
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
        old = root.with_name(f".{root.name}.{token}{OLD_SUFFIX}")
        with stops_deferred():
            if root.exists():
                os.replace(root, old)
            os.replace(stage, root)
            shutil.rmtree(old, ignore_errors=True)
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


def _put_back(root: Path) -> None:
    """Put back the `root` that a process killed between the two renames of `staged_folder`'s
    swap moved aside and did not replace: the complete folder the user had."""
    if root.exists():
        return
    for old in unheld(root.parent, hidden_beside(root, OLD_SUFFIX))[-1:]:
        logger.warning("putting back %s, moved aside by a run killed while replacing it", root)
        os.replace(old, root)


def abandoned_stages(root: Path) -> list[Path]:
    """The staging folders of `root` (see `staged_folder`) that no process is filling, and,
    once `root` exists, the old `root`s that a run killed while deleting one left.

    Returns:
        their paths, sorted (see `unheld`).
    """
    endings = (STAGE_SUFFIX, OLD_SUFFIX) if root.exists() else (STAGE_SUFFIX,)
    return [path for path in unheld(root.parent, hidden_beside(root, *endings)) if path.is_dir()]


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
