"""Scoring with BSSEval v4: one track's scores (by umx's own BSSEval v4, `umx.evaluate.bsseval`, or
by museval itself), and `evaluate`, which scores a test set track by track (in parallel processes
if asked) into one museval JSON per track."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import forkserver
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from umx.audio import AudioWriter, finish_together
from umx.defaults import BSSEVAL, HOP, WIN
from umx.devices import WORKERS_PER_CORE, check_cores, threads_per_worker
from umx.errors import UmxError, already_exists, display_path, os_error_line
from umx.evaluate.bsseval import bss_eval
from umx.evaluate.common import _extra, _write_text
from umx.evaluate.methods import Estimates, Method, Settings
from umx.evaluate.resume import SETTINGS, check_resumable, run_settings, track_settings
from umx.evaluate.tracks import TARGETS, _audio_in_memory, check_references
from umx.workers import (
    STOP_SIGNALS,
    held_for_children,
    init_pool_worker,
    run_pool_task,
    stops_deferred,
)

if TYPE_CHECKING:
    import musdb
    import museval

logger = logging.getLogger(__name__)

METRICS = ("SDR", "SIR", "ISR", "SAR")
ESTIMATES_RECORD = ".umx-evaluate.json"
"""In each track's folder of `--outdir` estimates: the method's name and settings that wrote
them, so that an evaluation made the same way (a resumed one) may write them again."""
REST_OF = "the mixture without"
"""How a single estimate's second source is named in messages: the rest of the mixture."""


def score_track(
    track: musdb.MultiTrack,
    estimates: Mapping[str, np.ndarray],
    *,
    win: float = WIN,
    hop: float = HOP,
    metrics: str = "fast",
) -> museval.TrackStore:
    """BSSEval v4 scores of one track's estimates, as `museval.eval_mus_track` computes them.

    As in museval, vocals and accompaniment are scored together when both are estimated, and
    the other targets together. A single estimate, which museval leaves unscored, is scored
    with the rest of the mixture as the second source: the mixture minus its reference against
    the mixture minus the estimate (for vocals, the accompaniment).

    Args:
        track: the track, with its references.
        estimates: target → estimate `(nb_timesteps, nb_channels)`, MUSDB18 targets, each as
            long as its reference.
        win, hop: BSSEval window and hop in seconds.
        metrics: `"fast"`, umx's own BSSEval v4 (`umx.evaluate.bsseval.bss_eval`), or
            `"museval"`, museval itself.

    Returns:
        the framewise SDR, SIR, ISR and SAR of every target.

    Raises:
        UmxError: an unknown target, no estimate, a shape mismatch, or a silent reference or
            estimate (BSSEval is undefined for those; museval refuses them).
    """
    references = _references(track, estimates)
    if len(estimates) == 1:
        ((name, estimate),) = estimates.items()
        rest = f"{REST_OF} {name}"
        references[rest] = track.audio - references[name]
        estimates = {name: estimate, rest: track.audio - estimate}
        if not references[rest].any():
            raise UmxError(
                f"{track.path}: the mixture is its {name} alone, so {rest} is silent and "
                f"BSSEval cannot score {name} alone; evaluate more targets"
            )
        groups = [([name, rest], [name])]
    else:
        groups = _groups([name for name in track.targets if name in estimates])
    for name, estimate in estimates.items():
        if not estimate.any():
            raise UmxError(
                f"{track.name}: the {name} estimate is silent, which BSSEval cannot score"
            )
    museval = _extra("museval")
    try:
        if metrics == "museval" and set(estimates) <= set(TARGETS):
            return museval.eval_mus_track(track, dict(estimates), win=win, hop=hop)
        scores = museval.TrackStore(win=win, hop=hop, track_name=track.name)
        for group, kept in groups:
            values = _bss_eval(
                np.stack([references[name] for name in group]),
                np.stack([estimates[name] for name in group]),
                window=int(win * track.rate),
                hop=int(hop * track.rate),
                metrics=metrics,
            )
            for index, name in enumerate(group):
                if name in kept:
                    scores.add_target(
                        target_name=name,
                        values={metric: values[metric][index].tolist() for metric in METRICS},
                    )
        return scores
    except ValueError as error:  # BSSEval's checks, e.g. a reference silent in one channel sum
        raise UmxError(f"{track.name}: BSSEval refused it ({str(error).split('. ')[0]})") from None


