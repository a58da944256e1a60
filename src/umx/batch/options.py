"""`umx batch`: its options, and a run from start to end (inputs, model, job directory,
workers, progress, summary)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umx.cli_options import (
    MODEL_HELP,
    SEPARATION_DEFAULTS,
    add_input_arguments,
    add_output_arguments,
    add_separation_arguments,
    check_separation_args,
)
from umx.defaults import AUDIO_EXTENSIONS, JOB_DIRNAME
from umx.errors import UmxError, check_number
from umx.messages import plural
from umx.zoo import is_offline, load_separator

if TYPE_CHECKING:
    from umx.batch.inputs import BatchInput
    from umx.batch.job import Job
    from umx.batch.work import WorkerSpec

logger = logging.getLogger("umx")

LOCAL_RAY = "local"
"""`--ray` without an address: start a Ray instance on this machine for the run."""
IDENTITY_OPTIONS = tuple(name for name in SEPARATION_DEFAULTS if name != "device")
"""The separation options that decide the outputs (the device does not, to float precision)."""
PER_INPUT_OPTIONS = ("start", "duration", "force")
"""The file options of `umx.jobs.TaskOptions` that each input sets, left out of the identity."""


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `umx batch`."""
    _add_job_arguments(p)
    _add_worker_arguments(p)
    p.add_argument("--model", help=MODEL_HELP)
    add_output_arguments(p)
    add_input_arguments(p)
    add_separation_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")


def _add_job_arguments(p: argparse.ArgumentParser) -> None:
    """The inputs of a job, its directory, and what a run of it does."""
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="audio files, folders (searched recursively by extension) or glob patterns "
        "(quote them; ** crosses folders)",
    )
    p.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="FILE",
        help="a file listing inputs: one path per line, or CSV (path,start,duration columns) "
        "or JSON Lines (.jsonl, the same keys) with per-file excerpts; may be repeated",
    )
    p.add_argument(
        "--extensions",
        nargs="+",
        default=list(AUDIO_EXTENSIONS),
        metavar="EXT",
        help=f"extensions searched for in folders (default: {' '.join(AUDIO_EXTENSIONS)})",
    )
    p.add_argument(
        "--job",
        type=Path,
        metavar="DIR",
        help=f"the job directory: settings, inputs and the results manifest; the same command "
        f"with the same --job resumes the job (default: OUTDIR/{JOB_DIRNAME})",
    )
    p.add_argument(
        "--status",
        metavar="JOBDIR",
        help="print what a job has done (done, failed, pending, throughput, time left) and exit; "
        "JOBDIR is the job directory or the output folder holding it",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="separate the inputs that failed in earlier runs again",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="hash every output of done inputs again before skipping them (default: only files "
        "whose size or modification time changed)",
    )


def _add_worker_arguments(p: argparse.ArgumentParser) -> None:
    """Where the workers run, how many, and what each takes."""
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="worker processes, each loading the model once (default: 1 locally; with --ray, "
        "as many as the cluster's CPUs or GPUs allow)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads per worker (default: the cores divided by --jobs locally, 1 with "
        "--ray)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        metavar="ADDRESS",
        help="run on a Ray cluster: auto (the cluster this machine belongs to), HOST:PORT of "
        f"its head, or nothing (or {LOCAL_RAY}) to start Ray on this machine for the run "
        "(needs umx[ray])",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="G",
        help="with --ray: GPUs each worker reserves (0.5 puts two on a GPU; default: 0)",
    )


def run_batch_command(argv: Sequence[str], prog: str = "umx batch") -> int:
    """Run `umx batch` with command-line arguments `argv`, as another command's step (the
    teacher's pass of `umx distill`); returns its exit status."""
    parser = argparse.ArgumentParser(prog=prog)
    add_batch_arguments(parser)
    return run_batch(parser.parse_args(list(argv)))


