"""The HTTP side of `umx serve`: the page, a small JSON API over the job store, server-sent events.

Routes (errors are `{"error": "<one sentence>"}` with the status of their kind):

- ``GET /``: the page (``static/index.html``); ``/static/...``: its files; ``/favicon.ico``.
- ``GET /api/config``: the models (bundled/cached status, whether they can be had now and if
  not why and how, their stem modes, the demonstration model's notice), formats, the upload
  limit.
- ``GET /api/jobs``: every job, the newest first.
- ``POST /api/jobs?name=&model=&stems=``: the song as the raw request body (any name; its content
  decides whether it is audio): 201 a new job, 200 a job that exists, 413 too large, 422 not
  audio or bad options, 503 busy.
- ``GET /api/jobs/{id}``: one job; ``DELETE``: remove it.
- ``POST /api/jobs/{id}/retry``: queue a failed job again.
- ``GET /api/jobs/{id}/stems/{stem}.{ext}``: one stem in wav, flac or mp3.
- ``GET /api/jobs/{id}/mixture.wav``: the original mix, decoded as the stems are stored.
- ``GET /api/jobs/{id}/mix/{ext}?{stem}={gain}&...``: the sum of the stems named at their gains
  (what the player plays); a header ``X-Umx-Notice`` says when it was rescaled to fit.
- ``GET /api/jobs/{id}/zip/{ext}``: every stem in one zip file.
- ``GET /api/events``: server-sent events, ``jobs`` (every job) on connection, then ``job`` for
  each change.

The body of an upload is written to disk as it arrives and refused as soon as it passes the
limit, never held in memory. Requests that change something are refused when a browser says
they come from another site (their `Origin`), and when bound to the loopback interface only
the loopback host names are answered (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from umx import __version__
from umx.audio import audio_formats
from umx.errors import UmxError
from umx.web.jobs import (
    Busy,
    JobStore,
    NotFound,
    TooLarge,
    display_name,
    stem_modes,
    too_large,
)
from umx.zoo import BUNDLED, CACHED, MODELS, is_offline, list_models

STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
KEEPALIVE_S = 15.0
"""Seconds between comments on an idle event stream, so that proxies and browsers keep it."""
STATUS = {TooLarge: 413, Busy: 503, NotFound: 404}
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
        host: the address the server listens on; on a loopback one, only requests for a
            loopback host name are answered.
        no_downloads: why models cannot be downloaded now (the download host did not answer
            at start, say), or None; offline mode (`$UMX_OFFLINE`) says so by itself.
    """

    async def config(request: Request) -> Response:
        return JSONResponse(
            {
                "version": __version__,
                "models": model_entries(store, default_model, no_downloads),
                "default_model": default_model,
                "formats": audio_formats(),
                "max_upload_bytes": max_upload_bytes,
            }
        )

    async def jobs(request: Request) -> Response:
        return JSONResponse(store.jobs())

    async def upload(request: Request) -> Response:
        check_origin(request)
        query = request.query_params
        name = display_name(query.get("name", ""))
        options = store.options(query.get("model", default_model), query.get("stems", "all"))
        store.check_room()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes:
            raise too_large(name, max_upload_bytes)
        received = store.new_upload(name, max_upload_bytes)
        try:
            async for piece in request.stream():
                received.write(piece)
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
            check_origin(request)
            store.delete(job_id)
            return Response(status_code=204)
        return JSONResponse(store.job(job_id))

    async def stem(request: Request) -> Response:
        stem_name, _, ext = request.path_params["file"].rpartition(".")
        path, filename = await run_in_threadpool(
            store.stem_file, request.path_params["job_id"], stem_name, ext
        )
        return FileResponse(path, filename=filename, media_type=MEDIA_TYPES.get(ext))

    async def retry(request: Request) -> Response:
        check_origin(request)
        return JSONResponse(store.retry(request.path_params["job_id"]))

    async def original(request: Request) -> Response:
        path, filename = await run_in_threadpool(store.original_file, request.path_params["job_id"])
        return FileResponse(path, filename=filename, media_type=MEDIA_TYPES["wav"])

    async def mix(request: Request) -> Response:
        ext = request.path_params["ext"]
        path, filename, notice = await run_in_threadpool(
            store.mix_file, request.path_params["job_id"], dict(request.query_params), ext
        )
        headers = {"X-Umx-Notice": notice} if notice else None
        return FileResponse(
            path, filename=filename, media_type=MEDIA_TYPES.get(ext), headers=headers
        )

    async def favicon(request: Request) -> Response:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    async def archive(request: Request) -> Response:
        path, filename = await run_in_threadpool(
            store.zip_file, request.path_params["job_id"], request.path_params["ext"]
        )
        return FileResponse(path, filename=filename, media_type="application/zip")

    async def events(request: Request) -> Response:
        return StreamingResponse(
            event_stream(store),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def user_error(request: Request, error: Exception) -> Response:
        status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 422)
        return JSONResponse({"error": str(error)}, status_code=status)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return JSONResponse({"error": error.detail}, status_code=error.status_code)

    middleware = []
    if host in LOOPBACK_NAMES:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES))
    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/config", config),
            Route("/api/jobs", jobs),
            Route("/api/jobs", upload, methods=["POST"]),
            Route("/api/jobs/{job_id}", job, methods=["GET", "DELETE"]),
            Route("/api/jobs/{job_id}/retry", retry, methods=["POST"]),
            Route("/api/jobs/{job_id}/stems/{file}", stem),
            Route("/api/jobs/{job_id}/mixture.wav", original),
            Route("/api/jobs/{job_id}/mix/{ext}", mix),
            Route("/api/jobs/{job_id}/zip/{ext}", archive),
            Route("/api/events", events),
            Route("/favicon.ico", favicon),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=middleware,
        exception_handlers={UmxError: user_error, HTTPException: http_error},
    )


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


def check_origin(request: Request) -> None:
    """Refuse a change asked for by a page of another site (a browser names it in `Origin`)."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"requests from {origin[:100]} are not accepted")


def sse(event: str, data: Any) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def event_stream(store: JobStore) -> AsyncIterator[str]:
    """Every job, then each job's change as it happens, with a comment when idle.

    Changes come from the worker threads; those of one job that arrive faster than the client
    reads are merged (only the latest is sent), so a slow client never holds a growing backlog.
    """
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    latest: dict[str, dict[str, Any]] = {}

    def note(record: dict[str, Any]) -> None:
        latest[record["id"]] = record
        changed.set()

    def listener(record: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
            loop.call_soon_threadsafe(note, record)

    unsubscribe = store.subscribe(listener)
    try:
        yield sse("jobs", store.jobs())
        while True:
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
        unsubscribe()