def _references(
    track: musdb.MultiTrack, estimates: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The references of the estimates of `score_track`, which must be MUSDB18 targets, shaped
    as their references, and at least one.

    Raises:
        UmxError: an unknown target, no estimate, a shape mismatch, or a silent reference.
    """
    unknown = sorted(set(estimates) - set(TARGETS))
    if unknown:
        raise UmxError(
            f"{track.name}: MUSDB18 has no reference for {', '.join(unknown)} "
            f"(its targets are {', '.join(TARGETS)})"
        )
    if not estimates:
        raise UmxError(f"{track.name}: there is no estimate to score")
    references = {name: track.targets[name].audio for name in estimates}
    for name, estimate in estimates.items():
        if estimate.shape != references[name].shape:
            raise UmxError(
                f"{track.name}: the {name} estimate has shape {estimate.shape} but its reference "
                f"{references[name].shape} (nb_timesteps, nb_channels)"
            )
        if not references[name].any():
            paths = " + ".join(source.path for source in track.targets[name].sources)
            raise UmxError(f"{paths}: the {name} reference is silent, which BSSEval cannot score")
    return references


def _bss_eval(
    references: np.ndarray, estimates: np.ndarray, *, window: int, hop: int, metrics: str
) -> dict[str, np.ndarray]:
    """Framewise BSSEval v4 of sources scored together, by umx's implementation (`fast`) or
    museval's: metric → `(nb_sources, nb_windows)`, from references and estimates
    `(nb_sources, nb_timesteps, nb_channels)`, with the window and hop in samples."""
    if metrics == "museval":
        sdr, isr, sir, sar = _extra("museval").evaluate(references, estimates, win=window, hop=hop)
        return {"SDR": sdr, "SIR": sir, "ISR": isr, "SAR": sar}
    values = bss_eval(references, estimates, window=window, hop=hop)
    return {metric: getattr(values, metric.lower()) for metric in METRICS}


def _groups(names: Sequence[str]) -> list[tuple[list[str], list[str]]]:
    """museval's scoring problems for the estimated targets `names` (in the track's order): the
    targets scored together, and those of them whose scores are kept.

    Vocals and accompaniment, when both are estimated, are one two-source problem; the other
    targets (with vocals but never accompaniment) another, if there are at least two of them,
    which keeps all but the vocals' scores then.
    """
    pair = "vocals" in names and "accompaniment" in names
    rest = [name for name in names if name != "accompaniment"] if pair else list(names)
    groups = []
    if len(rest) >= 2:
        groups.append((rest, [name for name in rest if not (pair and name == "vocals")]))
    if pair:
        groups.append((["vocals", "accompaniment"], ["vocals", "accompaniment"]))
    return groups


def _nan_notes(track_name: str, scores: museval.TrackStore) -> list[str]:
    """One line per target with frames that have no score.

    museval gives NaN to a window where any reference or estimate is silent, and stores an
    infinite ratio (a perfect estimate) as NaN too.
    """
    notes = []
    for target in scores.scores["targets"]:
        values = [float(frame["metrics"]["SDR"]) for frame in target["frames"]]
        nans = sum(math.isnan(value) for value in values)
        if nans:
            notes.append(
                f"{track_name}: {nans} of {len(values)} frames of {target['name']} have no "
                "score (a silent reference or estimate, or a perfect estimate); the medians "
                "skip them"
            )
    return notes


def json_path(evaldir: str | os.PathLike, track: musdb.MultiTrack) -> Path:
    """Where a track's museval JSON goes: `<evaldir>/<subset>/<track>.json`, as museval puts it."""
    return Path(evaldir) / track.subset / f"{track.name}.json"


def estimates_folder(outdir: str | os.PathLike, track: musdb.MultiTrack) -> Path:
    """Where a track's estimates go: `<outdir>/<subset>/<track>/`, museval's layout."""
    return Path(outdir) / track.subset / track.name


def estimates_record(method: Method, settings: Settings) -> dict[str, object]:
    """What `ESTIMATES_RECORD` holds: the method's name and `run_settings`."""
    return {"method": getattr(method, "name", None), SETTINGS: settings}


