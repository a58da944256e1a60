"""`umx evaluate`: its options, checked up front, and the run: evaluate a method on a test set
and/or compare evaluated methods."""

from __future__ import annotations

import argparse
import collections
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
from umx.errors import UmxError, display_path, os_reason
from umx.files import check_folder_option, overlap, unwritable, within

if TYPE_CHECKING:
    import museval

    from umx.evaluate.methods import Method
    from umx.options import SeparationOptions

logger = logging.getLogger(__name__)


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
    add_separation_arguments(model, two_stems=False)  # no_TARGET has no MUSDB18 reference
    parser.add_argument(
        "--aggregate",
        metavar="JSON",
        help="with --model or --method, evaluate groups of targets, as JSON or a JSON file, e.g. "
        '\'{"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}\'',
    )
    _add_evaluation_arguments(parser.add_argument_group("evaluation and output"))
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar, no messages but errors"
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


def _method_from_args(args: argparse.Namespace, options: SeparationOptions | None) -> Method:
    """The method to evaluate: estimates on disk, a baseline, or a model separating with
    `options` (given exactly when neither --estimates nor --method is)."""
    from umx.api import parse_aggregate, separator_for
    from umx.evaluate.methods import BaselineMethod, EstimatesMethod, ModelMethod

    aggregate = parse_aggregate(args.aggregate)
    if args.estimates is not None:
        if aggregate is not None:
            raise UmxError("--aggregate does not apply to --estimates: name the files instead")
        if not args.estimates.is_dir():
            raise UmxError(f"{args.estimates} is not a directory of estimates")
        return EstimatesMethod(args.estimates)
    if args.method is not None:
        return BaselineMethod(args.method, aggregate)
    separator = separator_for(options, progress=not args.quiet)  # model None: the default
    return ModelMethod(separator, aggregate, options.chunk_seconds, options.overlap)


def _unique_names(
    methods: Sequence[tuple[Path, str, museval.EvalStore]],
) -> dict[str, museval.EvalStore]:
    """Compared methods by name; a name given twice is told apart by its evaldir's name.

    Raises:
        UmxError: two methods still have the same name.
    """
    counts = collections.Counter(name for _, name, _ in methods)
    stores: dict[str, museval.EvalStore] = {}
    for directory, name, store in methods:
        folder = Path(directory).resolve().name
        if counts[name] > 1 and folder != name:
            name = f"{name} ({folder})"
        if name in stores:
            raise UmxError(f"{directory}: two compared methods are named {name!r}")
        stores[name] = store
    return stores


def _check_output_folders(args: argparse.Namespace) -> None:
    """Refuse an --evaldir or --outdir that is a file, that cannot be written (before hours of
    work are done for nothing), that is the test set's folder, lies inside it or holds it, or
    that is the --estimates folder or lies inside it: what is written would overwrite the
    references or the estimates, or read as their tracks.

    Raises:
        UmxError: naming the option.
    """
    for option, directory in (("--evaldir", args.evaldir), ("--outdir", args.outdir)):
        if directory is None:
            continue
        check_folder_option(option, directory)
        _check_writable(option, directory)
        written = os.path.realpath(directory)
        if args.root is not None and overlap(written, os.path.realpath(args.root)):
            raise UmxError(
                f"{option} {display_path(directory)} and --root {display_path(args.root)} "
                f"overlap: put the {option[2:]} outside the test set, so that its references "
                "are never overwritten nor read as tracks"
            )
        if args.estimates is not None and within(written, os.path.realpath(args.estimates)):
            raise UmxError(
                f"{option} {display_path(directory)} is in --estimates "
                f"{display_path(args.estimates)}: put the {option[2:]} elsewhere, so that the "
                "estimates are never overwritten nor read as tracks"
            )


def _check_writable(option: str, directory: Path) -> None:
    """Refuse a folder that cannot be made or written: its nearest existing parent is on a
    read-only file system or not writable."""
    folder = directory.absolute()
    error = unwritable(next(path for path in (folder, *folder.parents) if path.exists()))
    if error is not None:
        raise UmxError(f"{option} {display_path(directory)} cannot be written ({os_reason(error)})")


def run_evaluate(args: argparse.Namespace) -> int:
    """`umx evaluate`: evaluate a method on a test set and/or compare evaluated methods.

    Returns:
        the exit code: 1 if any track failed, else 0.
    """
    from umx.devices import resolve_device
    from umx.evaluate.reports import load_scores, method_name, report, to_markdown
    from umx.evaluate.scoring import check_settings, evaluate
    from umx.evaluate.tracks import load_tracks

    if args.root is None and not args.compare:
        raise UmxError("no test set: give --root (or set MUSDB_PATH), or --compare DIR...")
    check_settings(win=args.win, hop=args.hop, jobs=args.jobs, metrics=args.metrics)
    _check_output_folders(args)
    for directory in args.compare or []:
        if not (directory / args.subset).is_dir():
            raise UmxError(
                f"--compare {directory}: {directory / args.subset} does not exist (no scores of "
                f"the {args.subset} subset)"
            )
    options = None
    if args.estimates is not None or args.method is not None:
        given = given_separation_options(args)
        if given:
            raise UmxError(f"{given[0]} applies to --model only")
    elif args.root is not None:
        options = check_separation_args(args)
        resolve_device(options.device)
    methods: list[tuple[Path, str, museval.EvalStore]] = []  # evaldir, name, scores
    failed = False
    if args.root is not None:
        tracks = load_tracks(args.root, subset=args.subset, is_wav=args.is_wav, names=args.tracks)
        summary = evaluate(
            tracks,
            _method_from_args(args, options),
            args.evaldir,
            win=args.win,
            hop=args.hop,
            outdir=args.outdir,
            jobs=args.jobs,
            force=args.force,
            progress=not args.quiet,
            metrics=args.metrics,
        )
        if summary.skipped:
            logger.info(
                "%d tracks already had scores in %s and were skipped (--force evaluates them "
                "again)",
                len(summary.skipped),
                args.evaldir,
            )
        if summary.failed:
            failed = True
            logger.error(
                "%d of %d tracks failed: %s",
                len(summary.failed),
                len(tracks),
                ", ".join(map(display_path, summary.failed)),
            )
        scored = [track.name for track in tracks if track.name not in summary.failed]
        if scored:
            store = load_scores(args.evaldir, args.subset, scored)
            name = method_name(args.evaldir, args.subset, scored)
            table = report({name: store}, args.evaldir, "scores")
            print(to_markdown(table), end="")
            methods.append((args.evaldir, name, store))
    for directory in args.compare or []:
        store = load_scores(directory, args.subset)
        methods.append((directory, method_name(directory, args.subset), store))
    if args.compare:
        stores = _unique_names(methods)
        if len({frozenset(store.df["track"]) for store in stores.values()}) > 1:
            logger.warning("warning: the compared methods were evaluated on different tracks")
        table = report(stores, args.evaldir, "compare", compare=True)
        print(to_markdown(table), end="")
    return 1 if failed else 0
