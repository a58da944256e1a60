"""Worker processes that stop when the process driving them dies.

A worker whose driver is killed outright (SIGKILL, the out-of-memory killer) would otherwise go
on with its input unseen, holding a core, and then wait for work for ever. Instead it gets
SIGINT (`stop_with_driver`) and stops as on Ctrl-C, so that its writers remove their temporary
files. A pool's worker (`init_pool_worker`, `run_pool_task`) then exits quietly, as it does on
Ctrl-C, with no traceback. Standard library only.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""What stops a run: Ctrl-C, and the signals `umx` turns into a stop (`umx.cli_run.Stopped`)."""

_driver_fd: int | None = None
"""A descriptor of this worker's driver that becomes readable when it ends (Linux's pidfd),
watched by a thread."""
_busy = False
"""Whether this pool worker is running a task (see `run_pool_task`)."""
_stopping = False
"""Whether this pool worker's task has been interrupted."""


def stop_with_driver(driver: int) -> None:
    """Have this process get SIGINT when process `driver` ends, even by SIGKILL, at once if it
    has ended already (Linux 5.3 and later; elsewhere a worker notices when it next talks to
    its driver).

    Raises:
        KeyboardInterrupt: `driver` is gone.
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


def _interrupt_when_driver_ends() -> None:
    select.select([_driver_fd], [], [])
    os.kill(os.getpid(), signal.SIGINT)


def init_pool_worker(driver: int) -> None:
    """Tie a pool's worker process to its driver (`stop_with_driver`); call it first in the
    pool's initializer.

    Every stop signal (Ctrl-C, SIGTERM, SIGHUP) then stops the worker: it interrupts a task
    (see `run_pool_task`) as Ctrl-C does, and ends a worker between tasks at once. Ctrl-C,
    `timeout`, `kill -- -PGID` and a closed terminal reach the workers and the driver, which
    then stops them too: a second stop while a task unwinds is ignored, so that no worker
    writes a traceback or dies with its temporary files left.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupted)
    try:
        stop_with_driver(driver)
    except KeyboardInterrupt:
        os._exit(1)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    global _stopping
    if not _busy:
        os._exit(1)  # nothing to clean up
    if not _stopping:
        _stopping = True
        raise KeyboardInterrupt


def run_pool_task(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a pool worker set up by `init_pool_worker`. Interrupted, the
    worker exits once the interruption has unwound (temporary files removed), instead of
    reporting to a driver that is stopping or gone and taking the next task."""
    global _busy
    _busy = True
    try:
        return function(*args)
    except KeyboardInterrupt:
        os._exit(1)
    finally:
        _busy = False


def stop_as_on_ctrl_c() -> None:
    """Have every stop signal (Ctrl-C, SIGTERM, SIGHUP) stop this worker process once, as
    Ctrl-C does (KeyboardInterrupt, so that its writers remove their temporary files), and
    the ones that follow be ignored while it unwinds. `timeout`, `kill -- -PGID` and a closed
    terminal signal the worker and its driver alike, and the stopping driver then sends
    SIGINT too: dying of the first, or interrupted again while cleaning up, the worker would
    leave its temporary files behind."""

    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:  # the others stay handled: Python warns of one pending when ignored
            stopping = True
            raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP for the duration of the block and deliver the first that
    came after it, to the handler it was meant for: so that a stop lands between steps that must
    not be cut (inside `torch.save`, whose zip writer then fails with a RuntimeError instead of
    stopping; while a pool starts a worker, which it would then not know). In the main thread
    only, where Python runs signal handlers; a signal whose handler was not set from Python is
    left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    signums = [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not None]
    previous = {
        signum: signal.signal(signum, lambda signum, _frame: received.append(signum))
        for signum in signums
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            os.kill(os.getpid(), received[0])  # now, to the handler it was meant for


@contextmanager
def sigint_held_for_children() -> Iterator[None]:
    """Hold SIGINT back (block it) in this thread for the duration of the block. Processes
    started in it inherit the block, so that a Ctrl-C while they start (importing, where
    Python would print a traceback) waits until they let it through
    (`signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})`, once they handle it). Held
    back and not ignored, a Ctrl-C to this process meanwhile is not lost: it comes after.

    multiprocessing's resource tracker is started first (`start_resource_tracker`): starting
    it unblocks SIGINT (and the `spawn` start method starts it with the first process)."""
    with held_for_children((signal.SIGINT,)):
        yield


@contextmanager
def held_for_children(signums: Iterable[int]) -> Iterator[None]:
    """`sigint_held_for_children` for the signals `signums` (e.g. `STOP_SIGNALS`: a process
    started in the block then outlives a stop signalled to its process group, until told to
    end or until it lets them through)."""
    start_resource_tracker()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker if it is not running, with SIGHUP held back for
    its life. It ignores SIGINT and SIGTERM but died of the SIGHUP of a closed terminal or
    `kill -HUP -- -PGID`: the stopping driver then wrote a warning and a traceback for each
    of its pool's semaphores (a new tracker, told to forget what it never knew). It ends when
    the last process of the run has gone, as before."""
    from multiprocessing import resource_tracker  # not for every command's start-up

    hangup = {signum for signum in STOP_SIGNALS if signum not in (signal.SIGINT, signal.SIGTERM)}
    held = signal.pthread_sigmask(signal.SIG_BLOCK, hangup)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