def check_outdir(
    outdir: Path, tracks: Sequence[musdb.MultiTrack], record: Mapping[str, object]
) -> None:
    """Refuse, before any work, to write over the wav files in the estimates folder of one of
    `tracks` unless an evaluation made the same way (`record`, see `estimates_record`) wrote
    them: a stopped run resumes, but the estimates of another method or the user's own files
    are kept.

    Raises:
        UmxError: naming the first such file, and --force.
    """
    for track in tracks:
        folder = estimates_folder(outdir, track)
        try:
            existing = sorted(path for path in folder.iterdir() if path.suffix == ".wav")
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as error:
            raise UmxError(os_error_line(error)) from None
        if not existing:
            continue
        try:
            written = json.loads((folder / ESTIMATES_RECORD).read_text())
        except (OSError, ValueError):
            written = None
        if written != json.loads(json.dumps(record)):
            raise already_exists(existing[0])


def _write_estimates(
    folder: Path, record: Mapping[str, object], estimates: Estimates, track: musdb.MultiTrack
) -> None:
    """Write a track's estimates and their `ESTIMATES_RECORD` into `folder` (the record first,
    so that a stopped run's stems are known as its own: `check_outdir`). The stems take the
    place of earlier ones all together or not at all (`finish_together`): a stop never leaves
    a set of two methods' stems. A folder this call made is removed again when they cannot all
    be written (a full disk), not left holding the record alone."""
    made = not folder.exists()
    try:
        _write_text(folder / ESTIMATES_RECORD, json.dumps(record))
        with contextlib.ExitStack() as stack:
            writers = []
            for name, estimate in estimates.items():
                writer = AudioWriter(  # checked by `check_outdir` before any track
                    folder / f"{name}.wav", track.rate, estimate.shape[1], subtype="FLOAT",
                    clip="none", force=True,
                )  # fmt: skip
                writers.append(stack.enter_context(writer))
                writer.write(estimate.T)
            finish_together(writers)
    except BaseException:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        raise


@dataclass(frozen=True)
class _TrackJob:
    """Everything evaluating one track needs; picklable, sent once to each worker process."""

    method: Method
    evaldir: Path
    outdir: Path | None
    win: float
    hop: float
    metrics: str
    settings: Settings

    def run(self, track: musdb.MultiTrack) -> _Outcome:
        """Estimate, optionally write the stems, score and write the JSON; never raises."""
        try:
            check_references(track)
            settings = {**self.settings, **track_settings(self.method, track)}
            with _audio_in_memory(track):
                estimates = self.method(track)
                if self.outdir is not None:
                    record = estimates_record(self.method, self.settings)
                    _write_estimates(estimates_folder(self.outdir, track), record, estimates, track)
                scores = score_track(
                    track, estimates, win=self.win, hop=self.hop, metrics=self.metrics
                )
            name = getattr(self.method, "name", None)
            if name is not None:  # museval ignores other fields; the reports read it
                scores.scores["method"] = name
            scores.scores[SETTINGS] = settings
            scores.validate()
            _write_text(json_path(self.evaldir, track), scores.json)
        except UmxError as error:
            return _Outcome(track.name, str(error))
        except OSError as error:  # the file system refused: a full disk, a read-only folder
            return _Outcome(track.name, f"{track.name}: {os_error_line(error)}")
        except Exception as error:  # a bug or a library failure must not stop the other tracks
            return _Outcome(track.name, f"{track.name}: {type(error).__name__}: {error}")
        return _Outcome(track.name, None, _nan_notes(track.name, scores))


@dataclass(frozen=True)
class _Outcome:
    track: str
    error: str | None
    notes: list[str] = field(default_factory=list)


_worker_job: _TrackJob | None = None
_worker_stop: Event | None = None


def _init_worker(job: _TrackJob, nb_threads: int, stop: Event, driver: int) -> None:
    global _worker_job, _worker_stop
    # The fork server holds the stop signals back from its start (`_start_forkserver`), and
    # its children inherit that: let through once handled, each interrupts a track as Ctrl-C
    # does (a stop signalled to the process group included), so that a stopped evaluation
    # stops its workers too, and a worker gets SIGINT when the driver dies, even by SIGKILL.
    # One that came while this worker started (a stop) ends it now.
    init_pool_worker(driver)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
    torch.set_num_threads(nb_threads)
    _worker_job, _worker_stop = job, stop


def _run_in_worker(track: musdb.MultiTrack) -> _Outcome:
    if _worker_stop.is_set():  # a track queued before the run was stopped
        return _Outcome(track.name, "stopped")
    return run_pool_task(_worker_job.run, track)


