"""The jobs of `umx serve`: uploads and their stems on disk, a bounded queue and worker threads.

Layout of the data directory::

    uploads/.<random>.part     an upload being received (removed on failure and at start)
    jobs/<id>/job.json         the job's record (name, options, state, error, stems, times)
    jobs/<id>/input            the uploaded file, exactly as received
    jobs/<id>/stems/<stem>.wav the stems, 32-bit float, at the input's rate and channels
    jobs/<id>/downloads/       flac and mp3 stems, zip files, the original mix decoded
                               (mixture.wav) and the mixes of chosen stems, made when asked for

A job's id is the start of the SHA-256 of the input's SHA-256 and the separation options, so
the same song with the same options is never separated twice, and the id is the only name used
on disk: a file's own name is kept in `job.json` for display, never used as a path. Every file is
written under a hidden name and renamed into place (a job folder, its stems folder, each
download), so a crash leaves only hidden leftovers, removed at the next start; queued and running
jobs found at start are queued again.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import torch

from umx.api import separate_file
from umx.audio import (
    AudioWriter,
    audio_formats,
    audio_info,
    display_path,
    read_audio,
    write_audio,
)
from umx.devices import release_freed_memory
from umx.errors import UmxError, check_number
from umx.modeldir import directory_files, write_atomic, write_json_atomic
from umx.separator import OVERLAP, SEGMENT, Separator, check_options
from umx.zoo import MODELS, load_separator

logger = logging.getLogger("umx")

QUEUED, RUNNING, DONE, FAILED, DELETED = "queued", "running", "done", "failed", "deleted"
ID_DIGITS = 32
JOB_ID = re.compile(rf"^[0-9a-f]{{{ID_DIGITS}}}$")
ALL_STEMS = "all"
"""The stem mode of every target of the model; the other modes are one target and the rest."""
ACCOMPANIMENT = "accompaniment"
"""The rest of the mix beside the vocals (beside any other target `t` it is `no_t`)."""
ORIGINAL = "mixture"
"""The original mix, decoded as the stems are stored: a track of the player and of mixes."""
MAX_MIX_GAIN = 2.0
"""The largest gain of a stem in a mix (the page's volume sliders end below it)."""
SUMMARY_MIN, SUMMARY_MAX = 24, 160
"""An error's summary ends at its first `: ` or ` (` past SUMMARY_MIN characters, and is cut
at SUMMARY_MAX: the page shows it in one line, the whole message on request."""
INPUT, RECORD, STEMS, DOWNLOADS = "input", "job.json", "stems", "downloads"
STEM_EXT = "wav"
MAX_NAME = 200
"""The longest file name kept for display, in characters."""
MAX_LOADED_MODELS = 2
"""Separators kept loaded between jobs (the least recently used is dropped)."""
PROGRESS_STEP = 0.01
"""Progress is reported to listeners when it grew by this fraction of the song at least."""
PROBE_BYTES = 1 << 16
"""Bytes written (and removed) at start to check that the data directory takes files."""
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_FILE_CHARS = re.compile(r"[^\w.-]+")


class Busy(UmxError):
    """The queue is full: the upload is refused until a job finishes."""


class NotFound(UmxError):
    """No such job, stem or format."""


class TooLarge(UmxError):
    """An upload over the size limit."""


class _Cancelled(Exception):
    """Raised in a running separation whose job was deleted."""


def display_name(name: str) -> str:
    """A client's file name as shown on the page: its last component, printable, one line, not
    too long, never empty. It is never used as a path."""
    name = re.split(r"[/\\]", name)[-1]
    name = _UNPRINTABLE.sub("", name).strip()[:MAX_NAME]
    return name or "untitled"


def file_stem(name: str) -> str:
    """A display name as a safe file name for downloads (zip folders, attachments): letters,
    digits, `_`, `-` and `.` only, not starting with a dot, without its extension."""
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return _UNSAFE_FILE_CHARS.sub("_", stem).strip("._")[:100] or "song"


def rest_name(target: str) -> str:
    """The name of the rest of the mix beside one target: `accompaniment` beside the vocals,
    `no_<target>` beside any other (as `umx --two-stems` names it)."""
    return ACCOMPANIMENT if target == "vocals" else f"no_{target}"


def stem_modes(targets: Sequence[str]) -> dict[str, str]:
    """The stem modes of a model with `targets`, each with the words the page shows: every
    target (`ALL_STEMS`), or, for each target, that target and the rest of the mix (the
    separator's residual: only that target's model runs)."""
    modes = {ALL_STEMS: f"all stems: {', '.join(targets)}" if targets else "all stems"}
    for target in targets:
        modes[target] = f"{target} and the rest ({rest_name(target)})"
    return modes


def model_targets(model: str) -> list[str]:
    """The targets of a named model or a model directory, without loading it (none where the
    directory cannot be read: its jobs then fail with the loader's sentence)."""
    if model in MODELS:
        return list(MODELS[model].targets)
    try:
        return list(directory_files(Path(model), None).weights)
    except UmxError:
        return []


def error_summary(message: str) -> str:
    """The first clause of an error message, for a one-line display (see `SUMMARY_MIN`)."""
    match = re.compile(r": | \(").search(message, SUMMARY_MIN)
    summary = message[: match.start()] if match else message
    return summary if len(summary) <= SUMMARY_MAX else summary[: SUMMARY_MAX - 1] + "…"


def job_key(input_sha256: str, options: dict[str, str]) -> str:
    """A job's id: the input's content hash and the separation options, hashed together."""
    text = json.dumps({"input": input_sha256, **options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_DIGITS]


@dataclass
class Job:
    """One song and its separation options, as recorded in `job.json` and shown on the page.

    Attributes:
        id: see `job_key`.
        name: the uploaded file's name, for display only.
        model: the model's name (or directory) separating it.
        stems: `ALL_STEMS` or one target (that target and the rest, see `stem_modes`).
        size: the input's size in bytes.
        state: `QUEUED`, `RUNNING`, `DONE` or `FAILED`.
        created: when it was uploaded (seconds since the epoch); finished: when it ended.
        progress: the fraction separated, 0 to 1.
        duration: the song's length in seconds, once known.
        seconds: the time the separation took.
        targets: the stems' names, once done.
        error: why it failed, in one sentence.
    """

    id: str
    name: str
    model: str
    stems: str
    size: int
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    finished: float | None = None
    progress: float = 0.0
    duration: float | None = None
    seconds: float | None = None
    targets: list[str] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def read(cls, path: Path) -> Job:
        """The job recorded in `path`.

        Raises:
            ValueError: the file is not a job record of this version.
        """
        data = json.loads(path.read_text())
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError("not a job record")
        job = cls(**data)
        if not JOB_ID.match(str(job.id)) or job.state not in (QUEUED, RUNNING, DONE, FAILED):
            raise ValueError("not a job record")
        return job


class Upload:
    """An input being received: written to a hidden file under `uploads/` as it arrives, hashed
    and counted, and refused as soon as it passes the size limit.

    Args:
        directory: where the file goes.
        name: the client's name for it (display only).
        limit: the most bytes accepted.
    """

    def __init__(self, directory: Path, name: str, limit: int) -> None:
        self.name, self.limit = name, limit
        self.path = directory / f".{secrets.token_hex(8)}.part"
        self.size = 0
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = open(self.path, "xb")  # noqa: SIM115 (closed by finish)

    def write(self, data: bytes) -> None:
        """Append a piece of the body.

        Raises:
            TooLarge: the upload passed the limit; the file is removed.
        """
        self.size += len(data)
        if self.size > self.limit:
            self.discard()
            raise too_large(self.name, self.limit)
        assert self._file is not None
        self._file.write(data)
        self._hash.update(data)

    def finish(self) -> str:
        """Close the file, on disk for good; returns the content's SHA-256."""
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Close and remove the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)


def too_large(name: str, limit: int) -> TooLarge:
    return TooLarge(
        f"{name} is larger than the upload limit of {limit / 2**20:g} MB "
        "(umx serve --max-upload-mb)"
    )


class JobStore:
    """The jobs in a data directory, the queue and the workers that separate them.

    Jobs are separated by `umx.api.separate_file` one at a time per worker; at most `max_queue`
    wait. Listeners (see `subscribe`) are called, from any thread, with each job's public record
    when it changes, and with `{"id": ..., "state": "deleted"}` when it goes.

    Args:
        root: the data directory (created if needed).
        models: the model names (or directories) uploads may ask for.
        max_queue: the most jobs waiting; more are refused as `Busy`.
        max_cache_bytes: the most bytes the jobs may take; above it, the oldest finished jobs are
            removed (never the newest one).
        device: where the models run.
        segment, overlap: the chunks of the separation (see `Separator.separate`); progress is
            reported after each chunk.

    Raises:
        UmxError: the data directory cannot be created or written to (see `_check_data_dir`).
    """

    def __init__(
        self,
        root: Path,
        *,
        models: Sequence[str],
        max_queue: int,
        max_cache_bytes: int,
        device: str | torch.device = "cpu",
        segment: float | None = SEGMENT,
        overlap: float = OVERLAP,
    ) -> None:
        check_options(segment=segment, overlap=overlap)
        self.segment, self.overlap = segment, overlap
        self.root, self.models, self.device = Path(root), list(models), device
        self.max_queue, self.max_cache_bytes = max_queue, max_cache_bytes
        self.jobs_dir, self.uploads_dir = self.root / "jobs", self.root / "uploads"
        _check_data_dir(self.root, (self.jobs_dir, self.uploads_dir))
        self._lock = threading.RLock()
        self._ready = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._pending: collections.deque[str] = collections.deque()
        self._cancelled: set[str] = set()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._separators: collections.OrderedDict[tuple[str, str], Separator] = (
            collections.OrderedDict()
        )
        self._targets: dict[str, list[str]] = {}
        self._models_lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._stopping = False
        self._load()

    # --- the store ---------------------------------------------------------------------------

    def _load(self) -> None:
        """Read the jobs on disk, remove hidden leftovers, queue again the unfinished jobs (and
        remove what an interrupted run of them left: stems not yet recorded, downloads)."""
        for leftover in self.uploads_dir.iterdir():
            _remove(leftover)
        jobs = []
        for directory in self.jobs_dir.iterdir():
            if directory.name.startswith("."):
                shutil.rmtree(directory, ignore_errors=True)
                continue
            try:
                job = Job.read(directory / RECORD)
                if job.id != directory.name:
                    raise ValueError("a job record of another folder")
            except (OSError, ValueError, TypeError) as error:
                logger.warning("%s is not a job (%s); left alone", display_path(directory), error)
                continue
            for part in [*directory.glob(".*"), *(directory / DOWNLOADS).glob(".*")]:
                _remove(part)
            jobs.append(job)
        for job in sorted(jobs, key=lambda job: job.created):
            self._jobs[job.id] = job
            if job.state in (QUEUED, RUNNING):
                job.state, job.progress = QUEUED, 0.0
                for stale in (STEMS, DOWNLOADS):
                    _remove(self.jobs_dir / job.id / stale)
                self._pending.append(job.id)
        if self._pending:
            logger.info("%d unfinished jobs queued again", len(self._pending))

    def _save(self, job: Job) -> None:
        write_json_atomic(self.jobs_dir / job.id / RECORD, asdict(job))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job's public record, the newest first."""
        with self._lock:
            ordered = sorted(self._jobs.values(), key=lambda j: -j.created)
            return [self._public(job) for job in ordered]

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's public record.

        Raises:
            NotFound: no such job.
        """
        with self._lock:
            return self._public(self._get(job_id))

    def _public(self, job: Job) -> dict[str, Any]:
        """A job's record as the page sees it: `job.json`'s fields, its place in the queue
        (`position`, 1 for the next to run; None unless queued) and its error's first clause
        (`error_summary`)."""
        with self._lock:
            position = self._pending.index(job.id) + 1 if job.id in self._pending else None
        summary = error_summary(job.error) if job.error else None
        return {**asdict(job), "position": position, "error_summary": summary}

    def _queue_changed(self) -> None:
        """Tell the listeners the new places of the queued jobs."""
        with self._lock:
            records = [self._public(self._jobs[job_id]) for job_id in self._pending]
        for record in records:
            self._notify(record)

    def _get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id) if JOB_ID.match(job_id) else None
        if job is None:
            raise NotFound(f"no job {job_id[:ID_DIGITS]!r}")
        return job

    def options(self, model: str, stems: str) -> dict[str, str]:
        """The separation options an upload asks for, checked.

        Raises:
            UmxError: an unknown model or stem mode (see `stem_modes`).
        """
        if model not in self.models:
            raise UmxError(f"unknown model {model[:64]!r}; the models are {', '.join(self.models)}")
        modes = list(stem_modes(self.targets(model)))
        if stems not in modes:
            choices = ", ".join(modes[:-1]) + f" or {modes[-1]}" if len(modes) > 1 else modes[0]
            raise UmxError(f"unknown stems {stems[:64]!r} for {model}; choose {choices}")
        return {"model": model, "stems": stems}

    def targets(self, model: str) -> list[str]:
        """The targets of one of `models` (see `model_targets`), read once."""
        with self._lock:
            if model not in self._targets:
                self._targets[model] = model_targets(model)
            return self._targets[model]

    def check_room(self) -> None:
        """Refuse new work while the queue is full.

        Raises:
            Busy: it is.
        """
        with self._lock:
            if len(self._pending) >= self.max_queue:
                raise Busy(
                    f"the server is busy: {len(self._pending)} songs are waiting; "
                    "try again when one is done"
                )

    def new_upload(self, name: str, limit: int) -> Upload:
        """A hidden file to receive an upload into."""
        return Upload(self.uploads_dir, name, limit)

    def add(self, upload: Upload, options: dict[str, str]) -> tuple[dict[str, Any], bool]:
        """Turn a received upload into a job, or find the job it already is.

        The file must decode as audio (checked by its content, whatever its name). A failed job
        asked for again is queued again.

        Args:
            upload: a finished upload; it is moved into the job or removed.
            options: from `options`.

        Returns:
            the job's public record, and whether it is new.

        Raises:
            UmxError: the file is not audio umx reads (named by its upload name).
            Busy: the queue is full.
        """
        try:
            job_id = job_key(upload.finish(), options)
            with self._lock:
                known = self._jobs.get(job_id)
                if known is not None and known.state != FAILED:
                    return self._public(known), False
                if job_id in self._cancelled:
                    raise Busy(f"{upload.name} is being deleted; upload it again in a moment")
            try:
                audio_info(upload.path)
            except UmxError as error:
                raise UmxError(_rename(str(error), upload.path, upload.name)) from None
            with self._lock:
                known = self._jobs.get(job_id)  # again: the same song may have come meanwhile
                if known is not None and known.state != FAILED:
                    return self._public(known), False
                self.check_room()
                job = Job(id=job_id, name=upload.name, size=upload.size, **options)
                staging = self.jobs_dir / f".{job_id}.{secrets.token_hex(4)}"
                staging.mkdir()
                os.replace(upload.path, staging / INPUT)
                write_json_atomic(staging / RECORD, asdict(job))
                if known is not None:  # a failed job, asked for again
                    _remove(self.jobs_dir / job_id)
                os.replace(staging, self.jobs_dir / job_id)
                self._jobs[job_id] = job
                self._pending.append(job_id)
                self._ready.notify()
                record = self._public(job)
        finally:
            upload.discard()
        logger.info("%s: queued as %s", display_path(job.name), job_id)
        self._notify(record)
        self._evict()
        return record, True

    def delete(self, job_id: str) -> None:
        """Remove a job and its files; a running one is stopped at its next chunk.

        Raises:
            NotFound: no such job.
        """
        with self._lock:
            job = self._get(job_id)
            del self._jobs[job_id]
            if job.state == RUNNING:
                self._cancelled.add(job_id)  # the worker removes the folder
            else:
                if job.state == QUEUED:
                    self._pending.remove(job_id)
                _remove(self.jobs_dir / job_id)
        self._notify({"id": job_id, "state": DELETED})
        if job.state == QUEUED:
            self._queue_changed()

    def retry(self, job_id: str) -> dict[str, Any]:
        """Queue a failed job again, from its stored input (after `umx download`, say).

        Returns:
            its public record.

        Raises:
            NotFound: no such job.
            UmxError: it has not failed.
            Busy: the queue is full.
        """
        with self._lock:
            job = self._get(job_id)
            if job.state != FAILED:
                raise UmxError(f"{job.name} has not failed (it is {job.state}): nothing to retry")
            self.check_room()
            job.state, job.error, job.progress = QUEUED, None, 0.0
            job.finished = job.seconds = None
            self._save(job)
            self._pending.append(job_id)
            self._ready.notify()
            record = self._public(job)
        logger.info("%s: queued again", display_path(job.name))
        self._notify(record)
        return record

    # --- downloads ---------------------------------------------------------------------------

    def stem_file(self, job_id: str, stem: str, ext: str) -> tuple[Path, str]:
        """A finished job's stem in a format of `audio_formats`, converted when first asked for.

        wav is the stored 32-bit float file, exactly as separated; flac and mp3 are written by
        `umx.audio.AudioWriter` with its defaults (as `umx song.mp3 --ext flac` writes them).

        Returns:
            the file, and the name to download it as (`<song>-<stem>.<ext>`).

        Raises:
            NotFound: no such finished job, stem or format.
        """
        with self._lock:
            job = self._get(job_id)
            if job.state != DONE or stem not in job.targets or ext not in audio_formats():
                raise NotFound(f"no stem {stem[:64]!r} in {ext[:8]!r} for job {job_id}")
            directory = self.jobs_dir / job_id
        source = self._stem_path(job, stem)
        name = f"{file_stem(job.name)}-{stem}.{ext}"
        if ext == STEM_EXT:
            return source, name
        target = directory / DOWNLOADS / f"{stem}.{ext}"
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            audio, rate = read_audio(source)
            with AudioWriter(target, rate, audio.shape[0], force=True) as writer:
                writer.write(audio)
            self._evict()
        return target, name

    def zip_file(self, job_id: str, ext: str) -> tuple[Path, str]:
        """All the stems of a finished job in one zip file (stored, not compressed: audio
        hardly compresses), in a folder named after the song.

        Returns:
            the file, and the name to download it as.

        Raises:
            NotFound: no such finished job or format.
        """
        job = self.job(job_id)
        if job["state"] != DONE:
            raise NotFound(f"job {job_id} has no stems: it is {job['state']}")
        files = {stem: self.stem_file(job_id, stem, ext) for stem in job["targets"]}
        folder = file_stem(job["name"])
        target = self.jobs_dir / job_id / DOWNLOADS / f"stems-{ext}.zip"
        if not target.exists():
            target.parent.mkdir(exist_ok=True)

            def write(file: IO[bytes]) -> None:
                with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
                    for stem, (path, _) in files.items():
                        archive.write(path, f"{folder}/{stem}.{ext}")

            write_atomic(target, write)
            self._evict()
        return target, f"{folder}-stems-{ext}.zip"

    def original_file(self, job_id: str) -> tuple[Path, str]:
        """A finished job's input decoded as its stems are stored (32-bit float wav, the same
        rate, channels and length), made when first asked for: the player's original mix.

        Returns:
            the file, and the name to download it as.

        Raises:
            NotFound: no such finished job.
        """
        with self._lock:
            job = self._get(job_id)
            if job.state != DONE:
                raise NotFound(f"job {job_id} has no stems: it is {job.state}")
            directory = self.jobs_dir / job_id
        target = directory / DOWNLOADS / f"{ORIGINAL}.{STEM_EXT}"
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            audio, rate = read_audio(directory / INPUT, downmix=True)
            write_audio(target, audio, rate, subtype="FLOAT", clip="none", force=True)
            self._evict()
        return target, f"{file_stem(job.name)}-{ORIGINAL}.{STEM_EXT}"

    def mix_file(
        self, job_id: str, gains: Mapping[str, str], ext: str
    ) -> tuple[Path, str, str | None]:
        """The sum of a finished job's chosen stems at their gains, in a format of
        `audio_formats`: what the player plays. Louder than full scale, it is rescaled to fit
        (as `umx song.mp3` does) and a notice says so.

        Args:
            job_id: the job.
            gains: stem name (one of the job's targets, or `ORIGINAL`) to its gain, a number
                from 0 to `MAX_MIX_GAIN` as text; stems not named are left out.
            ext: the format.

        Returns:
            the file, the name to download it as, and the notice (None when not rescaled).

        Raises:
            NotFound: no such finished job or format.
            UmxError: an unknown stem, a gain that is not a number in range, or silence.
        """
        with self._lock:
            job = self._get(job_id)
            if job.state != DONE or ext not in audio_formats():
                raise NotFound(f"no mix in {ext[:8]!r} for job {job_id}")
        chosen = {}
        for name, text in gains.items():
            if name not in (*job.targets, ORIGINAL):
                raise UmxError(
                    f"unknown stem {name[:64]!r} in the mix; the stems are "
                    f"{', '.join([*job.targets, ORIGINAL])}"
                )
            try:
                gain = float(text)
            except ValueError:
                gain = text
            check_number(f"the gain of {name}", gain, minimum=0, maximum=MAX_MIX_GAIN)
            if gain > 0:
                chosen[name] = gain
        if not chosen:
            raise UmxError("the mix is silent: give a stem a gain above 0")
        mix, rate = None, None
        for name, gain in chosen.items():
            path = self.original_file(job_id)[0] if name == ORIGINAL else self._stem_path(job, name)
            audio, rate = read_audio(path)
            if mix is not None and mix.shape != audio.shape:
                raise UmxError(f"the stems of {job.name} differ in length; separate it again")
            mix = gain * audio if mix is None else mix + gain * audio
        assert mix is not None and rate is not None
        key = hashlib.sha256(json.dumps(sorted(chosen.items())).encode()).hexdigest()[:16]
        target = self.jobs_dir / job_id / DOWNLOADS / f"mix-{key}.{ext}"
        target.parent.mkdir(exist_ok=True)
        subtype = "FLOAT" if ext == STEM_EXT else None
        report = write_audio(target, mix, rate, subtype=subtype, clip="rescale", force=True)
        self._evict()
        notice = None
        if report.action != "none":
            notice = (
                f"the mix peaked at {report.peak:.2f}, above full scale, so it was rescaled by "
                f"{report.gain:.3f} to fit"
            )
        return target, f"{file_stem(job.name)}-mix.{ext}", notice

    def _stem_path(self, job: Job, stem: str) -> Path:
        return self.jobs_dir / job.id / STEMS / f"{stem}.{STEM_EXT}"

    # --- listeners ---------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call `listener` with every change from now on; returns the function that stops it."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, record: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(record)

    # --- workers -----------------------------------------------------------------------------

    def start(self, nb_workers: int, preload: str | None = None) -> None:
        """Start the worker threads; the first loads `preload` before taking jobs."""
        for index in range(nb_workers):
            worker = threading.Thread(
                target=self._work,
                args=(preload if index == 0 else None,),
                name=f"umx-serve-{index}",
                daemon=True,
            )
            worker.start()
            self._workers.append(worker)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the workers: a running separation ends at its next chunk, and its job, like the
        queued ones, stays queued on disk for the next start.

        Args:
            timeout: the most seconds to wait for the workers, in all; None: until they end.

        Returns:
            whether every worker has ended (one still loading a model or separating a chunk
            may not have).
        """
        with self._lock:
            self._stopping = True
            self._ready.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._workers = [worker for worker in self._workers if worker.is_alive()]
        return not self._workers

    def _work(self, preload: str | None) -> None:
        if preload is not None:
            try:
                self._separator(preload)
            except UmxError as error:
                logger.warning("cannot load %s yet: %s", preload, error)
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    return
                job = self._jobs[self._pending.popleft()]
                job.state = RUNNING
                self._save(job)
                record = self._public(job)
            self._notify(record)
            self._queue_changed()
            self._run(job)
            with self._lock:
                idle = not self._pending
            if idle:  # an idle server holds only what its loaded models need
                release_freed_memory()

    def _separator(self, model: str, stems: str = ALL_STEMS) -> Separator:
        """The loaded separator of a model and stem mode, loading it (and dropping the least
        used) if needed: every target, or one target and the rest as its residual."""
        key = (model, stems)
        with self._models_lock:
            if key in self._separators:
                self._separators.move_to_end(key)
            else:
                while len(self._separators) >= MAX_LOADED_MODELS:
                    self._separators.popitem(last=False)
                one = {"targets": [stems], "residual": rest_name(stems)}
                self._separators[key] = load_separator(
                    model, device=self.device, progress=False, **({} if stems == ALL_STEMS else one)
                )
            return self._separators[key]

    def _run(self, job: Job) -> None:
        """Separate one job into its folder, and record how it ended."""
        directory = self.jobs_dir / job.id
        staging = directory / f".{STEMS}.{secrets.token_hex(4)}"
        reported = [0.0]

        def progress(done: float, total: float) -> None:
            if job.id in self._cancelled or self._stopping:
                raise _Cancelled
            job.duration, job.progress = total, min(done / total, 1.0) if total else 1.0
            if job.progress - reported[0] >= PROGRESS_STEP:
                reported[0] = job.progress
                self._notify(self._public(job))

        start = time.perf_counter()
        try:
            separator = self._separator(job.model, job.stems)
            reports = separate_file(
                directory / INPUT,
                separator,
                outdir=staging,
                filename=f"{{target}}.{STEM_EXT}",
                ext=STEM_EXT,
                subtype="FLOAT",
                clip="none",
                match_input=True,
                downmix=True,
                segment=self.segment,
                overlap=self.overlap,
                on_progress=progress,
            )
            os.replace(staging, directory / STEMS)
            job.targets = [report.path.stem for report in reports]
            job.state = DONE
        except _Cancelled:
            if job.id in self._cancelled:
                logger.info("%s: deleted while separating", display_path(job.name))
        except UmxError as error:
            job.state, job.error = FAILED, _rename(str(error), directory / INPUT, job.name)
        except Exception as error:  # the server keeps serving whatever one job does
            logger.exception("%s: separation failed", display_path(job.name))
            job.state, job.error = FAILED, f"the separation failed unexpectedly: {error}"
        finally:
            _remove(staging)
        with self._lock:
            if job.id in self._cancelled:
                self._cancelled.discard(job.id)
                _remove(directory)
                return
            if job.state == RUNNING:  # stopped: its record says running, queued at next start
                return
            job.seconds, job.finished = time.perf_counter() - start, time.time()
            job.progress = 1.0 if job.state == DONE else job.progress
            self._save(job)
            record = self._public(job)
        if job.state == DONE:
            logger.info("%s: separated in %.1f s", display_path(job.name), job.seconds)
        else:
            logger.warning("%s: failed: %s", display_path(job.name), job.error)
        self._notify(record)
        self._evict()

    # --- the cache limit ---------------------------------------------------------------------

    def _evict(self) -> None:
        """Remove the oldest finished jobs while the jobs take more than `max_cache_bytes`."""
        with self._lock:
            sizes = {job_id: _size(self.jobs_dir / job_id) for job_id in self._jobs}
            total = sum(sizes.values())
            ended = [job for job in self._jobs.values() if job.state in (DONE, FAILED)]
            ended.sort(key=lambda job: job.finished or job.created)
            gone = []
            for job in ended[:-1]:
                if total <= self.max_cache_bytes:
                    break
                total -= sizes[job.id]
                del self._jobs[job.id]
                _remove(self.jobs_dir / job.id)
                gone.append(job)
        for job in gone:
            logger.info("%s: removed to keep the cache under its limit", display_path(job.name))
            self._notify({"id": job.id, "state": DELETED})


def _check_data_dir(root: Path, folders: Sequence[Path]) -> None:
    """Create the data directory's `folders` and make sure files can be written in them.

    Raises:
        UmxError: it cannot be used (a file, not creatable, read-only, full), in one sentence
            that names it.
    """
    where = f"the data directory {display_path(root)}"
    try:
        if root.exists() and not root.is_dir():
            raise UmxError(f"{where} is not a folder; choose another with --data-dir")
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe.{secrets.token_hex(4)}.tmp"
            try:
                with open(probe, "xb") as file:
                    file.write(bytes(PROBE_BYTES))
                    file.flush()
                    os.fsync(file.fileno())
            finally:
                probe.unlink(missing_ok=True)
    except OSError as error:
        raise UmxError(
            f"cannot write in {where}: {error.strerror or error}; choose another with --data-dir"
        ) from None


def _rename(message: str, path: Path, name: str) -> str:
    """An error message about a stored file, naming it as the user knows it."""
    return message.replace(display_path(path), display_path(name))


def _files(directory: Path) -> Iterator[Path]:
    for root, _, names in os.walk(directory):
        for name in names:
            yield Path(root) / name


def _size(directory: Path) -> int:
    """The bytes of the files under `directory` (0 where it is gone)."""
    total = 0
    for path in _files(directory):
        with contextlib.suppress(OSError):  # removed meanwhile
            total += path.lstat().st_size
    return total


def _remove(path: Path) -> None:
    """Remove a file or a folder: first renamed to a hidden name, so that a crash in the middle
    leaves a leftover removed at the next start, never a half job."""
    if path.is_dir() and not path.is_symlink():
        hidden = path.with_name(f".{path.name}.{secrets.token_hex(4)}.gone")
        try:
            os.replace(path, hidden)
        except OSError:
            return
        shutil.rmtree(hidden, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
