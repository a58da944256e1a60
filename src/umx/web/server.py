"""The HTTP side of `umx serve`: the page, a small JSON API over the job store, server-sent events.

Routes (errors are `{"error": "<one sentence>"}` with the status of their kind):

- ``GET /``: the page (``static/index.html``); ``/static/...``: its files; ``/favicon.ico``.
- ``GET /api/config``: the models (bundled/cached status, whether they can be had now and if
  not why and how, their stem modes, the demonstration model's notice), formats, the upload
  limit (in bytes, and in MiB as ``--max-upload-mb`` gave it).
- ``GET /api/jobs``: every job, the newest first.
- ``POST /api/jobs?name=&model=&stems=``: the song as the raw request body (any name; its content
  decides whether it is audio): 201 a new job, 200 a job that exists, 408 its body stalled,
  413 too large, 422 not audio or bad options, 503 busy (uploads still arriving count with the
  queue), 507 the data directory is full.
- ``GET /api/jobs/{id}``: one job; ``DELETE``: remove it.
- ``POST /api/jobs/{id}/retry``: queue a failed job again.
- ``GET /api/jobs/{id}/stems/{stem}.{ext}``: one stem in wav, flac or mp3.
- ``GET /api/jobs/{id}/mixture.wav``: the original mix, decoded as the stems are stored.
- ``GET /api/jobs/{id}/mix/{ext}?{stem}={gain}&...``: the sum of the stems named at their gains
  (what the player plays); a header ``X-Umx-Notice`` says when it was rescaled to fit.
- ``GET /api/jobs/{id}/zip/{ext}``: every stem in one zip file.
- A download of a job not yet done, or whose stems were damaged on disk (it is queued again):
  409; of a failed job: 404.
- Downloads are served whole or in the byte ranges asked for; a ``Range`` that cannot be
  served: 400 (malformed) or 416 (past the end).
- ``GET /api/events``: server-sent events, ``jobs`` (every job) on connection, then ``job`` for
  each change, never one older (by its ``revision``) than one sent.

The body of an upload is written to disk as it arrives and refused as soon as it passes the
limit, never held in memory. Every request goes through `umx.web.guard.Guard` first: only
requests for this server's own host and from its own page are answered. `Server` runs the
app and, as soon as it is asked to stop, ends its event streams, and its other requests
after a short grace (`umx.web.run.GRACEFUL_SHUTDOWN_S`), closing their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    MalformedRangeHeader,
    RangeNotSatisfiable,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from uvicorn.protocols.http.h11_impl import H11Protocol

from umx import __version__
from umx.audio import audio_formats, display_path
from umx.errors import UmxError, short
from umx.web.guard import SECURITY_HEADERS, Guard
from umx.web.jobs import JobStore
from umx.web.records import Busy, NotFound, NotReady, display_name, stem_modes
from umx.web.uploads import TooLarge, Upload, megabytes, too_large
from umx.zoo import BUNDLED, CACHED, MODELS, is_offline, list_models

logger = logging.getLogger("umx")

STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0
"""Seconds between comments on an idle event stream, so that proxies and browsers keep it."""
UPLOAD_IDLE_S = 30.0
"""Seconds an upload's body may send nothing before it is given up (408)."""
HEADERS_S = 30.0
"""Seconds a connection may take to send a request's line and headers, from its opening or
its last answer, before it is closed."""
STOP_TASKS_S = 0.5
"""Seconds the requests whose connections the stop closed get to end by themselves, before
they are cancelled."""
STATUS = {TooLarge: 413, Busy: 503, NotFound: 404, NotReady: 409}
DIRECTORY = "directory"
"""The status of a model given as a directory (the others are those of `umx.zoo.ModelInfo`)."""
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}