@dataclass(frozen=True)
class Summary:
    """What `evaluate` did.

    Attributes:
        evaluated: tracks scored now.
        skipped: tracks whose JSON already existed, made by the same method and settings.
        failed: track → one-line reason.
    """

    evaluated: list[str]
    skipped: list[str]
    failed: dict[str, str]


def evaluate(
    tracks: Sequence[musdb.MultiTrack],
    method: Method,
    evaldir: str | os.PathLike,
    *,
    win: float = WIN,
    hop: float = HOP,
    outdir: str | os.PathLike | None = None,
    jobs: int = 1,
    force: bool = False,
    progress: bool = True,
    metrics: str = "fast",
) -> Summary:
    """Score every track with BSSEval v4 and write one museval JSON per track.

    Tracks whose JSON exists are skipped unless `force`, so an interrupted run resumes where it
    stopped; each JSON records the method's name and settings (`run_settings`), and scores made
    otherwise, or that do not record it, are refused rather than reused. A track that fails is
    logged by name and the others go on. Files are written atomically: a JSON exists only for a
    fully scored track.

    Args:
        tracks: from `load_tracks`.
        method: turns a track into estimates: `ModelMethod`, `EstimatesMethod`, `BaselineMethod`.
        evaldir: where the JSON files go, as `<evaldir>/<subset>/<track>.json`.
        win, hop: BSSEval window and hop in seconds.
        outdir: also write the estimates, as float wav in `<outdir>/<subset>/<track>/<target>.wav`
            (readable back with `EstimatesMethod`); wav files already there are overwritten
            only with `force`, or when an evaluation made the same way wrote them (see
            `check_outdir`).
        jobs: tracks evaluated at once, each in its own process; the scores do not depend on it.
        force: evaluate tracks that already have a JSON again.
        progress: show a progress bar over the tracks.
        metrics: the BSSEval v4 implementation, `"fast"` (umx's) or `"museval"`: see
            `score_track`.

    Returns:
        which tracks were evaluated, skipped or failed.

    Raises:
        UmxError: a bad setting, scores in `evaldir` that were made otherwise, or estimates in
            `outdir` that this evaluation did not write (without `force`; see
            `check_resumable` and `check_outdir`).
    """
    check_settings(win=win, hop=hop, jobs=jobs, metrics=metrics)
    outdir = None if outdir is None else Path(outdir)
    settings = run_settings(method, win=win, hop=hop, metrics=metrics)
    done = [track for track in tracks if not force and json_path(evaldir, track).is_file()]
    _check_done(evaldir, done, method, settings)
    todo = [track for track in tracks if track not in done]
    if outdir is not None and not force:
        check_outdir(outdir, todo, estimates_record(method, settings))
    job = _TrackJob(method, Path(evaldir), outdir, win, hop, metrics, settings)
    outcomes: list[_Outcome] = []
    bars = progress and bool(todo) and sys.stderr.isatty()  # a log file gets lines, not a bar
    with (
        logging_redirect_tqdm(),
        tqdm(total=len(todo), desc="evaluate", unit="track", disable=not bars) as bar,
    ):
        for outcome in _run_jobs(job, todo, jobs):
            outcomes.append(outcome)
            # Track names are folder names: shown printable, so each message stays one line.
            for line in outcome.notes:
                logger.info("%s", display_path(line))
            if outcome.error is not None:
                logger.error("error: %s", display_path(outcome.error))
            elif progress and not bars:
                name = display_path(outcome.track)
                logger.info("%d of %d tracks done: %s", len(outcomes), len(todo), name)
            bar.update(1)
    order = {track.name: index for index, track in enumerate(tracks)}
    outcomes.sort(key=lambda outcome: order[outcome.track])
    return Summary(
        evaluated=[outcome.track for outcome in outcomes if outcome.error is None],
        skipped=[track.name for track in done],
        failed={outcome.track: outcome.error for outcome in outcomes if outcome.error is not None},
    )


def _check_done(
    evaldir: str | os.PathLike,
    done: Sequence[musdb.MultiTrack],
    method: Method,
    settings: Settings,
) -> None:
    """`check_resumable` for the tracks that already have scores, with their `track_settings`
    (e.g. the SHA-256 of the estimates on disk).

    Raises:
        UmxError: as `check_resumable`, a file that cannot be read, or a track the method
            refuses (e.g. estimates on disk that lack a target other tracks have).
    """
    try:
        per_track = [track_settings(method, track) for track in done]
    except OSError as error:
        raise UmxError(os_error_line(error)) from None
    paths = [json_path(evaldir, track) for track in done]
    check_resumable(evaldir, paths, getattr(method, "name", None), settings, per_track)


