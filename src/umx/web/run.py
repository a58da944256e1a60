"""`umx serve` as typed options: `ServeOptions`, checked when built, and `serve`, which runs
the page with uvicorn on a socket bound here (so that the address printed is the one served,
`port` 0 included).

Stopping (Ctrl-C, SIGTERM, SIGHUP) is handled here from the moment the options are checked:
a stop during the start-up is recorded and the server is not started; once it runs, the
server stops taking requests and ends its event streams, a running separation ends at its next
chunk (its job stays queued on disk), and the process exits with the signal's status (130, 143,
129) without the interpreter's shutdown. That shutdown would abort the process ("terminate
called without an active exception") when it meets a worker thread still inside torch's native
code (loading a model, separating a long chunk), and it takes seconds on a busy machine; every
file is consistent by then (written under a temporary name and renamed).
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import socket
import sys
import webbrowser
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from umx.defaults import AUTO
from umx.devices import WORKERS_PER_CORE, check_cores
from umx.errors import UmxError, check_flags, check_number, check_path, short
from umx.workers import STOP_SIGNALS
from umx.zoo import DEFAULT_MODEL, MODELS, cache_dir, is_offline, resolve_model
from umx.zoo.download import probe

if TYPE_CHECKING:
    import uvicorn

logger = logging.getLogger("umx")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
DEFAULT_MAX_UPLOAD_MB = 500.0
DEFAULT_MAX_CACHE_GB = 10.0
DEFAULT_MAX_QUEUE = 16
GRACEFUL_SHUTDOWN_S = 2
"""Seconds open requests (downloads, uploads) get to finish when the server stops, before their
connections are closed; event streams end at once."""
WORKERS_STOP_S = 0.5
"""Seconds the workers get to end when the server stops (see the module's docstring)."""
WEB_MODULES = ("starlette", "uvicorn")
NO_ANSWER = "the download server did not answer at start"
"""Why the models not in the cache cannot be had, when the download host did not answer."""


@dataclass(frozen=True)
class ServeOptions:
    """What `umx serve` serves and where, checked when built (one-line errors naming the
    command line's options), before a model loads or a socket is bound.

    Attributes:
        host, port: the address to listen on; `port` 0 for any free one.
        model: the model the page selects first, a name or a model directory; None for the
            default (see `umx.zoo.resolve_model`).
        jobs: songs separated at the same time, one per worker.
        max_queue: songs that may wait; more are refused as busy.
        data_dir: the folder of the uploads and their stems; None for `default_data_dir()`.
        max_upload_mb: the largest song accepted, in MiB.
        max_cache_gb: the most space the jobs may take, in GiB.
        device: where the models run (`umx.devices.resolve_device`).
        open_browser: open the page in a browser once it is served.

    Raises:
        UmxError: an option out of its range or of the wrong type.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model: str | os.PathLike | None = None
    jobs: int = 1
    max_queue: int = DEFAULT_MAX_QUEUE
    data_dir: str | os.PathLike | None = None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_cache_gb: float = DEFAULT_MAX_CACHE_GB
    device: str = AUTO
    open_browser: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise UmxError(f"--host must be an address or a host name, not {short.repr(self.host)}")
        check_number("--port", self.port, minimum=0, maximum=65535, integer=True)
        check_path("--model", self.model, optional=True, what="a model name or folder")
        check_number("--jobs", self.jobs, minimum=1, integer=True)
        check_cores("--jobs", self.jobs, WORKERS_PER_CORE)
        check_number("--max-queue", self.max_queue, minimum=1, integer=True)
        check_path("--data-dir", self.data_dir, optional=True, what="a folder")
        # Under a kilobyte no audio file fits (1e-7 MB was a limit of 0 bytes).
        check_number("--max-upload-mb", self.max_upload_mb, minimum=0.001)
        check_number("--max-cache-gb", self.max_cache_gb, above=0)
        if not isinstance(self.device, str):
            raise UmxError(f"--device must be a device name, not {short.repr(self.device)}")
        check_flags({"--open": self.open_browser})


def default_data_dir() -> Path:
    """Where jobs live unless `--data-dir` says: `serve/` in umx's cache folder."""
    return cache_dir() / "serve"


def import_web() -> None:
    """Make sure the `web` extra is installed.

    Raises:
        UmxError: it is not, with the command that installs it.
    """
    for name in WEB_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UmxError(f"umx serve needs {name}: pip install 'umx[web]'") from None


def downloads_unavailable(models: Sequence[str], fell_back: bool) -> str | None:
    """Why the named models not in the cache cannot be downloaded now, or None: the download
    host is probed once (up to `umx.zoo.download.PROBE_TIMEOUT_S`), only when one of `models`
    is missing and offline mode is off (the page says that by itself).

    Args:
        models: every model the page offers.
        fell_back: the default model was asked for and fell back (see `resolve_model`), so
            the host did not answer a moment ago.
    """
    if is_offline():
        return None
    if fell_back:
        return NO_ANSWER
    missing = [(MODELS[name], MODELS[name].missing()) for name in models if name in MODELS]
    entry, targets = next(((entry, targets) for entry, targets in missing if targets), (None, []))
    if entry is None or probe(entry.url(targets[0])) is None:
        return None
    return NO_ANSWER


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port`, not yet listening (see `listen`): what the address
    refuses (a host unknown or not this machine's, a port in use) is known before anything is
    made.

    Raises:
        UmxError: the address cannot be had (in use, unknown, not this machine's).
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise UmxError(f"cannot listen on {host!r} (--host): {reason}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UmxError(address_refused(host, port, error)) from None
    return sock


def listen(sock: socket.socket) -> socket.socket:
    """Take connections on a socket from `bind`.

    Returns:
        `sock`.

    Raises:
        UmxError: the address cannot be had after all (taken since it was bound); `sock` is
            closed.
    """
    try:
        sock.listen()
    except OSError as error:
        host, port = sock.getsockname()[:2]
        sock.close()
        raise UmxError(address_refused(host, port, error)) from None
    return sock


def address_refused(host: str, port: int, error: OSError) -> str:
    """The one-line error of an address that cannot be bound or listened on."""
    hint = ""
    if error.errno == errno.EADDRINUSE:
        hint = " (is umx serve running there?): give another --port, or 0 for any free one"
    return f"cannot listen on {host}:{port}: {error.strerror or error}{hint}"


def page_url(sock: socket.socket) -> str:
    """The page's address: a wildcard address is shown as this machine's loopback one."""
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = "::1" if host == "::" else host
        return f"http://[{host}]:{port}/"
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/"


class StopRequest:
    """The first stop signal received while `umx serve` runs, and the server it stops (set once
    made: a signal before that is kept, and the server is not started)."""

    def __init__(self) -> None:
        self.server: uvicorn.Server | None = None
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        if self.server is not None:
            self.server.should_exit = True


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn `STOP_SIGNALS` into a request to stop for the duration of the block. The handler
    only records the signal (the command's own raises an exception, which code it lands in could
    swallow), so a stop during the start-up is never lost. uvicorn takes SIGINT and SIGTERM over
    while it runs, and raises them again when it returns."""
    request = StopRequest()
    previous = {signum: signal.signal(signum, request) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_now(signum: int, busy: bool) -> None:
    """Exit at once with the status of a stop by `signum` (see the module's docstring).

    Args:
        signum: the signal that stopped the server.
        busy: a worker is still separating a song (its job is queued again at the next start).
    """
    name = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    detail = "; the song being separated is queued again for the next start" if busy else ""
    logger.error("%s%s", name, detail)
    for handler in logger.handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def serve(options: ServeOptions) -> int:
    """Serve the page until it is stopped (Ctrl-C, SIGTERM, SIGHUP), which exits the process
    (see the module's docstring).

    Returns:
        0 when the server stopped otherwise (uvicorn could not start).

    Raises:
        UmxError: the model, device, data directory or address cannot be had.
    """
    with stop_on_signals() as stop:
        separating = _serve(options, stop)
    if stop.signum is None:  # stopped otherwise (uvicorn could not start)
        return 0
    exit_now(stop.signum, busy=separating)
    return 128 + stop.signum  # not reached


def _serve(options: ServeOptions, stop: StopRequest) -> bool:
    """Build the job store, the page and the server, and serve until `stop` is requested.

    Returns:
        whether a song was still being separated when the server stopped: a worker that had
        not ended (see `JobStore.stop`) with a job running, not one still loading the model
        at the start.
    """
    import_web()
    import torch

    from umx.devices import one_malloc_arena, resolve_device
    from umx.errors import display_path
    from umx.jobs import RUNNING
    from umx.web.jobs import JobStore
    from umx.web.server import Server, create_app

    device = resolve_device(options.device)
    if options.jobs > 1:  # the workers share the cores instead of each taking them all
        torch.set_num_threads(max(1, torch.get_num_threads() // options.jobs))
    model = resolve_model(options.model)
    models = [*MODELS, *([model] if model not in MODELS else [])]
    data_dir = Path(options.data_dir) if options.data_dir is not None else default_data_dir()
    # bound before the store makes its folders: a bad --host or a busy --port changes nothing
    sock = bind(options.host, options.port)
    try:
        store = JobStore(
            data_dir,
            models=models,
            max_queue=options.max_queue,
            max_cache_bytes=int(options.max_cache_gb * 2**30),
            device=device,
        )
    except BaseException:
        sock.close()
        raise
    try:  # the store is stopped (its data directory released) whatever happens from here
        app = create_app(
            store,
            default_model=model,
            max_upload_bytes=int(options.max_upload_mb * 2**20),
            host=options.host,
            no_downloads=downloads_unavailable(
                models, fell_back=options.model is None and model != DEFAULT_MODEL
            ),
        )
        listen(sock)
        url = page_url(sock)
        if options.host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning(
                "listening on %s: anyone who can reach it can use the page", options.host
            )
        stop.server = Server(app, GRACEFUL_SHUTDOWN_S)
        if stop.signum is None:
            one_malloc_arena()  # before the workers and the HTTP threads start
            store.start(options.jobs, preload=model)
            print(f"umx serve: {url}", flush=True)
            logger.info("jobs in %s; stop with Ctrl-C", display_path(data_dir))
            if options.open_browser:
                webbrowser.open(url)
        if stop.signum is None:  # a signal from now on sets the server's should_exit
            stop.server.run(sockets=[sock])
    finally:
        sock.close()
        ended = store.stop(timeout=WORKERS_STOP_S)
    return not ended and any(job["state"] == RUNNING for job in store.jobs())
