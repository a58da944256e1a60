"""`umx serve` stopped by SIGTERM at random (seeded) moments, 20 times on one data directory,
then restarted: it exits with status 143 every time, never aborts, keeps every finished job and
leaves no temporary file after the restart (the bundled umxsynth on short songs)."""

from __future__ import annotations

import hashlib
import random
import signal
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from test_web import song_bytes
from test_web_hostile import assert_clean_log, ready, start_serve
from umx.jobs import latest_records, read_records

RUNS = 20
SEED = 26
PHASES = ("imports", "start-up", "idle", "mid-job")
"""The moments: while Python imports umx and torch; from umx's first message (the model
resolved) to the page's address (the data directory read, the socket bound, the model loading
in a worker); with the server idle or resuming a song; while a song is separated."""
SIGTERM_STATUS = 128 + signal.SIGTERM


def shell_status(returncode: int) -> int:
    """The status a shell reports: a process that the signal itself ended (before umx's
    handling began, while Python imports) as 128 + the signal, like one that exited with it."""
    return 128 - returncode if returncode < 0 else returncode


def finished_jobs(data: Path) -> dict[str, dict[str, str]]:
    """The done jobs on disk, each with the hash of every file of its stems."""
    jobs = {}
    for job_id, record in latest_records(read_records(data / "jobs.jsonl")).items():
        if record["status"] == "done":
            stems = sorted((data / "jobs" / job_id / "stems").iterdir())
            jobs[job_id] = {
                path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in stems
            }
    return jobs


def wait_running(url: str, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}api/jobs/{job_id}").json()["state"]
        if state != "queued":
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not start in {timeout} s")


def test_sigterm_at_random_moments_loses_nothing(tmp_path):
    rng = random.Random(SEED)
    kept: dict[str, dict[str, str]] = {}
    phases = []
    for run in range(RUNS):
        phase = PHASES[run % len(PHASES)]
        process, data, log = start_serve(tmp_path)
        if phase == "imports":
            time.sleep(rng.uniform(0.0, 1.0))
        elif phase == "start-up":
            deadline = time.monotonic() + 60
            while not log.read_text() and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            served = ready(process, data, log)
            if phase == "mid-job":
                # 20 s of audio: one chunk, well over the time the workers get to stop
                song = song_bytes(rng.choice([3.0, 20.0]), seed=run)
                job = httpx.post(
                    f"{served.url}api/jobs", params={"name": f"{run}.wav"}, content=song
                ).json()
                wait_running(served.url, job["id"])
            time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGTERM)
        status = process.wait(30)
        text = log.read_text()
        expected = shell_status(status) if phase == "imports" else status
        assert expected == SIGTERM_STATUS, (run, phase, status, text)
        assert_clean_log(text)
        phases.append((phase, status))
        now = finished_jobs(data)
        assert now.items() >= kept.items(), (run, phase)  # every finished job kept, unchanged
        kept = now

    process, data, log = start_serve(tmp_path)
    served = ready(process, data, log)
    try:
        # the interrupted jobs run again; then nothing temporary is left
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listed = {job["id"]: job["state"] for job in httpx.get(f"{served.url}api/jobs").json()}
            if set(listed.values()) <= {"done", "failed"}:
                break
            time.sleep(0.1)
        assert set(listed.values()) == {"done"} and kept.keys() <= listed.keys()
        assert list((data / "uploads").iterdir()) == []
        assert list(data.rglob(".*")) == []
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == SIGTERM_STATUS
    assert_clean_log(log.read_text())
    assert finished_jobs(data).items() >= kept.items()
    # every kind of moment was tried, and umx's own handling answered most of them
    assert {phase for phase, _ in phases} == set(PHASES) and kept
    assert sum(status == SIGTERM_STATUS for _, status in phases) >= 3 * RUNS // 4