def check_batch_args(args: argparse.Namespace) -> None:
    """The options of `umx batch` that can be checked before anything is read or loaded."""
    if args.jobs is not None:
        check_number("--jobs", args.jobs, above=0, integer=True)
    if args.threads is not None:
        check_number("--threads", args.threads, above=0, integer=True)
    check_number("--gpus-per-worker", args.gpus_per_worker, minimum=0)
    if args.gpus_per_worker and args.ray is None:
        raise UmxError("--gpus-per-worker is for --ray; locally, --device picks the GPU")
    if args.ray not in (None, LOCAL_RAY, "auto") and os.path.exists(args.ray):
        raise UmxError(
            f"--ray took the input {args.ray!r} for the cluster's address: put the inputs "
            f"before --ray, or write --ray {LOCAL_RAY} for a Ray instance on this machine"
        )
    from umx.modeldir import check_target_name

    if args.residual is not None:
        check_target_name(args.residual, "--residual")
    check_separation_args(args)


def run_batch(args: argparse.Namespace) -> int:
    """Run `umx batch`; returns the exit code (1 when inputs of the job failed)."""
    from umx.audio import display_path
    from umx.batch.inputs import collect_inputs
    from umx.batch.job import Job, plan_tasks, summarize
    from umx.devices import available_cores
    from umx.jobs import DONE, FAILED

    if args.status is not None:
        for line in summarize(args.status):
            print(line)
        return 0
    check_batch_args(args)
    outdir = Path(os.path.abspath(args.outdir))
    job_dir = Path(os.path.abspath(args.job or outdir / JOB_DIRNAME))
    inputs = collect_inputs(
        args.inputs, lists=args.list, extensions=args.extensions, exclude=[outdir, job_dir]
    )
    if args.ray is not None:
        try:
            import umx.batch.ray_backend  # noqa: F401 (Ray is there before the model loads)
        except ImportError:
            raise UmxError("--ray needs Ray: pip install 'umx[ray]'") from None
    identity, spec, plans = plan_job(args, inputs, outdir)
    with Job(job_dir, identity, inputs) as job:
        tasks, counts = plan_tasks(
            job,
            inputs,
            plans,
            force=args.force,
            retry_failed=args.retry_failed,
            verify=args.verify,
        )
        if not tasks:
            logger.info(
                "%s: nothing to do (%d done, %d failed)",
                display_path(job_dir),
                counts[DONE],
                counts[FAILED],
            )
        else:
            pool, jobs = _start_pool(args, spec, len(tasks))
            job.start_run(
                mode=pool.mode, workers=jobs, threads=spec.threads, cores=available_cores()
            )
            logger.info(
                "%s: %s, %d done before, %d to separate with %s on %s, %s each",
                display_path(job_dir),
                plural(len(inputs), "input"),
                counts[DONE],
                len(tasks),
                display_path(spec.model),
                plural(jobs, f"{pool.mode} worker"),
                plural(spec.threads, "torch thread"),
            )
            counts[FAILED] += _run(job, pool, tasks, args.quiet)
        if counts[FAILED]:
            logger.error(
                "%d of %s failed%s; see umx batch --status %s",
                counts[FAILED],
                plural(len(inputs), "input"),
                _earlier_failures(job, inputs),
                display_path(job_dir),
            )
            return 1
    return 0


