"""`umx synth`: renders General MIDI songs into four-stem tracks in the MUSDB18-HQ layout.

Each track is an excerpt of a song (a General MIDI file, or a song of
:mod:`umx.synth.procedural`) whose notes are split into the four stems by General MIDI rules
(:mod:`umx.synth.gm`).

Every stem is rendered on its own by the ``fluidsynth`` program with a General MIDI soundfont,
then levelled, panned and quantised to 16 bits; the mixture is the sum of the quantised stems,
so reading the files back, the stems sum exactly to the mixture. Each track draws its excerpt,
soundfont, transposition, tempo, stem gains and panning from ``--seed``, so a dataset is
reproduced byte for byte by the same command with the same fluidsynth and soundfonts.

Songs, not tracks, are split: a song's excerpts all go to one of train, valid (kept in ``train/``
and listed in ``setup.yaml``'s ``validation_tracks``, as musdb expects) and test, and the test
split is rendered with soundfonts that train and valid never use. ``synth.json`` records every
track's song, soundfont and parameters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from umx import __version__
from umx.audio import io_errors
from umx.defaults import (
    DURATION,
    SAMPLE_RATE,
    SOUNDFONT_PACKAGES,
    SOURCES,
    TEST_SOUNDFONTS,
    TRAIN_SOUNDFONTS,
)
from umx.errors import UmxError, already_exists, display_path
from umx.files import write_atomic
from umx.folders import not_a_folder, staged_folder
from umx.messages import duration as duration_words
from umx.messages import plural
from umx.synth.plan import SPLITS, SongRef, TrackPlan, plan_song
from umx.synth.render import (
    PCM_SCALE,
    check_fluidsynth,
    check_soundfont,
    level_db,
    render_track,
    write_pcm16,
)
from umx.workers import init_pool_worker, run_pool_task, sigint_held_for_children

logger = logging.getLogger(__name__)

FADE_SECONDS = 1.0
"""Fade in and out of the example song."""
DATASET_FILES = frozenset(("train", "test", "synth.json", "setup.yaml"))
TRACK_FILES = frozenset(f"{name}.wav" for name in (*SOURCES, "mixture"))
"""The files of a track's folder."""
SETTINGS = (
    "midi", "procedural", "soundfont", "test_soundfont", "test_fraction", "valid_fraction",
    "excerpts", "duration", "sample_rate", "seed", "drum_kits", "test_drum_kits", "production",
    "sung", "mix_bus", "dense_other", "amp_guitars", "festival_singer", "test_festival_voice",
    "other_samples", "test_other_samples", "test_songs_of",
)  # fmt: skip
"""The options recorded in ``synth.json``."""


def _render_task(task: tuple[TrackPlan, float, int, Path]) -> dict[str, float] | None:
    """Renders a track into its folder; returns its stems' levels, or None if skipped."""
    plan, duration, sample_rate, folder = task
    tracks = render_track(plan, duration, sample_rate)
    if tracks is None:
        return None
    folder.mkdir(parents=True)
    levels = {}
    for name, audio in tracks.items():
        path = folder / f"{name}.wav"
        with io_errors(f"cannot write {display_path(path)}", folder):
            write_pcm16(path, audio, sample_rate)
        levels[name] = round(level_db(audio / PCM_SCALE), 2)
    return levels


def _init_render_worker(driver: int) -> None:
    """Sets up a rendering worker (`init_pool_worker`: SIGTERM and SIGHUP stop its track as
    SIGINT does, unwinding, so that fluidsynth is killed and its temporary folder, a song.wav
    of megabytes, removed; the pool SIGTERMs its workers when it stops), then lets through
    the SIGINT held back while it imported."""
    init_pool_worker(driver)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def check_root(root: Path, force: bool) -> None:
    """Refuses an output folder that holds a dataset (unless ``force``) or anything else.

    Raises:
        UmxError: ``root`` or a folder above it is a file, ``root`` is a non-empty folder that
            is not a dataset or holds one and more, or a dataset and ``force`` is false.
    """
    if not root.exists():
        above = not_a_folder(root.parent)
        if above is not None:
            raise UmxError(f"{above} is a file, not a folder (in --root {root})")
        return
    if not root.is_dir():
        raise UmxError(f"{root} is a file, not a folder")
    here = Path.cwd()
    if root.resolve() in (here, *here.parents):  # replaced whole, under the user's feet
        raise UmxError(
            f"--root {root} is the folder you are in, or holds it, and umx synth replaces its "
            f"folder whole: give a new folder, e.g. --root {root / 'data'}"
        )
    names = {path.name for path in root.iterdir()}
    if not names:
        return
    if not names <= DATASET_FILES and "synth.json" in names:  # a --midi folder put in it, say
        extra = sorted(names - DATASET_FILES)
        one = len(extra) == 1
        raise UmxError(
            f"{root} holds a dataset and also {_listed(extra)}, which {'is' if one else 'are'} "
            f"not part of one: move {'it' if one else 'them'} out, or choose a new folder"
        )
    if not names <= DATASET_FILES:
        raise UmxError(f"{root} is not empty and holds no dataset; choose a new folder")
    stranger = next(_foreign_files(root), None)
    if stranger is not None:  # --force would delete it with the dataset
        raise UmxError(
            f"{root} holds {stranger}, which umx synth did not write: move it out of the "
            "dataset, or choose a new folder"
        )
    if not force:
        raise UmxError(f"{root} already holds a dataset (use --force to replace it)")


