"""A `umx batch` job run from start to end on typed options (`BatchOptions`): its inputs, the
model loaded once for the job's identity, the job directory, the workers, progress and summary.

The command line builds the options (`umx.batch.options`); `umx distill` builds them itself for
the teacher's pass.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umx.defaults import AUDIO_EXTENSIONS, JOB_DIRNAME
from umx.devices import WORKERS_PER_CORE, check_cores
from umx.errors import UmxError, check_number, display_path, os_reason, printable
from umx.messages import plural, shown
from umx.options import SeparationOptions
from umx.zoo import is_offline

if TYPE_CHECKING:
    from collections.abc import Callable

    from umx.batch.inputs import BatchInput
    from umx.batch.job import Job
    from umx.batch.work import WorkerSpec
    from umx.jobs import TaskOptions

logger = logging.getLogger("umx")

LOCAL_RAY = "local"
"""`BatchOptions.ray` (`--ray` without an address): start a Ray instance on this machine."""
IDENTITY_OPTIONS = tuple(
    field.name for field in fields(SeparationOptions) if field.name not in ("model", "device")
)
"""The separation options that decide the outputs (the device does not, to float precision)."""
GPU_STEP = 0.0001
"""The smallest share of a GPU Ray reserves (`BatchOptions.gpus_per_worker`)."""
PER_INPUT_OPTIONS = ("start", "duration", "force")
"""The file options of `umx.jobs.TaskOptions` that each input sets, left out of the identity."""
FAILURES_SUMMARY = "%d of %s failed%s; see umx batch --status %s"
"""The line that ends a run with failures (`umx distill` says its own instead)."""


@dataclass(frozen=True)
class BatchOptions:
    """A batch job (its inputs and how each is separated and written) and how this run of it
    goes. Checked when built, with the messages of the command line's options.

    Attributes:
        inputs: audio files, folders (searched recursively by `extensions`) or glob patterns;
            like `lists` and `extensions`, one (a string or path) or a sequence of them.
        task: how each input is separated and written; each input sets `start`, `duration`
            (from a list file) and `force` is the output's.
        lists: files listing inputs (see `umx.batch.inputs.read_list`).
        extensions: the extensions searched for in folders.
        job_dir: the job directory; None for `JOB_DIRNAME` in the output folder.
        retry_failed: separate the inputs that failed in earlier runs again.
        verify: hash every output of done inputs again before skipping them.
        jobs: worker processes; None for 1 locally, as many as the cluster allows with `ray`.
        threads: torch threads per worker; None for the cores shared out locally, 1 with `ray`.
        ray: run on a Ray cluster: its head's HOST:PORT, "auto", or `LOCAL_RAY` for an
            instance started here; None for worker processes on this machine.
        gpus_per_worker: with `ray`, the GPUs each worker reserves.
        quiet: no progress bar or messages.

    Raises:
        UmxError: a count that is not a positive integer, GPUs per worker without `ray`, or a
            Ray address that is an existing file (an input taken for the address) or not
            HOST:PORT.
    """

    inputs: tuple[str, ...]
    task: TaskOptions
    lists: tuple[str, ...] = ()
    extensions: tuple[str, ...] = tuple(AUDIO_EXTENSIONS)
    job_dir: Path | None = None
    retry_failed: bool = False
    verify: bool = False
    jobs: int | None = None
    threads: int | None = None
    ray: str | None = None
    gpus_per_worker: float = 0.0
    quiet: bool = False

    def __post_init__(self) -> None:
        for name in ("inputs", "lists", "extensions"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):  # one path, not its characters
                value = (value,)
            object.__setattr__(self, name, tuple(os.fspath(item) for item in value))
        for name, count, per_core in (
            ("--jobs", self.jobs, WORKERS_PER_CORE),
            ("--threads", self.threads, 1),
        ):
            if count is not None:
                check_number(name, count, above=0, integer=True)
                if self.ray is None:  # a cluster's workers have cores of their own
                    check_cores(name, count, per_core)
        check_number("--gpus-per-worker", self.gpus_per_worker, minimum=0)
        if 0 < self.gpus_per_worker < GPU_STEP:
            raise UmxError(
                f"--gpus-per-worker must be 0 or at least {GPU_STEP:g}, not "
                f"{self.gpus_per_worker:g}: Ray shares a GPU in steps of {GPU_STEP:g}"
            )
        if self.gpus_per_worker and self.ray is None:
            raise UmxError("--gpus-per-worker is for --ray; locally, --device picks the GPU")
        if self.ray not in (None, LOCAL_RAY, "auto") and os.path.exists(self.ray):
            raise UmxError(
                f"--ray took the input {self.ray!r} for the cluster's address: put the inputs "
                f"before --ray, or write --ray {LOCAL_RAY} for a Ray instance on this machine"
            )
        if self.ray not in (None, LOCAL_RAY, "auto") and _host_and_port(self.ray) is None:
            raise UmxError(
                f"--ray {self.ray!r} is not a cluster's address: give HOST:PORT of its head, "
                f"auto, or --ray alone for a Ray instance on this machine"
            )

    @property
    def outdir(self) -> Path:
        """The output folder, absolute."""
        return Path(os.path.abspath(self.task.output.outdir))

    @property
    def job_path(self) -> Path:
        """The job directory, absolute."""
        return Path(os.path.abspath(self.job_given))

    @property
    def job_given(self) -> Path:
        """The job directory as given (a relative one stays relative, as messages show it)."""
        return Path(self.job_dir or Path(self.task.output.outdir) / JOB_DIRNAME)

    def as_given(self, path: str) -> str:
        """An input's absolute path as the user gave it (see `umx.batch.inputs.as_given`)."""
        from umx.batch.inputs import as_given

        lists = [os.path.dirname(name) or os.curdir for name in self.lists]
        return as_given(path, [*self.inputs, *lists])


