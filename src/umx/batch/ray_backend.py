"""Ray mode: the same job on a Ray cluster (`pip install 'umx[ray]'`).

Each worker is a Ray actor that loads the model once and separates the inputs it is given with
`umx.api.separate_file`, reading and writing paths that every node sees (shared storage mounted
at the same place). The driver keeps at most `TASKS_PER_WORKER` inputs queued per actor, so
memory and the object store stay bounded however many inputs there are; only paths and small
records travel, never audio. An actor that dies (killed, out of memory, its node lost) has its
inputs handed to the others and a new actor takes its place. Only this module imports `ray`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray
import ray.exceptions

from umx.batch.messages import plural
from umx.batch.work import (
    FAILED,
    MAX_ATTEMPTS,
    Task,
    WorkerSpec,
    after_death,
    load_worker,
    separate_task,
)
from umx.errors import UmxError

logger = logging.getLogger("umx")

TASKS_PER_WORKER = 2
"""Inputs queued on each actor at most: one running, one waiting, so an actor never idles
between inputs while the driver is away."""
START_TIMEOUT_S = 600.0
"""How long the driver waits for the first actor to load the model before giving up (the
cluster may lack the CPUs or GPUs asked for)."""
WAIT_S = 1.0
"""How often the driver wakes up while it waits (to notice Ctrl-C)."""


class BatchWorker:
    """A Ray actor: the model, loaded once, and `separate_task` on each input it is given."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.error: str | None = None
        try:
            self.separator = load_worker(spec)
        except UmxError as error:
            self.error = str(error)

    def ready(self) -> str | None:
        """Why the worker cannot separate; None when it can."""
        return self.error

    def separate(self, task: Task) -> dict[str, Any]:
        """Separate one input into its manifest record."""
        return separate_task(self.separator, self.spec, task)


class RayPool:
    """Actors on a Ray cluster.

    Args:
        spec: what every worker loads and how it writes; `spec.threads` CPUs each.
        address: the cluster (`auto`, `HOST:PORT` or `ray://HOST:PORT`), or None to start a
            Ray instance on this machine for the run.
        jobs: the number of actors; None for as many as the cluster's CPUs (or GPUs, with
            `gpus_per_worker`) allow.
        gpus_per_worker: GPUs reserved for each actor (fractions share a GPU); 0 for CPUs only.
    """

    mode = "ray"

    def __init__(
        self,
        spec: WorkerSpec,
        address: str | None,
        jobs: int | None,
        gpus_per_worker: float = 0.0,
    ) -> None:
        self.spec = spec
        self.address = address
        self.jobs = jobs
        self.gpus_per_worker = gpus_per_worker

    def connect(self, nb_tasks: int | None = None) -> int:
        """Connect to the cluster (or start the local instance).

        Args:
            nb_tasks: the number of inputs to separate; no more actors than that are started.

        Returns:
            the number of actors the run uses.

        Raises:
            UmxError: the cluster cannot be reached, or lacks the resources for one actor.
        """
        try:
            ray.init(
                address=self.address,
                include_dashboard=False if self.address is None else None,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = self.address or "a local Ray instance"
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise UmxError(f"cannot connect to {where} ({reason})") from None
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        if self.gpus_per_worker > 0:
            fit = gpus / self.gpus_per_worker
            what = f"{gpus:g} GPUs for --gpus-per-worker {self.gpus_per_worker:g}"
        else:
            fit = cpus / self.spec.threads
            what = f"{cpus:g} CPUs for --threads {self.spec.threads}"
        fit = int(fit + 1e-9)
        if fit < 1:
            ray.shutdown()
            raise UmxError(f"the Ray cluster has {what}: no worker fits")
        self.jobs = min(self.jobs or fit, nb_tasks or fit)
        if self.jobs > fit:
            logger.warning(
                "the cluster has room for %s at once; %d asked", plural(fit, "worker"), self.jobs
            )
        return self.jobs

    def run(
        self, tasks: Iterator[Task], started: Callable[[Task], None]
    ) -> Iterator[dict[str, Any]]:
        """Separate every task on the cluster, yielding one record per task as they finish
        (see `umx.batch.local.LocalPool.run`)."""
        if not ray.is_initialized():
            self.connect()
        actor_class = ray.remote(BatchWorker).options(
            num_cpus=self.spec.threads,
            num_gpus=self.gpus_per_worker,
            max_restarts=0,
            max_task_retries=0,
        )
        in_flight: dict[Any, tuple[Any, Task | None]] = {}
        load: dict[Any, int] = {}
        retries: collections.deque[Task] = collections.deque()
        dead: set[Any] = set()
        ever_ready = False
        deaths_before_ready = 0
        begun = time.monotonic()

        def start_actor() -> None:
            actor = actor_class.remote(self.spec)
            in_flight[actor.ready.remote()] = (actor, None)

        try:
            for _ in range(self.jobs or 1):
                start_actor()
            exhausted = False
            while True:
                for actor in [a for a in load if a not in dead]:
                    while load[actor] < TASKS_PER_WORKER and not exhausted:
                        task = retries.popleft() if retries else next(tasks, None)
                        if task is None:
                            exhausted = True
                            break
                        started(task)
                        in_flight[actor.separate.remote(task)] = (actor, task)
                        load[actor] += 1
                if exhausted and not retries and not any(t for _, t in in_flight.values()):
                    return
                if not ever_ready and time.monotonic() - begun > START_TIMEOUT_S:
                    raise UmxError(
                        f"no Ray worker started in {START_TIMEOUT_S:.0f} s: does the cluster "
                        f"have {self.spec.threads} free CPUs (and {self.gpus_per_worker:g} GPUs) "
                        "for one?"
                    )
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_S)
                for ref in done:
                    actor, task = in_flight.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        if actor not in dead:
                            dead.add(actor)
                            if load.pop(actor, None) is None:
                                deaths_before_ready += 1
                                if deaths_before_ready > (self.jobs or 1) * MAX_ATTEMPTS:
                                    raise UmxError(
                                        "Ray workers keep dying while loading the model; see "
                                        "the cluster's logs (is there enough memory?)"
                                    ) from None
                            start_actor()
                        if task is not None:
                            record = after_death(task, "its Ray actor died")
                            if record is None:
                                retries.append(task.retry())
                            else:
                                yield record
                        continue
                    except ray.exceptions.RayTaskError as error:
                        if task is None:
                            raise UmxError(_one_line(error)) from None
                        load[actor] -= 1
                        yield {
                            "input": task.key,
                            "path": task.path,
                            "status": FAILED,
                            "attempt": task.attempt,
                            "error": _one_line(error),
                        }
                        continue
                    if task is None:
                        if value is not None:
                            raise UmxError(value)
                        ever_ready = True
                        load[actor] = 0
                    else:
                        load[actor] -= 1
                        yield value
        finally:
            for actor, _ in in_flight.values():
                ray.kill(actor)
            for actor in load:
                ray.kill(actor)
            ray.shutdown()


def _one_line(error: Exception) -> str:
    """What a method raised inside an actor, in one line."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else 'no message'}"
