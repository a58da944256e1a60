"""The job directory: what a batch job is (its settings and inputs), what happened to every
input (an append-only JSON Lines manifest), and how a resumed run decides what is left.

Layout of a job directory:

- `job.json`: the settings that decide the outputs (model and its weights' SHA-256, separation
  and file options, output names) and one entry per run; rewritten atomically.
- `inputs.json`: the inputs of the latest run, in order; rewritten atomically.
- `manifest.jsonl`: one JSON record per line, appended and fsynced one at a time, only by the
  driver: `running` when an input is handed to a worker, then `done` (output paths with their
  SHA-256, size and modification time) or `failed` (the one-line error). The latest record of
  an input is its state. A line cut short by a crash is ignored, and cut off by the next run.
- `lock`: held (`flock`) by the run in progress, so two runs never share a job.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from umx.audio import display_path
from umx.batch.inputs import BatchInput
from umx.batch.work import DONE, FAILED, RUNNING, Task
from umx.defaults import JOB_DIRNAME
from umx.errors import UmxError
from umx.modeldir import write_json_atomic
from umx.zoo import sha256_file

try:
    import fcntl
except ImportError:  # Windows: runs are not locked against each other
    fcntl = None

SETTINGS_FILE = "job.json"
INPUTS_FILE = "inputs.json"
MANIFEST_FILE = "manifest.jsonl"
LOCK_FILE = "lock"
SHOWN_FAILURES = 20
"""How many failed inputs `umx batch --status` lists."""


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a manifest, in order; a last line cut short by a crash is skipped.

    Returns:
        the records (JSON objects); none if the manifest does not exist.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise UmxError(
            f"cannot read the manifest {display_path(path)} ({error.strerror})"
        ) from None
    records = []
    for line in data.split(b"\n"):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue  # the line a killed run was writing, or an empty one
        if isinstance(record, dict) and isinstance(record.get("input"), str):
            records.append(record)
    return records


def latest_records(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The latest record of each input, by its key."""
    return {record["input"]: record for record in records}


def verify_outputs(record: Mapping[str, Any], full: bool = False) -> str | None:
    """Check that the outputs of a done record are the files that were written.

    A file whose size and modification time are those recorded is trusted without reading it
    (hashing every stem of a large job again would take as long as copying it); any other file
    is hashed and compared with the recorded SHA-256, and with `full` every file is.

    Returns:
        None if every output is there and intact; else why not, as a phrase.
    """
    for output in record.get("outputs", {}).values():
        path = output["path"]
        try:
            stat = os.stat(path)
        except OSError:
            return f"its output {display_path(path)} is missing"
        if not full and stat.st_size == output["bytes"] and stat.st_mtime_ns == output["mtime_ns"]:
            continue
        try:
            same = sha256_file(path) == output["sha256"]
        except OSError as error:
            return f"its output {display_path(path)} cannot be read ({error.strerror})"
        if not same:
            return f"its output {display_path(path)} changed since it was written"
    return None


