"""The job directory: what a batch job is (its settings and inputs) and what happened to every
input (an append-only JSON Lines manifest); `umx.batch.plan` decides what a resumed run has
left to do from it.

Layout of a job directory:

- `job.json`: the settings that decide the outputs (model and its weights' SHA-256, separation
  and file options, output names) and one entry per run; rewritten atomically.
- `inputs.json`: the inputs of the latest run, in order; rewritten atomically.
- `manifest.jsonl`: the records of `umx.jobs`, appended only by the driver: `running` when an
  input is handed to a worker, then `done` (output paths with their SHA-256, size and
  modification time) or `failed` (the one-line error). The latest record of an input is its
  state; the next run removes damaged lines, keeping every complete record and a copy of what
  it removed (`manifest.jsonl.cut-TIME`). A run that separated inputs compacts it when it
  ends: only the latest record of each input stays (rewritten atomically), and a long run
  compacts it whenever its superseded records outnumber the live ones.
- `lock`: held (`flock`) by the run in progress, so two runs never share a job.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from umx.audio import display_path
from umx.batch.inputs import BatchInput
from umx.batch.work import Task
from umx.defaults import JOB_DIRNAME
from umx.errors import UmxError
from umx.files import hold_lock, write_json_atomic
from umx.folders import folder_refusal
from umx.jobs import (
    DONE,
    FAILED,
    RUNNING,
    Manifest,
    keep_copy,
    latest_records,
    scan_manifest,
)
from umx.messages import SHOWN_CHARACTERS, duration, plural, shown

logger = logging.getLogger("umx")
SETTINGS_FILE = "job.json"
INPUTS_FILE = "inputs.json"
MANIFEST_FILE = "manifest.jsonl"
LOCK_FILE = "lock"
SHOWN_FAILURES = 20
"""How many failed inputs `umx batch --status` lists."""
SHOWN_CHANGES = 3
"""How many changed settings the refusal of `check_identity` names."""
RESTART = (
    f"restore the job's {SETTINGS_FILE}, or give a new --job (or move this one away) and "
    "add --force to separate every input again"
)
"""What to do with a job directory whose settings are lost or damaged."""


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
        where = display_path(self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = hold_lock(self.directory / LOCK_FILE)
        except OSError as error:
            reason = folder_refusal(self.directory, error)
            raise UmxError(f"cannot create the job directory {where}: {reason}") from None
        if lock is None:
            raise UmxError(
                f"the job {where} is being run by another umx batch; wait for it to end or "
                "stop it (Ctrl-C), then run this again"
            )
        self._lock = lock
        try:
            settings = read_settings(self.directory)
            if settings is not None:
                check_identity(settings["identity"], identity, where)
                if (problem := repair_runs(settings)) is not None:
                    path = self.directory / SETTINGS_FILE
                    copy = keep_copy(path, "damaged", path.read_bytes())
                    logger.warning(
                        "%s: %s; the run history starts again (the file as it was is in %s)",
                        display_path(path),
                        problem,
                        display_path(copy),
                    )
            else:
                _check_no_records(self.directory, where)
                settings = {"identity": dict(identity), "runs": []}
            self.settings = settings
            write_json_atomic(self.directory / SETTINGS_FILE, settings)
            write_json_atomic(
                self.directory / INPUTS_FILE,
                [{"path": i.path, "start": i.start, "duration": i.duration} for i in inputs],
            )
            self.manifest_path = self.directory / MANIFEST_FILE
            self.appended: set[str] = set()  # the inputs this run wrote records of
            self.ran = False  # whether `start_run` was called: `close` compacts the manifest
            self._manifest = Manifest(self.manifest_path)
            self.latest = latest_records(self._manifest.records)
        except BaseException:
            self._lock.close()
            raise

    def start_run(self, **run: Any) -> None:
        """Add this run (when it started, and `run`: mode, workers...) to `job.json`; the
        throughput of `--status` counts from here."""
        self.run_started = round(time.time(), 3)
        self.settings["runs"].append({"started": self.run_started, **run})
        write_json_atomic(self.directory / SETTINGS_FILE, self.settings)
        self.ran = True

    def finish(self, record: Mapping[str, Any]) -> None:
        """Add the record of an input this run finished (done or failed), marked with the run
        (`run`: when it started) and stamped (`finished`) if its worker did not, so that
        `--status` counts it in the run's throughput even once a later record supersedes it."""
        self.append({"finished": round(time.time(), 3), **record, "run": self.run_started})

    def append(self, record: Mapping[str, Any]) -> None:
        """Add a record to the manifest, on disk (flushed and fsynced) when this returns."""
        self._manifest.append(record)
        self.latest[record["input"]] = record
        self.appended.add(record["input"])

    def close(self) -> None:
        """Compact the manifest after a run (see `umx.jobs.Manifest.compact`; one that cannot
        be rewritten is left as it is), close it and release the lock."""
        try:
            if self.ran and self._manifest.superseded:
                self._manifest.compact()
        except OSError as error:
            logger.warning(
                "%s: cannot compact it (%s); it is kept as it is",
                display_path(self.manifest_path),
                error.strerror or error,
            )
        finally:
            self._manifest.close()
            self._lock.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_no_records(directory: Path, shown_job: str) -> None:
    """Refuse a job directory without `job.json` whose manifest holds records: the settings its
    stems were made with are unknown, and adopting this run's would take them for this run's.

    Raises:
        UmxError: the manifest holds records.
    """
    if scan_manifest(directory / MANIFEST_FILE).records:
        raise UmxError(
            f"the job {shown_job} has records ({MANIFEST_FILE}) but no {SETTINGS_FILE}, so the "
            f"settings of its stems are unknown: {RESTART}"
        )


