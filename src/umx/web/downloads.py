"""The downloads of a finished `umx serve` job, made when first asked for: its stems in other
formats, all of them in a zip file, the original mix decoded, and mixes of chosen stems."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np
import torch

from umx.audio import AudioWriter, audio_formats, read_audio, write_audio
from umx.errors import UmxError, check_number
from umx.files import safe_stem, write_atomic
from umx.jobs import DONE, FAILED, QUEUED, RUNNING
from umx.web.listeners import Listeners
from umx.web.records import (
    DOWNLOADS,
    INPUT,
    ORIGINAL,
    STEM_EXT,
    STEMS,
    Job,
    NotFound,
    NotReady,
)
from umx.web.storage import stem_damage

MAX_MIX_GAIN = 2.0
"""The largest gain of a stem in a mix (the page's volume sliders end below it)."""
SILENCE = float(np.finfo(np.float32).tiny)
"""A mix whose peak is below this (the smallest normal 32-bit float) is refused as silent."""


class Downloads:
    """The download methods of `umx.web.jobs.JobStore`, which provides what they use: its
    `jobs_dir`, `_lock`, `_ready` (wakes the workers), `_listeners`, `_jobs`, the stems of
    the done jobs as recorded (`_outputs`) and as last hashed (`_hashed`, see `stem_damage`),
    `job` and `_public` (a public record), `_get` (a `Job`, or `NotFound`), `_save` (records a
    job), `_redo` (queues a damaged job again), `_used` (when a download of each job was last
    asked for), and the cache limit's `_hold`, `release` and `_made` (see
    `umx.web.cache.CacheLimit`): every file returned is held until the caller releases it.

    A download is made only from stems that are those separated: each is hashed the first
    time it is used (and again whenever its size or time changes); a damaged job is queued
    again and its download refused (`_damaged`).
    """

    jobs_dir: Path
    _lock: threading.RLock
    _ready: threading.Condition
    _listeners: Listeners
    _jobs: dict[str, Job]
    _outputs: dict[str, Mapping[str, Any]]
    _hashed: dict[Path, tuple[int, int]]
    job: Callable[[str], dict[str, Any]]
    _public: Callable[[Job], dict[str, Any]]
    _get: Callable[[str], Job]
    _save: Callable[[Job], None]
    _redo: Callable[[Job, str], None]
    _used: dict[str, float]
    _hold: Callable[[Path], Path]
    release: Callable[[Path], None]
    _made: Callable[..., Path]

    def stem_file(self, job_id: str, stem: str, ext: str) -> tuple[Path, str]:
        """A finished job's stem in a format of `audio_formats`, converted when first asked for.

        wav is the stored 32-bit float file, exactly as separated; flac and mp3 are written by
        `umx.audio.AudioWriter` with its defaults (as `umx song.mp3 --ext flac` writes them).

        Returns:
            the file (held: `release` it once sent), and the name to download it as
            (`<song>-<stem>.<ext>`).

        Raises:
            NotFound: no such finished job, stem or format.
            NotReady: it is not done yet, or its stems were damaged: it is being separated
                again (see `_damaged`).
        """
        job, directory = self._finished(job_id), self.jobs_dir / job_id
        if stem not in job.targets or ext not in audio_formats():
            raise NotFound(f"no stem {stem[:64]!r} in {ext[:8]!r} for job {job_id}")
        self._check_stems(job)
        source = self._stem_path(job, stem)
        name = f"{safe_stem(job.name)}-{stem}.{ext}"
        if ext == STEM_EXT:
            return self._hold(source), name

        def make() -> None:
            audio, rate = read_audio(source)
            with AudioWriter(target, rate, audio.shape[0], force=True) as writer:
                writer.write(audio)

        target = directory / DOWNLOADS / f"{stem}.{ext}"
        return self._made(target, make), name

    def zip_file(self, job_id: str, ext: str) -> tuple[Path, str]:
        """All the stems of a finished job in one zip file (stored, not compressed: audio
        hardly compresses), in a folder named after the song.

        Returns:
            the file (held: `release` it once sent), and the name to download it as.

        Raises:
            NotFound: no such finished job or format.
            NotReady: it is not done yet, or its stems were damaged: it is being separated
                again (see `_damaged`).
        """
        job = self._finished(job_id)
        folder = safe_stem(job.name)
        target = self.jobs_dir / job_id / DOWNLOADS / f"stems-{ext}.zip"

        def write(file: IO[bytes]) -> None:
            files = {}
            try:  # each stem held while it is read
                for stem in job.targets:
                    files[stem] = self.stem_file(job_id, stem, ext)[0]
                with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
                    for stem, path in files.items():
                        archive.write(path, f"{folder}/{stem}.{ext}")
            finally:
                for path in files.values():
                    self.release(path)

        self._check_stems(job)
        return self._made(target, lambda: write_atomic(target, write)), f"{folder}-stems-{ext}.zip"

    def original_file(self, job_id: str) -> tuple[Path, str]:
        """A finished job's input decoded as its stems are stored (32-bit float wav, the same
        rate, channels and length), made when first asked for: the player's original mix.

        Returns:
            the file (held: `release` it once sent), and the name to download it as.

        Raises:
            NotFound: no such finished job.
            NotReady: it is not done yet.
        """
        job, directory = self._finished(job_id), self.jobs_dir / job_id
        target = directory / DOWNLOADS / f"{ORIGINAL}.{STEM_EXT}"

        def make() -> None:
            audio, rate = read_audio(directory / INPUT, downmix=True)
            write_audio(target, audio, rate, subtype="FLOAT", clip="none", force=True)

        return self._made(target, make), f"{safe_stem(job.name)}-{ORIGINAL}.{STEM_EXT}"

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
            the file (held: `release` it once sent), the name to download it as, and the
            notice (None when not rescaled).

        Raises:
            NotFound: no such finished job or format.
            NotReady: it is not done yet, or its stems were damaged: it is being separated
                again (see `_damaged`).
            UmxError: an unknown stem, a gain that is not a number in range, or silence.
        """
        job = self._finished(job_id)
        if ext not in audio_formats():
            raise NotFound(f"no mix in {ext[:8]!r} for job {job_id}")
        self._check_stems(job)
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
        mix, rate = self._sum(job, chosen)
        if not float(mix.abs().max()) >= SILENCE:  # tiny gains: zeros, or denormal numbers
            raise UmxError(
                "the mix is silent at these gains: raise the gain of a stem that is heard"
            )
        key = hashlib.sha256(json.dumps(sorted(chosen.items())).encode()).hexdigest()[:16]
        target = self.jobs_dir / job_id / DOWNLOADS / f"mix-{key}.{ext}"
        reports = []

        def make() -> None:
            subtype = "FLOAT" if ext == STEM_EXT else None
            reports.append(
                write_audio(target, mix, rate, subtype=subtype, clip="rescale", force=True)
            )

        self._made(target, make, again=True)
        notice = None
        if reports[0].action == "rescaled":
            notice = (
                f"the mix peaked at {reports[0].peak:.2f}, above full scale, so it was rescaled "
                f"by {reports[0].gain:.3f} to fit"
            )
        return target, f"{safe_stem(job.name)}-mix.{ext}", notice

    def _sum(self, job: Job, gains: Mapping[str, float]) -> tuple[torch.Tensor, int]:
        """The sum of a job's stems (or `ORIGINAL`) at their `gains`, and its rate; each file
        held while it is read (see `_hold`).

        Raises:
            UmxError: the stems differ in length.
        """
        mix, rate = None, None
        for name, gain in gains.items():
            if name == ORIGINAL:
                path = self.original_file(job.id)[0]
            else:
                path = self._hold(self._stem_path(job, name))
            try:
                audio, rate = read_audio(path)
            finally:
                self.release(path)
            if mix is not None and mix.shape != audio.shape:
                raise UmxError(f"the stems of {job.name} differ in length; separate it again")
            mix = gain * audio if mix is None else mix + gain * audio
        assert mix is not None and rate is not None
        return mix, rate

    def _finished(self, job_id: str) -> Job:
        """A job whose stems can be downloaded.

        Raises:
            NotFound: no such job, or it failed.
            NotReady: it is queued or being separated: wait.
        """
        with self._lock:
            job = self._get(job_id)
            state = job.state
            self._used[job_id] = time.time()  # asked now: kept from the cache limit a while
        if state in (QUEUED, RUNNING):
            doing = "being separated" if state == RUNNING else "waiting to be separated"
            raise NotReady(f"{job.name} is still {doing}; download it when it is done")
        if state != DONE:
            raise NotFound(f"{job.name} has no stems: its separation failed; retry it")
        return job

    def _stem_path(self, job: Job, stem: str) -> Path:
        return self.jobs_dir / job.id / STEMS / f"{stem}.{STEM_EXT}"

    def _damage(self, job: Job, hashed: dict[Path, tuple[int, int]] | None = None) -> str | None:
        """Why a done job's stems are not those separated (see `stem_damage`), or None."""
        if job.state != DONE:
            return None
        stems = {target: self._stem_path(job, target) for target in job.targets}
        return stem_damage(stems, self._outputs.get(job.id, {}), hashed)

    def _check_stems(self, job: Job) -> None:
        """Refuse a download of a done job whose stems are damaged (each hashed the first time
        it is used), queuing it again (`_damaged`)."""
        damage = self._damage(job, self._hashed)
        if damage is not None:
            self._damaged(job, damage)

    def _damaged(self, job: Job, damage: str) -> NoReturn:
        """Queue a done job found damaged while serving it again (see `_redo`) and tell so.

        Raises:
            NotReady: it is being separated again.
            NotFound: its input is gone too (it failed), or it was deleted.
        """
        with self._lock:
            if self._jobs.get(job.id) is not job:
                raise NotFound(f"no job {job.id}")
            if job.state == DONE:
                self._redo(job, damage)
                self._save(job)
                self._ready.notify()
            record = self._public(job)
        self._listeners.tell(record)
        if job.state == FAILED:
            raise NotFound(job.error)
        raise NotReady(
            f"{job.name} was damaged on disk ({damage}), so it is being separated again; "
            "download it when it is done"
        )