class Job:
    """An open job directory, locked for one run; use it as a context manager.

    Args:
        directory: the job directory, created if missing.
        identity: the settings that decide the outputs; a job created with other settings is
            refused, so a resumed run never mixes stems of two configurations.
        inputs: the inputs of this run, stored for `--status`.

    Raises:
        UmxError: the directory cannot be created or written, another run holds it, or it
            belongs to a job with other settings.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        identity: Mapping[str, Any],
        inputs: Sequence[BatchInput],
    ) -> None:
        self.directory = Path(directory)
        shown = display_path(self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.directory / LOCK_FILE, "a+")  # noqa: SIM115 (held until close)
        except OSError as error:
            raise UmxError(f"cannot create the job directory {shown} ({error.strerror})") from None
        if fcntl is not None:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock.close()
                raise UmxError(
                    f"the job {shown} is being run by another umx batch; wait for it to end or "
                    "stop it (Ctrl-C), then run this again"
                ) from None
        try:
            settings = read_settings(self.directory)
            if settings is not None:
                check_identity(settings["identity"], identity, shown)
            else:
                settings = {"identity": dict(identity), "runs": []}
            self.settings = settings
            write_json_atomic(self.directory / SETTINGS_FILE, settings)
            write_json_atomic(
                self.directory / INPUTS_FILE,
                [{"path": i.path, "start": i.start, "duration": i.duration} for i in inputs],
            )
            self.manifest_path = self.directory / MANIFEST_FILE
            self.latest = latest_records(read_records(self.manifest_path))
            self._manifest = _open_manifest(self.manifest_path)
        except BaseException:
            self._lock.close()
            raise

    def start_run(self, **run: Any) -> None:
        """Add this run (when it started, and `run`: mode, workers...) to `job.json`; the
        throughput of `--status` counts from here."""
        self.settings["runs"].append({"started": round(time.time(), 3), **run})
        write_json_atomic(self.directory / SETTINGS_FILE, self.settings)

    def append(self, record: Mapping[str, Any]) -> None:
        """Add a record to the manifest, on disk (flushed and fsynced) when this returns."""
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
        self._manifest.write(line.encode())
        self._manifest.flush()
        os.fsync(self._manifest.fileno())
        self.latest[record["input"]] = record

    def close(self) -> None:
        """Close the manifest and release the lock."""
        with contextlib.suppress(OSError):
            self._manifest.close()
        self._lock.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_manifest(path: Path) -> BinaryIO:
    """Open the manifest for appending, first cutting off a last line a crash left unfinished
    (so the next record starts on a line of its own)."""
    file = open(path, "ab+")  # noqa: SIM115 (the job keeps it open)
    size = file.seek(0, os.SEEK_END)
    if size:
        file.seek(max(0, size - (1 << 20)))
        tail = file.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            file.truncate(size - len(tail) + cut + 1 if cut >= 0 else 0)
    return file


def read_settings(directory: Path) -> dict[str, Any] | None:
    """The job's `job.json`, or None where there is none yet.

    Raises:
        UmxError: it exists but is not a job's settings.
    """
    path = directory / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise UmxError(
            f"{display_path(path)} is not a umx batch job's settings ({reason})"
        ) from None
    if not (isinstance(settings, dict) and isinstance(settings.get("identity"), dict)):
        raise UmxError(f"{display_path(path)} is not a umx batch job's settings")
    settings.setdefault("runs", [])
    return settings


def check_identity(stored: Mapping[str, Any], given: Mapping[str, Any], shown: str) -> None:
    """Refuse to resume a job with settings that would write other outputs."""
    given = json.loads(json.dumps(given, default=str))  # as it would read back from job.json
    changed = [key for key in sorted(set(stored) | set(given)) if stored.get(key) != given.get(key)]
    if changed:
        details = "; ".join(
            f"{key} was {stored.get(key)!r}, now {given.get(key)!r}" for key in changed[:3]
        )
        raise UmxError(
            f"the job {shown} was started with other settings ({details}): run it with the "
            "same options, or give a new --job"
        )


def plan_tasks(
    job: Job,
    inputs: Sequence[BatchInput],
    plans: Sequence[Mapping[str, Path]],
    *,
    force: bool = False,
    retry_failed: bool = False,
    verify: bool = False,
) -> tuple[list[Task], dict[str, int]]:
    """What a run has to do, from the manifest: inputs never tried, inputs a stopped run was
    separating, and with `retry_failed` the failed ones; done inputs whose outputs no longer
    verify are recorded as failed (and retried with `retry_failed`).

    Outputs of inputs that were never tried must not exist (unless `force`); they are recorded
    as failed here, before any work. Retries of inputs whose outputs this job wrote replace
    them; a done input whose outputs verify is never touched again.

    Returns:
        the tasks, and counts of the inputs already `done` and left `failed`.
    """
    tasks: list[Task] = []
    counts = {DONE: 0, FAILED: 0}
    for item, plan in zip(inputs, plans, strict=True):
        outputs = {name: str(path) for name, path in plan.items()}
        task = Task(item.key, item.path, item.start, item.duration, outputs, force)
        record = job.latest.get(item.key)
        status = record.get("status") if record is not None else None
        if status == DONE:
            reason = verify_outputs(record, verify)
            if reason is None:
                counts[DONE] += 1
                continue
            error = f"done before, but {reason}"
            record = {**record, "status": FAILED, "error": error, "owns_outputs": True}
            job.append(_stamped(record))
            status = FAILED
        attempt = record.get("attempt", 0) + 1 if record is not None else 1
        if status == RUNNING:  # stopped or killed with it: what it left is this job's
            tasks.append(replace(task, force=True, attempt=attempt))
        elif status == FAILED:
            if not retry_failed:
                counts[FAILED] += 1
                continue
            ours = bool(record.get("owns_outputs"))
            tasks.append(replace(task, force=force or ours, attempt=attempt))
        elif not force and (existing := [p for p in outputs.values() if os.path.lexists(p)]):
            job.append(
                _stamped(
                    {
                        "input": item.key,
                        "path": item.path,
                        "status": FAILED,
                        "attempt": 1,
                        "error": f"{display_path(existing[0])} already exists "
                        "(use --force to overwrite)",
                    }
                )
            )
            counts[FAILED] += 1
        else:
            tasks.append(task)
    return tasks, counts


def _stamped(record: Mapping[str, Any]) -> dict[str, Any]:
    return {**record, "finished": round(time.time(), 3)}


def running_record(task: Task) -> dict[str, Any]:
    """The record written when a task is handed to a worker."""
    return {
        "input": task.key,
        "path": task.path,
        "status": RUNNING,
        "attempt": task.attempt,
        "started": round(time.time(), 3),
    }


def find_job(path: str | os.PathLike) -> Path:
    """The job directory named by `path`: the directory itself, or an output folder holding
    the default `.umx-job`.

    Raises:
        UmxError: neither holds a job.
    """
    path = Path(path)
    for candidate in (path, path / JOB_DIRNAME):
        if (candidate / SETTINGS_FILE).is_file():
            return candidate
    raise UmxError(f"{display_path(path)} is not a umx batch job directory (no {SETTINGS_FILE})")


def _is_running(directory: Path) -> bool:
    """Whether a run holds the job's lock now."""
    if fcntl is None:
        return False
    try:
        with open(directory / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return False


def summarize(path: str | os.PathLike) -> Iterator[str]:
    """The lines of `umx batch --status`: the model, counts of done, failed, running (or
    interrupted) and pending inputs, the last run's throughput and the time left at that rate,
    and the failed inputs with their errors.

    Raises:
        UmxError: `path` holds no job.
    """
    directory = find_job(path)
    settings = read_settings(directory) or {}
    identity = settings["identity"]
    try:
        inputs = json.loads((directory / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        inputs = []
    keys = [BatchInput(i["path"], i["start"], i["duration"]).key for i in inputs]
    latest = latest_records(read_records(directory / MANIFEST_FILE))
    states = [latest[key].get("status") if key in latest else "pending" for key in keys]
    running = _is_running(directory)
    counts = {status: states.count(status) for status in (DONE, FAILED, RUNNING, "pending")}
    yield f"job: {display_path(directory.resolve())}"
    yield f"model: {identity.get('model')} (weights SHA-256 {identity.get('model_sha256')})"
    yield (
        f"inputs: {len(keys)}: {counts[DONE]} done, {counts[FAILED]} failed, "
        f"{counts[RUNNING]} {'running' if running else 'interrupted'}, "
        f"{counts['pending']} pending"
    )
    runs = settings.get("runs") or [{}]
    run = runs[-1]
    started = run.get("started")
    done = [
        r
        for r in latest.values()
        if r.get("status") == DONE and started is not None and r.get("finished", 0) >= started
    ]
    if started is not None:
        when = datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
        end = time.time() if running else max((r["finished"] for r in done), default=started)
        elapsed = max(end - started, 1e-9)
        rate = len(done) / elapsed * 3600
        audio = sum(r.get("audio_seconds") or 0.0 for r in done)
        yield (
            f"last run: {'running since' if running else 'started'} "
            f"{when:%Y-%m-%d %H:%M:%S} UTC, {run.get('workers')} {run.get('mode')} workers; "
            f"{len(done)} files ({audio / 60:.1f} min of audio) in {elapsed:.0f} s: "
            f"{rate:.0f} files/hour"
        )
        left = counts["pending"] + counts[RUNNING]
        if left == 0:
            yield "left: nothing" + (
                f" ({counts[FAILED]} failed: --retry-failed)" * bool(counts[FAILED])
            )
        elif rate > 0:
            yield f"left: {left} files, about {_duration(left / rate * 3600)} at that rate"
        else:
            yield f"left: {left} files"
    failed = [(key, latest[key]) for key, s in zip(keys, states, strict=True) if s == FAILED]
    if failed:
        yield "failed:"
        for key, record in failed[:SHOWN_FAILURES]:
            error = str(record.get("error"))
            yield f"  {error}" if display_path(record["path"]) in error else f"  {key}: {error}"
        if len(failed) > SHOWN_FAILURES:
            yield f"  ... and {len(failed) - SHOWN_FAILURES} more (see {MANIFEST_FILE})"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
