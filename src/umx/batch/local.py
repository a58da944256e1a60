"""Local mode: worker processes on this machine, each loading the model once.

The driver hands one input at a time to each idle worker through a pipe and waits on the pipes
and the processes together, so it notices a worker's death at once: its input goes back to the
queue (its outputs, if it wrote any, are replaced) and a new worker takes its place. Workers
are started with `spawn`, so they share nothing with the driver but their arguments.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

from umx.batch.work import (
    MAX_ATTEMPTS,
    Task,
    WorkerSpec,
    after_death,
    death,
    load_worker,
    separate_task,
)
from umx.errors import UmxError
from umx.workers import sigint_held_for_children, stop_as_on_ctrl_c, stop_with_driver

logger = logging.getLogger("umx")

STOP_TIMEOUT_S = 10.0
"""How long stopping workers waits for them to clean up before killing them."""


def _worker(conn: Connection, spec: WorkerSpec, driver: int) -> None:
    """A worker process: load the model, then separate each task received until told to stop
    (or until the driver, process `driver`, dies)."""
    logging.getLogger("umx").setLevel(logging.WARNING)
    stop_as_on_ctrl_c()  # a stop signalled to the process group as well as Ctrl-C
    try:
        # started with SIGINT held back (`_Worker`): one that came while it imported ends it now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        stop_with_driver(driver)  # SIGINT if the driver dies, even by SIGKILL
        try:
            load_worker(spec)
        except UmxError as error:
            # The driver stops its workers with SIGINT once it has this; one arriving while
            # this process exits would print a traceback from its atexit callbacks.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            conn.send(("error", str(error)))
            return
        conn.send(("ready", None))
        while (task := conn.recv()) is not None:
            conn.send(("done", separate_task(spec, task)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # stopped by the driver, or the driver is gone: separate_file cleaned up


class _Worker:
    def __init__(self, context: Any, spec: WorkerSpec) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, spec, os.getpid()), daemon=True)
        with sigint_held_for_children():  # a stop while it imports would print a traceback
            self.process.start()
        child.close()
        self.ready = False
        self.task: Task | None = None


class LocalPool:
    """`jobs` worker processes on this machine.

    Args:
        spec: what every worker loads and how it writes.
        jobs: the number of workers.
    """

    mode = "local"

    def __init__(self, spec: WorkerSpec, jobs: int) -> None:
        self.spec = spec
        self.jobs = jobs

    def run(
        self, tasks: Iterator[Task], started: Callable[[Task], None]
    ) -> Iterator[dict[str, Any]]:
        """Separate every task, yielding one record per task as they finish.

        Args:
            tasks: the tasks, taken one at a time as workers become free (never all at once).
            started: called with each task just before a worker gets it (the job records it).

        Raises:
            UmxError: the model cannot be loaded, or workers die before they are ready.
        """
        context = multiprocessing.get_context("spawn")
        workers: list[_Worker] = []
        retries: collections.deque[Task] = collections.deque()
        deaths_before_ready = 0
        try:
            workers = [_Worker(context, self.spec) for _ in range(self.jobs)]
            exhausted = False
            while True:
                for worker in workers:
                    if worker.ready and worker.task is None:
                        task = retries.popleft() if retries else next(tasks, None)
                        if task is None:
                            exhausted = True
                            break
                        started(task)
                        worker.task = task
                        worker.conn.send(task)
                if exhausted and not retries and all(w.task is None for w in workers):
                    return
                ready = wait([w.conn for w in workers] + [w.process.sentinel for w in workers])
                for worker in list(workers):
                    message = None
                    if worker.conn in ready or worker.process.sentinel in ready:
                        with contextlib.suppress(EOFError, OSError):
                            if worker.conn.poll():
                                message = worker.conn.recv()
                    if message is not None:
                        kind, value = message
                        if kind == "error":
                            raise UmxError(value)
                        if kind == "ready":
                            worker.ready = True
                        else:
                            worker.task = None
                            yield value
                    elif worker.process.sentinel in ready or not worker.process.is_alive():
                        worker.process.join()
                        workers.remove(worker)
                        code = worker.process.exitcode
                        if not worker.ready:
                            deaths_before_ready += 1
                            if deaths_before_ready > self.jobs * MAX_ATTEMPTS:
                                raise UmxError(
                                    f"batch workers keep dying while loading the model "
                                    f"({death(code)}); is there enough memory?"
                                )
                        if worker.task is not None:
                            record = after_death(worker.task, death(code))
                            if record is None:
                                retries.append(worker.task.retry())
                            else:
                                yield record
                        workers.append(_Worker(context, self.spec))
        finally:
            _stop(workers)


def _stop(workers: list[_Worker]) -> None:
    """Stop the workers: idle ones are told to, busy ones get SIGINT (so that their writers
    remove their temporary files); any still alive after `STOP_TIMEOUT_S` is killed."""
    for worker in workers:
        with contextlib.suppress(OSError, ValueError):
            if worker.task is None and worker.ready:
                worker.conn.send(None)
            elif worker.process.pid is not None and worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGINT)
    for worker in workers:
        worker.process.join(STOP_TIMEOUT_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
