"""`umx evaluate`'s command line: its arguments, parsed into `umx.evaluate.run.EvaluateOptions`,
and the tables the run returns, printed."""

from __future__ import annotations

import argparse
import os

from umx.cli_options import (
    add_separation_arguments,
    check_separation_args,
    given_separation_options,
    path_argument,
)
from umx.defaults import (
    BASELINES,
    BSSEVAL,
    DEFAULT_MODEL,
    FALLBACK_MODEL,
    HOP,
    SUBSETS,
    WIN,
)
from umx.errors import UmxError
from umx.evaluate.run import EvaluateOptions


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `umx evaluate`."""
    data = parser.add_argument_group("test set")
    data.add_argument(
        "--root",
        type=path_argument,
        default=os.environ.get("MUSDB_PATH"),
        help="MUSDB18 folder holding train/ and test/ (default: $MUSDB_PATH)",
    )
    data.add_argument(
        "--subset", choices=SUBSETS, default="test", help="subset to evaluate (default: test)"
    )
    data.add_argument(
        "--is-wav",
        action="store_true",
        help="a folder of wav files per track (MUSDB18-HQ layout) instead of .stem.mp4 files",
    )
    data.add_argument(
        "--tracks", nargs="+", metavar="NAME", help="evaluate only these tracks (default: all)"
    )

    method = parser.add_argument_group("method (one of)").add_mutually_exclusive_group()
    method.add_argument(
        "--model",
        help=f"model name or model directory to separate with, as umx separate (default: "
        f"{DEFAULT_MODEL}, downloaded once; the bundled {FALLBACK_MODEL} when {DEFAULT_MODEL} "
        "cannot be had or UMX_OFFLINE=1)",
    )
    method.add_argument(
        "--estimates",
        type=path_argument,
        metavar="DIR",
        help="evaluate estimates on disk, DIR/<subset>/<track>/<target>.wav",
    )
    method.add_argument(
        "--method",
        choices=BASELINES,
        help="a baseline: oracle ideal ratio mask (irm), ideal binary mask (ibm), or the "
        "mixture as every estimate (mix)",
    )

    model = parser.add_argument_group("model options (with --model)")
    # no_TARGET has no MUSDB18 reference, and no input follows the options
    add_separation_arguments(model, two_stems=False, inputs=False)
    parser.add_argument(
        "--aggregate",
        metavar="JSON",
        help="with --model or --method, evaluate groups of targets, as JSON or a JSON file, e.g. "
        '\'{"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}\'',
    )
    _add_evaluation_arguments(parser.add_argument_group("evaluation and output"))
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar or messages, only warnings and errors",
    )


def _add_evaluation_arguments(out: argparse._ArgumentGroup) -> None:
    """Where the scores (and estimates) go, how BSSEval runs, and what is compared."""
    out.add_argument(
        "--evaldir",
        type=path_argument,
        required=True,
        help="where the scores go: EVALDIR/<subset>/<track>.json (museval format), "
        "scores.md, scores.csv and scores_<metric>.png",
    )
    out.add_argument(
        "--outdir",
        type=path_argument,
        help="also write the estimates as float wav, OUTDIR/<subset>/<track>/<target>.wav",
    )
    out.add_argument(
        "--win",
        type=float,
        default=WIN,
        metavar="SECONDS",
        help=f"BSSEval window (default: {WIN:g})",
    )
    out.add_argument(
        "--hop", type=float, default=HOP, metavar="SECONDS", help=f"BSSEval hop (default: {HOP:g})"
    )
    out.add_argument(
        "--metrics",
        choices=BSSEVAL,
        default="fast",
        help="BSSEval v4 implementation: umx's own (fast, the default), which gives museval's "
        "scores several times faster, or museval's (the reference) (default: fast)",
    )
    out.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="tracks evaluated in parallel (default: 1)"
    )
    out.add_argument(
        "--force", action="store_true", help="evaluate again the tracks that already have scores"
    )
    out.add_argument(
        "--compare",
        nargs="+",
        type=path_argument,
        metavar="DIR",
        help="evaldirs of other methods to put side by side with this one (or with each other "
        "when no --root is given) in EVALDIR/compare.md, compare.csv and compare_<metric>.png",
    )


def evaluate_options(args: argparse.Namespace) -> EvaluateOptions:
    """The options of `umx evaluate`'s command line, checked before any track is read: model
    options are refused with --estimates or --method, which separate nothing."""
    from umx.api import parse_aggregate

    if args.estimates is not None or args.method is not None:
        given = given_separation_options(args)
        if given:
            raise UmxError(f"{given[0]} applies to --model only")
    model = args.root is not None and args.estimates is None and args.method is None
    return EvaluateOptions(
        args.evaldir,
        root=args.root,
        subset=args.subset,
        is_wav=args.is_wav,
        tracks=args.tracks,
        **({"separation": check_separation_args(args)} if model else {}),
        estimates=args.estimates,
        method=args.method,
        aggregate=parse_aggregate(args.aggregate),
        outdir=args.outdir,
        win=args.win,
        hop=args.hop,
        metrics=args.metrics,
        jobs=args.jobs,
        force=args.force,
        compare=args.compare or (),
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """`umx evaluate`: evaluate a method on a test set and/or compare evaluated methods, and
    print the tables.

    Returns:
        the exit code: 1 if any track failed, else 0.
    """
    from umx.evaluate.run import run_evaluation

    evaluation = run_evaluation(evaluate_options(args), progress=not args.quiet)
    for table in evaluation.tables:
        print(table, end="")
    return 1 if evaluation.summary is not None and evaluation.summary.failed else 0
