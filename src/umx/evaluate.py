"""BSSEval v4 over a test set with museval: per-track scores, aggregate tables, baselines, plots.

A test set is MUSDB18 read by `musdb` (`.stem.mp4` files, or with `is_wav` a folder per track
holding `mixture.wav`, `vocals.wav`, `drums.wav`, `bass.wav` and `other.wav`, as MUSDB18-HQ).
A method turns one track into estimates: a separation model, a folder of estimates already on
disk, or a baseline (the oracle ideal ratio or binary mask, or the mixture as every estimate).

Results follow sigsep's conventions: one museval JSON per track in
`<evaldir>/<subset>/<track>.json` (read by `museval.EvalStore` and `museval.MethodStore`), and
aggregate scores that are the median over frames, then the median over tracks. Waveforms here are
numpy arrays `(nb_timesteps, nb_channels)`, the axis order of musdb and museval.

museval, musdb, pandas and matplotlib (the `evaluate` extra) are imported when first needed, so
that the `umx` command starts without them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import logging
import math
import multiprocessing
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from umx.api import parse_aggregate, separate
from umx.audio import read_audio, write_audio
from umx.devices import resolve_device
from umx.errors import UmxError
from umx.options import (
    add_separation_arguments,
    check_separation_args,
    given_separation_options,
    segment_from_args,
    separator_from_args,
)
from umx.separator import OVERLAP, SEGMENT, Separator
from umx.transforms import N_FFT, N_HOP, istft, stft
from umx.zoo import DEFAULT_MODEL, FALLBACK_MODEL, MODELS

if TYPE_CHECKING:
    import musdb
    import museval
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

SOURCES = ("vocals", "drums", "bass", "other")
"""The MUSDB18 sources, whose sum is the mixture."""
TARGETS = (*SOURCES, "accompaniment")
"""The MUSDB18 targets a method may estimate (accompaniment = drums + bass + other)."""
METRICS = ("SDR", "SIR", "ISR", "SAR")
SUBSETS = ("train", "test")
BASELINES = ("irm", "ibm", "mix")
WIN = 1.0
"""BSSEval window, in seconds (sigsep's setting)."""
HOP = 1.0
"""BSSEval hop, in seconds (sigsep's setting)."""
IRM_POWER = 1.0
"""Exponent α of the ideal ratio mask |S_j|^α / Σ_k |S_k|^α: 1 is sigsep's IRM1 (magnitudes)."""
EPS = 1e-10
MAX_NAME = 100
"""Characters of a method name read from a JSON file (longer ones, or ones that would break a
Markdown table, give way to the folder's name)."""
SCORE_GAP = 20.0
"""dB between groups of boxes that a box plot shows on one axis regardless of their spread."""

Estimates = dict[str, np.ndarray]
"""Target name → estimate `(nb_timesteps, nb_channels)` at the track's rate."""
Method = Callable[["musdb.MultiTrack"], Estimates]
"""Turns a track into estimates; must be picklable for `jobs > 1`."""


def _extra(name: str) -> ModuleType:
    """Import a module of the `evaluate` extra, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        package = name.split(".")[0]
        raise UmxError(f"umx evaluate needs {package}: pip install 'umx[evaluate]'") from None


# --- test sets ------------------------------------------------------------------------------------


def load_tracks(
    root: str | os.PathLike,
    *,
    subset: str = "test",
    is_wav: bool = False,
    names: Sequence[str] | None = None,
) -> list[musdb.MultiTrack]:
    """The tracks of a MUSDB18 subset, sorted by name.

    Args:
        root: the dataset folder, holding `train/` and `test/`.
        subset: `train` or `test`.
        is_wav: folders of wav files per track (MUSDB18-HQ layout) instead of `.stem.mp4` files.
        names: only these tracks; all if None.

    Returns:
        musdb's tracks; their references are read when used.

    Raises:
        UmxError: the folder is missing or holds no track in that layout, or ffmpeg is missing
            (musdb probes every file with ffprobe).
    """
    root = Path(root)
    if not (root / subset).is_dir():
        raise UmxError(f"{root / subset} does not exist: --root must hold {'/'.join(SUBSETS)}")
    if shutil.which("ffprobe") is None:
        raise UmxError(
            "musdb reads MUSDB18 with ffmpeg, which is not installed (apt-get install ffmpeg)"
        )
    try:
        tracks = _extra("musdb").DB(root=str(root), subsets=subset, is_wav=is_wav).tracks
    except Exception as error:  # stempeg reports unreadable files with bare Exceptions
        raise UmxError(f"musdb could not read {root / subset} ({error})") from None
    if not tracks:
        layout = "<track>/mixture.wav folders" if is_wav else "<track>.stem.mp4 files (or --is-wav)"
        raise UmxError(f"{root / subset} holds no MUSDB18 tracks: expected {layout}")
    if names is None:
        return tracks
    unknown = sorted(set(names) - {track.name for track in tracks})
    if unknown:
        raise UmxError(f"{root / subset} has no track named {', '.join(map(repr, unknown))}")
    return [track for track in tracks if track.name in set(names)]


def check_references(track: musdb.MultiTrack) -> None:
    """Raise if a track lacks its mixture or one of the MUSDB18 sources.

    Raises:
        UmxError: naming the missing file.
    """
    path = Path(track.path)
    if not path.is_file():
        raise UmxError(f"{path} is missing: track {track.name!r} has no mixture")
    if track.is_wav:
        for source in SOURCES:
            if source not in track.sources:
                raise UmxError(
                    f"{path.with_name(source + '.wav')} is missing: no {source} reference"
                )
    elif track.info.nb_audio_streams < 1 + len(SOURCES):
        raise UmxError(
            f"{path} has {track.info.nb_audio_streams} audio streams, not the mixture and "
            f"{len(SOURCES)} sources of a MUSDB18 stem file"
        )


@contextlib.contextmanager
def _audio_in_memory(track: musdb.MultiTrack) -> Iterator[None]:
    """Read the mixture and the sources once, and free them afterwards.

    musdb decodes a file with ffmpeg at every access; its setters make it keep the audio instead.
    Wav files are read with soundfile: the samples musdb gives for 16-bit files (24-bit ones keep
    their precision), without two subprocesses per file.
    """
    items = (track, *track.sources.values())
    try:
        for item in items:
            if track.is_wav:
                audio, rate = read_audio(item.path)
                if rate != track.rate:
                    raise UmxError(f"{item.path} is at {rate:g} Hz, its mixture at {track.rate} Hz")
                item.audio = audio.numpy().T
            else:
                audio = item.audio
                item.audio = audio.reshape(len(audio), -1)  # musdb gives mono as (nb_timesteps,)
        yield
    finally:
        for item in items:
            item.audio = None


# --- methods --------------------------------------------------------------------------------------


def oracle(
    kind: str,
    mixture: torch.Tensor,
    sources: Mapping[str, torch.Tensor],
    *,
    n_fft: int = N_FFT,
    n_hop: int = N_HOP,
    power: float = IRM_POWER,
) -> dict[str, torch.Tensor]:
    """Oracle masks computed from the true sources and applied to the mixture's STFT.

    `irm`: the ideal ratio mask |S_j|^power / Σ_k |S_k|^power, the upper bound of mask-based
    models such as Open-Unmix. `ibm`: the ideal binary mask, each time-frequency bin given whole
    to the loudest source. Both masks sum to one over the sources, so the estimates add up to the
    mixture.

    Args:
        kind: `irm` or `ibm`.
        mixture: `(nb_channels, nb_timesteps)`.
        sources: name → `(nb_channels, nb_timesteps)`, the true sources.
        n_fft, n_hop: the STFT, by default the one of the Open-Unmix models.
        power: the exponent of the ratio mask.

    Returns:
        name → estimate, `(nb_channels, nb_timesteps)`.
    """
    if kind not in ("irm", "ibm"):
        raise ValueError(f"unknown oracle {kind!r}: use irm or ibm")
    mix_stft = stft(mixture, n_fft, n_hop)  # (nb_channels, nb_bins, nb_frames)
    magnitudes = (stft(source, n_fft, n_hop).abs() for source in sources.values())
    if kind == "irm":
        weights = [magnitude**power for magnitude in magnitudes]
        total = sum(weights).clamp_min(EPS)
        masks = (weight / total for weight in weights)
    else:
        loudest = torch.stack(list(magnitudes)).argmax(dim=0)
        masks = ((loudest == index).to(mix_stft.real.dtype) for index in range(len(sources)))
    # One source at a time: the spectrograms of a whole song are large.
    return {
        name: istft(mask * mix_stft, mixture.shape[-1], n_fft, n_hop)
        for name, mask in zip(sources, masks, strict=True)
    }


def _check_groups(groups: Mapping[str, Sequence[str]], available: Sequence[str]) -> None:
    unknown = sorted({name for group in groups.values() for name in group} - set(available))
    if unknown:
        raise UmxError(
            f"cannot aggregate {', '.join(unknown)}: the sources are {', '.join(available)}"
        )


@dataclass(frozen=True)
class BaselineMethod:
    """A baseline: `irm` or `ibm` oracle masks (see `oracle`), or `mix`, the mixture itself as
    every estimate (the floor any method should beat).

    Args:
        kind: one of `BASELINES`.
        aggregate: groups of sources to estimate instead, e.g. `{"vocals": ["vocals"],
            "accompaniment": ["drums", "bass", "other"]}`; the oracle estimates of a group are
            summed, and `mix` gives the mixture for each group.
    """

    kind: str
    aggregate: Mapping[str, Sequence[str]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in BASELINES:
            raise UmxError(f"unknown baseline {self.kind!r}: use one of {', '.join(BASELINES)}")
        if self.aggregate is not None:
            _check_groups(self.aggregate, SOURCES)

    @property
    def name(self) -> str:
        """The baseline's name in reports: its kind."""
        return self.kind

    def __call__(self, track: musdb.MultiTrack) -> Estimates:
        if self.kind == "mix":
            return {name: track.audio.copy() for name in self.aggregate or SOURCES}
        mixture = torch.from_numpy(track.audio.T).float()
        sources = {name: torch.from_numpy(track.sources[name].audio.T).float() for name in SOURCES}
        estimates = {name: e.numpy().T for name, e in oracle(self.kind, mixture, sources).items()}
        if self.aggregate is None:
            return estimates
        return {name: sum(estimates[s] for s in group) for name, group in self.aggregate.items()}


def model_display_name(model_name: str | None) -> str | None:
    """How reports name a model: a zoo name as it is, a model directory by its own name."""
    if model_name is None or model_name in MODELS:
        return model_name
    return Path(model_name).resolve().name or model_name


@dataclass(frozen=True)
class ModelMethod:
    """Separation with a `Separator`, chunk by chunk (memory bounded by the segment length).

    Args:
        separator: the models, e.g. from `umx.zoo.load_separator`.
        aggregate: groups of targets to estimate instead, see `Separator.to_dict`.
        segment, overlap: chunking in seconds, see `Separator.separate`; `segment=None`
            separates each track whole, as the reference implementation does.
    """

    separator: Separator
    aggregate: Mapping[str, Sequence[str]] | None = None
    segment: float | None = SEGMENT
    overlap: float = OVERLAP

    @property
    def name(self) -> str | None:
        """The model's name in reports: the zoo name or the model directory's name loaded
        (`separator.model_name`); None for a separator built by hand."""
        return model_display_name(self.separator.model_name)

    def __call__(self, track: musdb.MultiTrack) -> Estimates:
        stems = separate(
            track.audio.T,
            track.rate,
            self.separator,
            aggregate=self.aggregate,
            segment=self.segment,
            overlap=self.overlap,
        )
        return {name: stem.cpu().numpy().T for name, stem in stems.items()}


@dataclass(frozen=True)
class EstimatesMethod:
    """Estimates already on disk, in museval's layout `<directory>/<subset>/<track>/<target>.wav`
    (the layout `--outdir` writes). Every file named after a MUSDB18 target is evaluated.

    Args:
        directory: the estimates folder.
    """

    directory: Path

    @property
    def name(self) -> str:
        """The estimates' name in reports: their directory's name."""
        return Path(self.directory).resolve().name

    def __call__(self, track: musdb.MultiTrack) -> Estimates:
        folder = Path(self.directory) / track.subset / track.name
        paths = [folder / f"{name}.wav" for name in TARGETS if (folder / f"{name}.wav").is_file()]
        if not paths:
            raise UmxError(f"{folder} holds no estimates ({', '.join(TARGETS)} .wav)")
        expected = track.audio.shape
        estimates = {}
        for path in paths:
            audio, rate = read_audio(path)
            if rate != track.rate:
                raise UmxError(f"{path} is at {rate:g} Hz but the track at {track.rate:g} Hz")
            if audio.shape[::-1] != expected:
                raise UmxError(
                    f"{path} has {audio.shape[1]} samples and {audio.shape[0]} channels, the "
                    f"track {expected[0]} samples and {expected[1]} channels"
                )
            estimates[path.stem] = audio.numpy().T
        return estimates


# --- scoring one track ----------------------------------------------------------------------------


def score_track(
    track: musdb.MultiTrack,
    estimates: Mapping[str, np.ndarray],
    *,
    win: float = WIN,
    hop: float = HOP,
) -> museval.TrackStore:
    """BSSEval v4 scores of one track's estimates, computed by `museval.eval_mus_track`.

    As in museval, vocals and accompaniment are scored together when both are estimated, and
    the other targets together.

    Args:
        track: the track, with its references.
        estimates: target → estimate `(nb_timesteps, nb_channels)`, at least two MUSDB18
            targets, each as long as its reference.
        win, hop: BSSEval window and hop in seconds.

    Returns:
        the framewise SDR, SIR, ISR and SAR of every target.

    Raises:
        UmxError: an unknown target, fewer than two estimates, a shape mismatch, or a silent
            reference or estimate (BSSEval is undefined for those; museval refuses them).
    """
    unknown = sorted(set(estimates) - set(TARGETS))
    if unknown:
        raise UmxError(
            f"{track.name}: MUSDB18 has no reference for {', '.join(unknown)} "
            f"(its targets are {', '.join(TARGETS)})"
        )
    if len(estimates) < 2:
        raise UmxError(f"{track.name}: BSSEval needs at least two estimates, got {len(estimates)}")
    for name, estimate in estimates.items():
        target = track.targets[name]
        reference = target.audio
        if estimate.shape != reference.shape:
            raise UmxError(
                f"{track.name}: the {name} estimate has shape {estimate.shape} but its reference "
                f"{reference.shape} (nb_timesteps, nb_channels)"
            )
        if not reference.any():
            paths = " + ".join(source.path for source in target.sources)
            raise UmxError(f"{paths}: the {name} reference is silent, which BSSEval cannot score")
        if not estimate.any():
            raise UmxError(
                f"{track.name}: the {name} estimate is silent, which BSSEval cannot score"
            )
    try:
        return _extra("museval").eval_mus_track(track, dict(estimates), win=win, hop=hop)
    except ValueError as error:  # museval's own checks, e.g. a reference silent in one channel sum
        raise UmxError(f"{track.name}: museval refused it ({str(error).split('. ')[0]})") from None


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


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Create `path` through a temporary file beside it, renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text))