def plan_job(
    args: argparse.Namespace, inputs: list[BatchInput], outdir: Path
) -> tuple[dict[str, Any], WorkerSpec, list[dict[str, Path]]]:
    """Load the model once to learn its stems and weights' hash, and turn the options into the
    job's identity, what every worker needs, and each input's output files.

    Returns:
        the identity (see `umx.batch.job.Job`), the workers' spec, and the outputs of each input
        by stem name.

    Raises:
        UmxError: the model cannot be loaded, or `--aggregate` names stems it lacks.
    """
    from umx.api import check_aggregate, parse_aggregate, plan_outputs
    from umx.batch.work import WorkerSpec, model_sha256
    from umx.devices import threads_per_worker
    from umx.jobs import TaskOptions
    from umx.options import OutputOptions, SeparationOptions

    aggregate = parse_aggregate(args.aggregate)
    separator = load_separator(
        args.model,
        targets=args.targets,
        niter=args.niter,
        softmask=args.softmask,
        residual=args.residual,
        wiener_win_len=args.wiener_win_len or None,
        progress=not args.quiet,
    )
    check_aggregate(aggregate, separator.targets)
    names = list(aggregate) if aggregate is not None else separator.targets
    model, sha256 = str(separator.model_name), model_sha256(separator)
    del separator
    plans = plan_outputs([item.path for item in inputs], names, outdir, args.filename, args.ext)
    separation = {name: getattr(args, name) for name in SEPARATION_DEFAULTS}
    options = TaskOptions(
        SeparationOptions(model=model, **separation),
        OutputOptions(outdir, args.filename, args.ext, args.subtype, args.clip),
        aggregate=aggregate,
        downmix=args.downmix,
        match_input=args.match_input,
    )
    files = {
        name: str(value) if name == "outdir" else value
        for name, value in options.file_options().items()
        if name not in PER_INPUT_OPTIONS
    }
    identity = {
        "model": model,
        "model_sha256": sha256,
        "outputs": names,
        "separation": {name: separation[name] for name in IDENTITY_OPTIONS},
        "files": files,
    }
    if args.ray is None:
        threads = args.threads or threads_per_worker(args.jobs or 1)
    else:
        threads = args.threads or 1
    spec = WorkerSpec(options, sha256, threads, is_offline())
    return identity, spec, plans


def _start_pool(args: argparse.Namespace, spec: WorkerSpec, nb_tasks: int) -> tuple[Any, int]:
    """The workers of this run: local processes, or Ray actors (connected to the cluster here).

    Returns:
        the pool, and how many workers it runs.
    """
    from umx.batch.local import LocalPool

    if args.ray is None:
        jobs = min(args.jobs or 1, nb_tasks)
        return LocalPool(spec, jobs), jobs
    from umx.batch.ray_backend import RayPool

    address = None if args.ray == LOCAL_RAY else args.ray
    pool = RayPool(spec, address, args.jobs, args.gpus_per_worker)
    return pool, pool.connect(nb_tasks)


def _run(job: Job, pool: Any, tasks: list, quiet: bool) -> int:
    """Run the tasks on the pool with one progress bar; returns how many failed."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from umx.batch.job import failure_line, running_record
    from umx.jobs import FAILED

    failed = 0
    bar = tqdm(
        total=len(tasks),
        unit="file",
        desc="umx batch",
        disable=True if quiet else None,  # None: only on a terminal
        dynamic_ncols=True,
    )
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            for record in pool.run(iter(tasks), lambda task: job.append(running_record(task))):
                job.append(record)
                if record["status"] == FAILED:
                    failed += 1
                    logger.warning("failed: %s", failure_line(record))
                bar.update(1)
                bar.set_postfix(failed=failed, refresh=False)
    except KeyboardInterrupt:
        logger.warning("stopped; the same command resumes the job")
        raise
    finally:
        bar.close()
    return failed


def _earlier_failures(job: Job, inputs: list[BatchInput]) -> str:
    """The first failure of an earlier run, which this run did not report as it happened, as
    a parenthesis; empty if there is none."""
    from umx.batch.job import failure_line
    from umx.jobs import FAILED

    earlier = [
        record
        for item in inputs
        if item.key not in job.appended
        and (record := job.latest.get(item.key, {})).get("status") == FAILED
    ]
    if not earlier:
        return ""
    more = f"; and {len(earlier) - 1} more" if len(earlier) > 1 else ""
    return f" (in an earlier run: {failure_line(earlier[0])}{more})"
