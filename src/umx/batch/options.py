"""`umx batch`'s command line: its options, and the `BatchOptions` they build, which
`umx.batch.run` runs."""

from __future__ import annotations

import argparse

from umx.batch.run import LOCAL_RAY, BatchOptions, run_batch_job
from umx.cli_options import (
    MODEL_HELP,
    add_input_arguments,
    add_output_arguments,
    add_separation_arguments,
    check_separation_args,
    output_options,
    path_argument,
    path_text,
)
from umx.defaults import AUDIO_EXTENSIONS, JOB_DIRNAME


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
        type=path_text,
        metavar="INPUT",
        help="audio files, folders (searched recursively by extension) or glob patterns "
        "(quote them; ** crosses folders)",
    )
    p.add_argument(
        "--list",
        action="append",
        default=[],
        type=path_text,
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
        type=path_argument,
        metavar="DIR",
        help=f"the job directory: settings, inputs and the results manifest; the same command "
        f"with the same --job resumes the job (default: OUTDIR/{JOB_DIRNAME})",
    )
    p.add_argument(
        "--status",
        type=path_text,
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
        help="hash every output and input of done inputs again before skipping them (default: "
        "only files whose size or modification time changed)",
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


def batch_options(args: argparse.Namespace) -> BatchOptions:
    """The options of `umx batch`'s command line, checked before anything is read or loaded."""
    from umx.api import parse_aggregate
    from umx.jobs import TaskOptions

    task = TaskOptions(
        check_separation_args(args),
        output_options(args),
        aggregate=parse_aggregate(args.aggregate),
        downmix=args.downmix,
        match_input=args.match_input,
    )
    return BatchOptions(
        inputs=args.inputs,
        task=task,
        lists=args.list,
        extensions=args.extensions,
        job_dir=args.job,
        retry_failed=args.retry_failed,
        verify=args.verify,
        jobs=args.jobs,
        threads=args.threads,
        ray=args.ray,
        gpus_per_worker=args.gpus_per_worker,
        quiet=args.quiet,
    )


def run_batch(args: argparse.Namespace) -> int:
    """Run `umx batch`; returns the exit code (1 when inputs of the job failed)."""
    from umx.batch.job import summarize

    if args.status is not None:
        for line in summarize(args.status):
            print(line)
        return 0
    return run_batch_job(batch_options(args))