def check_settings(
    *, win: float = WIN, hop: float = HOP, jobs: int = 1, metrics: str = "fast"
) -> None:
    """Refuse a BSSEval window or hop that is not a positive finite number of seconds, fewer
    than one job, or an unknown BSSEval implementation.

    Raises:
        UmxError: naming the option.
    """
    if metrics not in BSSEVAL:
        raise UmxError(f"--metrics must be one of {', '.join(BSSEVAL)}, got {metrics!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UmxError(f"--jobs must be at least 1, got {jobs}")
    check_cores("--jobs", jobs, WORKERS_PER_CORE)
    for option, value in (("--win", win), ("--hop", hop)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UmxError(f"{option} must be a number of seconds, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise UmxError(f"{option} must be a positive number of seconds, got {value}")


def _run_jobs(job: _TrackJob, tracks: Sequence[musdb.MultiTrack], jobs: int) -> Iterator[_Outcome]:
    """The outcome of every track, in the order they finish."""
    if jobs == 1 or len(tracks) <= 1:
        for track in tracks:
            yield job.run(track)
        return
    workers = min(jobs, len(tracks))
    threads = threads_per_worker(workers)
    # Not fork: forking a process that has started torch's thread pools can deadlock. Workers
    # fork from a server that has imported umx, musdb and museval once, but started nothing.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "musdb", "museval"])
    _start_forkserver(context)
    stop = context.Event()
    initargs = (job, threads, stop, os.getpid())
    with ProcessPoolExecutor(workers, context, _init_worker, initargs) as pool:
        try:
            with stops_deferred():  # submitting starts the workers
                futures = {pool.submit(_run_in_worker, track): track.name for track in tracks}
            for future in as_completed(futures):
                try:
                    yield future.result()
                except BrokenProcessPool:
                    yield _Outcome(futures[future], f"{futures[future]}: its worker process died")
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM) or failed: leaving the block would wait for every
            # queued track. Interrupt the running ones as Ctrl-C does, so that their writers
            # remove their temporary files, and skip the rest: those already in the workers'
            # queue by the event, the others by cancelling them (the block's own shutdown
            # would not).
            stop.set()
            for process in list((pool._processes or {}).values()):
                if process.is_alive():
                    os.kill(process.pid, signal.SIGINT)
            pool.shutdown(wait=True, cancel_futures=True)
            _stop_forkserver()  # now that no worker is left: it would outlive the driver
            raise


def _start_forkserver(context: multiprocessing.context.ForkServerContext) -> None:
    """Start the fork server if it is not running, and wait until it serves (it imports umx,
    musdb and museval first, seconds), by starting a process that does nothing.

    Stopped meanwhile, the driver ends the server at once: it would go on after the driver has
    gone, then fork the worker whose start was stopped, which would fail with a traceback (the
    pool's semaphores removed), and outlive the driver for seconds. Once it serves, starting a
    worker takes an instant, the time that `_run_jobs` holds stops back.

    The server starts with the stop signals held back (blocked in this thread, which it
    inherits), for ever: CPython's fork server ignores SIGINT only after its imports, which
    Ctrl-C would interrupt with a traceback, and SIGTERM or SIGHUP sent to the process group
    (`timeout`, `kill -- -PGID`, a closed terminal) killed it under its running workers, which
    the pool then took for dead (the driver left before they had removed their temporary
    files). The driver ends it (`_stop_forkserver`), or it ends when the driver has gone. Its
    workers let the signals through again (`_init_worker`). Only held back, not ignored, a
    stop that comes meanwhile is not lost here, even if another thread of this process takes
    it.
    """
    try:
        with held_for_children(STOP_SIGNALS):
            forkserver.ensure_running()
        probe = context.Process(target=int, name="umx-forkserver-probe")
        probe.start()
        probe.join()
    except BaseException:
        _stop_forkserver()
        raise


def _stop_forkserver() -> None:
    """End the fork server now (even while it imports), if it runs; the next pool starts a
    new one. multiprocessing has no public way to do it."""
    server = getattr(forkserver, "_forkserver", None)  # CPython 3.8-3.13's; else left as is
    pid = getattr(server, "_forkserver_pid", None)
    if pid is not None and hasattr(server, "_stop"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        server._stop()  # reaps it