def _host_and_port(address: str) -> tuple[str, int] | None:
    """The host and port of HOST:PORT or ray://HOST:PORT, the port a number from 1 to 65535;
    None for anything else."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isascii() and port.isdigit() and 0 < int(port) < 65536:
        return host.strip("[]"), int(port)
    return None


CONNECT_TIMEOUT_S = 10.0
"""How long `_check_reachable` waits for a cluster's head to accept a connection."""


def _check_reachable(address: str) -> None:
    """Refuse a cluster address (checked by `BatchOptions`) where no server accepts a
    connection within `CONNECT_TIMEOUT_S`: Ray itself retries such an address for ever,
    writing warnings.

    Raises:
        UmxError: naming the address and why it cannot be reached.
    """
    try:
        with socket.create_connection(_host_and_port(address), CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        raise UmxError(
            f"cannot connect to the Ray cluster at {printable(address)} ({os_reason(error)}): "
            "start its head there (ray start --head) or give the address it printed"
        ) from None


def job_inputs(options: BatchOptions) -> list[BatchInput]:
    """The job's inputs: its files, folders, patterns and lists, found once, leaving out the
    output folder and the job directory.

    Raises:
        UmxError: no inputs, or a list that cannot be read.
    """
    from umx.batch.inputs import collect_inputs

    return collect_inputs(
        list(options.inputs),
        lists=list(options.lists),
        extensions=list(options.extensions),
        exclude={options.outdir: "--outdir", options.job_path: "--job"},
    )


def run_batch_job(options: BatchOptions, inputs: list[BatchInput] | None = None) -> int:
    """Run a batch job: separate the inputs it has not done yet, and resume it the next time.

    Args:
        options: the job and this run.
        inputs: the job's inputs as `job_inputs` found them (None: found now), for a caller
            that needs them too without searching the folders twice.

    Returns:
        the exit code: 1 when inputs of the job failed (in this run or an earlier one), else 0.

    Raises:
        UmxError: no inputs, a model that cannot be loaded, a device that this machine lacks
            (without Ray), a job directory started with other settings, or Ray missing or
            unreachable.
    """
    if inputs is None:
        inputs = job_inputs(options)
    pool = _connect_ray(options)  # before the model loads and the job directory is made
    try:
        return _run_job(options, inputs, pool)
    finally:
        if pool is not None:
            pool.close()


def _run_job(options: BatchOptions, inputs: list[BatchInput], ray_pool: Any) -> int:
    """`run_batch_job` once Ray's pool (if any: `ray_pool`) is connected."""
    from umx.batch.job import Job
    from umx.batch.plan import CHANGED, plan_tasks
    from umx.devices import available_cores
    from umx.jobs import DONE, FAILED

    job_dir = options.job_given
    identity, spec, plans = plan_job(options, inputs)
    with Job(job_dir, identity, inputs) as job:
        tasks, counts = plan_tasks(
            job,
            inputs,
            plans,
            force=options.task.output.force,
            retry_failed=options.retry_failed,
            verify=options.verify,
        )
        if not tasks:
            logger.info(
                "%s: nothing to do (%d done, %d failed)",
                display_path(job_dir),
                counts[DONE],
                counts[FAILED],
            )
        else:
            pool, jobs = _start_pool(options, spec, len(tasks), ray_pool)
            job.start_run(
                mode=pool.mode,
                workers=jobs,
                threads=spec.threads,
                cores=available_cores(),
                retry_failed=options.retry_failed,  # what --status advises for failures
            )
            changed = counts[CHANGED]
            logger.info(
                "%s: %s, %d done before, %d to separate%s with %s on %s, %s each",
                display_path(job_dir),
                plural(len(inputs), "input"),
                counts[DONE],
                len(tasks),
                f" ({plural(changed, 'changed input')} separated again)" * bool(changed),
                display_path(spec.model),
                plural(jobs, f"{pool.mode} worker"),
                plural(spec.threads, "torch thread"),
            )
            counts[FAILED] += _run(job, pool, tasks, options)
        if counts[FAILED]:
            logger.error(
                FAILURES_SUMMARY,
                counts[FAILED],
                plural(len(inputs), "input"),
                _earlier_failures(job, inputs, options.as_given),
                display_path(job_dir),
            )
            return 1
    return 0


def plan_job(
    options: BatchOptions, inputs: list[BatchInput]
) -> tuple[dict[str, Any], WorkerSpec, list[dict[str, Path]]]:
    """Load the model once to learn its stems and weights' hash, and turn the options into the
    job's identity, what every worker needs, and each input's output files.

    Returns:
        the identity (see `umx.batch.job.Job`), the workers' spec, and the outputs of each input
        by stem name.

    Raises:
        UmxError: the model cannot be loaded, its chunks would be too short for it, or the
            task's `aggregate` names stems it lacks.
    """
    from umx.api import check_aggregate, load_model, plan_outputs
    from umx.batch.work import WorkerSpec, job_sha256
    from umx.devices import resolve_device, threads_per_worker

    task, separation, output = options.task, options.task.separation, options.task.output
    if options.ray is None:  # on a cluster, the device is the workers' (the head may have none)
        resolve_device(separation.device)
    # Before the job folder is written. The weights' hash is of an export's graphs as they
    # are on disk: they are not quantised in memory here (the workers do).
    separator = load_model(replace(separation, quantize=None), progress=not options.quiet)
    check_aggregate(task.aggregate, separator)
    names = separator.output_names(task.aggregate)
    model, sha256 = str(separator.model_name), job_sha256(separator, separation)
    del separator
    plans = plan_outputs(
        [item.path for item in inputs], names, options.outdir, output.filename, output.ext
    )
    task = replace(
        task,
        separation=replace(separation, model=model),
        output=replace(output, outdir=options.outdir),
    )
    files = {
        name: str(value) if name == "outdir" else value
        for name, value in task.file_options().items()
        if name not in PER_INPUT_OPTIONS
    }
    identity = {
        "model": model,
        "model_sha256": sha256,
        "outputs": names,
        "separation": {name: getattr(separation, name) for name in IDENTITY_OPTIONS},
        "files": files,
    }
    if options.ray is None:
        threads = options.threads or threads_per_worker(options.jobs or 1)
    else:
        threads = options.threads or 1
    return identity, WorkerSpec(task, sha256, threads, is_offline()), plans


def _connect_ray(options: BatchOptions) -> Any:
    """With `ray`: the pool of Ray actors, connected to the cluster, which has room for one at
    least; None without.

    Raises:
        UmxError: Ray is missing, the cluster cannot be reached, or no worker fits it.
    """
    if options.ray is None:
        return None
    try:
        from umx.batch.ray_backend import RayPool, check_head
    except ImportError:
        raise UmxError("--ray needs Ray: pip install 'umx[ray]'") from None
    if options.ray not in (LOCAL_RAY, "auto"):
        _check_reachable(options.ray)
        check_head(options.ray)
    address = None if options.ray == LOCAL_RAY else options.ray
    pool = RayPool(None, address, options.jobs, options.gpus_per_worker, options.threads or 1)
    pool.connect()
    return pool


def _start_pool(
    options: BatchOptions, spec: WorkerSpec, nb_tasks: int, ray_pool: Any
) -> tuple[Any, int]:
    """The workers of this run: local processes, or the Ray actors of `ray_pool` (connected).

    Returns:
        the pool, and how many workers it runs.
    """
    from umx.batch.local import LocalPool

    if ray_pool is None:
        jobs = min(options.jobs or 1, nb_tasks)
        return LocalPool(spec, jobs), jobs
    ray_pool.spec = spec
    return ray_pool, ray_pool.workers(nb_tasks)


def _run(job: Job, pool: Any, tasks: list, options: BatchOptions) -> int:
    """Run the tasks on the pool with one progress bar (unless `options.quiet`), each failure
    said with its input as given; returns how many failed."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from umx.batch.job import failure_line, running_record
    from umx.jobs import FAILED

    failed = 0
    bar = tqdm(
        total=len(tasks),
        unit="file",
        desc="umx batch",
        disable=True if options.quiet else None,  # None: only on a terminal
        dynamic_ncols=True,
    )
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            for record in pool.run(iter(tasks), lambda task: job.append(running_record(task))):
                job.finish(record)
                if record["status"] == FAILED:
                    failed += 1
                    logger.warning("failed: %s", failure_line(record, options.as_given))
                bar.update(1)
                bar.set_postfix(failed=failed, refresh=False)
    except BaseException as stop:
        if not isinstance(stop, Exception):  # Ctrl-C, SIGTERM, SIGHUP
            logger.warning("stopped; the same command resumes the job")
        raise
    finally:
        bar.close()
    return failed


def _earlier_failures(job: Job, inputs: list[BatchInput], as_given: Callable[[str], str]) -> str:
    """The first input that failed in an earlier run, which this run did not report as it
    happened, as given and as a parenthesis (`--status` says why); empty if there is none."""
    from umx.jobs import FAILED

    earlier = [
        record
        for item in inputs
        if item.key not in job.appended
        and (record := job.latest.get(item.key, {})).get("status") == FAILED
    ]
    if not earlier:
        return ""
    more = f" and {len(earlier) - 1} more" if len(earlier) > 1 else ""
    first = as_given(earlier[0].get("path") or earlier[0]["input"])
    return f" (in an earlier run: {shown(display_path(first))}{more})"
