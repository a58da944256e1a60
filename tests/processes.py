"""Test helpers for runs stopped from outside (the processes a process started, and bounded
waits, from Linux's /proc) and for a file system that refuses writes."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

BOUND_S = 120
"""No wait in the tests that use these helpers lasts longer."""


def children(pid: int, marker: bytes = b"") -> list[int]:
    """The processes whose parent is `pid` and whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and marker in cmdline:
                found.append(int(entry.name))
    return sorted(found)


def in_session(*sids: int) -> list[int]:
    """The processes of the sessions `sids` that are not zombies (each, a command started with
    `start_new_session=True` and everything it started, unless they left its session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in sids and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition: Callable[[], T], what: str, bound_s: float = BOUND_S) -> T:
    """`condition()`'s first true value, asked every 10 ms for at most `bound_s` seconds."""
    deadline = time.monotonic() + bound_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


@contextlib.contextmanager
def file_size_limit(nb_bytes: int) -> Iterator[None]:
    """Files may not grow beyond `nb_bytes` in this process: a write that would fails (EFBIG)
    as on a full disk (ENOSPC), where the kernel would otherwise send SIGXFSZ."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nb_bytes, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` and everything under it read-only, even for root (immutable), then writable."""
    as_root = os.geteuid() == 0
    if as_root and shutil.which("chattr") is None:
        pytest.skip("needs chattr to make a folder read-only for root")
    command = ["chattr", "-R", "+i", str(path)] if as_root else ["chmod", "-R", "a-w", str(path)]
    undo = ["chattr", "-R", "-i", str(path)] if as_root else ["chmod", "-R", "u+w", str(path)]
    if subprocess.run(command, capture_output=True).returncode != 0:
        pytest.skip(f"{' '.join(command[:3])} is not supported here")
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def read_only_folder(monkeypatch, folder: str | os.PathLike) -> None:
    """`folder` and what lies below it refuse writes as a read-only file system does, for the
    rest of a test (which runs as root, whom permissions do not stop): a missing folder cannot
    be made (EROFS; an existing one gives EEXIST, as Linux says first), `os.access` says none
    is writable, and `os.statvfs` that the file system is read-only."""
    top = os.path.abspath(folder)
    mkdir, access, statvfs = os.mkdir, os.access, os.statvfs

    def below(path) -> bool:
        path = os.path.abspath(os.fsdecode(path))
        return path == top or path.startswith(top.rstrip(os.sep) + os.sep)

    def refused_mkdir(path, *args, **kwargs):
        if below(path) and not os.path.lexists(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return mkdir(path, *args, **kwargs)

    def refused_access(path, mode, *args, **kwargs):
        if mode & os.W_OK and below(path):
            return False
        return access(path, mode, *args, **kwargs)

    def read_only_statvfs(path):
        result = statvfs(path)
        if not below(path):
            return result
        fields = list(result)
        fields[8] |= os.ST_RDONLY  # f_flag
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "mkdir", refused_mkdir)
    monkeypatch.setattr(os, "access", refused_access)
    monkeypatch.setattr(os, "statvfs", read_only_statvfs)