def read_settings(directory: Path) -> dict[str, Any] | None:
    """The job's `job.json`, or None where there is none yet; its run history, which only
    `--status` reads, is repaired by `repair_runs`.

    Raises:
        UmxError: it exists but is not a job's settings.
    """
    path = directory / SETTINGS_FILE
    try:
        settings = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as error:
        reason = getattr(error, "strerror", None) or shown(str(error).splitlines()[0])
        raise UmxError(
            f"{display_path(path)} is not a umx batch job's settings ({reason}): {RESTART}"
        ) from None
    if not (isinstance(settings, dict) and isinstance(settings.get("identity"), dict)):
        raise UmxError(
            f"{display_path(path)} is not a umx batch job's settings (no identity): {RESTART}"
        )
    return settings


def repair_runs(settings: dict[str, Any]) -> str | None:
    """Make the settings' run history a list of runs, each a JSON object whose `started` (if
    any) is a time, dropping what is not.

    Returns:
        None if nothing had to be dropped; else what was wrong, as a phrase.
    """
    runs = settings.setdefault("runs", [])
    if not isinstance(runs, list):
        settings["runs"] = []
        return f"its runs are {shown(json.dumps(runs))}, not a list"
    settings["runs"] = [
        run for run in runs if isinstance(run, dict) and _is_time(run.get("started", 0.0))
    ]
    dropped = len(runs) - len(settings["runs"])
    return f"{plural(dropped, 'run')} of its history not readable" if dropped else None


def check_identity(stored: Mapping[str, Any], given: Mapping[str, Any], shown_job: str) -> None:
    """Refuse to resume a job with settings that would write other outputs, saying what
    changed as options: "--niter was 1, now 2"."""
    given = json.loads(json.dumps(given, default=str))  # as it would read back from job.json
    changes = list(dict.fromkeys(_changes(_as_recorded_now(stored), given)))
    if changes:
        more = f"; and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
        raise UmxError(
            f"the job {shown_job} was started with other settings "
            f"({'; '.join(changes[:SHOWN_CHANGES])}{more}): run it with the same options, or "
            "give a new --job"
        )


