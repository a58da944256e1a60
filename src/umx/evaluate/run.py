"""`umx evaluate` as typed options: `EvaluateOptions`, checked when built, and `run_evaluation`,
which evaluates a method on a test set and/or compares evaluated methods, and returns the tables
the command prints."""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from umx.defaults import BASELINES, HOP, SUBSETS, WIN
from umx.errors import (
    UmxError,
    check_flags,
    check_path,
    display_path,
    short,
)
from umx.folders import check_folder_option, check_writable, overlap, within
from umx.messages import plural
from umx.options import SeparationOptions

if TYPE_CHECKING:
    import museval

    from umx.evaluate.methods import Method
    from umx.evaluate.scoring import Summary

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateOptions:
    """What `umx evaluate` scores, how, and where the scores go, checked when built (one-line
    errors naming the command line's options) before any track is read or model loaded.

    The method is the first of: `estimates` (a folder of estimates on disk), `method` (a
    baseline), `separation` (a model; its `model` None for the default).

    Attributes:
        evaldir: where the scores go, `<evaldir>/<subset>/<track>.json`, and the tables.
        root: the test set (MUSDB18, or with `is_wav` MUSDB18-HQ's layout); None to only
            compare the evaldirs of `compare`.
        subset, is_wav, tracks: which tracks of `root` (`tracks` None: all).
        separation, estimates, method: the method (see above).
        aggregate: with a model or a baseline, groups of targets to score instead.
        outdir: also write the estimates there, as float wav.
        win, hop, metrics, jobs, force: see `umx.evaluate.scoring.evaluate`.
        compare: evaldirs of other methods to put side by side with this one.

    Raises:
        UmxError: no test set and nothing to compare, two methods, or a bad setting.
    """

    evaldir: str | os.PathLike
    root: str | os.PathLike | None = None
    subset: str = "test"
    is_wav: bool = False
    tracks: Sequence[str] | None = None
    separation: SeparationOptions = field(default_factory=SeparationOptions)
    estimates: str | os.PathLike | None = None
    method: str | None = None
    aggregate: Mapping[str, Sequence[str]] | None = None
    outdir: str | os.PathLike | None = None
    win: float = WIN
    hop: float = HOP
    metrics: str = "fast"
    jobs: int = 1
    force: bool = False
    compare: Sequence[str | os.PathLike] = ()

    def __post_init__(self) -> None:
        from umx.evaluate.scoring import check_settings

        for option, value in (("--evaldir", self.evaldir), ("--root", self.root)):
            check_path(option, value, optional=option == "--root", what="a folder")
        for option, value in (("--estimates", self.estimates), ("--outdir", self.outdir)):
            check_path(option, value, optional=True, what="a folder")
        if self.root is None and not self.compare:
            raise UmxError("no test set: give --root (or set MUSDB_PATH), or --compare DIR...")
        if self.subset not in SUBSETS:
            raise UmxError(f"--subset must be one of {', '.join(SUBSETS)}, not {self.subset!r}")
        if self.method is not None and self.method not in BASELINES:
            raise UmxError(f"--method must be one of {', '.join(BASELINES)}, not {self.method!r}")
        if self.estimates is not None and self.method is not None:
            raise UmxError("--estimates and --method are two methods: give one of them")
        if self.estimates is not None and self.aggregate is not None:
            raise UmxError("--aggregate does not apply to --estimates: name the files instead")
        if not isinstance(self.separation, SeparationOptions):
            raise UmxError(
                f"separation must be SeparationOptions, not {short.repr(self.separation)}"
            )
        check_flags({"--is-wav": self.is_wav, "--force": self.force})
        check_settings(win=self.win, hop=self.hop, jobs=self.jobs, metrics=self.metrics)
        for name in ("evaldir", "root", "estimates", "outdir"):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value) if value is not None else None)
        object.__setattr__(self, "compare", tuple(Path(folder) for folder in self.compare))
        if self.tracks is not None:
            object.__setattr__(self, "tracks", tuple(self.tracks))


@dataclass(frozen=True)
class Evaluation:
    """What `run_evaluation` did.

    Attributes:
        summary: the tracks of `root` evaluated, skipped and failed; None without `root`.
        tables: the markdown tables, this method's scores first, then the comparison.
    """

    summary: Summary | None
    tables: list[str]


