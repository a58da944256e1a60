"""`umx serve` through its HTTP API: separation, downloads, limits, hostile names, busy queue,
failures, deletion, the cache limit, server-sent events and restarts (the bundled umxsynth)."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import queue
import shutil
import socket
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import torch

import umx.jobs
from processes import BOUND_S, wait_for
from umx import api
from umx.cli import main
from umx.errors import UmxError
from umx.files import sha256_file
from umx.jobs import DONE, FAILED, QUEUED, RUNNING, latest_records, read_records
from umx.web import cache as web_cache
from umx.web.jobs import JobStore
from umx.web.records import Job
from umx.web.run import bind, listen
from umx.web.storage import folder_size

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from umx.web.server import create_app  # noqa: E402

RATE = 44100
MODEL = "umxsynth"
MODELS = ["umxsynth", "umxl"]


def song_bytes(seconds: float, seed: int, rate: int = RATE) -> bytes:
    """A short stereo wav: a chord, a bass line and noise bursts, different for each seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 800, 3))
    bass = 0.2 * np.sin(2 * np.pi * rng.uniform(40, 90) * t)
    bursts = 0.2 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 4 * t) > 0.9)
    audio = np.stack([chord + bass + bursts, chord + bass - bursts], axis=1)
    buffer = io.BytesIO()
    soundfile.write(buffer, audio.astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def new_store(root: Path, **options) -> JobStore:
    settings = {"models": MODELS, "max_queue": 8, "max_cache_bytes": 1 << 30, **options}
    return JobStore(root, **settings)


def new_app(store: JobStore, max_upload_bytes: int = 10 << 20):
    return create_app(store, default_model=MODEL, max_upload_bytes=max_upload_bytes)


def wait(store: JobStore, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.job(job_id)
        if job["state"] in (DONE, FAILED):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end in {timeout} s: {store.job(job_id)}")


class Held:
    """The records of a store's running jobs (a job's start, then each progress report) held in
    the worker that tells them until the test lets each go (`next`), so that a client of the
    events sees each before the next is made, whatever the load: a server too busy to send a
    job's changes as they come merges them (only the newest is sent), and a job may end before
    a client has seen it start. Enter it once the client has read the first event of its stream
    (the stream's listener is then told of each record before it is held). Leaving it lets every
    job go on."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._held: queue.Queue[tuple[dict, threading.Event]] = queue.Queue()
        self._holding = False
        self._gate: threading.Event | None = None

    def __enter__(self) -> Held:
        self._holding = True
        self._unsubscribe = self._store.subscribe(self._told)
        return self

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self._holding = False
        self._unsubscribe()
        self.release()
        while not self._held.empty():
            self._held.get()[1].set()

    def _told(self, record: dict) -> None:
        with self._lock:
            if not self._holding or record["state"] != RUNNING:
                return
            gate = threading.Event()
            self._held.put((record, gate))
        gate.wait(BOUND_S)

    def next(self) -> dict:
        """Let the record held go, and wait for the next one (the worker waits on it)."""
        self.release()
        record, self._gate = self._held.get(timeout=BOUND_S)
        return record

    def release(self) -> None:
        """Let the record held go."""
        if self._gate is not None:
            self._gate.set()
            self._gate = None


def unrevised(record: dict) -> dict:
    """A job's record but its revision, which each reading draws anew."""
    return {name: value for name, value in record.items() if name != "revision"}


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


@contextlib.contextmanager
def serving(app):
    """The app behind a real uvicorn server on 127.0.0.1 and a free port; yields its URL."""
    sock = listen(bind("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def store(tmp_path):
    store = new_store(tmp_path / "data")
    store.start(1)
    yield store
    store.stop()


@pytest.fixture
def client(store):
    with local_client(new_app(store)) as client:
        yield client


@contextlib.contextmanager
def local_client(app):
    """A client of the app served on 127.0.0.1 (a loopback host name, as a browser here asks)."""
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def post(client, data: bytes, name: str = "song.wav", **query):
    return client.post("/api/jobs", params={"name": name, **query}, content=data)


def separated(client, store: JobStore, seconds: float, seeds) -> list[str]:
    """The ids of songs of `seconds` (one per seed) posted through `client`, once all are done."""
    ids = [
        post(client, song_bytes(seconds, seed), name=f"{seed}.wav").json()["id"] for seed in seeds
    ]
    for job_id in ids:
        wait(store, job_id)
    return ids


def test_separates_an_upload_into_the_stems_of_the_api(client, store, tmp_path):
    data = song_bytes(1.5, seed=1)
    response = post(client, data, stems="all")
    assert response.status_code == 201
    job = wait(store, response.json()["id"])
    assert job["state"] == DONE and job["targets"] == ["vocals", "drums", "bass", "other"]
    assert job["duration"] == pytest.approx(1.5)

    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    expected = api.separate(audio.T, rate, MODEL)
    for target in job["targets"]:
        served = client.get(f"/api/jobs/{job['id']}/stems/{target}.wav")
        assert served.status_code == 200 and served.headers["content-type"] == "audio/wav"
        assert "song-" + target + ".wav" in served.headers["content-disposition"]
        stem, stem_rate = soundfile.read(io.BytesIO(served.content), dtype="float32")
        assert stem_rate == RATE and stem.shape == audio.shape
        np.testing.assert_allclose(stem.T, expected[target].numpy(), atol=2e-5)

    # the same song and options again: the same job, not separated twice
    again = post(client, data, name="copy.wav", stems="all")
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert again.json()["name"] == "song.wav"

    # vocals + accompaniment: a second job; accompaniment is the residual beside the vocals
    karaoke = post(client, data, stems="vocals")
    assert karaoke.status_code == 201 and karaoke.json()["id"] != job["id"]
    two = wait(store, karaoke.json()["id"])
    assert two["targets"] == ["vocals", "accompaniment"]
    wav = client.get(f"/api/jobs/{two['id']}/stems/accompaniment.wav").content
    accompaniment, _ = soundfile.read(io.BytesIO(wav), dtype="float32")
    rest = api.separate(audio.T, rate, MODEL, targets=["vocals"], residual="accompaniment")
    np.testing.assert_allclose(accompaniment.T, rest["accompaniment"].numpy(), atol=5e-5)

    # flac and mp3 through the audio writer, and the zip of every stem
    flac = client.get(f"/api/jobs/{job['id']}/stems/vocals.flac")
    assert flac.headers["content-type"] == "audio/flac"
    vocals, _ = soundfile.read(io.BytesIO(flac.content), dtype="float32")
    np.testing.assert_allclose(vocals.T, expected["vocals"].numpy(), atol=2 / 32768)
    archive = client.get(f"/api/jobs/{job['id']}/zip/mp3")
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as opened:
        assert sorted(opened.namelist()) == [f"song/{t}.mp3" for t in sorted(job["targets"])]
    listed = client.get("/api/jobs").json()
    assert [j["id"] for j in listed] == [two["id"], job["id"]]


def test_a_song_sent_in_a_form_is_refused_saying_how_to_send_it(store):
    """`curl -F file=@song.mp3` was decoded with the form's bytes around the song: an mp3
    separated 1105 samples late and marked done, a wav "not decodable audio"."""
    with local_client(new_app(store)) as client:
        files = {"file": ("song.wav", song_bytes(0.5, 0), "audio/wav")}
        refused = client.post("/api/jobs", params={"name": "song.wav"}, files=files)
        assert refused.status_code == 415
        assert refused.json()["error"] == (
            "song.wav came inside a form (multipart/form-data); send the file itself as the "
            "body (curl --data-binary @FILE)"
        )
        assert client.get("/api/jobs").json() == []
        typed = client.post(  # the raw body, whatever its type says, is the song
            "/api/jobs",
            params={"name": "song.wav"},
            content=song_bytes(0.5, 0),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert typed.status_code == 201


def test_upload_limit_is_enforced_while_the_body_arrives(store, tmp_path):
    limit = 256 << 10
    app = new_app(store, max_upload_bytes=limit)
    with local_client(app) as client:
        declared = post(client, b"\0" * (limit + 1))
        assert declared.status_code == 413
        assert declared.json()["error"] == (
            "song.wav is larger than the upload limit of 0.25 MB (umx serve --max-upload-mb)"
        )
    with serving(app) as url:
        # a chunked body that never ends: the answer must come once the limit is passed
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as conn:
            conn.sendall(
                b"POST /api/jobs?name=big.wav HTTP/1.1\r\nHost: 127.0.0.1:%s\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" % port.encode()
            )
            # just past the limit, and no more: the server reads all that is sent (a server that
            # closes with unread data would reset the connection and lose its answer)
            piece = b"\1" * 65536
            for _ in range(limit // len(piece) + 1):
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                received = conn.recv(65536)
                if not received:
                    break
                answer += received
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"big.wav is larger than the upload limit" in answer
    assert files_under(store.root) == {"jobs.jsonl"} and store.jobs() == []
    assert (store.root / "jobs.jsonl").read_bytes() == b""


@pytest.mark.parametrize(
    "sent",
    [
        b"Content-Length: 352844\r\n\r\n" + b"RIFF" + b"\0" * 996,  # the tab closed mid-upload
        b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n",  # a malformed chunked body
    ],
)
def test_a_client_that_leaves_during_its_upload_is_no_error(store, capfd, caplog, sent):
    caplog.set_level(logging.INFO, logger="umx")
    with serving(new_app(store)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as conn:
            conn.sendall(
                b"POST /api/jobs?name=s.wav HTTP/1.1\r\nHost: %s:%s\r\n"
                % (host.encode(), port.encode())
            )
            conn.sendall(sent)
        told = "s.wav: the client left during its upload; nothing was kept"
        wait_for(lambda: told in caplog.messages, "the upload's end told")
        with local_client(new_app(store)) as client:  # and the server goes on
            assert client.get("/api/jobs").json() == []
    assert files_under(store.root) == {"jobs.jsonl"}
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err


def test_file_names_are_never_paths(client, store, tmp_path):
    names = ["../../../evil.wav", "/etc/passwd", "..\\..\\win.wav", "a\x00b\nc.wav", "..", ""]
    songs = [song_bytes(0.25, seed=20 + index) for index in range(len(names))]
    ids = []
    for name, data in zip(names, songs, strict=True):
        response = post(client, data, name=name)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    shown = [client.get(f"/api/jobs/{job_id}").json()["name"] for job_id in ids]
    assert shown == ["evil.wav", "passwd", "win.wav", "abc.wav", "..", "untitled"]
    job = wait(store, ids[0])
    for job_id in ids[1:]:  # not needed: spare the CPU
        if client.delete(f"/api/jobs/{job_id}").status_code != 204:
            raise AssertionError(job_id)
    store.stop(timeout=60)
    assert {p.name for p in tmp_path.iterdir()} == {"data"}
    stored = files_under(store.root) - {"jobs.jsonl"}
    assert stored and all(name.startswith(f"jobs/{job['id']}/") for name in stored)

    for path in [
        f"/api/jobs/{job['id']}/stems/..%2Finput.wav",
        f"/api/jobs/{job['id']}/stems/..%2F..%2F{job['id']}%2Fjob.json",
        f"/api/jobs/{job['id']}/stems/vocals.json",
        f"/api/jobs/{job['id']}/zip/..%2F..",
        "/api/jobs/..%2F..%2Fjobs",
        f"/api/jobs/{job['id'][:-1]}.",
        "/static/..%2Fjobs.py",
        "/static/../jobs.py",
    ]:
        response = client.get(path)
        assert response.status_code == 404, path
    assert client.delete("/api/jobs/..%2F..%2Fjobs").status_code == 404
    # a name that is not a file name still downloads under a safe one
    disposition = client.get(f"/api/jobs/{job['id']}/zip/wav").headers["content-disposition"]
    assert disposition == 'attachment; filename="evil-stems-wav.zip"'
    named = post(client, songs[0], name="..")
    assert named.json()["id"] == job["id"]  # known already: the first name stays


def test_type_is_checked_by_decoding_not_by_name(client, store):
    refused = post(client, b"not audio at all, just text\n" * 10, name="song.wav")
    assert refused.status_code == 422
    assert refused.json()["error"].startswith("song.wav is not decodable audio")
    assert post(client, b"", name="empty.wav").json() == {"error": "empty.wav is empty"}
    for subtype in ("FLOAT", "PCM_16"):  # a header and no frames: refused at once, not queued
        silent = io.BytesIO()
        soundfile.write(silent, np.zeros((0, 2), np.float32), RATE, format="WAV", subtype=subtype)
        refused = post(client, silent.getvalue(), name="none.wav")
        assert refused.status_code == 422
        assert refused.json() == {"error": "none.wav contains no audio"}
    song = song_bytes(1.0, seed=3)
    cut = post(client, song[: len(song) // 2], name="cut")  # stored without its name's extension
    assert cut.status_code == 422
    assert cut.json()["error"] == (
        "cut is truncated: its header declares 1.00 s but the file holds 0.50 s"
    )
    accepted = post(client, song_bytes(0.5, seed=3), name="notes.txt")
    assert accepted.status_code == 201
    assert wait(store, accepted.json()["id"])["state"] == DONE
    assert [j["name"] for j in store.jobs()] == ["notes.txt"]
    assert list(store.uploads_dir.iterdir()) == []


def test_concurrent_uploads_fill_a_bounded_queue(tmp_path):
    store = new_store(tmp_path / "data", max_queue=3)
    songs = [song_bytes(0.5, seed=10 + i) for i in range(6)]
    with serving(new_app(store)) as url, ThreadPoolExecutor(6) as pool:

        def send(index: int) -> httpx.Response:
            query = {"name": f"song{index}.wav"}
            return httpx.post(f"{url}/api/jobs", params=query, content=songs[index], timeout=30)

        responses = list(pool.map(send, range(6)))
        codes = sorted(response.status_code for response in responses)
        assert codes == [201, 201, 201, 503, 503, 503]
        busy = next(r for r in responses if r.status_code == 503).json()["error"]
        assert busy in (  # said while uploads arrive, or once they are all jobs
            "the server is busy: 3 songs are waiting or arriving; try again when one is done",
            "the server is busy: 3 songs are waiting; try again when one is done",
        )
        assert list(store.uploads_dir.iterdir()) == []
        store.start(2)
        try:
            created = [r.json()["id"] for r in responses if r.status_code == 201]
            assert [wait(store, job_id)["state"] for job_id in created] == [DONE] * 3
            retry = send(next(i for i, r in enumerate(responses) if r.status_code == 503))
            assert retry.status_code == 201
            assert wait(store, retry.json()["id"])["state"] == DONE  # the queue is empty again
            # the same new song from three clients at once (each takes a place while it
            # arrives): one job
            songs[0] = song_bytes(0.5, seed=99)
            same = list(pool.map(send, [0] * 3))
            assert sorted(r.status_code for r in same) == [200, 200, 201]
            assert len({r.json()["id"] for r in same}) == 1
            assert wait(store, same[0].json()["id"])["state"] == DONE
            assert len(store.jobs()) == 5
        finally:
            store.stop()


def test_a_failed_job_says_why_and_the_server_keeps_serving(client, store):
    # umxl is not in the (empty, offline) cache: its job fails with the loader's sentence
    failed = post(client, song_bytes(0.5, seed=4), name="offline.wav", model="umxl")
    assert failed.status_code == 201
    job = wait(store, failed.json()["id"])
    assert job["state"] == FAILED
    assert "umxl" in job["error"] and "offline" in job["error"]
    assert "\n" not in job["error"] and "Traceback" not in job["error"]
    assert client.get(f"/api/jobs/{job['id']}/zip/wav").status_code == 404
    works = post(client, song_bytes(0.5, seed=4), name="ok.wav")
    assert wait(store, works.json()["id"])["state"] == DONE
    # bad options are refused before the upload is read
    assert post(client, b"x", model="../umxl").status_code == 422
    assert post(client, b"x", stems="piano").json()["error"] == (
        "unknown stems 'piano' for umxsynth; choose all, vocals, drums, bass or other"
    )
    elsewhere = client.post("/api/jobs", content=b"x", headers={"Origin": "http://evil.example"})
    assert elsewhere.status_code == 403
    foreign = client.get("/api/jobs", headers={"Host": "evil.example"})
    assert foreign.status_code == 421


def test_events_report_progress_until_done(tmp_path):
    store = new_store(tmp_path / "data", segment=1.0, overlap=0.25)
    with serving(new_app(store)) as url:
        store.start(1)
        try:
            seen = []
            with httpx.stream("GET", f"{url}/api/events", timeout=60) as events:
                lines = events.iter_lines()
                assert next(lines) == "event: jobs"
                assert json.loads(next(lines).removeprefix("data: ")) == []
                # 4 s in chunks of 1 s: progress after each chunk, then done; each read before
                # the next is made (the stream's listener is told first: it came before `Held`)
                with Held(store) as held:
                    response = httpx.post(
                        f"{url}/api/jobs", params={"name": "long.wav"}, content=song_bytes(4, 5)
                    )
                    job_id = response.json()["id"]
                    for line in lines:
                        if line.startswith("data: "):
                            record = json.loads(line.removeprefix("data: "))
                            assert record["id"] == job_id
                            seen.append((record["state"], record["progress"]))
                            if record["state"] == RUNNING:  # read: the next may be made
                                assert held.next()["revision"] == record["revision"]
                                held.release()
                            if record["state"] == DONE:
                                break
            progress = [p for s, p in seen if s == "running"]
            # a job's changes that come faster than they are read are merged: queued may be
            # replaced by running
            assert seen[0][0] in (QUEUED, "running") and seen[-1] == (DONE, 1.0)
            assert progress == sorted(progress) and 0 < progress[1] < 1
            assert len(set(progress)) >= 3
        finally:
            store.stop()


def test_events_never_tell_a_change_older_than_one_told(tmp_path):
    """The thread that queues a job tells it after the worker may have told it failed: the
    older record, arriving last, must not be the job's state on the page."""
    store = new_store(tmp_path / "data")
    arrived, failed = [], threading.Event()

    def slow(record):  # holds the thread that queued the job until the worker failed it
        if record["state"] == QUEUED and not failed.is_set():
            assert failed.wait(30)
        arrived.append(record)
        if record["state"] == FAILED:
            failed.set()

    store.subscribe(slow)  # before the events' listener: it is called first
    with serving(new_app(store)) as url:
        store.start(1)
        try:
            with httpx.stream("GET", f"{url}/api/events", timeout=60) as events:
                lines = (json.loads(x[6:]) for x in events.iter_lines() if x.startswith("data"))
                assert next(lines) == []
                upload = store.new_upload("offline.wav", 1 << 20)
                upload.write(song_bytes(0.2, seed=1))
                job, _ = store.add(upload, store.options("umxl", "all"))  # fails: offline
                assert [r["state"] for r in arrived] == [RUNNING, FAILED, QUEUED]
                revisions = [r["revision"] for r in arrived]
                assert revisions[2] < revisions[0] < revisions[1]  # the queued one is older
                told = []  # until a change made after: the other job, queued
                other = store.new_upload("other.wav", 1 << 20)
                other.write(song_bytes(0.2, seed=2))
                second, _ = store.add(other, store.options("umxl", "all"))
                for record in lines:
                    if record["id"] == second["id"]:
                        break
                    told.append(record)
            assert told and told[-1]["state"] == FAILED
            assert [r["revision"] for r in told] == sorted(r["revision"] for r in told)
            assert store.job(job["id"])["revision"] > told[-1]["revision"]
        finally:
            store.stop()


def test_delete_and_the_cache_limit(client, store, tmp_path):
    first = post(client, song_bytes(0.5, seed=6), name="first.wav").json()["id"]
    wait(store, first)
    assert client.delete(f"/api/jobs/{first}").status_code == 204
    assert client.get(f"/api/jobs/{first}").status_code == 404
    assert files_under(store.root) == {"jobs.jsonl"}  # its folder gone, its deletion recorded
    assert [r["status"] for r in read_records(store.root / "jobs.jsonl")][-1] == "deleted"
    with pytest.raises(UmxError, match="in use by another umx serve"):
        new_store(store.root)  # two stores never share a data directory
    assert store.stop(timeout=30)
    after_restart = new_store(store.root)
    assert after_restart.jobs() == [] and after_restart.stop(timeout=30)
    assert client.delete(f"/api/jobs/{first}").status_code == 404

    small = new_store(tmp_path / "small", max_cache_bytes=1)
    small.start(1)
    try:
        ids = []
        for seed in (7, 8, 9):
            ids.append(small.add(upload(small, song_bytes(0.5, seed)), small.options(MODEL, "all")))
            wait(small, ids[-1][0]["id"])
        newest = [ids[-1][0]["id"]]
        # the worker removes the older jobs just after the newest has ended
        wait_for(lambda: [job["id"] for job in small.jobs()] == newest, "the older jobs removed")
        assert [p.name for p in small.jobs_dir.iterdir()] == newest
    finally:
        assert small.stop(timeout=30)
    restarted = new_store(small.root)
    assert [job["id"] for job in restarted.jobs()] == [ids[-1][0]["id"]]
    assert restarted.stop(timeout=30)


def test_a_download_made_past_the_limit_is_sent_then_removed_and_no_song_goes(tmp_path):
    """A flac (or zip) made past the limit made the limit remove another song, and was kept."""
    store = new_store(tmp_path / "data")
    store.start(1)
    try:
        with local_client(new_app(store)) as client:
            ids = separated(client, store, 0.5, (1, 2, 3))
            store.max_cache_bytes = sum(folder_size(path) for path in store.jobs_dir.iterdir())
            oldest, middle, _ = ids
            got = client.get(f"/api/jobs/{oldest}/stems/vocals.flac")  # made, then over the limit
            assert got.status_code == 200
            audio, _ = soundfile.read(io.BytesIO(got.content))
            assert audio.shape == (int(0.5 * RATE), 2) and np.abs(audio).max() > 0
            wait_for(lambda: not (store.jobs_dir / oldest / "downloads").exists()
                     or not any((store.jobs_dir / oldest / "downloads").iterdir()),
                     "the flac removed once sent")  # fmt: skip
            assert {job["id"] for job in store.jobs()} == set(ids)
            assert client.get(f"/api/jobs/{middle}/stems/vocals.wav").status_code == 200
            assert folder_size(store.jobs_dir) <= store.max_cache_bytes
    finally:
        assert store.stop(timeout=30)


def test_the_limit_counts_each_byte_once_and_holds_at_start(tmp_path, monkeypatch):
    """A song's downloads removed in the same pass as the song were subtracted twice, so the
    pass stopped over the limit; and a limit lowered between two runs waited for a change."""
    monkeypatch.setattr(web_cache, "ASKED_S", 0.0)  # as if the downloads were long ago
    store = new_store(tmp_path / "data")
    store.start(1)
    try:
        ids = []
        for seconds, seed in ((1, 1), (0.1, 2), (0.5, 3)):
            song = upload(store, song_bytes(seconds, seed))
            ids.append(wait(store, store.add(song, store.options(MODEL, "all"))[0]["id"])["id"])
        oldest, small, newest = ids
        mix, _, _ = store.mix_file(oldest, {"vocals": "0.5"}, "wav")  # larger than `small`
        store.release(mix)
        assert mix.stat().st_size > folder_size(store.jobs_dir / small)
        store.max_cache_bytes = folder_size(store.jobs_dir / newest) + 1000
        store._evict()
        assert [job["id"] for job in store.jobs()] == [newest]
    finally:
        assert store.stop(timeout=30)
    lowered = new_store(store.root, max_cache_bytes=1)
    lowered.start(1)
    try:
        assert [job["id"] for job in lowered.jobs()] == [newest]  # the newest always stays
    finally:
        assert lowered.stop(timeout=30)


def test_downloads_made_count_against_the_cache_limit_least_recently_used_first(tmp_path):
    store = new_store(tmp_path / "data")
    store.start(1)
    try:
        with local_client(new_app(store)) as client:
            older, job_id = separated(client, store, 1, (1, 2))
            songs = sum(folder_size(path) for path in store.jobs_dir.iterdir())
            mix_bytes = int(RATE * 2 * 4)  # one second of stereo float
            store.max_cache_bytes = songs + 2 * mix_bytes + mix_bytes // 2  # two mixes fit
            downloads = store.jobs_dir / job_id / "downloads"
            for index in range(1, 9):  # each gain setting is a new file
                got = client.get(f"/api/jobs/{job_id}/mix/wav", params={"vocals": index / 10})
                assert got.status_code == 200 and len(got.content) > mix_bytes
                # released once sent, then removed
                wait_for(lambda: len(list(downloads.iterdir())) <= 2, "the older mixes removed")
                assert folder_size(store.jobs_dir) <= store.max_cache_bytes
            assert len(list(downloads.iterdir())) == 2  # the last two made: 0.7 and 0.8
            # 0.7 asked for again is used more recently than 0.8, which goes first
            assert client.get(f"/api/jobs/{job_id}/mix/wav", params={"vocals": 0.7}).is_success
            seven = max(downloads.iterdir(), key=lambda path: path.stat().st_mtime_ns)
            assert client.get(f"/api/jobs/{job_id}/mix/wav", params={"vocals": 0.9}).is_success
            wait_for(lambda: len(list(downloads.iterdir())) == 2, "the least recent mix removed")
            assert seven.exists()
            # the zip takes 4 s of stems: sent whole, then removed with the mixes; both songs stay
            got = client.get(f"/api/jobs/{job_id}/zip/wav")
            assert got.is_success and len(got.content) > 4 * mix_bytes
            wait_for(lambda: not any(downloads.iterdir()), "the downloads removed")
            assert {job["id"] for job in store.jobs()} == {older, job_id}
            assert folder_size(store.jobs_dir) <= store.max_cache_bytes
    finally:
        assert store.stop(timeout=30)


def test_a_download_being_sent_is_never_removed(tmp_path):
    store = new_store(tmp_path / "data", max_cache_bytes=1)
    store.start(1)
    try:
        job_id = store.add(upload(store, song_bytes(0.5, 3)), store.options(MODEL, "all"))[0]["id"]
        wait(store, job_id)
        sent, _, _ = store.mix_file(job_id, {"vocals": "0.5"}, "wav")  # held, as a route does
        content = sent.read_bytes()
        for gain in ("0.25", "0.75"):
            other, _, _ = store.mix_file(job_id, {"drums": gain}, "flac")
            store.release(other)
            assert not other.exists()  # over the limit: removed once released
        assert sent.read_bytes() == content
        store.release(sent)
        assert not sent.exists()
        assert [job["id"] for job in store.jobs()] == [job_id]  # the newest song stays
    finally:
        assert store.stop(timeout=30)


def upload(store: JobStore, data: bytes, name: str = "song.wav"):
    received = store.new_upload(name, 10 << 20)
    received.write(data)
    return received


def test_restart_keeps_finished_jobs_and_queues_unfinished_ones(tmp_path):
    root = tmp_path / "data"
    first = new_store(root)
    first.start(1)
    done, _ = first.add(upload(first, song_bytes(0.5, 11)), first.options(MODEL, "all"))
    wait(first, done["id"])
    first.stop()
    pending, _ = first.add(upload(first, song_bytes(0.5, 12)), first.options(MODEL, "vocals"))
    assert first.job(pending["id"])["state"] == QUEUED
    # leftovers of a crash: a half upload, a half job folder, a half stems folder; and a
    # folder that is not a job
    (root / "uploads" / ".dead.part").write_bytes(b"x")
    (root / "jobs" / f".{pending['id']}.1234").mkdir()
    (root / "jobs" / done["id"] / ".stems.abcd").mkdir()
    (root / "jobs" / done["id"] / "downloads").mkdir()
    (root / "jobs" / done["id"] / "downloads" / ".stems-flac.zip.1234.tmp").write_bytes(b"x")
    (root / "jobs" / "stranger").mkdir()
    # stems renamed into place just before a stop, the job not yet recorded as done
    (root / "jobs" / pending["id"] / "stems").mkdir()
    (root / "jobs" / pending["id"] / "stems" / "vocals.wav").write_bytes(b"x")

    second = new_store(root)
    jobs = {job["id"]: job for job in second.jobs()}
    assert jobs[done["id"]]["state"] == DONE and jobs[pending["id"]]["state"] == QUEUED
    assert list(second.uploads_dir.iterdir()) == []
    assert sorted(p.name for p in second.jobs_dir.iterdir()) == sorted(
        [done["id"], pending["id"], "stranger"]
    )
    assert not (root / "jobs" / done["id"] / ".stems.abcd").exists()
    assert list((root / "jobs" / done["id"] / "downloads").iterdir()) == []
    assert not (root / "jobs" / pending["id"] / "stems").exists()
    with local_client(new_app(second)) as client:
        wav = client.get(f"/api/jobs/{done['id']}/stems/drums.wav")
        assert soundfile.info(io.BytesIO(wav.content)).duration == pytest.approx(0.5)
        second.start(1)
        try:
            assert wait(second, pending["id"])["targets"] == ["vocals", "accompaniment"]
        finally:
            second.stop()


def test_stop_ends_a_running_separation_and_keeps_its_job_queued(tmp_path):
    root = tmp_path / "data"
    store = new_store(root, segment=1.0, overlap=0.25)
    job, _ = store.add(upload(store, song_bytes(12, 13)), store.options(MODEL, "all"))
    with Held(store) as held:  # held at its first progress report, it cannot end before the stop
        store.start(1)
        while held.next()["progress"] == 0:  # its start
            pass
        assert not store.stop(timeout=0)  # asked, while the worker is held mid-job
    assert store.stop(timeout=30)  # it stops at its next chunk
    assert latest_records(read_records(root / "jobs.jsonl"))[job["id"]]["status"] == "running"
    assert {path.name for path in (root / "jobs" / job["id"]).iterdir()} == {"input"}
    again = new_store(root)
    assert again.job(job["id"])["state"] == QUEUED
    again.start(1)
    try:
        assert wait(again, job["id"])["state"] == DONE
    finally:
        again.stop()


def test_the_manifest_is_replayed_and_compacted_at_start(tmp_path):
    root = tmp_path / "data"
    first = new_store(root)
    first.start(1)
    try:
        jobs = [first.add(upload(first, song_bytes(0.3, 20)), first.options(MODEL, "all"))[0]]
        jobs.append(first.add(upload(first, song_bytes(0.3, 21)), first.options(MODEL, "drums"))[0])
        done = [wait(first, job["id"]) for job in jobs]
        first.delete(jobs[0]["id"])
    finally:
        first.stop()
    records = read_records(root / "jobs.jsonl")
    assert [r["status"] for r in records if r["input"] == jobs[1]["id"]] == [
        "queued",
        "running",
        "done",
    ]
    outputs = records[-2]["outputs"]  # the done job's stems, where they are now, with hashes
    assert list(outputs) == ["drums", "no_drums"] == done[1]["targets"]
    for name, output in outputs.items():
        path = root / "jobs" / jobs[1]["id"] / "stems" / f"{name}.wav"
        assert output["path"] == str(path) and output["sha256"] == sha256_file(path)
    before = (root / "jobs.jsonl").read_bytes()
    second = new_store(root)
    assert [unrevised(job) for job in second.jobs()] == [unrevised({**done[1], "position": None})]
    assert (root / "jobs.jsonl").read_bytes() == before  # nothing written until it starts
    second.start(1)
    second.stop()
    assert read_records(root / "jobs.jsonl") == [records[-2]]  # compacted: the live job's record


def old_data_dir(root: Path) -> dict[str, dict]:
    """A data directory as umx serve kept it before its manifest: a `job.json` in each job's
    folder (one done, one failed, one left running), and one folder whose `job.json` is not a
    job's; returns the jobs as they were listed."""
    store = new_store(root)
    store.start(1)
    try:
        ids = [
            store.add(upload(store, song_bytes(0.3, seed)), store.options(model, "all"))[0]["id"]
            for seed, model in ((31, MODEL), (32, "umxl"), (33, MODEL))
        ]
        listed = {job_id: wait(store, job_id) for job_id in ids}
    finally:
        store.stop()
    manifest = root / "jobs.jsonl"
    for job_id, record in latest_records(read_records(manifest)).items():
        job = Job.from_record(record)
        if job_id == ids[2]:
            job.state, job.finished, job.seconds = "running", None, None
            job.progress, job.targets = 0.5, []
            shutil.rmtree(root / "jobs" / job_id / "stems")
            listed[job_id] = {**listed[job_id], **vars(job), "state": QUEUED, "progress": 0.0}
        (root / "jobs" / job_id / "job.json").write_text(json.dumps(asdict(job)))
    manifest.unlink()
    (root / "jobs" / ("f" * 32)).mkdir()
    (root / "jobs" / ("f" * 32) / "job.json").write_text('{"id": 5}')
    return listed


def test_the_jobs_of_an_older_data_directory_are_kept(tmp_path, caplog):
    root = tmp_path / "data"
    listed = old_data_dir(root)
    store = new_store(root)
    jobs = {job["id"]: job for job in store.jobs()}
    assert {job_id: job["state"] for job_id, job in jobs.items()} == {
        job_id: job["state"] for job_id, job in listed.items()
    }
    assert [job["state"] for job in jobs.values()] == [QUEUED, FAILED, DONE]
    for job_id, job in listed.items():
        assert unrevised(jobs[job_id]) == unrevised({**job, "position": jobs[job_id]["position"]})
    assert len(list(root.glob("jobs/*/job.json"))) == 4 and not (root / "jobs.jsonl").exists()
    assert f"{root}/jobs/{'f' * 32} is not a job" in caplog.text
    store.start(1)
    try:
        queued = next(job_id for job_id, job in jobs.items() if job["state"] == QUEUED)
        assert wait(store, queued)["state"] == DONE
    finally:
        store.stop()
    # taken into the manifest once, the job.json files gone (but the one that is no job's)
    assert [p.parent.name for p in root.glob("jobs/*/job.json")] == ["f" * 32]
    latest = latest_records(read_records(root / "jobs.jsonl"))
    done = next(job_id for job_id, job in listed.items() if job["state"] == DONE)
    stems = root / "jobs" / done / "stems"
    assert latest[done]["outputs"]["vocals"]["sha256"] == sha256_file(stems / "vocals.wav")
    again = {job["id"]: job["state"] for job in new_store(root).jobs()}
    assert again == {
        job_id: DONE if job_id == queued else job["state"] for job_id, job in jobs.items()
    }


def test_a_damaged_manifest_is_repaired_and_keeps_its_jobs(tmp_path):
    root = tmp_path / "data"
    store = new_store(root)
    store.start(1)
    try:
        job = store.add(upload(store, song_bytes(0.3, 41)), store.options(MODEL, "all"))[0]
        done = wait(store, job["id"])
    finally:
        store.stop()
    manifest = root / "jobs.jsonl"
    pristine = manifest.read_bytes()
    damage = b'{"input": "' + b"\0" * 300 + b"garbage"
    manifest.write_bytes(pristine + damage)
    again = new_store(root)
    assert [unrevised(job) for job in again.jobs()] == [unrevised({**done, "position": None})]
    assert manifest.read_bytes() == pristine + damage  # read, not yet written
    again.start(1)
    again.stop()
    (copy,) = root.glob("jobs.jsonl.cut-*")
    assert copy.read_bytes() == damage and read_records(manifest)[-1]["status"] == DONE
    assert len(read_records(manifest)) == 1  # and compacted


def test_bad_options_and_missing_extra_are_one_line(capsys, monkeypatch, tmp_path):
    for option in (["--port", "70000"], ["--jobs", "0"], ["--max-upload-mb", "nan"]):
        assert main(["serve", "--data-dir", str(tmp_path), *option]) == 1
        error = capsys.readouterr().err
        assert error.startswith(f"umx: error: {option[0]} must be") and error.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--data-dir", str(tmp_path), "--port", str(port)]) == 1
    assert capsys.readouterr().err == (
        f"umx: error: cannot listen on 127.0.0.1:{port}: Address already in use (is umx serve "
        "running there?): give another --port, or 0 for any free one\n"
    )
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--data-dir", str(tmp_path)]) == 1
    assert (
        capsys.readouterr().err == "umx: error: umx serve needs uvicorn: pip install 'umx[web]'\n"
    )


def test_stems_match_the_input_rate_and_channels(client, store):
    mono = np.sin(2 * np.pi * 330 * np.arange(24000) / 48000).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, mono, 48000, format="FLAC")
    job = wait(store, post(client, buffer.getvalue(), name="mono.flac").json()["id"])
    stem = client.get(f"/api/jobs/{job['id']}/stems/bass.wav").content
    info = soundfile.info(io.BytesIO(stem))
    assert (info.samplerate, info.channels, info.frames) == (48000, 1, 24000)
    expected = api.separate(torch.from_numpy(mono)[None], 48000, MODEL)["bass"]
    served, _ = soundfile.read(io.BytesIO(stem), dtype="float32")
    np.testing.assert_allclose(served, expected[0].numpy(), rtol=1e-4, atol=2e-5)
    # more than two channels are averaged (a page cannot ask for --downmix)
    quad = np.random.default_rng(0).uniform(-0.3, 0.3, (11025, 4)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, quad, RATE, format="WAV")
    job = wait(store, post(client, buffer.getvalue(), name="quad.wav").json()["id"])
    info = soundfile.info(io.BytesIO(client.get(f"/api/jobs/{job['id']}/stems/other.wav").content))
    assert (job["state"], info.channels, info.frames) == (DONE, 1, 11025)


def test_an_unknown_job_is_named_as_asked_for(client, store):
    job = wait(store, post(client, song_bytes(0.3, seed=71)).json()["id"])["id"]
    for asked, shown in [
        (job + "4", f"'{job}4'"),  # one digit more: not the job it starts with
        (job + "%00", f"'{job}\\x00'"),
        (job[:-1], f"'{job[:-1]}'"),
        ("f" * 200, "'" + "f" * 17 + "..." + "f" * 18 + "'"),
    ]:
        for url in (f"/api/jobs/{asked}", f"/api/jobs/{asked}/stems/vocals.wav"):
            response = client.get(url)
            assert response.status_code == 404
            assert response.json()["error"] == f"no job {shown}"


def test_the_downloads_of_an_unfinished_job_say_to_wait(tmp_path):
    store = new_store(tmp_path / "data")  # not started: its jobs stay queued
    try:
        queued, _ = store.add(upload(store, song_bytes(0.3, 72)), store.options(MODEL, "all"))
        failed, _ = store.add(upload(store, song_bytes(0.3, 73)), store.options("umxl", "all"))
        with local_client(new_app(store)) as client:
            for url in (
                "stems/vocals.wav",
                "stems/vocals.flac",
                "mixture.wav",
                "mix/wav",
                "zip/wav",
            ):
                response = client.get(f"/api/jobs/{queued['id']}/{url}", params={"vocals": 1})
                assert (response.status_code, response.json()["error"]) == (
                    409,
                    "song.wav is still waiting to be separated; download it when it is done",
                ), url
            store.start(1)
            assert wait(store, failed["id"])["state"] == FAILED
            response = client.get(f"/api/jobs/{failed['id']}/stems/vocals.wav")
            assert (response.status_code, response.json()["error"]) == (
                404,
                "song.wav has no stems: its separation failed; retry it",
            )
    finally:
        store.stop()


@pytest.mark.parametrize("megabytes", ["0.1", "0.01", "0.25", "1.5", "2.3"])
def test_the_upload_limit_is_said_as_given(store, megabytes):
    limit = int(float(megabytes) * 2**20)  # as umx serve --max-upload-mb turns it into bytes
    with local_client(new_app(store, max_upload_bytes=limit)) as client:
        refused = client.post("/api/jobs", content=b"\0" * (limit + 1))
        assert refused.status_code == 413
        assert refused.json()["error"] == (
            f"untitled is larger than the upload limit of {megabytes} MB "
            "(umx serve --max-upload-mb)"
        )
        assert client.get("/api/config").json()["max_upload_mb"] == float(megabytes)


def test_a_restart_says_its_queued_jobs_and_the_demo_notice_once(tmp_path, caplog, monkeypatch):
    from umx.zoo import loading
    from umx.zoo.registry import MODELS as ZOO

    monkeypatch.setattr(loading, "_NOTICED", set())  # as in a new process
    monkeypatch.setattr(umx.jobs, "_separators", collections.OrderedDict())  # nothing loaded
    root = tmp_path / "data"
    first = new_store(root)  # not started: its jobs stay queued
    for seed, stems in ((81, "all"), (82, "vocals")):
        first.add(upload(first, song_bytes(0.3, seed)), first.options(MODEL, stems))
    first.stop()
    # a new process: the uploads loaded the bundled model (its weights' hash names their jobs)
    monkeypatch.setattr(loading, "_NOTICED", set())
    monkeypatch.setattr(umx.jobs, "_separators", collections.OrderedDict())
    caplog.set_level(logging.INFO, logger="umx")
    again = new_store(root)
    assert "2 unfinished jobs queued again" in caplog.text
    again.start(1, preload=MODEL)
    try:
        assert all(wait(again, job["id"])["state"] == DONE for job in again.jobs())
    finally:
        again.stop()
    assert caplog.text.count(ZOO[MODEL].notice) == 1  # each stem mode loads the model again
    first = new_store(tmp_path / "other")
    first.add(upload(first, song_bytes(0.3, 83)), first.options(MODEL, "all"))
    first.stop()
    new_store(tmp_path / "other").stop()
    assert "1 unfinished job queued again" in caplog.text