def _as_recorded_now(stored: Mapping[str, Any]) -> Mapping[str, Any]:
    """An identity as this version records it: jobs started before the typed options recorded
    `--wiener-win-len 0` (the whole segment) as 0, which is None now."""
    separation = stored.get("separation")
    if isinstance(separation, dict) and separation.get("wiener_win_len") == 0:
        return {**stored, "separation": {**separation, "wiener_win_len": None}}
    return stored


def _changes(stored: Mapping[str, Any], given: Mapping[str, Any]) -> Iterator[str]:
    """What differs between two identities, as phrases naming the options."""
    derived = ("model_sha256", "outputs")  # follow from the options: named when nothing else is
    differs = False
    for key in sorted(set(stored) | set(given), key=lambda key: (key in derived, key)):
        old, new = stored.get(key), given.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):  # the separation and file options
            for name in sorted(set(old) | set(new)):
                was, now = old.get(name), new.get(name)
                if was != now:
                    differs = True
                    yield f"{_option(name)} was {_told_apart(was, now)}"
        elif key == "model_sha256":
            if not differs:
                yield (
                    f"the model's weights changed (SHA-256 {setting_value(old)[:12]}..., "
                    f"now {setting_value(new)[:12]}...)"
                )
        elif key == "outputs":
            if not differs:
                yield f"the stems were {setting_value(old)}, now {setting_value(new)}"
        else:
            differs = True
            yield f"{_option(key)} was {_told_apart(old, new)}"


def _told_apart(was: object, now: object) -> str:
    """`WAS, now NOW` for two values that differ, as JSON where they would read the same (a
    hand-edited `"1"` against 1: `"1", now 1`)."""
    old, new = setting_value(was), setting_value(now)
    if old == new:
        old, new = shown(json.dumps(was), 60), shown(json.dumps(now), 60)
    return f"{old}, now {new}"


def _option(name: str) -> str:
    return "--" + shown(str(name)).replace("_", "-")


def setting_value(value: object) -> str:
    """A setting's value as a user would type it."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return shown(" ".join(value), 60)
    if isinstance(value, str):
        return shown(value, 60)
    return shown(json.dumps(value), 60)


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
        UmxError: `path` does not exist, or neither holds a job.
    """
    path = Path(path)
    for candidate in (path, path / JOB_DIRNAME):
        if (candidate / SETTINGS_FILE).is_file():
            return candidate
    if not path.exists():
        raise UmxError(
            f"{display_path(path)} does not exist: give a job directory, or the output folder "
            "holding it"
        )
    raise UmxError(f"{display_path(path)} is not a umx batch job directory (no {SETTINGS_FILE})")


