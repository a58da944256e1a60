"""The teacher's half of a distillation: its stems of the user's music, by a `umx batch` job,
and the training set built from them.

Layout of the work folder (`WORK`):

- `teacher/<parent>/<track>.<ext>/<stem>.wav`: the teacher's stems, float wav at the teacher's
  rate, unclipped; `teacher/.umx-job/` is the batch job (settings, manifest, lock), so that a
  second run separates only the songs not done yet.
- `data/tracks/<track>-<8 hex>/`: per song, `mixture.wav` (the song decoded, matched to the
  stems' channels and resampled to their rate: what the teacher heard; decoded again when the
  song's size or time changes) and `<stem>.wav` (a link to the teacher's stem). The suffix is
  a hash of the song's path, so that songs of the same name stay apart. A silent song (its
  mixture, or every stem of the teacher's) is left out of the splits, with a warning: it
  teaches nothing, and as a validation song its loss of 0 would freeze the student at its
  first epoch. `.silent` in its folder says why, so that later runs need not read it again.
- `data/train/`, `data/valid/`: links to the track folders of each split, rebuilt every run:
  the `aligned` dataset of `umx.train` reads `data` with `mixture.wav` as input and a stem as
  output.

The user's files are only read; a work folder that holds files umx did not write is refused
(`foreign_files`) rather than cleaned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from umx.audio import audio_info, display_path, read_audio, write_audio
from umx.defaults import JOB_DIRNAME
from umx.distill.messages import distill_words
from umx.errors import UmxError, os_error_line
from umx.files import safe_stem, sha256_bytes, write_json_atomic, write_text_atomic
from umx.messages import plural

if TYPE_CHECKING:
    import torch

    from umx.batch.inputs import BatchInput

logger = logging.getLogger("umx")

TEACHER_DIR = "teacher"
DATA_DIR = "data"
TRACKS_DIR = "tracks"
SPLITS = ("train", "valid")
MIXTURE_FILE = "mixture.wav"
SILENT_FILE = ".silent"
"""In a silent song's track folder: why it is left out of the splits."""
SOURCE_FILE = ".source.json"
"""In a track folder: what its mixture was decoded from (`file_signature` of the song, the
rate and channels), so that a song changed since is decoded again."""
SILENCE = 1e-5
"""The peak (−100 dBFS) at or below which a song's mixture or stems count as silent."""
STEM_TEMPLATE = "{parent}/{track}.{trackext}/{target}.{ext}"
"""Where the teacher's pass writes each song's stems under `WORK/teacher`."""
STEM_FORMAT = {"ext": "wav", "subtype": "FLOAT", "clip": "none"}
"""The teacher's stems as computed: float samples, neither rescaled nor clamped (the fields of
`umx.options.OutputOptions`)."""


@dataclass(frozen=True)
class TeacherTrack:
    """One song the teacher separated.

    Attributes:
        path: the song, absolute.
        stems: the teacher's stem files by target name.
    """

    path: str
    stems: dict[str, Path]


@dataclass(frozen=True)
class TeacherPass:
    """What the teacher's pass gave.

    Attributes:
        source: where the stems come from, as the model's provenance file says it: the
            teacher's name (or directory) as `umx batch` records it and the SHA-256 of its
            weights (`model`, `sha256`), or the folder of stems made by another separator
            (`stems_folder`).
        targets: its stems, in its order.
        tracks: the songs it separated, in input order.
        failed: how many songs it could not separate.
    """

    source: dict[str, str]
    targets: list[str]
    tracks: list[TeacherTrack]
    failed: int


@dataclass(frozen=True)
class TrainingSet:
    """The training set built from the teacher's stems.

    Attributes:
        root: the `aligned` dataset's folder (`WORK/data`).
        train, valid: the track folders' names of each split.
        seconds: the duration of all its songs.
        sha256: what tells this training set from another: a hash of each split's songs and
            the files of each (the mixture's and the stems', by `file_signature`), so that a
            song added, removed, decoded or separated again changes it.
    """

    root: Path
    train: list[str]
    valid: list[str]
    seconds: float
    sha256: str


def too_few_songs(detail: str) -> UmxError:
    """The refusal of a training set of fewer than 2 songs; `detail` says how many there are."""
    return UmxError(
        f"distillation needs at least 2 songs (one to train on, one to validate on); {detail}"
    )