def create_app(
    store: JobStore,
    *,
    default_model: str,
    max_upload_bytes: int,
    host: str = "127.0.0.1",
    no_downloads: str | None = None,
) -> Starlette:
    """The application of `umx serve`.

    Args:
        store: the jobs (already started or not: uploads queue either way).
        default_model: the model the page selects first, one of `store.models`.
        max_upload_bytes: the largest upload accepted.
        host: the address the server listens on (see `umx.web.guard.own_names`).
        no_downloads: why models cannot be downloaded now (the download host did not answer
            at start, say), or None; offline mode (`$UMX_OFFLINE`) says so by itself.
    """
    streams = EventStreams()
    app = Starlette(
        routes=[
            Route("/", page),
            *job_routes(store, default_model, max_upload_bytes, no_downloads, streams),
            *download_routes(store),
            Route("/favicon.ico", favicon),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(Guard, host=host)],
        exception_handlers=error_handlers(store),
    )
    app.state.streams = streams
    return app


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def favicon(request: Request) -> Response:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def job_routes(
    store: JobStore,
    default_model: str,
    max_upload_bytes: int,
    no_downloads: str | None,
    streams: EventStreams,
) -> list[Route]:
    """The routes of the configuration, the jobs (list, upload, one job, delete, retry) and
    the event stream (see `create_app` for the arguments)."""

    async def config(request: Request) -> Response:
        return JSONResponse(
            {
                "version": __version__,
                "models": model_entries(store, default_model, no_downloads),
                "default_model": default_model,
                "formats": audio_formats(),
                "max_upload_bytes": max_upload_bytes,
                "max_upload_mb": float(megabytes(max_upload_bytes)),
            }
        )

    async def jobs(request: Request) -> Response:
        return JSONResponse(store.jobs())

    async def upload(request: Request) -> Response:
        query = request.query_params
        name = display_name(query.get("name", ""))
        options = store.options(query.get("model", default_model), query.get("stems", "all"))
        store.check_room()
        check_raw_body(request, name)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes:
            raise too_large(name, max_upload_bytes)
        received = store.new_upload(name, max_upload_bytes)
        try:
            await receive_body(request, received)
        except ClientDisconnect:  # the tab closed, the connection lost: no one to answer
            received.discard()
            if not streams.closed:  # else the server stops, which says so
                logger.info("%s: the client left during its upload; nothing was kept", name)
            return Response(status_code=400)
        except BaseException:
            received.discard()
            raise
        if received.size == 0:
            received.discard()
            raise UmxError(f"{name} is empty")
        record, new = await run_in_threadpool(store.add, received, options)
        return JSONResponse(record, status_code=201 if new else 200)

    async def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if request.method == "DELETE":
            store.delete(job_id)
            return Response(status_code=204)
        return JSONResponse(store.job(job_id))

    async def retry(request: Request) -> Response:
        return JSONResponse(store.retry(request.path_params["job_id"]))

    async def events(request: Request) -> Response:
        return StreamingResponse(
            event_stream(store, streams),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return [
        Route("/api/config", config),
        Route("/api/jobs", jobs),
        Route("/api/jobs", upload, methods=["POST"]),
        Route("/api/jobs/{job_id}", job, methods=["GET", "DELETE"]),
        Route("/api/jobs/{job_id}/retry", retry, methods=["POST"]),
        Route("/api/events", events),
    ]


def check_raw_body(request: Request, name: str) -> None:
    """Refuse a song sent inside a form (`curl -F file=@song.mp3`): its bytes would be decoded
    with the form's own around them (an mp3 separated 1105 samples late, or "not audio").

    Raises:
        HTTPException: 415, saying how to send the song itself as the body.
    """
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind.startswith("multipart/"):
        raise HTTPException(
            415,
            f"{name} came inside a form ({kind}); send the file itself as the body "
            f"(curl --data-binary @FILE)",
        )


async def receive_body(request: Request, received: Upload) -> None:
    """Write the body of an upload into `received` as it arrives.

    Raises:
        HTTPException: 408, no data came for `UPLOAD_IDLE_S` (its connection is then closed).
        TooLarge: it passed the limit.
        ClientDisconnect: the client left.
    """
    pieces = request.stream()
    while True:
        try:
            piece = await asyncio.wait_for(pieces.__anext__(), UPLOAD_IDLE_S)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise HTTPException(
                408,
                f"{received.name}: no data came for {UPLOAD_IDLE_S:g} s, so the upload was "
                "given up; send it again",
                headers={"Connection": "close"},
            ) from None
        received.write(piece)


def download_routes(store: JobStore) -> list[Route]:
    """The routes of a finished job's files: a stem, the original mix, a mix, the zip file."""

    async def stem(request: Request) -> Response:
        stem_name, _, ext = request.path_params["file"].rpartition(".")
        path, filename = await run_in_threadpool(
            store.stem_file, request.path_params["job_id"], stem_name, ext
        )
        return Download(store, path, filename=filename, media_type=MEDIA_TYPES.get(ext))

    async def original(request: Request) -> Response:
        path, filename = await run_in_threadpool(store.original_file, request.path_params["job_id"])
        return Download(store, path, filename=filename, media_type=MEDIA_TYPES["wav"])

    async def mix(request: Request) -> Response:
        ext = request.path_params["ext"]
        path, filename, notice = await run_in_threadpool(
            store.mix_file, request.path_params["job_id"], dict(request.query_params), ext
        )
        headers = {"X-Umx-Notice": notice} if notice else None
        media_type = MEDIA_TYPES.get(ext)
        return Download(store, path, filename=filename, media_type=media_type, headers=headers)

    async def archive(request: Request) -> Response:
        path, filename = await run_in_threadpool(
            store.zip_file, request.path_params["job_id"], request.path_params["ext"]
        )
        return Download(store, path, filename=filename, media_type="application/zip")

    return [
        Route("/api/jobs/{job_id}/stems/{file}", stem),
        Route("/api/jobs/{job_id}/mixture.wav", original),
        Route("/api/jobs/{job_id}/mix/{ext}", mix),
        Route("/api/jobs/{job_id}/zip/{ext}", archive),
    ]


class Download(FileResponse):
    """A job's file, held from the cache limit by the store's download method that gave it,
    released once sent (or its client gone); whole or in the byte ranges asked for (`Range`,
    as Starlette's `FileResponse` serves them). A `Range` that cannot be served is the API's
    one-sentence JSON error, not Starlette's plain text: 400 when malformed, 416 (with
    `Content-Range: bytes */SIZE`) when it asks for no byte of the file (it starts past the
    end, or is the empty suffix `bytes=-0`)."""

    def __init__(self, store: JobStore, path: Path, **options: Any) -> None:
        super().__init__(path, **options)
        self.store, self.held = store, path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await run_in_threadpool(self.store.release, self.held)

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        shown = f"the Range header {short.repr(http_range)}"
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as error:
            reason = error.content.removeprefix("Range header: ").rstrip(".").lower()
            raise HTTPException(
                400, f"{shown} cannot be served ({reason}); ask for bytes=START-END or leave it out"
            ) from None
        except RangeNotSatisfiable as error:
            raise HTTPException(
                416,
                f"{shown} asks for no byte of the file ({error.max_size} bytes); ask for "
                "bytes within it or leave it out",
                headers={"Content-Range": f"bytes */{error.max_size}"},
            ) from None


def error_handlers(store: JobStore) -> dict[Any, Callable[[Request, Exception], Any]]:
    """What each kind of error answers: a user's error with its status (`STATUS`, else 422),
    an HTTP error, the data directory failing (507 when full, else 500), and a bug (500); each
    a one-sentence JSON `error`."""

    async def user_error(request: Request, error: Exception) -> Response:
        status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 422)
        return JSONResponse({"error": str(error)}, status_code=status)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return JSONResponse(
            {"error": error.detail}, status_code=error.status_code, headers=error.headers
        )

    async def storage_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, OSError)
        reason = error.strerror or str(error)
        logger.error("the data directory %s: %s", display_path(store.root), reason)
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        message = f"the server cannot store or read its files: {reason}"
        return JSONResponse({"error": message}, status_code=507 if full else 500)

    async def server_error(request: Request, error: Exception) -> Response:
        # sent past the middleware: the headers are added here
        message = "the server failed unexpectedly; its terminal shows why"
        return JSONResponse({"error": message}, status_code=500, headers=SECURITY_HEADERS)

    return {
        UmxError: user_error,
        HTTPException: http_error,
        OSError: storage_error,
        Exception: server_error,
    }