def _listed(names: Sequence[str]) -> str:
    """The first two of `names` and how many more: "mid", "mid and notes", "a, b and 3 more"."""
    first = [display_path(name) for name in names[:2]]
    if len(names) > 2:
        return f"{first[0]}, {first[1]} and {len(names) - 2} more"
    return " and ".join(first)


def _foreign_files(root: Path) -> Iterator[Path]:
    """What the splits of a dataset folder hold besides its tracks' folders of stems."""
    for split in (root / "train", root / "test"):
        for track in split.iterdir() if split.is_dir() else ():
            if not track.is_dir() or track.is_symlink():
                yield track
            else:
                yield from (path for path in track.iterdir() if path.name not in TRACK_FILES)


def _setup_yaml(validation_tracks: list[str], sample_rate: int) -> str:
    """musdb's set-up file for the dataset, as JSON (which YAML reads)."""
    setup = {
        "sample_rate": float(sample_rate),
        "sources": {stem: f"{stem}.wav" for stem in SOURCES},
        "mixture": "mixture.wav",
        "stem_ids": {"mixture": 0, "drums": 1, "bass": 2, "other": 3, "vocals": 4},
        "targets": {
            **{stem: {stem: 1} for stem in SOURCES},
            "accompaniment": {"bass": 1, "drums": 1, "other": 1},
            "linear_mixture": {stem: 1 for stem in SOURCES},
        },
        "validation_tracks": validation_tracks,
    }
    return json.dumps(setup, indent=2) + "\n"


