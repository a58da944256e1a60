"""Named models' weights into the cache: download, verification, offline mode.

Downloaded files carry the first 8 hex digits of their SHA-256 in their name; a file is checked
against them when downloaded and again before use (see `verify_file`). Nothing here touches the
network when offline mode is on (`$UMX_OFFLINE`, see `is_offline`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from umx.defaults import DEFAULT_MODEL, FALLBACK_MODEL, HASHED_NAME
from umx.errors import UmxError, check_flag, printable, short
from umx.files import sha256_file, write_atomic
from umx.folders import in_the_way, not_a_folder
from umx.zoo.registry import (
    CACHE_ENV,
    MIRROR_ENV,
    MODELS,
    ZooEntry,
    find_model,
    model_targets,
)

logger = logging.getLogger(__name__)

OFFLINE_ENV = "UMX_OFFLINE"  # 1: never touch the network
DOWNLOAD_CHUNK = 1 << 20  # the most one read takes; it returns what has come, not waiting for more
DOWNLOAD_TIMEOUT_S = 60.0  # the longest wait for any data at all
STALL_WINDOW_S = 30.0  # a download gives up when in this many seconds it receives
STALL_MIN_BYTES = 64 << 10  # fewer bytes than this (2 KiB/s): the server is too slow
PROBE_TIMEOUT_S = 3.0  # how long the default model waits for the download host before falling back
USER_AGENT = "umx (Open-Unmix model zoo)"
ALL_MODELS = "all"
"""The name `umx download` takes for every published model."""
_LINE = 148  # the longest refusal a note is added to (the `umx: error: ` before it: 160)

_OFFLINE_ON = frozenset({"1", "true", "yes", "on"})
_OFFLINE_OFF = frozenset({"", "0", "false", "no", "off"})


def _expected_hash(path: Path) -> str:
    match = HASHED_NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} has no hash in its name")
    return match["hash"]


def verify_file(path: str | os.PathLike, *, url: str | None = None) -> None:
    """Check a cached `<target>-<8 hex>.pth` against the hash in its name; delete it if it fails.

    Every use hashes the file again (about 0.1 s per 100 MB), so a file damaged in place, even
    with its size and time kept, is never used.

    Args:
        path: the cached file.
        url: where a good copy is downloaded from, for the error message.

    Raises:
        UmxError: the file does not match its name; it has been deleted, unless the cache is
            read-only (then `path` still exists, and the message says it is corrupt).
    """
    path = Path(path)
    expected = _expected_hash(path)
    actual = sha256_file(path)
    if not actual.startswith(expected):
        mismatch = f"its SHA-256 is {actual} but its name says it starts with {expected}"
        try:
            path.unlink()
        except OSError as error:
            remedy = f"replace it with {url}" if url else "delete it and run again"
            raise UmxError(
                f"{path} is corrupt ({mismatch}) and could not be deleted "
                f"({error.strerror or error}): {remedy}, or set {CACHE_ENV} to a writable folder"
            ) from None
        remedy = f"download {url} and save it as {path}" if url else "run again to download it"
        raise UmxError(f"{path} is corrupt and has been deleted: {mismatch}; {remedy}")


def _declared_length(value: str | None) -> int | None:
    """The length a `Content-Length` header declares, or None when it declares none: absent,
    or not a whole number of bytes ("abc", "-5"), which http.client too takes as no length (the
    data then runs until the server closes the connection)."""
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _network_reason(error: BaseException) -> str:
    """Why a request failed, in a few words on one line (urllib's reason for a redirect loop
    spans three)."""
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    else:
        if isinstance(error, urllib.error.URLError):
            error = error.reason if isinstance(error.reason, BaseException) else error
        if isinstance(error, OSError) and error.strerror:
            reason = error.strerror
        else:
            reason = str(error) or type(error).__name__
    return printable(" ".join(reason.split()))


class Unavailable(UmxError):
    """A named model's weights cannot be had; `reason` says why in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_offline(offline: bool | None = None) -> bool:
    """Whether umx must not touch the network: `offline` if given, else `$UMX_OFFLINE`.

    Raises:
        UmxError: `offline` is not a bool or None (the text "false" would be true), or
            `$UMX_OFFLINE` is neither empty, 0/1, true/false, yes/no nor on/off.
    """
    if offline is not None:
        check_flag("offline", offline)
        return offline
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in _OFFLINE_ON:
        return True
    if value in _OFFLINE_OFF:
        return False
    raise UmxError(
        f"{OFFLINE_ENV} must be 1 (offline) or 0, not {short.repr(os.environ[OFFLINE_ENV])}"
    )


