"""`umx serve` against hostile requests and options, as tables.

HTTP cases run against real `umx serve` processes (on 127.0.0.1 and on [::1]) whose data
directory holds a finished job: each case asserts its status, a one-line JSON error, the
security headers, and that every file in the data directory is byte-identical afterwards. The
servers' logs hold no traceback. Option cases run the command in this process: each is refused
with one line before the server listens, and changes no file in its folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import pytest

from processes import read_only
from umx.cli import main
from umx.errors import UmxError
from umx.files import hold_lock
from umx.jobs import DONE
from umx.web import run as serve_run
from umx.web.records import Job

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from test_web import new_store, song_bytes, upload, wait  # noqa: E402
from umx.web import server as web_server  # noqa: E402
from umx.web.guard import SECURITY_HEADERS  # noqa: E402
from umx.web.server import Server, create_app  # noqa: E402

LIMIT_MB = 0.25
STOP_TIMEOUT_S = 30


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root, with the hash of its bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class Served:
    """A `umx serve` process: its page's URL, port, data directory and log."""

    process: subprocess.Popen
    url: str
    data: Path
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])


def start_serve(
    root: Path, *options: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, Path, Path]:
    data, log = root / "data", root / "serve.log"
    command = [sys.executable, "-m", "umx.cli", "serve", "--port", "0", "--data-dir", str(data)]
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [*command, *options],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, **(env or {})},
        )
    return process, data, log


def ready(process: subprocess.Popen, data: Path, log: Path) -> Served:
    line = process.stdout.readline()
    assert line.startswith("umx serve: http://"), f"{line!r} {log.read_text()}"
    return Served(process, line.split()[-1], data, log)


def stop(served: Served) -> tuple[int, str]:
    """SIGTERM the server; its exit status and its log."""
    served.process.send_signal(signal.SIGTERM)
    status = served.process.wait(STOP_TIMEOUT_S)
    return status, served.log.read_text()


def assert_clean_log(log: str) -> None:
    assert "Traceback" not in log and "terminate called" not in log, log
    assert all(line.startswith("umx: ") for line in log.splitlines()), log


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """`umx serve` on 127.0.0.1 (and on [::1] where it exists), each with one finished job."""
    families = {"v4": ("127.0.0.1",), **({"v6": ("::1",)} if ipv6_loopback() else {})}
    started = {
        family: start_serve(
            tmp_path_factory.mktemp(f"hostile-{family}"),
            "--host",
            host,
            "--max-upload-mb",
            str(LIMIT_MB),
        )
        for family, (host,) in families.items()
    }
    served = {family: ready(*parts) for family, parts in started.items()}
    try:
        for server in served.values():
            job = httpx.post(
                f"{server.url}api/jobs", params={"name": "song.wav"}, content=song_bytes(0.5, 1)
            ).json()
            deadline = time.monotonic() + 60
            while job["state"] not in ("done", "failed") and time.monotonic() < deadline:
                time.sleep(0.1)
                job = httpx.get(f"{server.url}api/jobs/{job['id']}").json()
            assert job["state"] == "done", job
        yield served
    finally:
        for server in served.values():
            status, log = stop(server)
            assert status == 128 + signal.SIGTERM, log
            assert_clean_log(log)


@dataclass
class Case:
    """One hostile request. `path` and the header values may hold {job} and {port}."""

    name: str
    method: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    family: str = "v4"


SONG = song_bytes(0.25, 2)
OTHER_SITE = "http://evil.example"
HEX_ID = "0123456789abcdef0123456789abcdef"
LINK_FROM_ELSEWHERE = {
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}