def json_path(evaldir: str | os.PathLike, track: musdb.MultiTrack) -> Path:
    """Where a track's museval JSON goes: `<evaldir>/<subset>/<track>.json`, as museval puts it."""
    return Path(evaldir) / track.subset / f"{track.name}.json"


@dataclass(frozen=True)
class _TrackJob:
    """Everything evaluating one track needs; picklable, sent once to each worker process."""

    method: Method
    evaldir: Path
    outdir: Path | None
    win: float
    hop: float

    def run(self, track: musdb.MultiTrack) -> _Outcome:
        """Estimate, optionally write the stems, score and write the JSON; never raises."""
        try:
            check_references(track)
            with _audio_in_memory(track):
                estimates = self.method(track)
                if self.outdir is not None:
                    for name, estimate in estimates.items():
                        path = self.outdir / track.subset / track.name / f"{name}.wav"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        write_audio(
                            path, estimate.T, track.rate, subtype="FLOAT", clip="none", force=True
                        )
                scores = score_track(track, estimates, win=self.win, hop=self.hop)
            name = getattr(self.method, "name", None)
            if name is not None:  # museval ignores other fields; the reports read it
                scores.scores["method"] = name
            scores.validate()
            _write_text(json_path(self.evaldir, track), scores.json)
        except UmxError as error:
            return _Outcome(track.name, str(error))
        except Exception as error:  # a bug or a library failure must not stop the other tracks
            return _Outcome(track.name, f"{track.name}: {type(error).__name__}: {error}")
        return _Outcome(track.name, None, _nan_notes(track.name, scores))