def model_entries(
    store: JobStore, default_model: str, no_downloads: str | None
) -> list[dict[str, Any]]:
    """The models of the page: for each, its status in the cache, whether it can be had now
    (`available`; if not, `reason` and the command that gets it, `get`), its stem modes and the
    notice of a demonstration model. Looks at the cache each time: a model downloaded meanwhile
    shows as cached."""
    infos = {info.name: info for info in list_models()}
    if is_offline():
        no_downloads = "offline mode is on (UMX_OFFLINE)"
    models = []
    for name in store.models:
        info = infos.get(name)
        status = info.status if info else DIRECTORY
        missing = status not in (BUNDLED, CACHED, DIRECTORY)
        unavailable = missing and no_downloads is not None
        models.append(
            {
                "name": name,
                "status": status,
                "description": info.description if info else name,
                "default": name == default_model,
                "available": not unavailable,
                "reason": f"not in the cache, and {no_downloads}" if unavailable else None,
                "get": f"umx download {name}" if missing else None,
                "stems": stem_modes(store.targets(name)),
                "notice": MODELS[name].notice if name in MODELS else None,
            }
        )
    return models


class EventStreams:
    """The open event streams of an app, ended together when the server stops (an open stream
    would otherwise hold the server until its graceful timeout)."""

    def __init__(self) -> None:
        self.closed = False
        self._wakeups: set[asyncio.Event] = set()

    def close(self) -> None:
        """End every stream (from the server's event loop)."""
        self.closed = True
        for wakeup in self._wakeups:
            wakeup.set()

    def add(self, wakeup: asyncio.Event) -> Callable[[], None]:
        """Register a stream's `wakeup`, set when the streams close; returns the function
        that forgets it."""
        self._wakeups.add(wakeup)
        return lambda: self._wakeups.discard(wakeup)