def probe(url: str) -> str | None:
    """Whether the host of `url` answers a HEAD request within `PROBE_TIMEOUT_S` seconds.

    The request runs in a daemon thread so that nothing, not even a name lookup the socket
    timeout does not cover, holds the caller longer. Any answer, an HTTP error included, counts:
    the host is there and the download itself reports what it says.

    Returns:
        None if the host answered, else why not, in a few words.
    """
    outcome: list[str | None] = []

    import urllib.request  # with http.client, only when the network is used

    def attempt() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except Exception as error:  # any failure to connect means: not reachable
            outcome.append(_network_reason(error))

    thread = threading.Thread(target=attempt, name="umx-probe", daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    logger.debug("probed %s in %.3f s: %s", url, time.monotonic() - start, outcome)
    if not outcome:
        host = urllib.parse.urlsplit(url).hostname or url
        return f"no answer from {host} within {PROBE_TIMEOUT_S:g} s"
    return outcome[0]


class _TooSlow(Exception):
    """A server sent fewer than `STALL_MIN_BYTES` in `STALL_WINDOW_S` seconds."""


def _receive(response: IO[bytes], out: IO[bytes], digest: Any, bar: Any) -> int:
    """Copy the body of `response` to `out`, into `digest` and onto the progress `bar`.

    Each read returns what has arrived (`read1`), so the bar moves and a server that trickles
    bytes, which the socket timeout never catches, is given up on after `STALL_WINDOW_S`.

    Returns:
        the number of bytes received, which may be fewer than the response declared: a
        connection closed early ends the body without an error.

    Raises:
        _TooSlow: fewer than `STALL_MIN_BYTES` came in a window of `STALL_WINDOW_S` seconds.
    """
    read = getattr(response, "read1", response.read)
    received = window_bytes = 0
    window_start = time.monotonic()
    while chunk := read(DOWNLOAD_CHUNK):
        out.write(chunk)
        digest.update(chunk)
        bar.update(len(chunk))
        received += len(chunk)
        window_bytes += len(chunk)
        elapsed = time.monotonic() - window_start
        if elapsed >= STALL_WINDOW_S:
            if window_bytes < STALL_MIN_BYTES:
                raise _TooSlow(f"the server is too slow: {window_bytes} bytes in {elapsed:.1f} s")
            window_start, window_bytes = time.monotonic(), 0
    return received


def _get(
    url: str, out: IO[bytes], digest: Any, label: str, progress: bool
) -> tuple[int | None, int]:
    """Download `url` into `out` and `digest`, with a progress bar named `label` on stderr
    (when `progress` and stderr is a terminal).

    Returns:
        the length the server declared (None if none) and the number of bytes received.

    Raises:
        what urllib, http.client and `_receive` raise.
    """
    import urllib.request  # with http.client, only when the network is used

    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        total = _declared_length(response.headers.get("Content-Length"))
        with tqdm(
            total=total or None,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=not progress or not sys.stderr.isatty(),
            leave=False,
        ) as bar:
            return total, _receive(response, out, digest, bar)


def download_file(
    url: str, destination: str | os.PathLike, *, progress: bool = True, hint: str | None = None
) -> None:
    """Download a `<target>-<8 hex>.pth` file and check it against the hash in its name.

    The data goes to a temporary file next to `destination`, which replaces `destination` only
    once complete and verified; nothing is left behind on failure.

    Args:
        url: where to download from.
        destination: the file to create; its name carries the expected hash.
        progress: show a progress bar on stderr (only when stderr is a terminal).
        hint: what the error message tells to do by hand; by default, to download `url` and
            save it as `destination`.

    Raises:
        UmxError: the download failed (the message says where to put the file by hand) or the
            data does not match the hash; `reason` holds the cause in a few words.
    """
    destination = Path(destination)
    expected = _expected_hash(destination)
    hint = hint or f"download it by hand and save it as {destination}"
    digest = hashlib.sha256()

    from http.client import HTTPException  # only when the network is used

    def fetch(out: IO[bytes]) -> None:
        try:
            total, received = _get(url, out, digest, destination.name, progress)
        except _TooSlow as error:
            failure = f"could not download {url} ({error})"
            remedy = f"try again later, or set {MIRROR_ENV} to a faster mirror"
            raise Unavailable(f"{failure}; {remedy}; {hint}", failure) from None
        except (
            urllib.error.URLError,
            HTTPException,
            ConnectionError,
            TimeoutError,
            ValueError,  # an address urllib cannot use
        ) as error:
            failure = f"could not download {url} ({_network_reason(error)})"
            raise Unavailable(f"{failure}; {hint}", failure) from error
        if total is not None and received < total:  # http.client's read does not say so
            failure = f"could not download {url} (cut off after {received} of {total} bytes)"
            raise Unavailable(f"{failure}; run again, or {hint}", failure)
        if not digest.hexdigest().startswith(expected):
            raise Unavailable(
                f"the file downloaded from {url} for {destination} is corrupt and was deleted: "
                f"its SHA-256 is {digest.hexdigest()} but should start with {expected}; {hint}",
                f"{url} gave a corrupt file",
            )

    logger.info("downloading %s to %s", url, destination)
    made = not os.path.lexists(destination.parent)
    try:
        _save(destination, fetch)
    except BaseException:
        if made:  # a model folder made for this file is not left behind empty
            with contextlib.suppress(OSError):
                destination.parent.rmdir()
        raise


def _save(destination: Path, fetch: Callable[[IO[bytes]], None]) -> None:
    """Write `destination` atomically from `fetch`, making its folder first.

    Raises:
        Unavailable: the local disk refused (network errors come from `fetch`).
    """
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(destination, fetch)
    except OSError as error:  # network errors are UmxErrors by now: this is the local disk
        blocker = not_a_folder(destination.parent)
        if blocker is None:
            space = error.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = (
                f"could not save {destination} ({error.strerror or error}): "
                f"{'free some space, or ' if space else ''}set {CACHE_ENV} to a writable folder"
            )
        else:
            reason = (
                f"could not save {destination}: {blocker} is {in_the_way(blocker)}; move it away, "
                f"or set {CACHE_ENV} to another folder"
            )
        raise Unavailable(reason, reason) from error


def download_model(
    name: str,
    *,
    targets: Sequence[str] | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> Path:
    """Make sure a named model's weights are in the cache and intact, downloading what is missing.

    A cached file that fails its check is deleted and downloaded again (not when offline).

    Args:
        name: a key of `MODELS`.
        targets: the targets needed; all of the model's if None.
        progress: show download progress bars.
        offline: never touch the network; None reads `$UMX_OFFLINE` (see `is_offline`).

    Returns:
        the folder holding the weights (inside the package for a bundled model).

    Raises:
        UmxError: unknown name or target; offline with files missing; failed download (the
            message names every missing file, its URL and where to save it); corrupt file.
    """
    entry = find_model(name)
    if entry.bundled:
        return entry.directory
    offline = is_offline(offline)
    return fetch_targets(entry, checked_targets(entry, targets, offline), progress, offline)


def download_command(name: str) -> str:
    """The command that downloads model `name`, turning off the offline mode `$UMX_OFFLINE`
    turns on (`umx download` downloads nothing in offline mode)."""
    return f"{OFFLINE_ENV}=0 umx download {name}" if is_offline() else f"umx download {name}"


def _offline_model(entry: ZooEntry) -> str:
    """`, or use the bundled umxsynth ...` where that has the targets of `entry`, else nothing."""
    if MODELS[FALLBACK_MODEL].targets != entry.targets:
        return ""
    return f", or use the bundled {FALLBACK_MODEL}, which works offline"


def checked_targets(entry: ZooEntry, targets: Sequence[str] | None, offline: bool) -> list[str]:
    """`model_targets`, whose refusal says too when the model is not in the cache offline, so
    that fixing the targets does not lead to a model that cannot run here."""
    try:
        return model_targets(entry, targets)
    except UmxError as error:
        if not offline or entry.bundled or not entry.missing():
            raise
        # the bundled model, where it has the targets listed or those asked for
        fits = set(targets or ()) <= set(MODELS[FALLBACK_MODEL].targets)
        fallback = (
            f": --model {FALLBACK_MODEL} works offline" if fits or _offline_model(entry) else ""
        )
        note = f" (and offline, {entry.name} is not cached{fallback})"
        if len(str(error) + note) > _LINE:  # a refusal that already says more keeps its line
            raise
        raise UmxError(f"{error}{note}") from None


def fetch_targets(entry: ZooEntry, selected: Sequence[str], progress: bool, offline: bool) -> Path:
    """`download_model` for the targets `selected` (checked by `model_targets`)."""
    name = entry.name
    corrupt: dict[str, str] = {}  # target → why its cached file was deleted
    for target in selected:
        path = entry.directory / entry.weights[target]
        if path.is_file():
            try:
                verify_file(path, url=entry.url(target))
            except UmxError as error:
                if path.exists():  # a read-only cache: downloading it again would fail too
                    raise Unavailable(str(error), f"{path.name} in the cache is corrupt") from None
                if offline:
                    raise Unavailable(
                        f"{error} (offline mode is on)", f"{path.name} in the cache is corrupt"
                    ) from None
                corrupt[target] = str(error)
                logger.info("%s was corrupt and has been deleted: downloading it again", path)
    missing = entry.missing(selected)
    if missing and offline:
        # The files to place by hand are said where a download fails (and by umx --list-models)
        raise Unavailable(
            f"offline mode is on and model {name} is not in the cache: run "
            f"`{download_command(name)}`{_offline_model(entry)}",
            f"offline mode is on and {name} is not in the cache",
        )
    for index, target in enumerate(missing):
        hint = f"to install {name} by hand, {entry.placement(missing[index:])}"
        try:
            download_file(
                entry.url(target),
                entry.directory / entry.weights[target],
                progress=progress,
                hint=hint,
            )
        except Unavailable as error:
            if target in corrupt:
                raise Unavailable(
                    f"{entry.weights[target]} in the cache was corrupt and has been deleted, and "
                    f"downloading it again failed: {error}",
                    error.reason,
                ) from error.__cause__
            raise
    return entry.directory


def download_models(
    names: Sequence[str] | None = None, *, progress: bool = True, offline: bool | None = None
) -> list[Path]:
    """Fetch named models into the cache and re-hash every file, for `umx download`.

    A model asked for by name never falls back: a failure raises. Bundled models need nothing.

    Args:
        names: keys of `MODELS` in any case, or `ALL_MODELS` for every published one; None or
            empty for the default model.
        progress: show download progress bars.
        offline: never touch the network (then this only re-checks the cache); None reads
            `$UMX_OFFLINE`.

    Returns:
        each model's folder, in the order given (inside the package for a bundled model).

    Raises:
        UmxError: an unknown name (before anything is downloaded), a failed download, a corrupt
            file, or offline with files missing.
    """
    if ALL_MODELS in (names or ()):  # never a model's name
        names = [entry.name for entry in MODELS.values() if not entry.bundled]
    wanted = list(dict.fromkeys(find_model(name).name for name in names or [DEFAULT_MODEL]))
    directories = []
    for name in wanted:
        entry = MODELS[name]
        if entry.bundled:
            logger.info("%s is bundled with umx: nothing to download", name)
        else:
            download_model(name, progress=progress, offline=offline)
            logger.info(
                "%s: all %d files verified in %s", name, len(entry.weights), entry.directory
            )
        directories.append(entry.directory)
    return directories