def synthesize(
    root: str | Path,
    plans: Sequence[TrackPlan],
    *,
    duration: float = DURATION,
    sample_rate: int = int(SAMPLE_RATE),
    jobs: int = 1,
    force: bool = False,
    progress: bool = True,
    settings: dict | None = None,
) -> dict:
    """Renders planned tracks into a new dataset folder.

    ``root`` appears whole or not at all: tracks are rendered into a hidden folder beside it,
    which then takes its place. Tracks with a silent stem are skipped.

    Args:
        root: the dataset folder; it must not hold a dataset unless ``force``.
        plans: the tracks, from :func:`plan_tracks`.
        duration: seconds per track.
        sample_rate: samples per second.
        jobs: tracks rendered at once.
        force: replace a dataset already in ``root``.
        progress: show a progress bar on a terminal.
        settings: recorded in ``synth.json`` as they are (the command's options).

    Returns:
        The contents of ``synth.json``: settings, songs per split, tracks with their levels.

    Raises:
        UmxError: ``root`` is refused, fluidsynth is missing or fails, or every track was
            skipped.
    """
    root = Path(root)
    check_root(root, force)
    check_fluidsynth()
    tracks = []
    with staged_folder(root) as stage:
        tasks = [
            (plan, duration, sample_rate, stage / _folder(plan.split) / plan.name) for plan in plans
        ]
        with contextlib.ExitStack() as stack:
            if jobs > 1:
                # Not fork: a child forked from a process with threads (torch's, a server's,
                # a caller's) can deadlock on a lock one of them held. Spawned workers import
                # afresh, with SIGINT held back until they handle it (`_init_render_worker`).
                context = multiprocessing.get_context("spawn")
                with sigint_held_for_children():
                    pool = context.Pool(min(jobs, len(tasks)), _init_render_worker, (os.getpid(),))
                stack.enter_context(pool)
                results = pool.imap(partial(run_pool_task, _render_task), tasks)
            else:
                results = map(_render_task, tasks)
            bar = stack.enter_context(
                tqdm(total=len(tasks), unit="track", disable=None if progress else True)
            )  # None: only on a terminal, as umx's other commands
            stack.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger("umx")]))
            for plan, levels in zip(plans, results, strict=True):
                bar.update()
                if levels is None:
                    logger.warning("skipped %s: a stem is silent", plan.name)
                else:
                    tracks.append({**asdict(plan), "levels_db": levels})
        if not tracks:
            raise UmxError("every track had a silent stem; nothing was written")
        manifest = _manifest(tracks, settings or {}, duration, sample_rate)
        (stage / "synth.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        valid = [track["name"] for track in tracks if track["split"] == "valid"]
        (stage / "setup.yaml").write_text(_setup_yaml(valid, sample_rate))
    counts = {split: sum(track["split"] == split for track in tracks) for split in SPLITS}
    logger.info(
        "wrote %s (%s) to %s: %s",
        plural(len(tracks), "track"),
        duration_words(len(tracks) * duration),
        display_path(root),
        ", ".join(f"{count} {split}" for split, count in counts.items()),
    )
    return manifest


def _manifest(tracks: list[dict], settings: dict, duration: float, sample_rate: int) -> dict:
    """The contents of ``synth.json`` for the rendered ``tracks`` (each a `TrackPlan` as a
    dict, with its levels)."""
    return {
        "umx_version": __version__,
        "settings": settings,
        "duration": duration,
        "sample_rate": sample_rate,
        "hours": round(len(tracks) * duration / 3600, 3),
        "songs": {
            split: sorted({track["song"]["name"] for track in tracks if track["split"] == split})
            for split in SPLITS
        },
        "soundfonts": {
            split: sorted({track["soundfont"] for track in tracks if track["split"] == split})
            for split in SPLITS
        },
        "tracks": tracks,
    }


def read_test_songs(root: Path) -> list[str]:
    """The names of the songs in the test split of the dataset `umx synth` made in ``root``.

    Raises:
        UmxError: ``root`` holds no readable ``synth.json`` with a list of test songs.
    """
    path = root / "synth.json"
    if not path.is_file():  # a FIFO or device would block the read, or never end
        what = "is not a regular file" if path.exists() else "not found"
        raise UmxError(f"{display_path(path)} {what}: give a folder umx synth made")
    try:
        songs = json.loads(path.read_bytes())["songs"]["test"]
    except (OSError, ValueError, RecursionError) as error:
        raise UmxError(f"{display_path(path)} is not readable ({error})") from None
    except (KeyError, TypeError):
        songs = None
    if not isinstance(songs, list) or not all(isinstance(song, str) for song in songs):
        raise UmxError(f"{display_path(path)} does not list its test songs: is it umx synth's?")
    return songs


def _folder(split: str) -> str:
    """The folder of a split: validation tracks live in ``train/``, as in MUSDB18."""
    return "test" if split == "test" else "train"


def default_soundfonts(test: bool) -> list[Path]:
    """The installed default soundfonts for training, or for testing when ``test``.

    Raises:
        UmxError: none is installed, naming the package to install.
    """
    candidates = TEST_SOUNDFONTS if test else TRAIN_SOUNDFONTS
    installed = [path for path in candidates if path.is_file()]
    if not installed:
        package = SOUNDFONT_PACKAGES[candidates[0]]
        raise UmxError(f"no General MIDI soundfont found (apt-get install {package})")
    return installed


def render_example(
    path: str | Path,
    seed: int,
    *,
    duration: float = 15.0,
    soundfont: str | Path | None = None,
    sample_rate: int = int(SAMPLE_RATE),
    stems: bool = False,
    force: bool = False,
) -> list[Path]:
    """Renders an excerpt of the procedural song of ``seed``, with fades, to an audio file.

    The mixture goes to ``path`` (16-bit wav or flac) and, with ``stems``, each stem beside it
    as ``NAME.STEM.EXT``: the stems sum exactly to the mixture, and the same arguments give the
    same files.

    Args:
        path: the mixture's file.
        seed: the song and its rendering.
        duration: seconds.
        soundfont: the soundfont; by default the first installed training soundfont.
        sample_rate: samples per second.
        stems: also write the stems.
        force: overwrite existing files.

    Returns:
        The files written, mixture first.

    Raises:
        UmxError: ``path`` is not a .wav or .flac file, a file exists without ``force``, or
            fluidsynth or the soundfont is missing.
    """
    path = Path(path)
    if path.suffix.lower() not in (".wav", ".flac"):
        raise UmxError(f"{path}: the example is written as .wav or .flac")
    outputs = {"mixture": path}
    if stems:
        outputs |= {stem: path.with_name(f"{path.stem}.{stem}{path.suffix}") for stem in SOURCES}
    existing = [output for output in outputs.values() if output.exists()]
    if existing and not force:
        raise already_exists(existing[0])
    soundfont = check_soundfont(soundfont) if soundfont else default_soundfonts(test=False)[0]
    song = SongRef(name=f"procedural-{seed}", seed=seed, min_seconds=duration)
    plans = plan_song(song, "example", [soundfont], seed, duration, excerpts=1)
    tracks = render_track(plans[0], duration, sample_rate, fade=FADE_SECONDS) if plans else None
    if tracks is None:
        raise UmxError(f"the procedural song of seed {seed} has a silent stem; try another seed")
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, output in outputs.items():
        write = partial(
            write_pcm16, audio=tracks[name], sample_rate=sample_rate, suffix=output.suffix
        )
        with io_errors(f"cannot write {display_path(output)}", output.parent):
            try:  # without force, a file another run wrote meanwhile is kept
                write_atomic(output, write, replace=force)
            except FileExistsError:
                raise already_exists(output) from None
    return list(outputs.values())
