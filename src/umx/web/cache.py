"""The cache limit of `umx serve` (`--max-cache-gb`): while the jobs take more than the limit,
the downloads made from their stems (flac and mp3 copies, zip files, mixes, the original mix
decoded) are removed first, least recently used first, as they are made again when asked for;
then the finished jobs least recently ended or downloaded. A file being sent is never removed,
nor the job it belongs to, nor a job a download was asked of in the last `ASKED_S` seconds
(it may still be checking its stems). Downloads being sent may keep the jobs over the limit
until they are sent; they do not make the limit remove other jobs."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from umx.audio import display_path
from umx.jobs import DELETED, DONE, FAILED
from umx.web.listeners import Listeners
from umx.web.records import DOWNLOADS, Job
from umx.web.storage import folder_size, remove

logger = logging.getLogger("umx")

ASKED_S = 60.0
"""Seconds after a download of a job is asked for during which the cache limit keeps the job."""


class CacheLimit:
    """The cache limit of `umx.web.jobs.JobStore`, which provides what it uses: its `jobs_dir`,
    `max_cache_bytes`, `_lock`, `_jobs`, `_used` (when a download of each job was last asked for),
    `_held` (the files being sent, see `_hold`), `_over_limit` (whether the jobs were left
    over the limit), `_listeners`, `_record` (records a change) and `_gone` (a deleted job's
    record)."""

    jobs_dir: Path
    max_cache_bytes: int
    _lock: threading.RLock
    _jobs: dict[str, Job]
    _used: dict[str, float]
    _held: collections.Counter[Path]
    _over_limit: bool
    _listeners: Listeners
    _record: Callable[[str, dict[str, Any]], None]
    _gone: Callable[[str], dict[str, Any]]

    def _hold(self, path: Path) -> Path:
        """Keep `path`, and the job it belongs to, from the cache limit until `release`."""
        with self._lock:
            self._held[path] += 1
        return path

    def release(self, path: Path) -> None:
        """A file of `_hold` is sent (or its client left): the cache limit may remove it."""
        with self._lock:
            self._held[path] -= 1
            if self._held[path] <= 0:
                del self._held[path]
            over = self._over_limit
        if over:  # it may be what kept the jobs over the limit
            self._evict()

    def _made(self, target: Path, make: Callable[[], None], again: bool = False) -> Path:
        """A download made from a job's stems, held (see `_hold`): made by `make` unless it is
        there already (then marked used now), or `again`; then the cache limit is kept.

        Raises:
            whatever `make` raises (it is released then).
        """
        self._hold(target)
        try:
            if again or not target.exists():
                target.parent.mkdir(exist_ok=True)
                make()
            else:
                os.utime(target)  # used now: its time orders the removals
        except BaseException:
            self.release(target)
            raise
        self._evict()
        return target

    def _evict(self) -> None:
        """Keep the jobs within `max_cache_bytes` (but for the downloads being sent): remove the
        downloads made from their stems, least recently used first, then the finished jobs
        least recently ended or downloaded; never a file being sent nor its job, nor the newest
        job, nor one a download was asked of in the last `ASKED_S` seconds."""
        with self._lock:
            sizes = {job_id: folder_size(self.jobs_dir / job_id) for job_id in self._jobs}
            total = sum(sizes.values())
            made = self._made_files() if total > self.max_cache_bytes else []
            sending = sum(size for path, size in made if path in self._held)
            for path, size in made:
                if total - sending <= self.max_cache_bytes:
                    break
                if path not in self._held:
                    path.unlink(missing_ok=True)
                    total -= size
                    sizes[path.parent.parent.name] -= size  # jobs/<id>/<folder>/<file>
            now = time.time()
            busy = {path.parent.parent.name for path in self._held} | {
                job_id for job_id, used in self._used.items() if now - used < ASKED_S
            }
            ended = [job for job in self._jobs.values() if job.state in (DONE, FAILED)]
            newest = max(ended, key=lambda job: job.finished or job.created, default=None)
            ended.sort(key=lambda job: max(job.finished or job.created, self._used.get(job.id, 0)))
            gone = []
            for job in ended:
                if total - sending <= self.max_cache_bytes:
                    break
                if job is newest or job.id in busy:
                    continue
                total -= sizes[job.id]
                del self._jobs[job.id]
                self._used.pop(job.id, None)
                remove(self.jobs_dir / job.id)
                self._record(job.id, {"input": job.id, "status": DELETED})
                gone.append((job, self._gone(job.id)))
            self._over_limit = total > self.max_cache_bytes  # held files keep it over
        for job, record in gone:
            logger.info("%s: removed to keep the cache under its limit", display_path(job.name))
            self._listeners.tell(record)

    def _made_files(self) -> list[tuple[Path, int]]:
        """The downloads made from the jobs' stems, with their sizes, least recently used
        first (by their modification time, which `_made` sets when one is used again)."""
        found = []
        for job_id in self._jobs:
            for path in (self.jobs_dir / job_id / DOWNLOADS).glob("[!.]*"):
                with contextlib.suppress(OSError):  # removed meanwhile
                    stat = path.stat()
                    found.append((stat.st_mtime, path, stat.st_size))
        return [(path, size) for _, path, size in sorted(found)]
