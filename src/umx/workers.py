"""Worker processes that stop when the process driving them dies.

A worker whose driver is killed outright (SIGKILL, the out-of-memory killer) would otherwise go
on with its input unseen, holding a core, and then wait for work for ever. Instead it gets
SIGINT (`stop_with_driver`) and stops as on Ctrl-C, so that its writers remove their temporary
files. A pool's worker (`init_pool_worker`, `run_pool_task`) then exits quietly, with no
traceback on a terminal its user has already left. Standard library only.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

_driver_fd: int | None = None
"""A descriptor of this worker's driver that becomes readable when it ends (Linux's pidfd)."""
_busy = False
"""Whether this pool worker is running a task (see `run_pool_task`)."""


def stop_with_driver(driver: int) -> None:
    """Have this process get SIGINT when process `driver` ends, even by SIGKILL (Linux 5.3 and
    later; elsewhere a worker notices when it next talks to its driver).

    Raises:
        KeyboardInterrupt: `driver` has already ended.
    """
    global _driver_fd
    if not hasattr(os, "pidfd_open"):
        return
    try:
        _driver_fd = os.pidfd_open(driver)
    except ProcessLookupError:
        raise KeyboardInterrupt from None
    except OSError:  # a kernel without pidfds
        return
    threading.Thread(target=_interrupt_when_driver_ends, daemon=True).start()
    if driver_ended():
        raise KeyboardInterrupt


def _interrupt_when_driver_ends() -> None:
    select.select([_driver_fd], [], [])
    os.kill(os.getpid(), signal.SIGINT)


def driver_ended() -> bool:
    """Whether the driver given to `stop_with_driver` has ended (False if none was given)."""
    return _driver_fd is not None and bool(select.select([_driver_fd], [], [], 0)[0])


def init_pool_worker(driver: int) -> None:
    """Tie a pool's worker process to its driver (`stop_with_driver`); call it first in the
    pool's initializer. SIGINT then interrupts a task (see `run_pool_task`) as Ctrl-C does, and
    ends at once a worker between tasks whose driver has ended."""
    signal.signal(signal.SIGINT, _interrupted)
    try:
        stop_with_driver(driver)
    except KeyboardInterrupt:
        os._exit(1)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    if not _busy and driver_ended():
        os._exit(1)
    raise KeyboardInterrupt


def run_pool_task(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a pool worker set up by `init_pool_worker`; if it is interrupted
    because the driver ended, the worker exits once the interruption has unwound (temporary
    files removed), instead of reporting to nobody and taking the next task."""
    global _busy
    _busy = True
    try:
        return function(*args)
    except KeyboardInterrupt:
        if driver_ended():
            os._exit(1)
        raise
    finally:
        _busy = False
