"""`umx serve`'s command line: its arguments, parsed into `umx.web.run.ServeOptions`."""

from __future__ import annotations

import argparse

from umx.cli_options import path_argument
from umx.defaults import AUTO
from umx.web.run import (
    DEFAULT_HOST,
    DEFAULT_MAX_CACHE_GB,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    ServeOptions,
    serve,
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `umx serve`."""
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; the page has "
        "no accounts, so only listen on others on a network you trust)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on; 0 for any free one (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--model",
        help="model the page selects first: a name (see `umx --list-models`) or a model "
        "directory (default: umxl when cached or downloadable, else the bundled umxsynth)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="songs separated at the same time, one per worker (default: 1)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        metavar="N",
        help=f"songs that may wait; more are refused as busy (default: {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--data-dir",
        type=path_argument,
        help="folder of the uploads and their stems, kept across restarts (default: "
        "serve/ in umx's cache folder, e.g. ~/.cache/umx/serve)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help=f"largest song accepted, in MiB (default: {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    parser.add_argument(
        "--max-cache-gb",
        type=float,
        default=DEFAULT_MAX_CACHE_GB,
        metavar="GB",
        help="most space the jobs may take, in GiB; the oldest are removed first (default: "
        f"{DEFAULT_MAX_CACHE_GB:g})",
    )
    parser.add_argument(
        "--device",
        default=AUTO,
        help="cpu, cuda, cuda:N or mps (default: auto: a CUDA GPU if present, else MPS, "
        "else the CPU)",
    )
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The options of `umx serve`'s command line, checked before anything starts."""
    return ServeOptions(
        host=args.host,
        port=args.port,
        model=args.model,
        jobs=args.jobs,
        max_queue=args.max_queue,
        data_dir=args.data_dir,
        max_upload_mb=args.max_upload_mb,
        max_cache_gb=args.max_cache_gb,
        device=args.device,
        open_browser=args.open,
    )


def run_serve(args: argparse.Namespace) -> int:
    """Run `umx serve` until it is stopped (Ctrl-C or SIGTERM)."""
    return serve(serve_options(args))