def teacher_pass(
    music: Sequence[str],
    teacher: str,
    work: Path,
    *,
    niter: int | None = None,
    device: str | None = None,
    jobs: int | None = None,
    quiet: bool = False,
) -> TeacherPass:
    """Separate the music with the teacher as a `umx batch` job into `work/teacher`; a job
    stopped before its end goes on where it stopped.

    Args:
        music: audio files, folders (searched recursively) or glob patterns.
        teacher: the teacher model's name or directory, or an ONNX export folder (`umx
            export`; run by onnxruntime on the CPU whatever `device`).
        work: the work folder.
        niter: the teacher's Wiener filter iterations (None: `umx batch`'s default).
        device: where a PyTorch teacher runs (None: auto).
        jobs: the batch's worker processes (None: its default).
        quiet: no progress bar or messages.

    Raises:
        UmxError: the music holds no audio, the teacher cannot be loaded, its job in `work`
            was started with other settings, or it separated no song at all.
    """
    from umx.batch.inputs import collect_inputs
    from umx.batch.job import read_settings
    from umx.batch.run import BatchOptions, run_batch_job
    from umx.jobs import TaskOptions
    from umx.onnx.options import is_export_folder
    from umx.options import OutputOptions, SeparationOptions

    outdir = work / TEACHER_DIR
    job_dir = outdir / JOB_DIRNAME
    # an ONNX export runs on onnxruntime on the CPU: the device is the student's
    chosen = {"niter": niter, "device": None if is_export_folder(teacher) else device}
    separation = SeparationOptions(
        model=teacher, **{name: value for name, value in chosen.items() if value is not None}
    )
    output = OutputOptions(outdir, STEM_TEMPLATE, **STEM_FORMAT)
    task = TaskOptions(separation, output)
    # Failed songs are tried again: a teacher's stem damaged or removed since is separated
    # again, rather than its song left out.
    batch = BatchOptions(music, task, retry_failed=True, jobs=jobs, quiet=quiet)
    with distill_words():
        # As `job_inputs` finds them, but leaving out the whole work folder rather than only
        # the teacher's stems: the training set in it holds mixtures too.
        extensions = list(batch.extensions)
        inputs = collect_inputs(list(batch.inputs), extensions=extensions, exclude={work: "--work"})
        if len(inputs) < 2:  # before the teacher's pass, not after it
            raise too_few_songs(f"the music holds {len(inputs)}: give more songs")
        run_batch_job(batch, inputs)  # failures counted below
    settings = read_settings(job_dir)
    if settings is None:  # run_batch writes it before separating anything
        raise UmxError(f"{display_path(job_dir)} holds no job settings after the teacher's pass")
    identity = settings["identity"]
    tracks, failed = _separated(inputs, job_dir)
    if not tracks:
        raise UmxError(
            f"the teacher separated none of the {plural(len(inputs), 'song')}; see umx batch "
            f"--status {display_path(job_dir)}"
        )
    if failed:  # its run retried every failure: so will the next
        logger.warning(
            "the student learns from %s; the teacher could not separate %d (umx batch "
            "--status %s says why): the same command tries again",
            plural(len(tracks), "song"),
            failed,
            display_path(job_dir),
        )
    source = {"model": identity["model"], "sha256": identity["model_sha256"]}
    return TeacherPass(source, identity["outputs"], tracks, failed)


def _separated(inputs: Sequence[BatchInput], job_dir: Path) -> tuple[list[TeacherTrack], int]:
    """The songs the teacher's job separated, with their stems, and how many it failed."""
    from umx.batch.job import MANIFEST_FILE
    from umx.jobs import DONE, FAILED, latest_records, read_records

    latest = latest_records(read_records(job_dir / MANIFEST_FILE))
    tracks, failed = [], 0
    for item in inputs:
        record = latest.get(item.key, {})
        if record.get("status") == DONE:
            stems = {name: Path(output["path"]) for name, output in record["outputs"].items()}
            tracks.append(TeacherTrack(item.path, stems))
        elif record.get("status") == FAILED:
            failed += 1
    return tracks, failed


def track_name(path: str) -> str:
    """The folder of a song in `WORK/data/tracks`: its name, safe, and a hash of its path."""
    return f"{safe_stem(Path(path).name)}-{sha256_bytes(path.encode())[:8]}"


def foreign_files(work: Path, ours: Sequence[str] = (TEACHER_DIR, DATA_DIR)) -> list[Path]:
    """The files and folders in `work` that a distillation did not write, and would write over
    or remove: at its top, anything but `ours`; in the split folders, anything but the links
    to the track folders that `build_training_set` makes.

    Raises:
        UmxError: `work` is a file, or cannot be read.
    """
    try:
        foreign = [path for path in sorted(work.iterdir()) if path.name not in ours]
        for split in SPLITS:
            folder = work / DATA_DIR / split
            if folder.is_dir() or folder.is_symlink():
                foreign += [path for path in sorted(folder.iterdir()) if not _split_link(path)]
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise UmxError(f"--work {display_path(work)} is a file: give a folder") from None
    except OSError as error:
        raise UmxError(os_error_line(error)) from None
    return foreign


def _split_link(path: Path) -> bool:
    """Whether `path` is the link to a track folder that `build_training_set` makes."""
    return path.is_symlink() and os.readlink(path) == os.path.join("..", TRACKS_DIR, path.name)


def foreign_refusal(work: Path, foreign: Sequence[Path]) -> UmxError:
    """The refusal of a work folder that holds `foreign` files (see `foreign_files`)."""
    return UmxError(
        f"--work {display_path(work)} holds files umx did not write ({display_path(foreign[0])}"
        f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}): give a new or empty "
        "folder as --work"
    )