class Connection(H11Protocol):
    """uvicorn's HTTP/1.1 connection, closed when a request's line and headers have not all
    come `HEADERS_S` after the connection opened or its last answer was sent (uvicorn would
    wait for them for ever). A body that stalls is `receive_body`'s."""

    _headers_due: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._expect_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
        super().connection_lost(exc)

    def _expect_headers(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
        self._headers_due = self.loop.call_later(HEADERS_S, self._headers_late)

    def _headers_late(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete  # for a request's headers
        if waiting and not self.transport.is_closing():
            self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server for an app of `create_app`, which stops at once and quietly when asked
    to (a signal, `should_exit`): it stops taking connections, ends the app's event streams,
    gives the other open requests `graceful_shutdown_s` to end, then closes their connections
    and ends them. An upload cut short is removed by its route, a download is left unfinished
    (the client sees its connection closed), and the stop is said once, by the caller, rather
    than in uvicorn's "Cancel N running task(s)" and a traceback for each request.
    """

    def __init__(self, app: Starlette, graceful_shutdown_s: float) -> None:
        self.streams: EventStreams = app.state.streams
        self.graceful_shutdown_s = graceful_shutdown_s
        config = uvicorn.Config(
            self._quiet_when_stopped(app),
            http=Connection,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        super().__init__(config)

    def _quiet_when_stopped(self, app: Starlette) -> Callable[..., Any]:
        """`app`, whose requests cancelled by the stop end without an error: their connections
        are closed already (uvicorn would log each with its traceback)."""

        async def run(scope: Any, receive: Any, send: Any) -> None:
            try:
                await app(scope, receive, send)
            except asyncio.CancelledError:
                if not self.streams.closed:
                    raise

        return run

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.streams.close()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        connections, tasks = self.server_state.connections, self.server_state.tasks
        for connection in list(connections):
            connection.shutdown()  # idle ones close now, busy ones after their response
        await self._until(lambda: not tasks, self.graceful_shutdown_s)
        for connection in list(connections):
            connection.transport.abort()
        await self._until(lambda: not tasks, STOP_TASKS_S)  # they see their client gone
        for task in list(tasks):
            task.cancel()

    async def _until(self, done: Callable[[], bool], seconds: float) -> None:
        """Wait until `done()`, at most `seconds` (less after a second Ctrl-C)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while not done() and not self.force_exit:
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.05)


def sse(event: str, data: Any) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def event_stream(store: JobStore, streams: EventStreams) -> AsyncIterator[str]:
    """Every job, then each job's change as it happens, with a comment when idle, until
    `streams` close.

    Changes come from the worker threads and the requests' threads, not always in the order they
    were made: a record older (by its `revision`) than one the client has or will have is
    dropped. Those of one job that arrive faster than the client reads are merged (only the
    newest is sent), so a slow client never holds a growing backlog.
    """
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    latest: dict[str, dict[str, Any]] = {}
    newest: dict[str, int] = {}  # each job's newest revision told or to be told
    told = 0  # the first event tells every record made before this revision

    def note(record: dict[str, Any]) -> None:
        if record["revision"] < max(told, newest.get(record["id"], 0)):
            return
        newest[record["id"]] = record["revision"]
        latest[record["id"]] = record
        changed.set()

    def listener(record: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
            loop.call_soon_threadsafe(note, record)

    unsubscribe = store.subscribe(listener)
    forget = streams.add(changed)
    try:
        jobs, told = store.snapshot()  # `note` runs in this loop: only after this
        yield sse("jobs", jobs)
        while not streams.closed:
            try:
                await asyncio.wait_for(changed.wait(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                yield ": idle\n\n"
                continue
            changed.clear()
            records = list(latest.values())
            latest.clear()
            for record in records:
                yield sse("job", record)
    finally:
        forget()
        unsubscribe()