@dataclass(frozen=True)
class _Outcome:
    track: str
    error: str | None
    notes: list[str] = field(default_factory=list)


_worker_job: _TrackJob | None = None


def _init_worker(job: _TrackJob, nb_threads: int) -> None:
    global _worker_job
    torch.set_num_threads(nb_threads)
    _worker_job = job


def _run_in_worker(track: musdb.MultiTrack) -> _Outcome:
    return _worker_job.run(track)


@dataclass(frozen=True)
class Summary:
    """What `evaluate` did.

    Attributes:
        evaluated: tracks scored now.
        skipped: tracks whose JSON already existed.
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
) -> Summary:
    """Score every track with BSSEval v4 and write one museval JSON per track.

    Tracks whose JSON exists are skipped unless `force`, so an interrupted run resumes where it
    stopped. A track that fails is logged by name and the others go on. Files are written
    atomically: a JSON exists only for a fully scored track.

    Args:
        tracks: from `load_tracks`.
        method: turns a track into estimates: `ModelMethod`, `EstimatesMethod`, `BaselineMethod`.
        evaldir: where the JSON files go, as `<evaldir>/<subset>/<track>.json`.
        win, hop: BSSEval window and hop in seconds.
        outdir: also write the estimates, as float wav in `<outdir>/<subset>/<track>/<target>.wav`
            (readable back with `EstimatesMethod`).
        jobs: tracks evaluated at once, each in its own process; the scores do not depend on it.
        force: evaluate tracks that already have a JSON again.
        progress: show a progress bar over the tracks.

    Returns:
        which tracks were evaluated, skipped or failed.
    """
    check_settings(win=win, hop=hop, jobs=jobs)
    job = _TrackJob(method, Path(evaldir), None if outdir is None else Path(outdir), win, hop)
    done = [track for track in tracks if not force and json_path(evaldir, track).is_file()]
    todo = [track for track in tracks if track not in done]
    outcomes: list[_Outcome] = []
    bars = progress and bool(todo) and sys.stderr.isatty()  # a log file gets lines, not a bar
    with (
        logging_redirect_tqdm(),
        tqdm(total=len(todo), desc="evaluate", unit="track", disable=not bars) as bar,
    ):
        for outcome in _run_jobs(job, todo, jobs):
            outcomes.append(outcome)
            for line in outcome.notes:
                logger.info(line)
            if outcome.error is not None:
                logger.error("error: %s", outcome.error)
            elif progress and not bars:
                logger.info("%d of %d tracks done: %s", len(outcomes), len(todo), outcome.track)
            bar.update(1)
    order = {track.name: index for index, track in enumerate(tracks)}
    outcomes.sort(key=lambda outcome: order[outcome.track])
    return Summary(
        evaluated=[outcome.track for outcome in outcomes if outcome.error is None],
        skipped=[track.name for track in done],
        failed={outcome.track: outcome.error for outcome in outcomes if outcome.error is not None},
    )


def check_settings(*, win: float = WIN, hop: float = HOP, jobs: int = 1) -> None:
    """Refuse a BSSEval window or hop that is not a positive finite number of seconds, or
    fewer than one job.

    Raises:
        UmxError: naming the option.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UmxError(f"--jobs must be at least 1, got {jobs}")
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
    threads = max(1, (os.cpu_count() or 1) // workers)
    # Not fork: forking a process that has started torch's thread pools can deadlock. Workers
    # fork from a server that has imported umx, musdb and museval once, but started nothing.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "musdb", "museval"])
    with ProcessPoolExecutor(workers, context, _init_worker, (job, threads)) as pool:
        futures = {pool.submit(_run_in_worker, track): track.name for track in tracks}
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool:
                yield _Outcome(futures[future], f"{futures[future]}: its worker process died")


# --- aggregation and reports ----------------------------------------------------------------------


def load_scores(
    evaldir: str | os.PathLike, subset: str = "test", tracks: Iterable[str] | None = None
) -> museval.EvalStore:
    """Read the per-track JSON files of one method.

    Args:
        evaldir: as written by `evaluate`.
        subset: the subfolder to read.
        tracks: the track names to read; every JSON of the subset if None.

    Returns:
        museval's store of the framewise scores (`.df` has columns time, target, metric, score,
        track).

    Raises:
        UmxError: no JSON found, or one is unreadable.
    """
    folder = Path(evaldir) / subset
    paths = (
        sorted(folder.glob("*.json"))
        if tracks is None
        else [folder / f"{name}.json" for name in tracks]
    )
    museval = _extra("museval")
    store = museval.EvalStore()
    for path in paths:
        try:
            store.add_track(museval.json2df(json.loads(path.read_text()), path.stem))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UmxError(f"{path} is not a museval JSON file ({error})") from None
    if store.df.empty:
        raise UmxError(f"{folder} holds no scores (museval .json files)")
    return store


def _target_order(targets: Iterable[str]) -> list[str]:
    known = [target for target in TARGETS if target in set(targets)]
    return known + sorted(set(targets) - set(known))


def method_scores(stores: Mapping[str, museval.EvalStore]) -> museval.MethodStore:
    """Several methods' scores in one museval `MethodStore`, under the given names."""
    methods = _extra("museval").MethodStore()
    for name, store in stores.items():
        methods.add_evalstore(store, name)
    return methods


def score_table(methods: museval.MethodStore) -> pd.DataFrame:
    """The aggregate scores: median over frames, then median over tracks (NaN frames skipped).

    Returns:
        one row per (method, target), in the methods' order and MUSDB18's target order, one
        column per metric of `METRICS`, in dB.
    """
    table = methods.agg_frames_tracks_scores().unstack("metric")[list(METRICS)]
    order = list(dict.fromkeys(methods.df["method"]))
    targets = _target_order(table.index.get_level_values("target"))
    index = [(m, t) for m in order for t in targets if (m, t) in table.index]
    table = table.loc[index]
    table.columns.name = None
    return table


def to_markdown(table: pd.DataFrame, decimals: int = 2) -> str:
    """A score table as a Markdown table, the index levels as the first columns."""
    header = [*table.index.names, *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in table.iterrows():
        cells = [*(key if isinstance(key, tuple) else (key,)), *(f"{v:.{decimals}f}" for v in row)]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, directory: str | os.PathLike, name: str) -> list[Path]:
    """Write `<name>.md` and `<name>.csv` into `directory`, each atomically; returns the paths."""
    directory = Path(directory)
    markdown, csv = directory / f"{name}.md", directory / f"{name}.csv"
    _write_text(markdown, to_markdown(table))
    _write_text(csv, table.to_csv(float_format="%.5f"))
    return [markdown, csv]


def plot_scores(
    methods: museval.MethodStore, directory: str | os.PathLike, name: str
) -> list[Path]:
    """Box plots of the per-track scores (frame medians), as sigsep shows results.

    One PNG per metric, `<name>_<metric>.png`. One method: a box per target. Several: a panel
    per target and a box per method. The score axis, shared by the panels, covers the boxes of
    most methods (see `score_limits`); values beyond it, such as the 150+ dB SAR of the mixture
    baseline, are marked at the edge with their count and median instead of squashing the rest.

    Returns:
        the paths written.
    """
    per_track = methods.agg_frames_scores()  # indexed by method, track, target, metric
    order = list(dict.fromkeys(methods.df["method"]))
    targets = _target_order(per_track.index.get_level_values("target").unique())
    paths = []
    for metric in METRICS:
        scores = per_track.xs(metric, level="metric")
        found = {key: _finite(group) for key, group in scores.groupby(level=["method", "target"])}
        boxes = {
            (method, target): found.get((method, target), np.empty(0))
            for method in order
            for target in targets
        }
        figure = _box_figure(boxes, order, targets, metric)
        path = Path(directory) / f"{name}_{metric}.png"
        _write_atomic(path, lambda tmp, figure=figure: figure.savefig(tmp, format="png", dpi=100))
        paths.append(path)
    return paths


def _finite(scores: pd.Series) -> np.ndarray:
    values = scores.to_numpy(dtype=float)
    return values[np.isfinite(values)]


def _box_figure(
    boxes: Mapping[tuple[str, str], np.ndarray],
    order: Sequence[str],
    targets: Sequence[str],
    metric: str,
) -> Figure:
    """The box plot of one metric: `boxes[(method, target)]` holds the per-track scores."""
    single = len(order) == 1
    # One method: a single panel, a box per target. Several: a panel per target.
    panels = (
        [(order[0], list(targets))] if single else [(target, list(order)) for target in targets]
    )
    width = 1.0 * len(targets) + 2.5 if single else len(targets) * (0.7 * len(order) + 1.2) + 1
    figure = _extra("matplotlib.figure").Figure(figsize=(max(width, 5.0), 4.2), layout="tight")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    rotation, align = (0, "center") if single else (30, "right")
    if not single:
        figure.suptitle(f"{metric} per track")
    ordered = [boxes[(method, target)] for method in order for target in targets]
    limits = score_limits(ordered, first=len(targets))
    for ax, (title, labels) in zip(axes, panels, strict=True):
        data = [boxes[(title, label)] if single else boxes[(label, title)] for label in labels]
        positions = range(1, len(labels) + 1)
        ax.boxplot(data, positions=positions)
        ax.set_xticks(positions, labels, rotation=rotation, ha=align)
        ax.set_title(f"{title}: {metric} per track" if single else title)
        ax.grid(axis="y", alpha=0.3)
        if limits is not None:
            ax.set_ylim(limits)
            for position, values in zip(positions, data, strict=True):
                _mark_off_scale(ax, position, values, limits)
    axes[0].set_ylabel(f"{metric} (dB), median over frames")
    return figure


def score_limits(
    boxes: Sequence[np.ndarray], *, first: int = 0, gap: float = 3.0
) -> tuple[float, float] | None:
    """A shared score axis range under which the boxes are readable.

    Each box stands for its whisker extent (the scores within 1.5 interquartile ranges of its
    quartiles, as the box plot draws it). Extents are grouped where the space between them is
    at most `SCORE_GAP` dB or `gap` times the median extent; the axis covers the group holding
    the most boxes with their outliers as near as that, plus 5 % on each side. A group far
    from the others, such as the mixture baseline's SAR of 150+ dB next to scores of 0 to
    20 dB, is left off the axis (and marked at its edge by the plot) instead of squashing every
    other box. Ties go to the group holding the most of the first `first` boxes (the first
    method's).

    Args:
        boxes: the finite scores of each box; empty boxes are ignored.
        first: how many of the leading boxes belong to the first method.
        gap: the largest space between boxes shown together, in median extents, when that is
            more than `SCORE_GAP`.

    Returns:
        (low, high), or None when no box has a score.
    """
    extents = [(index, *_whiskers(values)) for index, values in enumerate(boxes) if values.size]
    if not extents:
        return None
    extents.sort(key=lambda extent: extent[1])
    median = float(np.median([high - low for _, low, high in extents]))
    largest_gap = max(SCORE_GAP, gap * median)
    groups: list[list[tuple[int, float, float]]] = []
    for extent in extents:
        if groups and extent[1] - max(high for _, _, high in groups[-1]) <= largest_gap:
            groups[-1].append(extent)
        else:
            groups.append([extent])
    chosen = max(
        groups, key=lambda group: (len(group), sum(index < first for index, _, _ in group))
    )
    low = min(low for _, low, _ in chosen)
    high = max(high for _, _, high in chosen)
    # The group's outliers too, unless they lie as far away as another group would.
    values = np.concatenate([boxes[index] for index, _, _ in chosen])
    near = values[(values >= low - largest_gap) & (values <= high + largest_gap)]
    low, high = float(near.min()), float(near.max())
    margin = 0.05 * max(high - low, 1.0)
    return low - margin, high + margin


def _whiskers(values: np.ndarray) -> tuple[float, float]:
    """The extent of a box plot's whiskers: the scores within 1.5 IQR of the quartiles."""
    q1, q3 = np.percentile(values, [25, 75])
    inside = values[(values >= q1 - 1.5 * (q3 - q1)) & (values <= q3 + 1.5 * (q3 - q1))]
    return float(inside.min()), float(inside.max())


def _mark_off_scale(
    ax: Axes, position: int, values: np.ndarray, limits: tuple[float, float]
) -> None:
    """Mark the scores beyond `limits` at the axis edge: a triangle, their count and median."""
    low, high = limits
    for off, edge, marker, align in (
        (values[values > high], high, "^", "top"),
        (values[values < low], low, "v", "bottom"),
    ):
        if off.size:
            ax.plot([position], [edge], marker=marker, color="C3", clip_on=False, zorder=3)
            ax.annotate(
                f"{off.size} off scale\nmedian {np.median(off):.3g}",
                (position, edge),
                xytext=(0, -9 if align == "top" else 9),
                textcoords="offset points",
                ha="center",
                va=align,
                fontsize=7,
                color="C3",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "linewidth": 0},
            )