CASES = [
    # Host: only this server's own name and address, with its port (no DNS rebinding)
    Case("host-foreign", "GET", "/api/jobs", 421, {"Host": "evil.example"}),
    Case("host-foreign-port", "GET", "/api/jobs", 421, {"Host": "evil.example:{port}"}),
    Case("host-no-port", "GET", "/api/jobs", 421, {"Host": "127.0.0.1"}),
    Case("host-other-port", "GET", "/api/jobs", 421, {"Host": "127.0.0.1:1"}),
    Case("host-userinfo", "GET", "/api/jobs", 421, {"Host": "x@127.0.0.1:{port}"}),
    Case("host-trailing-dot", "GET", "/", 421, {"Host": "localhost.:{port}"}),
    Case("host-foreign-upload", "POST", "/api/jobs", 421, {"Host": "evil.example"}, SONG),
    Case("host-localhost", "GET", "/api/jobs", 200, {"Host": "localhost:{port}"}),
    Case("v6-host-foreign", "GET", "/api/jobs", 421, {"Host": "evil.example"}, family="v6"),
    Case(
        "v6-host-foreign-delete",
        "DELETE",
        "/api/jobs/{job}",
        421,
        {"Host": "evil.example:{port}"},
        family="v6",
    ),
    Case(
        "v6-host-foreign-upload",
        "POST",
        "/api/jobs",
        421,
        {"Host": "evil.example:{port}"},
        SONG,
        family="v6",
    ),
    Case("v6-host-ipv4", "GET", "/api/jobs", 421, {"Host": "127.0.0.1:{port}"}, family="v6"),
    Case("v6-host-own", "GET", "/api/jobs", 200, {"Host": "[::1]:{port}"}, family="v6"),
    Case("v6-host-localhost", "GET", "/api/jobs", 200, {"Host": "localhost:{port}"}, family="v6"),
    # Origin and Sec-Fetch-Site: only this server's own page, whether it reads or changes
    Case("origin-upload", "POST", "/api/jobs", 403, {"Origin": OTHER_SITE}, SONG),
    Case("origin-null-delete", "DELETE", "/api/jobs/{job}", 403, {"Origin": "null"}),
    Case("origin-read", "GET", "/api/jobs", 403, {"Origin": OTHER_SITE}),
    Case("origin-other-port", "GET", "/api/config", 403, {"Origin": "http://127.0.0.1:1"}),
    Case("origin-own", "GET", "/api/jobs", 200, {"Origin": "http://127.0.0.1:{port}"}),
    Case("v6-origin-upload", "POST", "/api/jobs", 403, {"Origin": OTHER_SITE}, SONG, "v6"),
    Case(
        "fetch-cross-site-audio",
        "GET",
        "/api/jobs/{job}/stems/vocals.wav",
        403,
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "audio"},
    ),
    Case("fetch-same-site-events", "GET", "/api/events", 403, {"Sec-Fetch-Site": "same-site"}),
    Case(
        "fetch-cross-site-form",
        "POST",
        "/api/jobs",
        403,
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
        SONG,
    ),
    Case(
        "fetch-cross-site-link",
        "GET",
        "/",
        200,
        {
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "navigate",
            "Sec-Fetch-Dest": "document",
        },
    ),
    Case(  # an <iframe> of another site is a navigation too, but not to a document
        "fetch-cross-site-iframe-mix",
        "GET",
        "/api/jobs/{job}/mix/flac?vocals=0.666&drums=1.333",
        403,
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
    ),
    Case(
        "fetch-cross-site-iframe-page",
        "GET",
        "/",
        403,
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
    ),
    Case("fetch-cross-site-link-zip", "GET", "/api/jobs/{job}/zip/flac", 403, LINK_FROM_ELSEWHERE),
    Case(
        "fetch-same-site-link-stem",
        "GET",
        "/api/jobs/{job}/stems/bass.mp3",
        403,
        {**LINK_FROM_ELSEWHERE, "Sec-Fetch-Site": "same-site"},
    ),
    Case("fetch-cross-site-link-head", "HEAD", "/", 200, LINK_FROM_ELSEWHERE),
    # paths and ids
    Case("static-traversal", "GET", "/static/..%2F..%2Fweb%2Fjobs.py", 404),
    Case("stem-traversal", "GET", "/api/jobs/{job}/stems/..%2Fjob.json", 404),
    Case("zip-traversal", "GET", "/api/jobs/{job}/zip/..%2F..%2Fjobs", 404),
    Case("stem-format", "GET", "/api/jobs/{job}/stems/vocals.exe", 404),
    Case("unknown-job", "GET", f"/api/jobs/{HEX_ID}", 404),
    Case("unknown-job-delete", "DELETE", f"/api/jobs/{HEX_ID}", 404),
    Case("control-job-id", "GET", "/api/jobs/%00%0a%1b", 404),
    Case("unknown-route", "GET", "/api/../../etc/passwd", 404),
    Case("wrong-method", "PUT", "/api/jobs", 405, body=SONG),
    # uploads
    Case("upload-too-large", "POST", "/api/jobs", 413, body=bytes(int(LIMIT_MB * 2**20) + 1)),
    Case("upload-not-audio", "POST", "/api/jobs?name=song.wav", 422, body=b"text\n" * 100),
    Case("upload-empty", "POST", "/api/jobs?name=empty.wav", 422),
    Case("upload-model-path", "POST", "/api/jobs?model=..%2Fumxl", 422, body=SONG),
    Case("upload-stems", "POST", "/api/jobs?stems=piano", 422, body=SONG),
    Case("upload-long-name", "POST", "/api/jobs?name=" + "%1b[31m" * 1500, 422, body=b"x" * 99),
    Case(
        "upload-form",
        "POST",
        "/api/jobs",
        415,  # refused before its body is read: send the file itself
        {"Content-Type": "multipart/form-data; boundary=b"},
        b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.wav"\r\n\r\nx\r\n--b--',
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request_is_refused_and_changes_nothing(servers, case):
    if case.family not in servers:
        pytest.skip("IPv6 loopback is unavailable")
    server = servers[case.family]
    job = httpx.get(f"{server.url}api/jobs").json()[0]["id"]

    def fill(text: str) -> str:
        return text.format(job=job, port=server.port)

    before = snapshot(server.data)
    with httpx.stream(
        case.method,
        server.url.rstrip("/") + fill(case.path),
        headers={name: fill(value) for name, value in case.headers.items()},
        content=case.body,
        timeout=20,
    ) as response:
        assert response.status_code == case.status  # before the body: it may be an event stream
        response.read()
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    if case.status >= 400:
        error = response.json()["error"]
        assert "\n" not in error and "\x1b" not in error and 0 < len(error) <= 300, error
    assert snapshot(server.data) == before


def test_every_kind_of_response_has_the_headers(servers):
    server = servers["v4"]
    job = httpx.get(f"{server.url}api/jobs").json()[0]["id"]
    paths = [
        "",
        "static/app.js",
        "api/config",
        f"api/jobs/{job}/stems/drums.wav",
        f"api/jobs/{job}/stems/drums.flac",
        f"api/jobs/{job}/zip/wav",
        "api/nothing",
        "api/events",
    ]
    for path in paths:
        with httpx.stream("GET", server.url + path, timeout=20) as response:
            assert response.status_code == (404 if path == "api/nothing" else 200), path
            missing = {name for name in SECURITY_HEADERS if name not in response.headers}
            assert missing == set(), path


def test_cases_cover_the_issue():
    names = {case.name for case in CASES}
    assert len(CASES) >= 15 and {"v6-host-foreign", "origin-upload"} <= names


@contextlib.contextmanager
def running(server: uvicorn.Server, host: str):
    """A server (uvicorn's, or umx serve's own `Server`) listening on `host` and a free port, in
    a thread; yields the port."""
    sock = serve_run.listen(serve_run.bind(host, 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def served_app(app, host: str):
    """An app on a real uvicorn server listening on `host` and a free port; yields the port."""
    return running(uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")), host)


def test_a_wildcard_address_answers_only_its_own_names(tmp_path):
    store = new_store(tmp_path / "data")
    app = create_app(store, default_model="umxsynth", max_upload_bytes=1 << 20, host="0.0.0.0")
    machine = socket.gethostname()
    with served_app(app, "0.0.0.0") as port:
        url = f"http://127.0.0.1:{port}/api/config"
        expected = {
            f"127.0.0.1:{port}": 200,
            f"localhost:{port}": 200,
            f"{machine}:{port}": 200,
            f"{machine}.local:{port}": 200,
            f"evil.example:{port}": 421,
            f"10.0.0.1:{port}": 421,  # the connection arrived on 127.0.0.1
            f"{machine}.evil.example:{port}": 421,
        }
        answers = {host: httpx.get(url, headers={"Host": host}).status_code for host in expected}
    assert answers == expected


def test_errors_of_the_app_keep_the_headers(tmp_path, monkeypatch):
    store = new_store(tmp_path / "data")
    app = create_app(store, default_model="umxsynth", max_upload_bytes=1 << 20)

    def broken() -> list:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "jobs", broken)
    with served_app(app, "127.0.0.1") as port:
        response = httpx.get(f"http://127.0.0.1:{port}/api/jobs")
    assert response.status_code == 500
    assert response.json() == {"error": "the server failed unexpectedly; its terminal shows why"}
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def umx_server(app):
    """An app on umx serve's own `Server` on 127.0.0.1 and a free port; yields the port."""
    return running(Server(app, graceful_shutdown_s=1), "127.0.0.1")


def partial_upload(port: int, name: str, sent: int = 1000) -> socket.socket:
    """A connection that sent the headers of a 100 kB upload and `sent` bytes of its body."""
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(
        f"POST /api/jobs?name={name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Length: 100000\r\n\r\n".encode()
        + bytes(sent)
    )
    return connection


def parts(store) -> int:
    return len(list(store.uploads_dir.iterdir()))


def until(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition()


def test_uploads_being_received_take_places_in_the_queue(tmp_path):
    store = new_store(tmp_path / "data", max_queue=2)  # not started: its jobs wait
    app = create_app(store, default_model="umxsynth", max_upload_bytes=1 << 20)
    with umx_server(app) as port, contextlib.ExitStack() as stack:
        for name in ("a.wav", "b.wav"):
            stack.enter_context(partial_upload(port, name))
        until(lambda: parts(store) == 2)
        url = f"http://127.0.0.1:{port}/api/jobs"
        busy = httpx.post(url, params={"name": "c.wav"}, content=SONG)
        assert busy.status_code == 503
        assert busy.json() == {
            "error": "the server is busy: 2 songs are waiting or arriving; try again when "
            "one is done"
        }
        stack.close()  # the two clients leave: their places are free again
        until(lambda: parts(store) == 0)
        assert httpx.post(url, params={"name": "c.wav"}, content=SONG).status_code == 201
        third = httpx.post(url, params={"name": "d.wav"}, content=song_bytes(0.25, 3))
        assert third.status_code == 201
        assert httpx.post(url, content=song_bytes(0.25, 4)).status_code == 503
    store.stop(timeout=30)


def test_a_stalled_upload_and_slow_headers_are_given_up(tmp_path, monkeypatch):
    monkeypatch.setattr(web_server, "UPLOAD_IDLE_S", 0.5)
    monkeypatch.setattr(web_server, "HEADERS_S", 1.0)
    store = new_store(tmp_path / "data", max_queue=1)
    # the uploads received: a part is there for UPLOAD_IDLE_S only, which a poll may miss
    made, new_upload = [], store.new_upload
    monkeypatch.setattr(
        store, "new_upload", lambda *args: made.append(new_upload(*args)) or made[-1]
    )
    app = create_app(store, default_model="umxsynth", max_upload_bytes=1 << 20)
    with umx_server(app) as port:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /api/jo")  # and nothing more
        with partial_upload(port, "stalled.wav") as stalled:
            stalled.settimeout(10)
            answer = b""
            while chunk := stalled.recv(4096):  # the server closes the connection after it
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and b"x-frame-options: DENY" in head
        assert json.loads(body) == {
            "error": "stalled.wav: no data came for 0.5 s, so the upload was given up; send it "
            "again"
        }
        assert [upload.name for upload in made] == ["stalled.wav"]  # it was received
        assert parts(store) == 0  # removed, and its place in the queue free again
        url = f"http://127.0.0.1:{port}/api/jobs"
        assert httpx.post(url, content=SONG).status_code == 201
        slow.settimeout(10)
        assert slow.recv(100) == b""  # closed, HEADERS_S after it opened
        slow.close()
    store.stop(timeout=30)


# --- options and data directories ----------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    """A case folder: a file, a data directory of an earlier run (one job), and a parent
    folder to make read-only."""
    (tmp_path / "a-file").write_bytes(b"not a folder")
    job = tmp_path / "data" / "jobs" / HEX_ID
    job.mkdir(parents=True)
    record = Job(id=HEX_ID, name="song.wav", model="umxsynth", stems="all", size=1, state=DONE)
    (job / "job.json").write_text(json.dumps(asdict(record)))
    (tmp_path / "data" / "uploads").mkdir()
    (tmp_path / "locked").mkdir()
    (tmp_path / "mine").mkdir()  # a folder of the user's, with a file named as a store's folder
    (tmp_path / "mine" / "uploads").write_bytes(b"my own file")
    return tmp_path


OPTION_CASES = [
    ("port-too-high", ["--port", "70000"], "--port must be at most 65535, not 70000"),
    ("port-negative", ["--port", "-1"], "--port must be at least 0, not -1"),
    ("jobs-zero", ["--jobs", "0"], "--jobs must be at least 1, not 0"),
    ("jobs-above-cores", ["--jobs", "99999999"], "--jobs must be at most "),
    ("queue-negative", ["--max-queue", "-3"], "--max-queue must be at least 1, not -3"),
    ("upload-nan", ["--max-upload-mb", "nan"], "--max-upload-mb must be a finite number"),
    ("upload-zero", ["--max-upload-mb", "0"], "--max-upload-mb must be at least 0.001"),
    ("upload-tiny", ["--max-upload-mb", "1e-7"], "--max-upload-mb must be at least 0.001"),
    ("cache-inf", ["--max-cache-gb", "inf"], "--max-cache-gb must be a finite number"),
    ("cache-negative", ["--max-cache-gb", "-1"], "--max-cache-gb must be greater than 0"),
    ("host-unknown", ["--host", "nohost.invalid"], "cannot listen on 'nohost.invalid' (--host)"),
    ("host-bad-address", ["--host", "999.1.1.1"], "cannot listen on '999.1.1.1' (--host)"),
    ("host-empty", ["--host", ""], "cannot listen on '' (--host)"),
    ("host-not-here", ["--host", "192.0.2.1"], "cannot listen on 192.0.2.1:"),
    ("model-unknown", ["--model", "nope"], "unknown model 'nope'"),
    ("device-unknown", ["--device", "tpu"], "tpu"),
    ("data-dir-file", ["--data-dir", "{root}/a-file"], "{root}/a-file is not a folder"),
    ("data-dir-under-file", ["--data-dir", "{root}/a-file/data"], "{root}/a-file is a file"),
    ("data-dir-holds-a-file", ["--data-dir", "{root}/mine"], "{root}/mine/uploads is a file;"),
    (
        "data-dir-name-too-long",
        ["--data-dir", "{root}/new/deeper/" + "a" * 300],
        "File name too long; give a shorter --data-dir",
    ),
    ("data-dir-read-only", ["--data-dir", "{root}/data"], "cannot write in the data directory"),
    ("data-dir-not-creatable", ["--data-dir", "{root}/locked/data"], "{root}/locked/data"),
]
OPTION_CASES_BY_NAME = {case[0]: case[1] for case in OPTION_CASES}
READ_ONLY = {"data-dir-read-only": "data", "data-dir-not-creatable": "locked"}
"""The case folder's sub-folder a case makes read-only."""


@pytest.mark.parametrize(
    ("name", "arguments", "expected"), OPTION_CASES, ids=[case[0] for case in OPTION_CASES]
)
def test_bad_option_is_one_line_before_listening(
    folder, capsys, monkeypatch, name, arguments, expected
):
    def listen_must_fail(sock: socket.socket) -> socket.socket:
        sock.close()
        raise AssertionError("the server listened")

    monkeypatch.setattr(serve_run, "listen", listen_must_fail)
    arguments = [argument.format(root=folder) for argument in arguments]
    if "--data-dir" not in arguments:
        arguments += ["--data-dir", str(folder / "data")]
    before, folders = snapshot(folder), sorted(folder.rglob("*"))
    locked = READ_ONLY.get(name)
    with read_only(folder / locked) if locked else contextlib.nullcontext():
        status = main(["serve", "--port", "0", *arguments])
    error = capsys.readouterr().err
    assert status == 1, error
    assert error.startswith("umx: error: ") and error.count("\n") == 1, error
    assert expected.format(root=folder) in error
    assert snapshot(folder) == before
    assert sorted(folder.rglob("*")) == folders  # no folder made, empty or not
    if name == "data-dir-name-too-long":  # the path is shown cut short
        assert len(error) < 160, error
    if "--data-dir" not in OPTION_CASES_BY_NAME[name]:  # refused after its store was made
        lock = hold_lock(folder / "data")
        assert lock is not None, "the refused server kept its data directory locked"
        lock.close()


@pytest.mark.parametrize("address", ["nohost.invalid", "192.0.2.1", "busy"])
def test_a_refused_address_makes_no_folder_in_the_data_directory(tmp_path, capsys, address):
    """A bad --host or a port in use is refused before the store makes its folders: a new data
    directory is not made, and one that exists (with a file of the user's) keeps exactly what
    it held."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1] if address == "busy" else 0
        host = "127.0.0.1" if address == "busy" else address
        kept = tmp_path / "kept"
        kept.mkdir()
        (kept / "notes.txt").write_text("mine")
        for data in (tmp_path / "new", kept):
            status = main(["serve", "--host", host, "--port", str(port), "--data-dir", str(data)])
            error = capsys.readouterr().err
            assert status == 1 and error.startswith("umx: error: cannot listen on "), error
    assert not (tmp_path / "new").exists()
    assert [path.name for path in kept.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("host", None, "--host must be an address or a host name, not None"),
        ("port", 8000.5, "--port must be a whole number"),
        ("model", 3, "--model must be a model name or folder, not 3"),
        ("data_dir", b"data", "--data-dir must be a folder, not b'data'"),
        ("device", None, "--device must be a device name, not None"),
        ("open_browser", "no", "--open must be True or False"),
    ],
)
def test_serve_options_refuse_what_the_command_line_cannot_give(field, value, expected):
    """A library caller gets the command line's one-line errors from `ServeOptions`."""
    with pytest.raises(UmxError, match="^" + re.escape(expected)):
        serve_run.ServeOptions(**{field: value})


def test_a_data_directory_in_use_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(serve_run, "listen", lambda sock: pytest.fail("listened"))
    data = tmp_path / "data"
    first = new_store(data)  # the first server's store: it holds the data directory
    try:
        before = snapshot(tmp_path)
        status = main(["serve", "--port", "0", "--data-dir", str(data)])
        error = capsys.readouterr().err
        assert status == 1, error
        assert error == (
            f"umx: error: the data directory {data} is in use by another umx serve; stop that "
            "one, or choose another folder with --data-dir\n"
        )
        assert snapshot(tmp_path) == before
    finally:
        assert first.stop(timeout=30)
    second = new_store(data)  # released by the first one's stop
    assert second.jobs() == [] and second.stop(timeout=30)


def test_a_full_data_directory_is_refused(tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        with contextlib.suppress(OSError), open(full / "filler", "wb") as filler:
            while True:
                filler.write(bytes(4096))
                filler.flush()
        before = snapshot(full)
        status = main(["serve", "--port", "0", "--data-dir", str(full / "data")])
        error = capsys.readouterr().err
        assert snapshot(full) == before
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert status == 1
    assert error == (
        f"umx: error: cannot write in the data directory {full}/data: No space left on device; "
        "choose another with --data-dir\n"
    )


def test_a_data_directory_that_fills_up_answers_one_line(tmp_path, capfd, monkeypatch):
    # umx's messages to this test's stderr (an earlier test's `main` may have left its own)
    monkeypatch.setattr(logging.getLogger("umx"), "handlers", [logging.StreamHandler()])
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        store = new_store(full / "data")
        app = create_app(store, default_model="umxsynth", max_upload_bytes=10 << 20)
        with contextlib.suppress(OSError), open(full / "filler", "wb") as filler:
            while True:
                filler.write(bytes(4096))
                filler.flush()
        with served_app(app, "127.0.0.1") as port:
            response = httpx.post(f"http://127.0.0.1:{port}/api/jobs", content=song_bytes(1, 3))
        uploads = list(store.uploads_dir.iterdir())
        store.stop(timeout=30)  # releases the data directory, so the folder can be unmounted
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert response.status_code == 507, response.text
    assert response.json() == {
        "error": "the server cannot store or read its files: No space left on device"
    }
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert uploads == [] and store.jobs() == []
    log = capfd.readouterr().err
    assert "Traceback" not in log
    assert f"the data directory {full}/data: No space left on device" in log.splitlines()


def test_a_worker_on_a_full_disk_fails_the_job_in_one_line_and_goes_on(
    tmp_path, capfd, monkeypatch
):
    monkeypatch.setattr(logging.getLogger("umx"), "handlers", [logging.StreamHandler()])
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    store = new_store(full / "data")
    try:
        first, _ = store.add(upload(store, song_bytes(0.5, 4)), store.options("umxsynth", "all"))
        with contextlib.suppress(OSError), open(full / "filler", "wb") as filler:
            while True:  # not even a job record fits now
                filler.write(bytes(4096))
                filler.flush()
        with contextlib.suppress(OSError), open(store.manifest_path, "ab", buffering=0) as file:
            while True:  # nor the rest of the manifest's last page (empty lines are skipped)
                file.write(b"\n")
        store.start(1)
        failed = wait(store, first["id"])
        (full / "filler").unlink()
        second, _ = store.add(upload(store, song_bytes(0.2, 5)), store.options("umxsynth", "all"))
        done = wait(store, second["id"])
    finally:
        store.stop()
        subprocess.run(["umount", str(full)], check=True)
    assert failed["state"] == "failed" and failed["error"].startswith("cannot write ")
    assert done["state"] == "done"
    log = capfd.readouterr().err
    assert "Traceback" not in log
    assert f"{first['id']}: cannot record its state: No space left on device" in log.splitlines()


# --- stopping with pages open --------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_with_pages_open_ends_their_streams(tmp_path, signum):
    """Open event streams end as soon as the server stops (uvicorn cancels the ones that are
    still open after its graceful timeout, and says so in the log)."""
    served = ready(*start_serve(tmp_path))
    with contextlib.ExitStack() as streams:
        lines = []
        for _ in range(3):
            response = streams.enter_context(
                httpx.stream("GET", f"{served.url}api/events", timeout=STOP_TIMEOUT_S)
            )
            lines.append(response.iter_lines())
            assert next(lines[-1]) == "event: jobs"
        served.process.send_signal(signum)
        for stream in lines:
            assert [line for line in stream if line.startswith("event:")] == []
    status = served.process.wait(STOP_TIMEOUT_S)
    log = served.log.read_text()
    assert status == 128 + signum, log
    assert_clean_log(log)
    name = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert log.splitlines()[-1] == f"umx: {name}"


SLOW_LOAD = """
import pathlib, time
import umx.web.jobs

def loading(*args, **kwargs):
    pathlib.Path({marker!r}).touch()
    time.sleep(60)

umx.web.jobs.loaded_separator = loading
"""


def test_a_stop_while_the_model_loads_names_no_song(tmp_path):
    """Stopped while its worker still loads the model at the start (slowed by a hook put on
    the server's PYTHONPATH), umx serve says that it stopped and no more: it once added that
    the song being separated was queued again, when there was none."""
    hook, marker = tmp_path / "hook", tmp_path / "loading"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_LOAD.format(marker=str(marker)))
    served = ready(*start_serve(tmp_path, env={"PYTHONPATH": str(hook)}))
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), served.log.read_text()
    status, log = stop(served)
    assert status == 128 + signal.SIGTERM, log
    assert log.splitlines()[-1] == "umx: stopped by SIGTERM"


def test_stop_during_an_upload_and_a_download_is_quiet_and_keeps_no_part(tmp_path):
    """A stop while a client sends an upload slowly and another does not read its download: the
    one line of the stop, no traceback nor uvicorn's cancelled tasks, both connections closed
    within the grace, and the upload's part removed."""
    served = ready(*start_serve(tmp_path))
    job = httpx.post(
        f"{served.url}api/jobs", params={"name": "long.wav"}, content=song_bytes(20, 7)
    ).json()
    deadline = time.monotonic() + 120
    while job["state"] != "done" and time.monotonic() < deadline:
        time.sleep(0.2)
        job = httpx.get(f"{served.url}api/jobs/{job['id']}").json()
    assert job["state"] == "done", job
    host = f"127.0.0.1:{served.port}"
    with contextlib.ExitStack() as stack:
        downloading = stack.enter_context(socket.socket())
        downloading.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        downloading.connect(("127.0.0.1", served.port))
        downloading.sendall(
            f"GET /api/jobs/{job['id']}/zip/wav HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        )
        assert downloading.recv(12) == b"HTTP/1.1 200"  # then it reads no more
        uploading = stack.enter_context(socket.create_connection(("127.0.0.1", served.port)))
        head = (
            f"POST /api/jobs?name=slow.wav HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Length: 100000\r\n\r\n"
        )
        uploading.sendall(head.encode() + bytes(5000))
        uploads = served.data / "uploads"
        deadline = time.monotonic() + 10
        while not list(uploads.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(uploads.iterdir())) == 1
        stopped = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        uploading.settimeout(STOP_TIMEOUT_S)
        assert uploading.recv(1000) == b""  # closed, with no answer (there is no one to give it)
        status = served.process.wait(STOP_TIMEOUT_S)
    assert time.monotonic() - stopped < serve_run.GRACEFUL_SHUTDOWN_S + 5
    log = served.log.read_text()
    assert status == 128 + signal.SIGTERM, log
    assert_clean_log(log)
    assert log.splitlines()[-1] == "umx: stopped by SIGTERM"
    assert list(uploads.iterdir()) == []


# --- the page under its content security policy ---------------------------------------------


def test_the_page_loads_under_its_content_security_policy(servers):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("needs Debian's chromium")
    server = servers["v4"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            messages = []
            page.on("console", lambda message: messages.append(message.text))
            page.goto(server.url)
            page.wait_for_selector("#model option[value=umxsynth]", state="attached")
            page.click("#jobs li:has-text('song.wav') button.listen")
            page.wait_for_selector("#player[data-state=ready]")
            drawn = page.evaluate(
                "() => [...document.querySelectorAll('canvas')].some((canvas) => canvas.width > 0)"
            )
        finally:
            browser.close()
    assert drawn
    assert not [text for text in messages if "Content Security Policy" in text], messages
