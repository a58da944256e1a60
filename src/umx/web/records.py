"""What `umx serve` knows of a job: its record (a line of the store's manifest, see
`umx.jobs`), its id, the names of its files and stems, how its name and error are shown on
the page, and the store's manifest: replayed at start, then written (`Recorder`)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from umx.audio import display_path
from umx.errors import UmxError
from umx.jobs import (
    DELETED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    Manifest,
    describe_output,
    latest_records,
    scan_manifest,
)

logger = logging.getLogger("umx")

ID_DIGITS = 32
JOB_ID = re.compile(rf"^[0-9a-f]{{{ID_DIGITS}}}$")
ALL_STEMS = "all"
"""The stem mode of every target of the model; the other modes are one target and the rest."""
ACCOMPANIMENT = "accompaniment"
"""The rest of the mix beside the vocals (beside any other target `t` it is `no_t`)."""
ORIGINAL = "mixture"
"""The original mix, decoded as the stems are stored: a track of the player and of mixes."""
SUMMARY_MIN, SUMMARY_MAX = 24, 160
"""An error's summary ends at its first `: ` or ` (` past SUMMARY_MIN characters, and is cut
at SUMMARY_MAX: the page shows it in one line, the whole message on request."""
_OFFLINE_MISSING = re.compile(r"offline mode is on and model (\S+) is not in the cache")
INPUT, STEMS, DOWNLOADS = "input", "stems", "downloads"
MANIFEST = "jobs.jsonl"
"""The store's manifest, in the data directory: every job's records (`umx.jobs.Manifest`)."""
LEGACY_RECORD = "job.json"
"""Where umx serve before its manifest kept each job's record, in the job's folder: read once
into the manifest, then removed."""
STEM_EXT = "wav"
MAX_NAME = 200
"""The longest file name kept for display, in characters."""
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class Busy(UmxError):
    """The queue is full: the upload is refused until a job finishes."""


class NotFound(UmxError):
    """No such job, stem or format."""


class NotReady(UmxError):
    """A download of a job that is not done yet: queued, separating, or separating again."""


def display_name(name: str) -> str:
    """A client's file name as shown on the page: its last component, printable, one line, not
    too long, never empty. It is never used as a path."""
    name = re.split(r"[/\\]", name)[-1]
    name = _UNPRINTABLE.sub("", name).strip()[:MAX_NAME]
    return name or "untitled"


def rest_name(target: str) -> str:
    """The name of the rest of the mix beside one target: `accompaniment` beside the vocals,
    `no_<target>` beside any other (as `umx --two-stems` names it)."""
    return ACCOMPANIMENT if target == "vocals" else f"no_{target}"


def stem_modes(targets: Sequence[str]) -> dict[str, str]:
    """The stem modes of a model with `targets`, each with the words the page shows, the stems
    it gives (short, to fit a phone's select): every target (`ALL_STEMS`: "vocals, drums, bass,
    other"), or, for each target, that target and the rest of the mix ("vocals and
    accompaniment", "drums and the rest": the separator's residual; only that target's model
    runs), in words rather than as the file `no_drums` (read out as "no underscore drums")."""
    modes = {ALL_STEMS: ", ".join(targets) or "all stems"}
    for target in targets:
        rest = ACCOMPANIMENT if target == "vocals" else "the rest"
        modes[target] = f"{target} and {rest}"
    return modes


def error_summary(message: str) -> str:
    """The first clause of an error message, for a one-line display (see `SUMMARY_MIN`); that a
    named model is missing offline says what to do (the page's Retry then separates the song)."""
    match = re.compile(r": | \(").search(message, SUMMARY_MIN)
    summary = message[: match.start()] if match else message
    missing = _OFFLINE_MISSING.fullmatch(summary)
    if missing:
        summary += f": run UMX_OFFLINE=0 umx download {missing[1]}, then Retry"
    return summary if len(summary) <= SUMMARY_MAX else summary[: SUMMARY_MAX - 1] + "…"


def job_key(input_sha256: str, options: dict[str, str]) -> str:
    """A job's id: the input's content hash and the separation options (the model as
    `umx.web.models.model_identity` names it: a model folder by its path and weights' SHA-256),
    hashed together."""
    text = json.dumps({"input": input_sha256, **options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_DIGITS]


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "model": (str,),
    "stems": (str,),
    "size": (int,),
    "created": (int, float),
    "finished": (int, float),
    "progress": (int, float),
    "duration": (int, float),
    "seconds": (int, float),
    "targets": (list,),
    "error": (str,),
    "model_sha256": (str,),
}
"""The JSON types of a job's fields in its record (a field may be left out where unset)."""
_REQUIRED = ("name", "model", "stems", "size")


@dataclass
class Job:
    """One song and its separation options, as recorded in the manifest and shown on the page.

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
        model_sha256: the SHA-256 of the weights of a model folder that its id names (see
            `umx.web.models.model_identity`), which separate it; None for a model of the zoo.
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
    model_sha256: str | None = None

    def record(self, outputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The job as a manifest record: its id is the record's `input`, its state its
        `status`, and its other fields follow but those unset; a done job's record holds its
        stems' `outputs` (see `umx.jobs.describe_output`)."""
        data = {k: v for k, v in asdict(self).items() if v is not None and k not in ("id", "state")}
        done = {"outputs": dict(outputs or {})} if self.state == DONE else {}
        return {"input": self.id, "status": self.state, **data, **done}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Job:
        """The job a manifest record (see `record`) describes.

        Raises:
            ValueError: the record is not one of a job of `umx serve`, saying why.
        """
        data = {k: v for k, v in record.items() if k in _FIELD_TYPES}
        for key, kinds in _FIELD_TYPES.items():
            value = data.get(key)
            if key in data and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise ValueError(f"its {key} is {json.dumps(value)[:40]}")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ValueError(f"no {missing[0]}")
        job = cls(id=record["input"], state=record["status"], **data)
        if not JOB_ID.match(job.id) or job.state not in (QUEUED, RUNNING, DONE, FAILED):
            raise ValueError("not a job's id or state")
        if not all(isinstance(target, str) for target in job.targets):
            raise ValueError("its targets are not names")
        return job

    @classmethod
    def read(cls, path: Path) -> Job:
        """The job recorded in `path`, a `LEGACY_RECORD` of an older umx serve.

        Raises:
            ValueError: the file is not a job record of that version.
        """
        data = json.loads(path.read_text())
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - {"model_sha256"} != names - {"model_sha256"}:
            raise ValueError("not a job record")
        job = cls(**data)
        if not JOB_ID.match(str(job.id)) or job.state not in (QUEUED, RUNNING, DONE, FAILED):
            raise ValueError("not a job record")
        return job


@dataclass
class Replay:
    """What a data directory holds, as `replay` read it.

    Attributes:
        jobs: the jobs, by id.
        unrecorded: the records the manifest lacks: the jobs read from a `LEGACY_RECORD`, and
            the deletion of jobs whose folder is gone (the server stopped between removing it
            and recording that).
        legacy: the `LEGACY_RECORD` files of `jobs`, to remove once `unrecorded` is recorded.
        deleted: the folders of deleted jobs (the server stopped before it removed them).
        outputs: the stems of the done jobs as recorded (`umx.jobs.describe_output`), by id.
    """

    jobs: dict[str, Job] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    unrecorded: list[dict[str, Any]] = field(default_factory=list)
    legacy: list[Path] = field(default_factory=list)
    deleted: list[Path] = field(default_factory=list)


def replay(manifest: Path, jobs_dir: Path) -> Replay:
    """Read the jobs of a data directory, writing nothing: the latest record of each job in the
    manifest (damaged lines skipped), and the `LEGACY_RECORD` of a job folder it does not name.
    A record or a folder that is not a job's is left alone, with a warning."""
    latest = latest_records(scan_manifest(manifest).records)
    found = Replay()
    for job_id, record in latest.items():
        if record["status"] == DELETED:
            continue
        try:
            found.jobs[job_id] = Job.from_record(record)
            found.outputs[job_id] = dict(record.get("outputs", {}))
        except ValueError as error:
            logger.warning("%s: the record of %s is not a job's (%s)", MANIFEST, job_id, error)
    for directory in sorted(jobs_dir.iterdir()):
        if directory.name.startswith("."):
            continue
        legacy = directory / LEGACY_RECORD
        if directory.name not in latest and legacy.exists():
            try:
                job, outputs = _read_legacy(directory)
            except (OSError, ValueError, TypeError) as error:
                logger.warning("%s is not a job (%s); left alone", display_path(directory), error)
                continue
            found.jobs[job.id], found.outputs[job.id] = job, dict(outputs or {})
            found.unrecorded.append(job.record(outputs))
        if directory.name in found.jobs:
            if legacy.exists():
                found.legacy.append(legacy)
        elif latest.get(directory.name, {}).get("status") == DELETED:
            found.deleted.append(directory)
        else:
            logger.warning("%s is not a job (no record); left alone", display_path(directory))
    for job_id in list(found.jobs):
        if not (jobs_dir / job_id).is_dir():
            del found.jobs[job_id]
            found.unrecorded.append({"input": job_id, "status": DELETED})
    return found


def _read_legacy(directory: Path) -> tuple[Job, dict[str, Any] | None]:
    """A job of an older umx serve, from its `LEGACY_RECORD`, and its stems described (see
    `umx.jobs.describe_output`) if it is done.

    Raises:
        OSError, ValueError, TypeError: the record cannot be read, or is not a job's.
    """
    job = Job.read(directory / LEGACY_RECORD)
    if job.id != directory.name:
        raise ValueError("a job record of another folder")
    if job.state != DONE:
        return job, None
    stems = directory / STEMS
    return job, {
        target: describe_output(stems / f"{target}.{STEM_EXT}")
        for target in job.targets
        if (stems / f"{target}.{STEM_EXT}").is_file()
    }


class Recorder:
    """The manifest-writing methods of `umx.web.jobs.JobStore`, which provides what they use:
    its `manifest_path`, the open `_manifest` (None until first written), and what its start
    found to record (`_unrecorded`, see `Replay`) and to remove once recorded (`_legacy`)."""

    manifest_path: Path
    _manifest: Manifest | None
    _unrecorded: list[dict[str, Any]]
    _legacy: list[Path]

    def _append(self, record: dict[str, Any]) -> None:
        """Add a record to the manifest (see `_open_manifest`); call with the lock held.

        Raises:
            OSError, UmxError: the manifest cannot be read or written.
        """
        self._open_manifest().append(record)

    def _open_manifest(self) -> Manifest:
        """The manifest, open to append; opened once: repaired, given what the store found to
        record at start (and the `LEGACY_RECORD` files it read removed), compacted.

        Raises:
            OSError, UmxError: it cannot be read or written.
        """
        if self._manifest is None:
            manifest = Manifest(self.manifest_path)
            for found in self._unrecorded:
                manifest.append(found)
            for legacy in self._legacy:
                legacy.unlink(missing_ok=True)
            if manifest.superseded:
                manifest.compact()
            self._manifest, self._unrecorded, self._legacy = manifest, [], []
        return self._manifest

    def _save(self, job: Job, outputs: dict[str, Any] | None = None) -> None:
        """Record a job's state in the manifest; call with the lock held. A data directory that
        cannot take it (full) is said in one line and the job goes on: the next start finds it
        as last recorded."""
        self._record(job.id, job.record(outputs))

    def _record(self, job_id: str, record: dict[str, Any]) -> None:
        try:
            self._append(record)
        except (OSError, UmxError) as error:
            reason = getattr(error, "strerror", None) or error
            logger.error("%s: cannot record its state: %s", job_id, reason)
