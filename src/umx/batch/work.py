"""What a batch worker does, in a local process or a Ray actor alike: load the model once (into
the process's cache, `umx.jobs.loaded_separator`), then separate one input after another with
`umx.jobs.run_task`, each into a manifest record."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from umx.audio import display_path
from umx.devices import keep_freed_memory
from umx.errors import UmxError
from umx.jobs import FAILED, TaskOptions, loaded_separator, run_task
from umx.model_hash import job_sha256

logger = logging.getLogger("umx")

MAX_ATTEMPTS = 3
"""How many times an input is handed to a worker that then dies, before it is recorded failed."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to load the model and write stems, the same for every input.

    Attributes:
        options: how every input is separated and written, the model as the driver resolved
            it (a zoo name or a directory); each task sets its excerpt and `force`.
        model_sha256: the hash of its weights (see `job_sha256`), checked by every worker.
        threads: torch's CPU threads in the worker.
        offline: never touch the network (the driver's setting, passed on explicitly).
    """

    options: TaskOptions
    model_sha256: str
    threads: int = 1
    offline: bool = True

    @property
    def model(self) -> str:
        """The model, as the driver resolved it."""
        return str(self.options.separation.model)


@dataclass(frozen=True)
class Task:
    """One input handed to a worker.

    Attributes:
        key, path, start, duration: the input (see `umx.batch.inputs.BatchInput`).
        outputs: the stem files it writes, by name.
        force: replace existing outputs (`--force`, or outputs this job wrote before).
        attempt: 1 for the first try, more when it was tried before (in this run or an
            earlier one).
        deaths: how many workers died with it in this run.
    """

    key: str
    path: str
    start: float = 0.0
    duration: float | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    force: bool = False
    attempt: int = 1
    deaths: int = 0

    def retry(self) -> Task:
        """The task again after its worker died: its outputs are this job's, so replace them."""
        return replace(self, force=True, attempt=self.attempt + 1, deaths=self.deaths + 1)


def worker_name() -> str:
    """How records name the worker that wrote them: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def load_worker(spec: WorkerSpec) -> None:
    """Set this worker process up (`spec.threads` CPU threads, the memory settings of the `umx`
    command: `umx.devices.keep_freed_memory`) and load its separator once, into the process's
    cache (`umx.jobs.loaded_separator`) where `run_task` finds it.

    Raises:
        UmxError: the model cannot be loaded, or its weights differ from the job's (another
            version of the model on this machine).
    """
    keep_freed_memory()  # as the umx command does: measured 30 % faster per file here
    torch.set_num_threads(spec.threads)
    os.environ["UMX_OFFLINE"] = "1" if spec.offline else "0"
    separation = spec.options.separation
    separator = loaded_separator(separation)
    from umx.onnx.options import is_export_folder

    # a model of torch weights run by onnxruntime is exported from the weights the driver hashed
    checked = separation.backend == "torch" or is_export_folder(separation.model)
    if checked and job_sha256(separator, separation) != spec.model_sha256:
        raise UmxError(
            f"the model {spec.model} on {socket.gethostname()} has other weights than the job's "
            f"(SHA-256 {spec.model_sha256[:12]}...); install the same model on every machine"
        )


def separate_task(spec: WorkerSpec, task: Task) -> dict[str, Any]:
    """Separate one input with `umx.jobs.run_task` and add what the job keeps of it.

    An input that cannot be separated (unreadable, corrupt, an output that exists) gives a
    failed record with the one-line error; the worker goes on with the next input.

    Returns:
        the record of `run_task`, with `input`, `path`, `attempt`, `model`, `model_sha256` and
        `worker`; a failed record of a task that replaces its outputs (`force`: the job's own,
        or `--force`) says `owns_outputs`, so that `--retry-failed` replaces them too.
    """
    record: dict[str, Any] = {
        "input": task.key,
        "path": task.path,
        "attempt": task.attempt,
        "model": spec.model,
        "model_sha256": spec.model_sha256,
    }
    output = spec.options.output
    # the temporary files a worker that died with this input left are removed by the writers
    options = replace(
        spec.options,
        output=replace(output, force=task.force),
        start=task.start,
        duration=task.duration,
    )
    # stopped (KeyboardInterrupt), separate_file removes its files and the folders it made
    record.update(run_task(task.path, options))
    if record["status"] == FAILED and task.force:  # the stems there are the job's (or may be)
        record["owns_outputs"] = True
    record["worker"] = worker_name()
    return record


def death(code: int | None) -> str:
    """How a worker process ended, from its exit code, in words."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def after_death(task: Task, how: str) -> dict[str, Any] | None:
    """What to do with the task of a worker that died (`how`, in words): retry it (None), or
    after `MAX_ATTEMPTS` deaths, a failed record."""
    logger.warning("a worker separating %s died (%s)", display_path(task.path), how)
    if task.deaths + 1 < MAX_ATTEMPTS:
        return None
    return {
        "input": task.key,
        "path": task.path,
        "status": FAILED,
        "attempt": task.attempt,
        "owns_outputs": True,
        "error": f"the workers separating it died {task.deaths + 1} times ({how}); "
        "is the file too long for the memory?",
    }