def _is_running(directory: Path) -> bool:
    """Whether a run holds the job's lock now."""
    try:
        lock = hold_lock(directory / LOCK_FILE)
    except FileNotFoundError:
        return False
    if lock is None:
        return True
    lock.close()
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
    notes = []
    if (problem := repair_runs(settings)) is not None:
        notes.append(f"{SETTINGS_FILE}: {problem} (the next run repairs it)")
    keys = _input_keys(directory / INPUTS_FILE)
    scan = scan_manifest(directory / MANIFEST_FILE)
    latest = latest_records(scan.records)
    if scan.damaged:
        notes.append(
            f"{MANIFEST_FILE}: {plural(len(scan.damaged), 'damaged line')} skipped "
            f"({scan.first_problem}); the next run removes them, keeping a copy"
        )
    if keys is None:
        notes.append(f"{INPUTS_FILE} is damaged: counting the inputs the manifest names")
        keys = list(latest)
    states = [latest[key].get("status") if key in latest else "pending" for key in keys]
    running = _is_running(directory)
    counts = {status: states.count(status) for status in (DONE, FAILED, RUNNING, "pending")}
    yield f"job: {display_path(directory.resolve())}"
    yield from notes
    yield (
        f"model: {shown(str(identity.get('model')))} "
        f"(weights SHA-256 {shown(str(identity.get('model_sha256')))})"
    )
    yield (
        f"inputs: {len(keys)}: {counts[DONE]} done, {counts[FAILED]} failed, "
        f"{counts[RUNNING]} {'running' if running else 'interrupted'}, "
        f"{counts['pending']} pending"
    )
    runs = settings.get("runs") or [{}]
    run = runs[-1]
    started = run.get("started")
    if started is not None:
        finished = _finished_by_run(started, scan.records, latest)
        when = datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
        ends = (r.get("finished", started) for r in finished)
        end = time.time() if running else max(ends, default=started)
        elapsed = max(end - started, 1e-9)
        rate = len(finished) / elapsed * 3600
        audio = sum(r.get("audio_seconds") or 0.0 for r in finished)
        yield (
            f"last run: {'running since' if running else 'started'} "
            f"{when:%Y-%m-%d %H:%M:%S} UTC, {_workers(run)}; "
            f"{plural(len(finished), 'file')} ({audio / 60:.1f} min of audio) in {elapsed:.0f} s: "
            f"{rate:.0f} files/hour"
        )
        left = counts["pending"] + counts[RUNNING]
        if left == 0:
            # a run that retried them (`umx distill`'s always do): the same command again
            again = "the same command tries again" if run.get("retry_failed") else "--retry-failed"
            yield "left: nothing" + f" ({counts[FAILED]} failed: {again})" * bool(counts[FAILED])
        elif rate > 0:
            about = duration(left / rate * 3600)
            yield f"left: {plural(left, 'file')}, about {about} at that rate"
        else:
            yield f"left: {plural(left, 'file')}"
    failed = [(key, latest[key]) for key, s in zip(keys, states, strict=True) if s == FAILED]
    if failed:
        yield "failed:"
        for _, record in failed[:SHOWN_FAILURES]:
            yield f"  {failure_line(record)}"
        if len(failed) > SHOWN_FAILURES:
            yield f"  ... and {len(failed) - SHOWN_FAILURES} more (see {MANIFEST_FILE})"


def _finished_by_run(
    started: float, records: Sequence[Mapping[str, Any]], latest: Mapping[str, Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The records of the inputs that the run started at `started` finished, done or failed
    (`Job.finish`), one per input as the run wrote it: a later record (a done input that no
    longer verifies, recorded as failed) takes none away. Records of an earlier version, which
    did not mark them with their run: the done inputs that finished since it started."""
    first: dict[str, Mapping[str, Any]] = {}
    for record in records:
        if record.get("run") == started and record.get("status") in (DONE, FAILED):
            first.setdefault(record["input"], record)
    if first:
        return list(first.values())
    return [
        r for r in latest.values() if r.get("status") == DONE and r.get("finished", 0) >= started
    ]


def failure_line(record: Mapping[str, Any], as_given: Callable[[str], str] | None = None) -> str:
    """A failed record's error, printable, prefixed with its input unless the error names it;
    with `as_given`, the input named as its user gave it (see `BatchOptions.as_given`)."""
    error = shown(str(record.get("error")), 2 * SHOWN_CHARACTERS)
    path = record.get("path") or record["input"]
    name = display_path(path)
    if as_given is not None:
        given = display_path(as_given(path))
        error, name = error.replace(name, given), given
    return error if name in error else f"{shown(name)}: {error}"


def _workers(run: Mapping[str, Any]) -> str:
    workers = run.get("workers")
    mode = shown(str(run.get("mode")))
    if isinstance(workers, int) and not isinstance(workers, bool):
        return plural(workers, f"{mode} worker")
    return f"{shown(str(workers))} {mode} workers"


def _input_keys(path: Path) -> list[str] | None:
    """The keys of the inputs in `inputs.json`; None if it is missing or damaged."""
    try:
        inputs = json.loads(path.read_bytes())
        if not all(
            isinstance(i["path"], str)
            and _is_number(i["start"])
            and (i["duration"] is None or _is_number(i["duration"]))
            for i in inputs
        ):
            return None
        return [BatchInput(i["path"], i["start"], i["duration"]).key for i in inputs]
    except (OSError, ValueError, RecursionError, TypeError, KeyError):
        return None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_time(value: object) -> bool:
    """Whether `value` is a Unix time that dates can be made of."""
    return _is_number(value) and 0 <= value < 1e11
