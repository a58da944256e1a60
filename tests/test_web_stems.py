"""A finished job's stems damaged on disk (truncated, overwritten, deleted) are never served,
nor anything made from them: at start, and when a download is asked for, the job is separated
again from its upload, or fails saying so when the upload is gone too."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from test_web import MODEL, local_client, new_app, new_store, post, song_bytes, upload, wait
from umx.files import sha256_file
from umx.jobs import DONE, FAILED, QUEUED, latest_records, read_records
from umx.web.storage import stem_damage


def stems_of(root: Path, job_id: str) -> Path:
    return root / "jobs" / job_id / "stems"


def overwrite_keeping_size_and_time(path: Path) -> None:
    """Change bytes in the middle of a file, its size and modification time kept."""
    stat = path.stat()
    with open(path, "r+b") as file:
        file.seek(stat.st_size // 2)
        file.write(b"\x7f" * 64)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_stem_damage_compares_sizes_and_times_then_hashes(tmp_path):
    path = tmp_path / "vocals.wav"
    path.write_bytes(b"a" * 1000)
    stat = path.stat()
    record = {"sha256": sha256_file(path), "bytes": 1000, "mtime_ns": stat.st_mtime_ns}
    stems, outputs = {"vocals": path}, {"vocals": record}
    assert stem_damage(stems, outputs) is None
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, not changed
    assert stem_damage(stems, outputs) is None
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    overwrite_keeping_size_and_time(path)
    assert stem_damage(stems, outputs) is None  # trusted by its size and time...
    hashed: dict = {}
    expected = "its stem vocals.wav changed since it was separated"
    assert stem_damage(stems, outputs, hashed) == expected  # ...until it is first used
    assert hashed == {}
    path.write_bytes(b"a" * 1000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert stem_damage(stems, outputs, hashed) is None
    assert hashed == {path: (1000, stat.st_mtime_ns)}
    path.write_bytes(b"a" * 999)
    assert stem_damage(stems, outputs, hashed) == expected
    path.unlink()
    assert stem_damage(stems, outputs) == "its stem vocals.wav is missing"
    assert stem_damage(stems, {}) == "its stem vocals.wav has no record of what was written"


def test_damaged_stems_are_separated_again_at_start(tmp_path):
    root = tmp_path / "data"
    first = new_store(root)
    first.start(1)
    songs = [song_bytes(0.4, seed) for seed in (51, 52, 53, 54)]  # (their headers have a time)
    try:
        jobs = [
            first.add(upload(first, song), first.options(MODEL, "all"))[0]["id"] for song in songs
        ]
        done = {job_id: wait(first, job_id) for job_id in jobs}
    finally:
        first.stop()
    truncated, overwritten, gone, intact = jobs
    vocals = stems_of(root, truncated) / "vocals.wav"
    vocals.write_bytes(vocals.read_bytes()[:1000])
    bass = stems_of(root, overwritten) / "bass.wav"
    bass.write_bytes(bass.read_bytes()[:-64] + b"\x7f" * 64)  # the same size, a new time
    (stems_of(root, gone) / "drums.wav").unlink()
    (root / "jobs" / gone / "input").unlink()
    (root / "jobs" / intact / "downloads").mkdir()
    (root / "jobs" / intact / "downloads" / "vocals.flac").write_bytes(b"kept")

    second = new_store(root)
    states = {job["id"]: job for job in second.jobs()}
    assert [states[job_id]["state"] for job_id in jobs] == [QUEUED, QUEUED, FAILED, DONE]
    assert [states[job_id]["position"] for job_id in jobs] == [1, 2, None, None]
    assert states[gone]["error"] == (
        "song.wav was damaged on disk (its stem drums.wav is missing) and its upload is gone "
        "too; upload it again"
    )
    for job_id in (truncated, overwritten, gone):  # nothing made from them is left
        assert sorted(p.name for p in (root / "jobs" / job_id).iterdir()) == (
            [] if job_id == gone else ["input"]
        )
    assert (root / "jobs" / intact / "downloads" / "vocals.flac").read_bytes() == b"kept"
    with local_client(new_app(second)) as client:
        for job_id in (truncated, overwritten):
            refused = client.get(f"/api/jobs/{job_id}/stems/vocals.wav")
            assert refused.status_code == 409
            assert refused.json()["error"] == (
                "song.wav is still waiting to be separated; download it when it is done"
            )
        assert client.get(f"/api/jobs/{gone}/stems/vocals.wav").status_code == 404
        # the same song again replaces the failed job
        again = post(client, songs[2])
        assert again.status_code == 201 and again.json()["id"] == gone
        second.start(1)
        try:
            for job_id in (truncated, overwritten, gone):
                assert wait(second, job_id)["targets"] == done[job_id]["targets"]
            for job_id in jobs:
                path = stems_of(root, job_id) / "vocals.wav"
                assert client.get(f"/api/jobs/{job_id}/stems/vocals.wav").content == (
                    path.read_bytes()
                )
        finally:
            second.stop()
    latest = latest_records(read_records(root / "jobs.jsonl"))
    for job_id in jobs:
        assert latest[job_id]["status"] == DONE
        bass = stems_of(root, job_id) / "bass.wav"
        assert latest[job_id]["outputs"]["bass"]["sha256"] == sha256_file(bass)


def test_a_stem_damaged_while_serving_is_never_served(tmp_path):
    store = new_store(tmp_path / "data")
    store.start(1)
    try:
        with local_client(new_app(store)) as client:
            song = song_bytes(0.4, 61)
            job = wait(store, post(client, song).json()["id"])
            base, stems = f"/api/jobs/{job['id']}", stems_of(tmp_path / "data", job["id"])
            # a change that keeps the size and time is caught when the stem is first used
            for url in ("/stems/drums.wav", "/stems/vocals.flac", "/zip/wav", "/mix/wav"):
                overwrite_keeping_size_and_time(stems / "drums.wav")
                refused = client.get(base + url, params={"vocals": "1"})
                assert refused.status_code == 409, url
                assert refused.json()["error"] == (
                    "song.wav was damaged on disk (its stem drums.wav changed since it was "
                    "separated), so it is being separated again; download it when it is done"
                )
                assert wait(store, job["id"])["state"] == DONE
            # nor is a download made before its stem was damaged
            assert client.get(f"{base}/stems/vocals.flac").status_code == 200
            (stems / "vocals.wav").unlink()
            missing = client.get(f"{base}/stems/vocals.flac")
            assert missing.status_code == 409
            assert "(its stem vocals.wav is missing)" in missing.json()["error"]
            redone = wait(store, job["id"])
            assert redone["state"] == DONE
            wav = client.get(f"{base}/stems/drums.wav")
            assert wav.status_code == 200 and wav.content == (stems / "drums.wav").read_bytes()
            audio, _ = soundfile.read(io.BytesIO(wav.content))
            assert np.abs(audio).max() > 0
            # a song uploaded again while its stems are damaged is separated again
            (stems / "bass.wav").unlink()
            again = post(client, song)
            assert again.status_code == 201 and again.json()["state"] == QUEUED
            assert wait(store, job["id"])["state"] == DONE
            assert client.get(f"{base}/stems/bass.wav").status_code == 200
    finally:
        store.stop()