def report(
    stores: Mapping[str, museval.EvalStore], directory: str | os.PathLike, name: str
) -> pd.DataFrame:
    """Aggregate table (Markdown and CSV) and box plots of one or several methods.

    Args:
        stores: method name → its scores, from `load_scores`.
        directory: where `<name>.md`, `<name>.csv` and `<name>_<metric>.png` go.
        name: the reports' file name stem.

    Returns:
        the table of `score_table`.
    """
    methods = method_scores(stores)
    table = score_table(methods)
    write_table(table, directory, name)
    plot_scores(methods, directory, name)
    return table


# --- command line ---------------------------------------------------------------------------------


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `umx evaluate`."""
    data = parser.add_argument_group("test set")
    data.add_argument(
        "--root",
        type=Path,
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
        type=Path,
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
    add_separation_arguments(model)
    parser.add_argument(
        "--aggregate",
        metavar="JSON",
        help="with --model or --method, evaluate groups of targets, as JSON or a JSON file, e.g. "
        '\'{"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}\'',
    )

    out = parser.add_argument_group("evaluation and output")
    out.add_argument(
        "--evaldir",
        type=Path,
        required=True,
        help="where the scores go: EVALDIR/<subset>/<track>.json (museval format), "
        "scores.md, scores.csv and scores_<metric>.png",
    )
    out.add_argument(
        "--outdir",
        type=Path,
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
        "--jobs", type=int, default=1, metavar="N", help="tracks evaluated in parallel (default: 1)"
    )
    out.add_argument(
        "--force", action="store_true", help="evaluate again the tracks that already have scores"
    )
    out.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="evaldirs of other methods to put side by side with this one (or with each other "
        "when no --root is given) in EVALDIR/compare.md, compare.csv and compare_<metric>.png",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar, no messages but errors"
    )


def _method_from_args(args: argparse.Namespace) -> Method:
    aggregate = parse_aggregate(args.aggregate)
    if args.estimates is not None:
        if aggregate is not None:
            raise UmxError("--aggregate does not apply to --estimates: name the files instead")
        if not args.estimates.is_dir():
            raise UmxError(f"{args.estimates} is not a directory of estimates")
        return EstimatesMethod(args.estimates)
    if args.method is not None:
        return BaselineMethod(args.method, aggregate)
    separator = separator_from_args(args, args.model)  # None: the default, as umx separate
    return ModelMethod(separator, aggregate, segment_from_args(args), args.overlap)


def method_name(
    evaldir: str | os.PathLike, subset: str = "test", tracks: Iterable[str] | None = None
) -> str:
    """The name of the method whose scores are in `evaldir`, for reports.

    `evaluate` records the method's name in every museval JSON (a model's is the model loaded,
    e.g. `umxl`, or its directory's name); when the JSON files name one method, that is its
    name, otherwise the name of `evaldir`.
    """
    folder = Path(evaldir) / subset
    paths = (
        folder.glob("*.json") if tracks is None else (folder / f"{name}.json" for name in tracks)
    )
    names = set()
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
        names.add(data.get("method") if isinstance(data, dict) else None)
    (name,) = names if len(names) == 1 else (None,)
    if (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME
        and name.isprintable()
        and "|" not in name
    ):
        return name
    return Path(evaldir).resolve().name


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


def run_evaluate(args: argparse.Namespace) -> int:
    """`umx evaluate`: evaluate a method on a test set and/or compare evaluated methods.

    Returns:
        the exit code: 1 if any track failed, else 0.
    """
    if args.root is None and not args.compare:
        raise UmxError("no test set: give --root (or set MUSDB_PATH), or --compare DIR...")
    check_settings(win=args.win, hop=args.hop, jobs=args.jobs)
    for option, directory in (("--evaldir", args.evaldir), ("--outdir", args.outdir)):
        if directory is not None and directory.exists() and not directory.is_dir():
            raise UmxError(f"{option} {directory} is a file, not a directory")
    for directory in args.compare or []:
        if not (directory / args.subset).is_dir():
            raise UmxError(
                f"--compare {directory}: {directory / args.subset} does not exist (no scores of "
                f"the {args.subset} subset)"
            )
    if args.estimates is not None or args.method is not None:
        given = given_separation_options(args)
        if given:
            raise UmxError(f"{given[0]} applies to --model only")
    elif args.root is not None:
        check_separation_args(args)
        resolve_device(args.device)
    methods: list[tuple[Path, str, museval.EvalStore]] = []  # evaldir, name, scores
    failed = False
    if args.root is not None:
        tracks = load_tracks(args.root, subset=args.subset, is_wav=args.is_wav, names=args.tracks)
        summary = evaluate(
            tracks,
            _method_from_args(args),
            args.evaldir,
            win=args.win,
            hop=args.hop,
            outdir=args.outdir,
            jobs=args.jobs,
            force=args.force,
            progress=not args.quiet,
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
                ", ".join(summary.failed),
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
        table = report(stores, args.evaldir, "compare")
        print(to_markdown(table), end="")
    return 1 if failed else 0
