"""What a batch worker does, in a local process or a Ray actor alike: load the model once, then
separate one input after another with `umx.api.separate_file`, each into a manifest record."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from umx.api import separate_file, separator_for
from umx.audio import display_path, leftover_temporaries
from umx.devices import keep_freed_memory
from umx.errors import UmxError
from umx.files import sha256_file
from umx.options import SeparationOptions
from umx.separator import Separator
from umx.weights import hash_weights

logger = logging.getLogger("umx")

DONE, FAILED, RUNNING = "done", "failed", "running"
"""A manifest record's status: outputs written and hashed; an error; handed to a worker."""
MAX_ATTEMPTS = 3
"""How many times an input is handed to a worker that then dies, before it is recorded failed."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to load the model and write stems, the same for every input.

    Attributes:
        model: the model to load, as the driver resolved it (a zoo name or a directory).
        model_sha256: the hash of its weights (see `model_sha256`), checked by every worker.
        separation: the fields of `umx.options.SeparationOptions` but the model.
        files: the options of `umx.api.separate_file` that are the same for every input.
        threads: torch's CPU threads in the worker.
        offline: never touch the network (the driver's setting, passed on explicitly).
    """

    model: str
    model_sha256: str
    separation: Mapping[str, Any]
    files: Mapping[str, Any]
    threads: int = 1
    offline: bool = True


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


def model_sha256(separator: Separator) -> str:
    """A SHA-256 of a separator's weights: target names, parameter names, dtypes, shapes and
    values, in order. Two separators with the same weights have the same hash, whatever files
    they were loaded from.

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256()
    for target, model in separator.target_models.items():
        digest.update(f"{target}\0".encode())
        hash_weights(digest, model)
    return digest.hexdigest()


def worker_name() -> str:
    """How records name the worker that wrote them: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def load_worker(spec: WorkerSpec) -> Separator:
    """The worker's separator, loaded once, on `spec.threads` CPU threads, with the memory
    settings of the `umx` command (`umx.devices.keep_freed_memory`).

    Raises:
        UmxError: the model cannot be loaded, or its weights differ from the job's (another
            version of the model on this machine).
    """
    keep_freed_memory()  # as the umx command does: measured 30 % faster per file here
    torch.set_num_threads(spec.threads)
    os.environ["UMX_OFFLINE"] = "1" if spec.offline else "0"
    options = SeparationOptions(model=spec.model, **spec.separation)
    separator = separator_for(options, progress=False)
    if options.backend == "torch" and model_sha256(separator) != spec.model_sha256:
        raise UmxError(
            f"the model {spec.model} on {socket.gethostname()} has other weights than the job's "
            f"(SHA-256 {spec.model_sha256[:12]}...); install the same model on every machine"
        )
    return separator


def separate_task(separator: Separator, spec: WorkerSpec, task: Task) -> dict[str, Any]:
    """Separate one input and describe what happened as a manifest record.

    An input that cannot be separated (unreadable, corrupt, an output that exists) gives a
    failed record with the one-line error; the worker goes on with the next input.

    Returns:
        the record: `input`, `status` (`done` or `failed`), `attempt`, `model`,
        `model_sha256`, `input_bytes`, `audio_seconds`, `seconds` (wall time), `worker`,
        `finished` (Unix time), and `outputs` (`{name: {path, sha256, bytes, mtime_ns}}`) or
        `error`.
    """
    started = time.time()
    audio = [0.0]
    record: dict[str, Any] = {
        "input": task.key,
        "path": task.path,
        "attempt": task.attempt,
        "model": spec.model,
        "model_sha256": spec.model_sha256,
    }
    try:
        record["input_bytes"] = os.stat(task.path).st_size
    except OSError:
        record["input_bytes"] = None
    folders = _missing_folders(task.outputs.values(), spec.files["outdir"])
    try:
        if task.force:  # a worker that died with this input may have left temporary files
            for path in task.outputs.values():
                for leftover in leftover_temporaries(path):
                    leftover.unlink(missing_ok=True)
        reports = separate_file(
            task.path,
            separator,
            **spec.files,
            start=task.start,
            duration=task.duration,
            force=task.force,
            on_progress=lambda done, total: audio.__setitem__(0, total),
        )
        record["status"] = DONE
        written = {os.path.abspath(report.path) for report in reports}
        record["outputs"] = {
            name: describe_output(path) for name, path in task.outputs.items() if path in written
        }
    except UmxError as error:
        record.update(status=FAILED, error=str(error))
    except KeyboardInterrupt:  # stopped: the writers removed their files, and so go the folders
        for folder in folders:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: another input's stems may be in it
        raise
    except Exception as error:  # a bug or a resource error: recorded, and the job goes on
        lines = str(error).strip().splitlines()
        record.update(
            status=FAILED, error=f"{type(error).__name__}: {lines[0] if lines else 'no message'}"
        )
    record.update(
        audio_seconds=round(audio[0], 3),
        seconds=round(time.time() - started, 3),
        worker=worker_name(),
        finished=round(time.time(), 3),
    )
    return record


def _missing_folders(outputs: Iterable[str], outdir: str) -> list[Path]:
    """The folders that writing `outputs` would create inside `outdir`, deepest first."""
    root = Path(outdir)
    missing = set()
    for output in outputs:
        folder = Path(output).parent
        while folder != root and root in folder.parents and not folder.exists():
            missing.add(folder)
            folder = folder.parent
    return sorted(missing, key=lambda folder: len(folder.parts), reverse=True)


def describe_output(path: str | os.PathLike) -> dict[str, Any]:
    """What the manifest keeps of an output file to verify it later: path, SHA-256, size and
    modification time."""
    stat = os.stat(path)
    return {
        "path": os.path.abspath(path),
        "sha256": sha256_file(path),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


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
