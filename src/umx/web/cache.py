"""The cache limit of `umx serve` (`--max-cache-gb`): the finished jobs least recently used are
removed while the jobs take more than the limit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from umx.audio import display_path
from umx.jobs import DELETED, DONE, FAILED
from umx.web.listeners import Listeners
from umx.web.records import Job
from umx.web.storage import folder_size, remove

logger = logging.getLogger("umx")


class CacheLimit:
    """The cache limit of `umx.web.jobs.JobStore`, which provides what it uses: its `jobs_dir`,
    `max_cache_bytes`, `_lock`, `_jobs`, `_used` (when a download of each job was last made),
    `_listeners`, `_record` (records a change) and `_gone` (a deleted job's record)."""

    jobs_dir: Path
    max_cache_bytes: int
    _lock: threading.RLock
    _jobs: dict[str, Job]
    _used: dict[str, float]
    _listeners: Listeners
    _record: Callable[[str, dict[str, Any]], None]
    _gone: Callable[[str], dict[str, Any]]

    def _evict(self, keep: str | None = None) -> None:
        """Remove the finished jobs least recently ended or downloaded while the jobs take more
        than `max_cache_bytes`; never the newest, nor `keep`: the job whose download was just
        made, to be sent."""
        with self._lock:
            if keep is not None:
                self._used[keep] = time.time()
            sizes = {job_id: folder_size(self.jobs_dir / job_id) for job_id in self._jobs}
            total = sum(sizes.values())
            ended = [job for job in self._jobs.values() if job.state in (DONE, FAILED)]
            newest = max(ended, key=lambda job: job.finished or job.created, default=None)
            ended.sort(key=lambda job: max(job.finished or job.created, self._used.get(job.id, 0)))
            gone = []
            for job in [job for job in ended if job is not newest and job.id != keep]:
                if total <= self.max_cache_bytes:
                    break
                total -= sizes[job.id]
                del self._jobs[job.id]
                self._used.pop(job.id, None)
                remove(self.jobs_dir / job.id)
                self._record(job.id, {"input": job.id, "status": DELETED})
                gone.append((job, self._gone(job.id)))
        for job, record in gone:
            logger.info("%s: removed to keep the cache under its limit", display_path(job.name))
            self._listeners.tell(record)