def run_evaluation(options: EvaluateOptions, *, progress: bool = True) -> Evaluation:
    """Evaluate the method of `options` on its test set (resuming: tracks with scores are
    skipped unless `force`), write the scores and their tables into `evaldir`, and compare
    them with the evaldirs of `compare`.

    Every output folder is checked before any track is read: one that is a file, cannot be
    written, or overlaps the test set or the estimates (what is written would overwrite them,
    or read as their tracks) is refused.

    Args:
        options: the evaluation.
        progress: show progress bars.

    Returns:
        the summary and the tables.

    Raises:
        UmxError: an output folder, a compared evaldir or the method cannot be had.
    """
    from umx.devices import resolve_device
    from umx.evaluate.reports import load_scores, method_name, report, to_markdown
    from umx.evaluate.scoring import evaluate
    from umx.evaluate.tracks import load_tracks

    _check_output_folders(options)
    _check_compared(options)
    model = options.root is not None and options.estimates is None and options.method is None
    if model:
        resolve_device(options.separation.device)
    methods: list[tuple[Path, str, museval.EvalStore]] = []  # evaldir, name, scores
    summary, tables = None, []
    if options.root is not None:
        tracks = load_tracks(
            options.root, subset=options.subset, is_wav=options.is_wav, names=options.tracks
        )
        summary = evaluate(
            tracks,
            _method(options, [track.name for track in tracks], progress),
            options.evaldir,
            win=options.win,
            hop=options.hop,
            outdir=options.outdir,
            jobs=options.jobs,
            force=options.force,
            progress=progress,
            metrics=options.metrics,
        )
        _log_summary(summary, len(tracks), options.evaldir)
        scored = [track.name for track in tracks if track.name not in summary.failed]
        if scored:
            store = load_scores(options.evaldir, options.subset, scored)
            name = method_name(options.evaldir, options.subset, scored)
            tables.append(to_markdown(report({name: store}, options.evaldir, "scores")))
            methods.append((options.evaldir, name, store))
    for directory in options.compare:
        store = load_scores(directory, options.subset)
        methods.append((directory, method_name(directory, options.subset), store))
    if options.compare:
        stores = _unique_names(methods)
        if (difference := _track_difference(stores)) is not None:
            logger.warning(
                "the compared methods were evaluated on different tracks (%s): evaluate each on "
                "the same ones to compare like with like",
                difference,
            )
        table = report(stores, options.evaldir, "compare", compare=True)
        tables.append(to_markdown(table))
    return Evaluation(summary, tables)


def _check_compared(options: EvaluateOptions) -> None:
    """Refuse a --compare folder without scores of the subset, giving the --subset it holds.

    Raises:
        UmxError: naming the folder.
    """
    for directory in options.compare:
        if (directory / options.subset).is_dir():
            continue
        held = [subset for subset in SUBSETS if (directory / subset).is_dir()]
        hint = f"; it holds the {held[0]} subset's: give --subset {held[0]}" if held else ""
        raise UmxError(
            f"--compare {display_path(directory)}: {display_path(directory / options.subset)} "
            f"does not exist (no scores of the {options.subset} subset){hint}"
        )


def _track_difference(stores: Mapping[str, museval.EvalStore]) -> str | None:
    """Which tracks a compared method lacks that another has, in a few words: `irm lacks
    'A - One' and 2 more`; None when every method has the same tracks."""
    tracks = {name: set(store.df["track"]) for name, store in stores.items()}
    every = set().union(*tracks.values())
    lacking = {name: sorted(every - held) for name, held in tracks.items() if every - held}
    if not lacking:
        return None
    name, missing = next(iter(lacking.items()))
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    said = f"{name} lacks {short.repr(missing[0])}{more}"
    others = len(lacking) - 1
    return f"{said}, and {plural(others, 'other method')} some too" if others else said


def _log_summary(summary: Summary, nb_tracks: int, evaldir: Path) -> None:
    """Say which tracks were skipped (they had scores) and which failed."""
    if summary.skipped:
        logger.info(
            "%s already had scores in %s and %s skipped (--force evaluates them again)",
            plural(len(summary.skipped), "track"),
            display_path(evaldir),
            "was" if len(summary.skipped) == 1 else "were",
        )
    if summary.failed:
        logger.error(
            "%d of %d tracks failed: %s",
            len(summary.failed),
            nb_tracks,
            ", ".join(map(display_path, summary.failed)),
        )


def _method(options: EvaluateOptions, names: Sequence[str], progress: bool) -> Method:
    """The method to evaluate the tracks named: estimates on disk, a baseline, or a model."""
    from umx.api import separator_for
    from umx.evaluate.methods import BaselineMethod, EstimatesMethod, ModelMethod

    if options.estimates is not None:
        if not options.estimates.is_dir():
            raise UmxError(f"{options.estimates} is not a directory of estimates")
        return EstimatesMethod(options.estimates, tuple(names))
    if options.method is not None:
        return BaselineMethod(options.method, options.aggregate)
    separation = options.separation
    separator = separator_for(separation, progress=progress)  # model None: the default
    return ModelMethod(separator, options.aggregate, separation.chunk_seconds, separation.overlap)


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


def _check_output_folders(options: EvaluateOptions) -> None:
    """Refuse an evaldir or outdir that is a file, that cannot be written (before hours of
    work are done for nothing), that is the test set's folder, lies inside it or holds it, or
    that is the estimates' folder or lies inside it: what is written would overwrite the
    references or the estimates, or read as their tracks.

    Raises:
        UmxError: naming the option.
    """
    for option, directory in (("--evaldir", options.evaldir), ("--outdir", options.outdir)):
        if directory is None:
            continue
        check_folder_option(option, directory)
        check_writable(option, directory)
        written = os.path.realpath(directory)
        if options.root is not None and overlap(written, os.path.realpath(options.root)):
            raise UmxError(
                f"{option} {display_path(directory)} and --root {display_path(options.root)} "
                f"overlap: put the {option[2:]} outside the test set, so that its references "
                "are never overwritten nor read as tracks"
            )
        estimates = options.estimates
        if estimates is not None and within(written, os.path.realpath(estimates)):
            raise UmxError(
                f"{option} {display_path(directory)} is in --estimates "
                f"{display_path(estimates)}: put the {option[2:]} elsewhere, so that the "
                "estimates are never overwritten nor read as tracks"
            )
