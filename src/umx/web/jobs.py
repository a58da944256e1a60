"""The job store of `umx serve`: jobs and their stems on disk, a bounded queue, worker threads
that separate with `umx.jobs.run_task`, and listeners (uploads are `umx.web.uploads`, downloads
`umx.web.downloads`, the cache limit `umx.web.cache`, the records `umx.web.records`).

Layout of the data directory::

    jobs.jsonl                 the manifest (`umx.jobs.Manifest`): a record of each job's
                               every change (name, options, state, error, stems, times)
    uploads/.<random>.part     an upload being received (removed on failure and at start)
    jobs/<id>/input            the uploaded file, exactly as received
    jobs/<id>/stems/<stem>.wav the stems, 32-bit float, at the input's rate and channels
    jobs/<id>/downloads/       flac and mp3 stems, zip files, the original mix decoded
                               (mixture.wav) and the mixes of chosen stems, made when asked for

A job's id is the start of the SHA-256 of the input's SHA-256 and the separation options, so
the same song with the same options is never separated twice, and the id is the only name used
on disk: a file's own name is kept in its record for display, never used as a path. Every file
is written under a hidden name and renamed into place (a job folder, its stems folder, each
download), so a crash leaves only hidden leftovers, removed at the next start.

At start the manifest is replayed: the latest record of each job is its state, queued and
running jobs are queued again, and a job whose folder is gone is forgotten. Nothing is written
until the workers start or a job changes: then the manifest is repaired if it is damaged (as
`umx batch` repairs its own), the `job.json` files of an older umx serve are taken into it and
removed, and it is compacted; it is compacted again whenever superseded records outnumber the
jobs.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from umx.audio import audio_info, display_path
from umx.devices import release_freed_memory
from umx.errors import UmxError, short
from umx.jobs import (
    DELETED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    Manifest,
    TaskOptions,
    loaded_separator,
    run_task,
)
from umx.messages import plural
from umx.model_hash import folder_state
from umx.options import OutputOptions, SeparationOptions
from umx.separator import OVERLAP, SEGMENT, check_options
from umx.web.cache import CacheLimit
from umx.web.downloads import Downloads
from umx.web.listeners import Listener, Listeners
from umx.web.models import job_separator, model_identity, model_targets
from umx.web.records import (
    ALL_STEMS,
    DOWNLOADS,
    INPUT,
    JOB_ID,
    MANIFEST,
    STEM_EXT,
    STEMS,
    Busy,
    Job,
    NotFound,
    Recorder,
    error_summary,
    job_key,
    replay,
    rest_name,
    stem_modes,
)
from umx.web.storage import as_named, check_data_dir, lock_data_dir, remove
from umx.web.uploads import Upload

logger = logging.getLogger("umx")

PROGRESS_STEP = 0.01
"""Progress is reported to listeners when it grew by this fraction of the song at least."""


class _Cancelled(BaseException):
    """Raised in a running separation whose job was deleted or whose store stops (not an
    `Exception`: `umx.jobs.run_task` lets it through)."""


class JobStore(Recorder, Downloads, CacheLimit):
    """The jobs in a data directory, the queue and the workers that separate them.

    Jobs are separated by `umx.api.separate_file` one at a time per worker; at most `max_queue`
    wait. Listeners (see `subscribe`) are called, from any thread, with each job's public record
    when it changes, and with `{"id": ..., "state": "deleted", "revision": ...}` when it goes.
    Each thread tells its own changes, so records may reach a listener out of order: of two
    records of a job, the one with the larger `revision` is the newer.

    Args:
        root: the data directory (created if needed).
        models: the model names (or directories) uploads may ask for.
        max_queue: the most jobs waiting, uploads being received included; more are refused
            as `Busy`.
        max_cache_bytes: the most bytes the jobs may take, downloads made included; above it,
            those downloads, then the finished jobs, are removed (see `umx.web.cache`).
        device: where the models run.
        segment, overlap: the chunks of the separation (see `Separator.separate`); progress is
            reported after each chunk.

    Raises:
        UmxError: the data directory cannot be created or written to (see
            `umx.web.storage.check_data_dir`), or another store (another `umx serve`) holds
            it; `stop` releases it.
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
        self.manifest_path = self.root / MANIFEST
        check_data_dir(self.root, (self.jobs_dir, self.uploads_dir))
        self._data_lock = lock_data_dir(self.root)
        self._lock = threading.RLock()
        self._ready = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._pending: collections.deque[str] = collections.deque()
        self._cancelled: set[str] = set()
        self._arriving: set[Upload] = set()  # uploads being received, see `check_room`
        self._used: dict[str, float] = {}  # when a download of each job was last asked for
        self._held: collections.Counter[Path] = collections.Counter()  # see `_hold`
        self._over_limit = False  # see `_evict`
        self._outputs: dict[str, Mapping[str, Any]] = {}  # each done job's stems, as recorded
        self._hashed: dict[Path, tuple[int, int]] = {}  # see `stem_damage`
        self._listeners = Listeners()
        self._revisions = itertools.count(1)  # see `_public`
        self._targets: dict[str, tuple[Any, list[str]]] = {}  # with the folder's state
        self._manifest: Manifest | None = None  # opened to write (see `_append`)
        self._unrecorded: list[dict[str, Any]] = []  # see `Replay`
        self._legacy: list[Path] = []
        self._workers: list[threading.Thread] = []
        self._stopping = False
        try:
            self._load()
        except BaseException:
            self._data_lock.close()
            raise

    # --- the store ---------------------------------------------------------------------------

    def _load(self) -> None:
        """Replay the data directory (see `umx.web.records.replay`), remove hidden leftovers and
        the folders of deleted jobs, queue again the unfinished jobs (removing what an
        interrupted run of them left: stems not yet recorded, downloads), and the done jobs
        whose stems are not as recorded (`_redo`: only sizes and times are compared here)."""
        for leftover in self.uploads_dir.iterdir():
            remove(leftover)
        for directory in self.jobs_dir.glob(".*"):
            shutil.rmtree(directory, ignore_errors=True)
        found = replay(self.manifest_path, self.jobs_dir)
        for directory in found.deleted:  # the server stopped before it removed them
            remove(directory)
        self._unrecorded, self._legacy = found.unrecorded, found.legacy
        self._outputs = {**found.outputs}
        unfinished = 0
        for job in sorted(found.jobs.values(), key=lambda job: job.created):
            directory = self.jobs_dir / job.id
            for part in [*directory.glob(".*"), *(directory / DOWNLOADS).glob(".*")]:
                remove(part)
            self._jobs[job.id] = job
            if job.state in (QUEUED, RUNNING):
                job.state, job.progress, unfinished = QUEUED, 0.0, unfinished + 1
                for stale in (STEMS, DOWNLOADS):
                    remove(directory / stale)
                self._pending.append(job.id)
            elif (damage := self._damage(job)) is not None:
                self._redo(job, damage)
                self._unrecorded.append(job.record())
        if unfinished:
            logger.info("%s queued again", plural(unfinished, "unfinished job"))

    def _redo(self, job: Job, damage: str) -> None:
        """A done job whose stems are not those separated (`damage` says how): its stems and
        downloads removed, queued again from its input, or failed if the input is gone too.
        Call with the lock held (or before the workers start); the caller records the job."""
        directory = self.jobs_dir / job.id
        for stale in (STEMS, DOWNLOADS):
            remove(directory / stale)
        self._outputs.pop(job.id, None)
        job.progress, job.finished, job.seconds, job.targets = 0.0, None, None, []
        if (directory / INPUT).is_file():
            job.state = QUEUED
            self._pending.append(job.id)
            logger.warning("%s: %s; separating it again", display_path(job.name), damage)
        else:
            job.state, job.finished = FAILED, time.time()
            job.error = f"{job.name} was damaged on disk ({damage}) and its upload is gone too"
            job.error += "; upload it again"
            logger.warning("%s", display_path(job.error))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job's public record, the newest first."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[list[dict[str, Any]], int]:
        """Every job's public record, the newest first, and a revision above that of every
        record made before (those the records already tell, or tell the end of)."""
        with self._lock:
            ordered = sorted(self._jobs.values(), key=lambda j: -j.created)
            return [self._public(job) for job in ordered], next(self._revisions)

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's public record.

        Raises:
            NotFound: no such job.
        """
        with self._lock:
            return self._public(self._get(job_id))

    def _public(self, job: Job) -> dict[str, Any]:
        """A job's record as the page sees it: the fields of `Job`, its place in the queue
        (`position`, 1 for the next to run; None unless queued), its error's first clause
        (`error_summary`) and `revision`, larger in every record made after this one."""
        with self._lock:
            position = self._pending.index(job.id) + 1 if job.id in self._pending else None
            record = {**asdict(job), "position": position, "revision": next(self._revisions)}
        return {**record, "error_summary": error_summary(job.error) if job.error else None}

    def _gone(self, job_id: str) -> dict[str, Any]:
        """The record of a job that was deleted; call with the lock held."""
        return {"id": job_id, "state": DELETED, "revision": next(self._revisions)}

    def _queue_changed(self) -> None:
        """Tell the listeners the new places of the queued jobs."""
        with self._lock:
            records = [self._public(self._jobs[job_id]) for job_id in self._pending]
        for record in records:
            self._listeners.tell(record)

    def _get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id) if JOB_ID.match(job_id) else None
        if job is None:
            raise NotFound(f"no job {short.repr(job_id)}")
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
        """The targets of one of `models` (see `model_targets`), read once, and again when the
        model's folder changed (`umx.model_hash.folder_state`)."""
        state = folder_state(model)
        with self._lock:
            cached = self._targets.get(model)
            if cached is None or cached[0] != state:
                cached = self._targets[model] = state, model_targets(model)
            return cached[1]

    def check_room(self, upload: Upload | None = None) -> None:
        """Refuse new work while the queue is full: the songs waiting and those still arriving
        (uploads being received, but `upload`) take `max_queue` places.

        Raises:
            Busy: it is.
        """
        with self._lock:
            arriving = len(self._arriving - {upload})
            count = len(self._pending) + arriving
            if count >= self.max_queue:
                waiting = f"{plural(count, 'song')} {'is' if count == 1 else 'are'} waiting"
                raise Busy(
                    f"the server is busy: {waiting}{' or arriving' if arriving else ''}; "
                    "try again when one is done"
                )

    def new_upload(self, name: str, limit: int) -> Upload:
        """A hidden file to receive an upload into, which takes a place in the queue until it
        is discarded (see `check_room`).

        Raises:
            Busy: the queue is full.
        """
        with self._lock:
            self.check_room()
            upload = Upload(self.uploads_dir, name, limit, lambda: self._arrived(upload))
            self._arriving.add(upload)
            return upload

    def _arrived(self, upload: Upload) -> None:
        with self._lock:
            self._arriving.discard(upload)

    def add(self, upload: Upload, options: dict[str, str]) -> tuple[dict[str, Any], bool]:
        """Turn a received upload into a job, or find the job it already is.

        The file must decode as audio (checked by its content, whatever its name). A failed job
        asked for again is queued again. A model folder is loaded here, where it changed since
        it was loaded, for its weights' SHA-256 (see `umx.web.models.model_identity`).

        Args:
            upload: a finished upload; it is moved into the job or removed.
            options: from `options`.

        Returns:
            the job's public record, and whether it is new.

        Raises:
            UmxError: the file is not audio umx reads, or its header says it holds none (named
                by its upload name), or the model folder cannot be loaded.
            Busy: the queue is full.
        """
        try:
            digest = upload.finish()
            identity = model_identity(self._separation(options["model"], options["stems"]))
            job_id = job_key(digest, {**options, **identity})
            with self._lock:
                known = self._jobs.get(job_id)
                if known is not None and known.state != FAILED and not self._damage(known):
                    return self._public(known), False
                if job_id in self._cancelled:
                    raise Busy(f"{upload.name} is being deleted; upload it again in a moment")
            try:  # the header only: the file is decoded as it is separated
                if audio_info(upload.path).nb_frames == 0:
                    raise UmxError(f"{display_path(upload.path)} contains no audio")
            except UmxError as error:
                raise UmxError(as_named(str(error), upload.path, upload.name)) from None
            with self._lock:
                known = self._jobs.get(job_id)  # again: the same song may have come meanwhile
                if known is not None and known.state != FAILED and not self._damage(known):
                    return self._public(known), False
                self.check_room(upload)
                weights = identity.get("model_sha256")
                job = Job(job_id, upload.name, size=upload.size, model_sha256=weights, **options)
                staging = self.jobs_dir / f".{job_id}.{secrets.token_hex(4)}"
                staging.mkdir()
                try:
                    os.replace(upload.path, staging / INPUT)
                    self._append(job.record())  # first: a crash before the folder forgets it
                    if known is not None:  # a failed or damaged job, asked for again
                        remove(self.jobs_dir / job_id)
                    os.replace(staging, self.jobs_dir / job_id)
                except BaseException:
                    remove(staging)
                    raise
                self._jobs[job_id] = job
                self._pending.append(job_id)
                upload.discard()  # its place in the queue is its job's now, at once
                self._ready.notify()
                record = self._public(job)
        finally:
            upload.discard()
        logger.info("%s: queued as %s", display_path(job.name), job_id)
        self._listeners.tell(record)
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
                remove(self.jobs_dir / job_id)
            self._record(job_id, {"input": job_id, "status": DELETED})
            record = self._gone(job_id)
        self._listeners.tell(record)
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
        self._listeners.tell(record)
        return record

    # --- listeners ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every change from now on; returns the function that stops it."""
        return self._listeners.add(listener)

    # --- workers -----------------------------------------------------------------------------

    def start(self, nb_workers: int, preload: str | None = None) -> None:
        """Open the manifest (see `_append`), and start the worker threads; the first loads
        `preload` before taking jobs."""
        with self._lock:
            try:
                self._open_manifest()
            except (OSError, UmxError) as error:  # each change will say it cannot be recorded
                reason = getattr(error, "strerror", None) or error
                logger.error("%s: cannot be written: %s", display_path(self.manifest_path), reason)
        self._evict()  # a limit lowered since the last run
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
        queued ones, stays queued on disk for the next start; then close the manifest, and once
        every worker has ended, release the data directory.

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
        with self._lock:  # closed: a later change opens it again
            if self._manifest is not None:
                self._manifest.close()
                self._manifest = None
        if not self._workers:
            self._data_lock.close()
        return not self._workers

    def _work(self, preload: str | None) -> None:
        if preload is not None:
            try:
                loaded_separator(self._separation(preload))
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
            self._listeners.tell(record)
            self._queue_changed()
            self._run(job)
            with self._lock:
                idle = not self._pending
            if idle:  # an idle server holds only what its loaded models need
                release_freed_memory()

    def _separation(self, model: str, stems: str = ALL_STEMS) -> SeparationOptions:
        """How a model separates with a stem mode: every target, or one target and the rest as
        its residual (only that target's model runs), in the store's chunks, on its device.

        Raises:
            UmxError: the options do not go together (see `SeparationOptions`).
        """
        one = {"targets": (stems,), "residual": rest_name(stems)}
        return SeparationOptions(
            model=model,
            segment=self.segment or SEGMENT,
            whole_track=self.segment is None,
            overlap=self.overlap,
            device=str(self.device),
            **({} if stems == ALL_STEMS else one),
        )

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
                self._listeners.tell(self._public(job))

        start = time.perf_counter()
        output = OutputOptions(staging, f"{{target}}.{STEM_EXT}", STEM_EXT, "FLOAT", "none")
        # How the job ended: its state, error and stems, recorded together with the time under
        # the lock, so that a reader never sees a finished state without its time.
        state, message, targets, outputs = RUNNING, None, job.targets, None
        try:
            separation = self._separation(job.model, job.stems)
            options = TaskOptions(separation, output, downmix=True, match_input=True)
            separator = job_separator(separation, job.name, job.model_sha256)
            record = run_task(
                directory / INPUT, options, progress, log_traceback=True, separator=separator
            )
            if record["status"] == DONE:
                os.replace(staging, directory / STEMS)
                state, targets = DONE, list(record["outputs"])
                outputs = {  # where the stems are now (a rename keeps their times)
                    name: {**stem, "path": str(directory / STEMS / Path(stem["path"]).name)}
                    for name, stem in record["outputs"].items()
                }
            else:
                state, message = FAILED, as_named(record["error"], directory / INPUT, job.name)
        except _Cancelled:
            if job.id in self._cancelled:
                logger.info("%s: deleted while separating", display_path(job.name))
        except UmxError as error:  # the stem mode or the weights do not go with the model
            state, message = FAILED, as_named(str(error), directory / INPUT, job.name)
        except Exception as error:  # the server keeps serving whatever one job does
            logger.exception("%s: separation failed", display_path(job.name))
            state, message = FAILED, f"the separation failed unexpectedly: {error}"
        finally:
            remove(staging)
        with self._lock:
            if job.id in self._cancelled:
                self._cancelled.discard(job.id)
                remove(directory)
                return
            if state == RUNNING:  # stopped: its record says running, queued at next start
                return
            job.state, job.targets = state, targets
            self._outputs[job.id] = outputs or {}
            if message is not None:
                job.error = message
            job.seconds, job.finished = time.perf_counter() - start, time.time()
            job.progress = 1.0 if job.state == DONE else job.progress
            self._save(job, outputs)
            record = self._public(job)
        if job.state == DONE:
            logger.info("%s: separated in %.1f s", display_path(job.name), job.seconds)
        else:
            logger.warning("%s: failed: %s", display_path(job.name), job.error)
        self._listeners.tell(record)
        self._evict()