def build_training_set(
    tracks: Sequence[TeacherTrack], work: Path, *, valid_fraction: float, seed: int
) -> TrainingSet:
    """Write `work/data` (see the module's docstring) for the songs the teacher separated.

    A song's `mixture.wav` is kept by later runs while the song and the stems' rate and
    channels are those it was decoded for; the links to the stems and the splits are made
    again. Silent songs are left out, with a warning. The validation songs
    are `valid_fraction` of them (at least one, and one song at least is left for training),
    drawn with `seed` from the songs sorted by folder name, so that the same songs give the
    same split.

    Raises:
        UmxError: fewer than two songs that are not silent, a song that no longer decodes to
            the length of its stems, or files in the split folders that umx did not write (see
            `foreign_files`).
    """
    foreign = [path for path in foreign_files(work) if DATA_DIR in path.relative_to(work).parts]
    if foreign:  # checked before any change: only the links umx made are removed
        raise foreign_refusal(work, foreign)
    root = work / DATA_DIR
    seconds = 0.0
    files: dict[str, list[Path]] = {}
    for track in tracks:
        name = track_name(track.path)
        duration, silent = _write_track(track, root / TRACKS_DIR / name)
        if silent:
            logger.warning(
                "%s is left out of the training set: %s", display_path(track.path), silent
            )
            continue
        seconds += duration
        files[name] = [root / TRACKS_DIR / name / MIXTURE_FILE, *track.stems.values()]
    names = list(files)
    if len(names) < 2:
        left_out = (
            f", {len(tracks) - len(names)} of them silent" if len(names) < len(tracks) else ""
        )
        raise too_few_songs(f"the teacher separated {len(tracks)}{left_out}")
    names.sort()
    random.Random(seed).shuffle(names)
    nb_valid = min(max(1, round(valid_fraction * len(names))), len(names) - 1)
    splits = {"valid": sorted(names[:nb_valid]), "train": sorted(names[nb_valid:])}
    for split, members in splits.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for link in folder.iterdir():  # links umx made (checked above): the tracks stay
            link.unlink()
        for name in members:
            os.symlink(Path("..", TRACKS_DIR, name), folder / name, target_is_directory=True)
    digest = hashlib.sha256()
    for split, members in splits.items():
        for name in members:
            signatures = [file_signature(Path(os.path.realpath(path))) for path in files[name]]
            digest.update(json.dumps([split, name, signatures]).encode())
    return TrainingSet(root, splits["train"], splits["valid"], seconds, digest.hexdigest())


def _write_track(track: TeacherTrack, folder: Path) -> tuple[float, str | None]:
    """Write one song's folder: its mixture (once) and links to its stems.

    Returns:
        its duration in seconds, and why it is silent (None: it is not).
    """
    folder.mkdir(parents=True, exist_ok=True)
    first = audio_info(next(iter(track.stems.values())))
    mixture = folder / MIXTURE_FILE
    source = [*file_signature(Path(track.path)), first.sample_rate, first.nb_channels]
    if not mixture.exists() or read_json(folder / SOURCE_FILE) != source:
        (folder / SOURCE_FILE).unlink(missing_ok=True)
        audio, rate = read_audio(
            track.path, sample_rate=first.sample_rate, nb_channels=first.nb_channels
        )
        if audio.shape[1] != first.nb_frames:
            raise UmxError(
                f"{display_path(track.path)} decodes to {audio.shape[1]} frames at "
                f"{rate:g} Hz but the teacher's stems have {first.nb_frames}: has it changed "
                "since the teacher's pass?"
            )
        (folder / SILENT_FILE).unlink(missing_ok=True)
        silent = _silence(audio, track.stems.values())
        if silent:  # before the mixture and its source, which mark the folder as done
            write_text_atomic(folder / SILENT_FILE, silent)
        write_audio(mixture, audio, rate, subtype="FLOAT", clip="none", force=True)
        write_json_atomic(folder / SOURCE_FILE, source)
    for link in folder.glob("*.wav"):  # another teacher's stems (a --force run's)
        if link.is_symlink() and link.stem not in track.stems:
            link.unlink()
    for name, stem in track.stems.items():
        link = folder / f"{name}.wav"
        if link.exists() and not link.is_symlink():
            raise foreign_refusal(folder.parents[2], [link])
        link.unlink(missing_ok=True)
        os.symlink(stem, link)
    try:
        silent = (folder / SILENT_FILE).read_text() or "it is silent"
    except FileNotFoundError:
        silent = None
    return first.nb_frames / first.sample_rate, silent


def file_signature(path: Path) -> list[object]:
    """What tells that a file changed: its path, size and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return [str(path)]  # reading it names the problem
    return [str(path), stat.st_size, stat.st_mtime_ns]


def read_json(path: Path) -> object:
    """A JSON file umx wrote, or None where it is missing or does not read."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def _silence(mixture: torch.Tensor, stems: Iterable[Path]) -> str | None:
    """Why a song is silent: its `mixture`, or every one of the teacher's `stems`, peaks at
    `SILENCE` or below; None where it is not."""
    if not mixture.numel() or float(mixture.abs().max()) <= SILENCE:
        return "it is silent"
    if all(float(read_audio(stem)[0].abs().max()) <= SILENCE for stem in stems):
        return "the teacher's stems of it are all silent"
    return None
