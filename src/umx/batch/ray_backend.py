"""Ray mode: the same job on a Ray cluster (`pip install 'umx[ray]'`).

Each worker is a Ray actor that loads the model once and separates the inputs it is given with
`umx.jobs.run_task`, reading and writing paths that every node sees (shared storage mounted
at the same place). The driver keeps at most `TASKS_PER_WORKER` inputs queued per actor, so
memory and the object store stay bounded however many inputs there are; only paths and small
records travel, never audio. An actor that dies (killed, out of memory, its node lost) has its
inputs handed to the others and a new actor takes its place. Only this module imports `ray`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray
import ray.exceptions

from umx.batch.work import (
    MAX_ATTEMPTS,
    Task,
    WorkerSpec,
    after_death,
    load_worker,
    separate_task,
)
from umx.errors import UmxError, printable
from umx.jobs import FAILED
from umx.messages import plural
from umx.workers import STOP_SIGNALS

logger = logging.getLogger("umx")

TASKS_PER_WORKER = 2
"""Inputs queued on each actor at most: one running, one waiting, so an actor never idles
between inputs while the driver is away."""
START_TIMEOUT_S = 600.0
"""How long the driver waits for the first actor to load the model before giving up (the
cluster may lack the CPUs or GPUs asked for)."""
WAIT_S = 1.0
"""How often the driver wakes up while it waits (to notice Ctrl-C)."""
HEAD_TIMEOUT_MS = 3000
"""How long `check_head` waits for a cluster's head to answer (after gRPC's own connection
timeout, `RAY_gcs_rpc_server_connect_timeout_s`, 5 s by default, twice)."""


def check_head(address: str) -> None:
    """Refuse HOST:PORT where a server accepts connections but no Ray head answers (a web
    server, another program): `ray.init` would retry it for ever, writing Ray's warnings.
    A `ray://` address (Ray Client) is left to `ray.init`.

    Raises:
        UmxError: naming the address and what to do.
    """
    if address.startswith("ray://"):
        return
    try:
        from ray._private.services import canonicalize_bootstrap_address
        from ray._raylet import InnerGcsClient
    except ImportError:  # another version of Ray: its own checks only
        return
    with _quiet_stderr():
        try:
            InnerGcsClient.standalone(
                canonicalize_bootstrap_address(address), None, HEAD_TIMEOUT_MS
            )
        except ray.exceptions.RpcError as error:
            if "timed out" not in str(error).lower():  # a head that answered (to refuse)
                return
            raise UmxError(
                f"cannot connect to the Ray cluster at {printable(address)}: no Ray head answers "
                "there; start one with `ray start --head` or give its address"
            ) from None
        except (ValueError, OSError):
            return


@contextlib.contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """The handlers of SIGINT, SIGTERM and SIGHUP as they were before the block, during it (Ray
    would put its own SIGTERM handlers in place, which exit 15 or 1 without a word) and after
    it (its C++ core worker's, which prints a stack dump): umx's stop a run as locally
    (`umx.cli_run.stop_on_signals`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    set_sigterm_handler = getattr(utils, "set_sigterm_handler", None)
    if set_sigterm_handler is not None:
        utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        if set_sigterm_handler is not None:
            utils.set_sigterm_handler = set_sigterm_handler
        for signum, handler in handlers.items():
            if handler is not None:  # None: not set from Python
                signal.signal(signum, handler)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's C++ warnings (written to the file descriptor 2) left out, for the block."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class BatchWorker:
    """A Ray actor: the model, loaded once, and `separate_task` on each input it is given."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.error: str | None = None
        try:
            load_worker(spec)
        except UmxError as error:
            self.error = str(error)

    def ready(self) -> str | None:
        """Why the worker cannot separate; None when it can."""
        return self.error

    def separate(self, task: Task) -> dict[str, Any]:
        """Separate one input into its manifest record."""
        return separate_task(self.spec, task)


class RayPool:
    """Actors on a Ray cluster.

    Args:
        spec: what every worker loads and how it writes; `spec.threads` CPUs each. None until
            the model is loaded (set `spec` then), `threads` CPUs each meanwhile.
        address: the cluster (`auto`, `HOST:PORT` or `ray://HOST:PORT`), or None to start a
            Ray instance on this machine for the run.
        jobs: the number of actors; None for as many as the cluster's CPUs (or GPUs, with
            `gpus_per_worker`) allow.
        gpus_per_worker: GPUs reserved for each actor (fractions share a GPU); 0 for CPUs only.
        threads: the CPUs of each actor, without `spec`.
    """

    mode = "ray"

    def __init__(
        self,
        spec: WorkerSpec | None,
        address: str | None,
        jobs: int | None,
        gpus_per_worker: float = 0.0,
        threads: int = 1,
    ) -> None:
        self.spec = spec
        self.address = address
        self.jobs = jobs
        self.gpus_per_worker = gpus_per_worker
        self.threads = spec.threads if spec is not None else threads
        self.fit = 0

    def connect(self) -> None:
        """Connect to the cluster (or start the local instance), and check that one actor at
        least fits it.

        Raises:
            UmxError: the cluster cannot be reached, or lacks the resources for one actor.
        """
        try:
            with _own_signal_handlers():
                ray.init(
                    address=self.address,
                    include_dashboard=False if self.address is None else None,
                    log_to_driver=False,
                    # Ray's own lines (the token authentication it enables on a local
                    # instance, its retries) are not for umx's users: what goes wrong
                    # reaches them as umx's messages
                    logging_level=logging.CRITICAL,
                )
        except (ConnectionError, RuntimeError, ValueError) as error:
            if self.address == "auto" and isinstance(error, ConnectionError):
                raise UmxError(  # not Ray's advice, on a flag umx does not have
                    "no Ray cluster is running here: start one with `ray start --head`, give "
                    "--ray HOST:PORT, or --ray local"
                ) from None
            where = self.address or "a local Ray instance"
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise UmxError(f"cannot connect to {where} ({reason})") from None
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        if self.gpus_per_worker > 0:
            fit = gpus / self.gpus_per_worker
            what = f"{gpus:g} GPUs for --gpus-per-worker {self.gpus_per_worker:g}"
        else:
            fit = cpus / self.threads
            what = f"{cpus:g} CPUs for --threads {self.threads}"
        self.fit = int(fit + 1e-9)
        if self.fit < 1:
            ray.shutdown()
            raise UmxError(f"the Ray cluster has {what}: no worker fits")

    def workers(self, nb_tasks: int) -> int:
        """How many actors the run starts (`jobs`, no more than `nb_tasks`), saying when the
        cluster has no room for them all at once (the others wait for room)."""
        asked = self.jobs
        self.jobs = min(asked or self.fit, nb_tasks)
        if self.jobs > self.fit:
            logger.warning(
                "--jobs %d: the cluster has room for %s at once; the other %d wait for room",
                asked,
                plural(self.fit, "worker"),
                self.jobs - self.fit,
            )
        return self.jobs

    def close(self) -> None:
        """Disconnect from the cluster (stop the local instance), when no run follows."""
        ray.shutdown()

    def run(
        self, tasks: Iterator[Task], started: Callable[[Task], None]
    ) -> Iterator[dict[str, Any]]:
        """Separate every task on the cluster, yielding one record per task as they finish
        (see `umx.batch.local.LocalPool.run`)."""
        if not ray.is_initialized():
            self.connect()
            self.jobs = self.jobs or self.fit
        actor_class = ray.remote(BatchWorker).options(
            num_cpus=self.threads,
            num_gpus=self.gpus_per_worker,
            max_restarts=0,
            max_task_retries=0,
        )
        actors = _Actors(lambda: actor_class.remote(self.spec), self.jobs or 1)
        begun = time.monotonic()
        try:
            for _ in range(self.jobs or 1):
                actors.start()
            while True:
                actors.hand_out(tasks, started)
                if actors.finished():
                    return
                if not actors.ever_ready and time.monotonic() - begun > START_TIMEOUT_S:
                    raise UmxError(
                        f"no Ray worker started in {START_TIMEOUT_S:.0f} s: does the cluster "
                        f"have {self.threads} free CPUs (and {self.gpus_per_worker:g} GPUs) "
                        "for one?"
                    )
                done, _ = ray.wait(list(actors.in_flight), num_returns=1, timeout=WAIT_S)
                for ref in done:
                    yield from actors.collect(ref)
        except SystemError as error:  # Ray's C++ code, interrupted by umx's stop on a signal
            stop = error.__cause__ or error.__context__
            if stop is None or isinstance(stop, Exception):
                raise
            raise stop from None
        finally:
            actors.kill()
            ray.shutdown()


class _Actors:
    """The actors of one run, what each is doing, and the tasks of the dead ones to retry.

    Args:
        new_actor: starts an actor (`BatchWorker`).
        nb_actors: how many the run keeps; more than `MAX_ATTEMPTS` times as many dying while
            loading the model ends the run.
    """

    def __init__(self, new_actor: Callable[[], Any], nb_actors: int) -> None:
        self.new_actor, self.nb_actors = new_actor, nb_actors
        self.in_flight: dict[Any, tuple[Any, Task | None]] = {}  # None: loading the model
        self.load: dict[Any, int] = {}  # the ready actors and their tasks in flight
        # each ready actor's tasks not yet come back, in the order it runs them, and whether
        # its death was reported for each (the first one so is the one it was separating)
        self.queued: dict[Any, list[list[Any]]] = {}
        self.retries: collections.deque[Task] = collections.deque()
        self.dead: set[Any] = set()
        self.ever_ready = False
        self.deaths_before_ready = 0
        self.exhausted = False

    def start(self) -> None:
        """Start an actor; it takes tasks once it has loaded the model."""
        actor = self.new_actor()
        self.in_flight[actor.ready.remote()] = (actor, None)

    def hand_out(self, tasks: Iterator[Task], started: Callable[[Task], None]) -> None:
        """Give each ready actor tasks (retries first) up to `TASKS_PER_WORKER`."""
        for actor in [a for a in self.load if a not in self.dead]:
            while self.load[actor] < TASKS_PER_WORKER and not self.exhausted:
                task = self.retries.popleft() if self.retries else next(tasks, None)
                if task is None:
                    self.exhausted = True
                    break
                started(task)
                self.in_flight[actor.separate.remote(task)] = (actor, task)
                self.queued.setdefault(actor, []).append([task, False])
                self.load[actor] += 1

    def finished(self) -> bool:
        """Whether every task was handed out and has come back."""
        return (
            self.exhausted and not self.retries and not any(t for _, t in self.in_flight.values())
        )

    def collect(self, ref: Any) -> Iterator[dict[str, Any]]:
        """What a finished call (`ready` or `separate`) gave: the record of its task, if any.

        Raises:
            UmxError: an actor could not load the model, or actors keep dying while loading it.
        """
        actor, task = self.in_flight.pop(ref)
        try:
            value = ray.get(ref)
        except ray.exceptions.RayActorError:
            yield from self._died(actor, task)
            return
        except ray.exceptions.RayTaskError as error:
            if task is None:
                raise UmxError(_one_line(error)) from None
            self._came_back(actor, task)
            yield {
                "input": task.key,
                "path": task.path,
                "status": FAILED,
                "attempt": task.attempt,
                "error": _one_line(error),
            }
            return
        if task is None:
            if value is not None:
                raise UmxError(value)
            self.ever_ready = True
            self.load[actor] = 0
        else:
            self._came_back(actor, task)
            yield value

    def _came_back(self, actor: Any, task: Task) -> None:
        """A task that the actor ran to its end (done or failed)."""
        if actor in self.load:  # not dead since
            self.load[actor] -= 1
        self.queued[actor] = [entry for entry in self.queued[actor] if entry[0] is not task]

    def _died(self, actor: Any, task: Task | None) -> Iterator[dict[str, Any]]:
        """Replace a dead actor; once each of its tasks is reported lost, retry the one it was
        separating (the first: an actor runs its tasks in order) or, after `MAX_ATTEMPTS`,
        record it failed, and hand the ones waiting behind it out again as they were."""
        if actor not in self.dead:
            self.dead.add(actor)
            if self.load.pop(actor, None) is None:
                self.deaths_before_ready += 1
                if self.deaths_before_ready > self.nb_actors * MAX_ATTEMPTS:
                    raise UmxError(
                        "Ray workers keep dying while loading the model; see "
                        "the cluster's logs (is there enough memory?)"
                    ) from None
            self.start()
        queued = self.queued.get(actor, [])
        for entry in queued:
            entry[1] = entry[1] or entry[0] is task
        if task is None or not queued or not all(lost for _, lost in queued):
            return
        del self.queued[actor]
        running, *waiting = (queued_task for queued_task, _ in queued)
        record = after_death(running, "its Ray actor died")
        if record is None:
            self.retries.append(running.retry())
        self.retries.extend(waiting)  # never begun: no death of theirs
        if record is not None:
            yield record

    def kill(self) -> None:
        """Kill every actor of the run."""
        for actor, _ in self.in_flight.values():
            ray.kill(actor)
        for actor in self.load:
            ray.kill(actor)


def _one_line(error: Exception) -> str:
    """What a method raised inside an actor, in one line."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else 'no message'}"
