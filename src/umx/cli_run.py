"""How a parsed command runs, for `umx` and `python -m umx.train` alike: SIGTERM and SIGHUP
stop it as Ctrl-C does, and every error a user can act on is one line and an exit status."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from umx.devices import keep_freed_memory
from umx.errors import UmxError, os_error_line
from umx.workers import STOP_SIGNALS

logger = logging.getLogger("umx")

TERMINATING = tuple(signum for signum in STOP_SIGNALS if signum != signal.SIGINT)
"""The stop signals that `stop_on_signals` turns into `Stopped` (Ctrl-C is Python's own)."""


class Stopped(BaseException):
    """Raised in the main thread when the process is asked to stop (SIGTERM, SIGHUP), so that
    every open output is cleaned up as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Stopped` for the duration of the block, in this process
    only: a worker forked from it (`--jobs`) dies of the signal as usual, as a pool that
    terminates its workers expects."""
    owner = os.getpid()

    def stop(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in TERMINATING}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_command(run: Callable[[], int]) -> int:
    """Run a parsed command and return its exit status: its own, or 1 for an error it raised
    (`UmxError`, or the file system's refusal: a full disk, a read-only folder), 130 for Ctrl-C
    and 128 + N for signal N, each said in one line on the umx logger. matplotlib's own
    warnings (two long lines of advice when HOME is read-only) are not shown."""
    keep_freed_memory()
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    try:
        with stop_on_signals():
            return run()
    except UmxError as error:
        logger.error("error: %s", error)
        return 1
    except OSError as error:
        logger.error("error: %s", os_error_line(error))
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Stopped as stopped:
        logger.error("stopped by %s", signal.Signals(stopped.signum).name)
        return 128 + stopped.signum
