"""What a run of a batch job has to do, from its manifest (`umx.batch.job`): which inputs to
separate, which to skip as done, and which are failed, before any work."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from umx.audio import display_path
from umx.batch.inputs import BatchInput
from umx.batch.job import Job, failure_line, setting_value
from umx.batch.work import Task
from umx.jobs import DONE, FAILED, RUNNING, input_changed, verify_outputs
from umx.messages import shown

logger = logging.getLogger("umx")

CHANGED = "changed"
"""The count of `plan_tasks` for done inputs separated again: their input changed since, or
their record is not of the job's weights and stems."""
NOT_WRITTEN_HERE = "already exists and this job has no record of writing it"
"""Why a new input is not separated: one of its outputs exists (`plan_tasks`)."""


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
    separating, done inputs whose input changed since (`umx.jobs.input_changed`) or whose record
    is not of the job's weights and stems (their stems are replaced), and with `retry_failed`
    the failed ones; done inputs whose outputs no longer verify are recorded as failed (and
    retried with `retry_failed`).

    Outputs of an input that this job has no record of writing must not exist (unless
    `force`); the input is then recorded as failed here, before any work, and checked again by
    every run (moving the file away, or `--force`, is enough). Each input found failed here is
    logged, naming the file and why. Retries of inputs whose outputs this job wrote replace
    them; a done input whose outputs verify and whose input is unchanged is never touched again.

    Returns:
        the tasks, and counts of the inputs already `done`, left `failed`, and `changed` (done
        before, separated again: among the tasks).
    """
    tasks: list[Task] = []
    counts = {DONE: 0, FAILED: 0, CHANGED: 0}
    identity = job.settings.get("identity", {})
    for item, plan in zip(inputs, plans, strict=True):
        outputs = {name: str(path) for name, path in plan.items()}
        task = Task(item.key, item.path, item.start, item.duration, outputs, force)
        planned, count = _plan_one(job, task, identity, retry_failed, verify)
        if planned is not None:
            tasks.append(planned)
        if count is not None:
            counts[count] += 1
    return tasks, counts


def _plan_one(
    job: Job, task: Task, identity: Mapping[str, Any], retry_failed: bool, verify: bool
) -> tuple[Task | None, str | None]:
    """What to do with one input (see `plan_tasks`): the task, or None; and what to count it
    as (`done`, `failed`, `changed`), or None."""
    record = job.latest.get(task.key)
    status = record.get("status") if record is not None else None
    attempt = record.get("attempt", 0) + 1 if record is not None else 1
    if status == DONE:
        reason = verify_outputs(record, verify)
        if reason is not None:
            record = _unverified(job, record, reason, retry_failed)
            status = FAILED
        elif (stale := _stale(record, task, identity, verify)) is None:
            _refresh(job, record, task.path)
            return None, DONE
        else:
            logger.warning("%s: %s; separating it again", display_path(task.path), stale)
            owned = {output["path"] for output in record["outputs"].values()}
            planned, count = _unless_blocked(job, task, record, attempt, owned)
            return planned, count or CHANGED
    if status == RUNNING:  # stopped or killed with it: what it left is this job's
        return replace(task, force=True, attempt=attempt), None
    if status == FAILED and not record.get("blocked"):
        if not retry_failed:
            return None, FAILED
        ours = bool(record.get("owns_outputs"))
        return replace(task, force=task.force or ours, attempt=attempt), None
    return _unless_blocked(job, task, record, attempt, set())


def _unverified(
    job: Job, record: Mapping[str, Any], reason: str, retry_failed: bool
) -> dict[str, Any]:
    """Record a done input whose outputs no longer verify as failed, and say so."""
    error = f"done before, but {reason}"
    record = _stamped({**record, "status": FAILED, "error": error, "owns_outputs": True})
    job.append(record)
    logger.warning(
        "%s; %s",
        failure_line(record),
        "separating it again"
        if retry_failed
        else "left as it is: --retry-failed separates the input again and replaces it",
    )
    return record


def _stale(
    record: Mapping[str, Any], task: Task, identity: Mapping[str, Any], verify: bool
) -> str | None:
    """Why the outputs of a done record are not those this run would write: its input changed
    (hashed when its size or time changed, or with `verify`), or the record is of other
    weights or stems than the job's (a manifest from elsewhere); None if they are."""
    if (changed := input_changed(record, task.path, verify)) is not None:
        return changed
    weights, theirs = identity.get("model_sha256"), record.get("model_sha256")
    if isinstance(weights, str) and isinstance(theirs, str) and weights != theirs:
        return (
            f"it was separated with other weights (SHA-256 {theirs[:12]}..., now {weights[:12]}...)"
        )
    recorded = {name: output["path"] for name, output in record["outputs"].items()}
    planned = {name: os.path.abspath(path) for name, path in task.outputs.items()}
    if set(recorded) != set(planned):
        return f"its stems were {setting_value(list(recorded))}, now {setting_value(list(planned))}"
    moved = [name for name in planned if os.path.abspath(recorded[name]) != planned[name]]
    if moved:
        return f"its {shown(moved[0])} stem was written as {display_path(recorded[moved[0]])}"
    return None


def _refresh(job: Job, record: Mapping[str, Any], path: str) -> None:
    """Record the modification time of a done input whose time changed but not its bytes (a
    copy, a `touch`), so that the next run does not hash it again."""
    mtime = record.get("input_mtime_ns")
    try:
        now = os.stat(path).st_mtime_ns
    except OSError:
        return
    if isinstance(record.get("input_sha256"), str) and isinstance(mtime, int) and mtime != now:
        job.append({**record, "input_mtime_ns": now})


def _unless_blocked(
    job: Job, task: Task, record: Mapping[str, Any] | None, attempt: int, owned: set[str]
) -> tuple[Task | None, str | None]:
    """The task of an input, unless an output exists that this job has no record of writing
    (not in `owned`) and `--force` was not given: then the input is recorded as failed
    (`blocked`, so that the next run checks again, without a new record while it stays so)
    and counted so.

    Returns:
        the task or None, and None or `failed`.
    """
    outputs = task.outputs.values()
    foreign = [p for p in outputs if os.path.lexists(p) and os.path.abspath(p) not in owned]
    if not foreign or task.force:
        return replace(task, force=task.force or bool(owned), attempt=attempt), None
    error = (
        f"{display_path(foreign[0])} {NOT_WRITTEN_HERE} (move it away, or use --force to "
        "overwrite; the next run checks again)"
    )
    if record is None or record.get("status") != FAILED or record.get("error") != error:
        failed = {"input": task.key, "path": task.path, "status": FAILED, "attempt": attempt}
        failed.update(blocked=True, error=error)
        job.append(_stamped(failed))
        logger.warning("%s", failure_line(failed))
    return None, FAILED


def _stamped(record: Mapping[str, Any]) -> dict[str, Any]:
    return {**record, "finished": round(time.time(), 3)}
