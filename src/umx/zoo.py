"""Model names → weights on disk: the registry, download, verification, cache, loading by name.

Named models are either downloaded into the cache (`$UMX_CACHE`, else `$XDG_CACHE_HOME/umx`,
else `~/.cache/umx`, one folder per model) or bundled with the package under
`umx/pretrained/<name>/` in the official layout (see `umx.modeldir`). Downloaded files carry the
first 8 hex digits of their SHA-256 in their name; a file is checked against them when downloaded
and again before use (see `verify_file`).

The default model is the published `umxl`. When its weights are neither in the cache nor
downloadable (no network, `$UMX_OFFLINE` set, a failed download), `load_separator(None)` falls
back to the bundled `umxsynth` with one warning; a model asked for by name never falls back.

`load_separator` is the one loader of separators, from a name or a model directory; reading and
writing model directories is `umx.modeldir`'s job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from umx.defaults import DEFAULT_MODEL, FALLBACK_MODEL, HASHED_NAME, WIENER_WIN_LEN
from umx.errors import UmxError, short
from umx.files import sha256_file, write_atomic, write_json_atomic

if TYPE_CHECKING:  # torch, and modeldir which imports it, load only when a model does
    import torch

    from umx.modeldir import ModelFiles
    from umx.separator import Separator

logger = logging.getLogger(__name__)

CACHE_ENV = "UMX_CACHE"
MIRROR_ENV = "UMX_ZOO_URL"
OFFLINE_ENV = "UMX_OFFLINE"  # 1: never touch the network
ZENODO_URL = "https://zenodo.org/records/{record}/files"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

VERIFIED_SUFFIX = ".verified"
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 3.0  # how long the default model waits for the download host before falling back
USER_AGENT = "umx (Open-Unmix model zoo)"

# Model statuses shown by `umx --list-models`.
BUNDLED = "bundled"
CACHED = "cached"
PARTIAL = "partial"
NOT_DOWNLOADED = "not downloaded"

_OFFLINE_ON = frozenset({"1", "true", "yes", "on"})
_OFFLINE_OFF = frozenset({"", "0", "false", "no", "off"})

NC_SA = "CC BY-NC-SA 4.0"
MIT = "MIT"


def _hashed_weights(**hashes: str) -> dict[str, str]:
    """Target → `<target>-<hash>.pth`, in the order given."""
    return {target: f"{target}-{digits}.pth" for target, digits in hashes.items()}


@dataclass(frozen=True)
class ZooEntry:
    """A named model.

    Args:
        name: the name users type, e.g. `umxhq`.
        description: one line for `umx --list-models`.
        license: licence of the weights.
        weights: target → weights file name, in output order. Downloaded files are named
            `<target>-<8 hex>.pth` (or `_`), the hex digits starting their SHA-256.
        sample_rate, n_fft, n_hop, nb_channels: the STFT the models were trained with, used when
            the model folder has no `separator.json`.
        record: Zenodo record the files are downloaded from; None for a bundled model, whose
            files ship in `umx/pretrained/<name>/` in the official layout.
        notice: a line logged whenever the model is loaded, e.g. what it is not good for.
    """

    name: str
    description: str
    license: str
    weights: Mapping[str, str]
    sample_rate: float
    n_fft: int
    n_hop: int
    nb_channels: int
    record: str | None = None
    notice: str | None = None

    def __post_init__(self) -> None:
        if self.record is not None:
            unhashed = [name for name in self.weights.values() if not HASHED_NAME.match(name)]
            if unhashed:
                raise ValueError(f"downloaded weights need a hash in their name: {unhashed}")

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.weights)

    @property
    def bundled(self) -> bool:
        return self.record is None

    @property
    def directory(self) -> Path:
        """Where the files are: inside the package if bundled, else in the cache."""
        return PRETRAINED_DIR / self.name if self.bundled else model_cache_dir(self.name)

    def url(self, target: str) -> str:
        """Download address of a target's weights, from `$UMX_ZOO_URL` if set, else Zenodo."""
        if self.record is None:
            raise ValueError(f"model {self.name!r} is bundled, not downloaded")
        base = os.environ.get(MIRROR_ENV) or ZENODO_URL.format(record=self.record)
        return f"{base.rstrip('/')}/{self.weights[target]}"

    def missing(self, targets: Sequence[str] | None = None) -> list[str]:
        """The targets (all if None) whose weights are not in the cache; none if bundled."""
        if self.bundled:
            return []
        wanted = self.targets if targets is None else targets
        return [
            target for target in wanted if not (self.directory / self.weights[target]).is_file()
        ]

    def placement(self, targets: Sequence[str]) -> str:
        """How to install targets' weights by hand: `save <url> as <path>, ...`."""
        return "save " + ", ".join(
            f"{self.url(target)} as {self.directory / self.weights[target]}" for target in targets
        )


MODELS: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry(
            name="umxsynth",
            description="music: vocals/drums/bass/other, small, trained on umx's synthetic music",
            license=MIT,
            weights={target: f"{target}.pth" for target in ("vocals", "drums", "bass", "other")},
            sample_rate=44100.0,
            n_fft=4096,
            n_hop=1024,
            nb_channels=2,
            notice="umxsynth is a small demo model trained on synthetic music; for real "
            "recordings use umxl (`umx download umxl`) or umxhq",
        ),
        ZooEntry(
            name="umxsynth-rt",
            description="music: vocals/drums/bass/other, small and causal (unidirectional LSTM) "
            "for `umx stream`, trained on umx's synthetic music",
            license=MIT,
            weights={target: f"{target}.pth" for target in ("vocals", "drums", "bass", "other")},
            sample_rate=44100.0,
            n_fft=4096,
            n_hop=1024,
            nb_channels=2,
            notice="umxsynth-rt is a small causal demo model trained on synthetic music; real "
            "recordings separate better offline with umxl (`umx download umxl`) or umxhq",
        ),
        ZooEntry(
            name="umxl",
            description="music: vocals/drums/bass/other, trained on extra data (reference default)",
            license=NC_SA,
            weights=_hashed_weights(
                vocals="bccbd9aa", drums="69e0ebd4", bass="2ca1ce51", other="c8c5b3e6"
            ),
            sample_rate=44100.0,
            n_fft=4096,
            n_hop=1024,
            nb_channels=2,
            record="5069601",
        ),
        ZooEntry(
            name="umxhq",
            description="music: vocals/drums/bass/other, trained on MUSDB18-HQ",
            license=MIT,
            weights=_hashed_weights(
                vocals="b62c91ce", drums="9619578f", bass="8d85a5bd", other="b52fbbf7"
            ),
            sample_rate=44100.0,
            n_fft=4096,
            n_hop=1024,
            nb_channels=2,
            record="3370489",
        ),
        ZooEntry(
            name="umx",
            description="music: vocals/drums/bass/other, trained on MUSDB18 (compressed)",
            license=MIT,
            weights=_hashed_weights(
                vocals="c8df74a5", drums="5a48008b", bass="646024d3", other="f8e132cc"
            ),
            sample_rate=44100.0,
            n_fft=4096,
            n_hop=1024,
            nb_channels=2,
            record="3370486",
        ),
        ZooEntry(
            name="umxse",
            description="speech enhancement: speech/noise, mono 16 kHz",
            license=MIT,
            weights={"speech": "speech_f5e0d9f9.pth", "noise": "noise_04a6fc2d.pth"},
            sample_rate=16000.0,
            n_fft=1024,
            n_hop=512,
            nb_channels=1,
            record="3786908",
        ),
    )
}


@dataclass(frozen=True)
class ModelInfo:
    """What `umx --list-models` shows about a named model.

    Attributes:
        status: `BUNDLED` (ships with umx), `CACHED` (every weights file is in the cache, not
            re-verified here), `PARTIAL` (some are) or `NOT_DOWNLOADED`.
        missing: the weights files not in the cache, by name.
        default: the model used when none is named.
        fallback: the bundled model the default falls back to when it cannot be had.
    """

    name: str
    description: str
    targets: tuple[str, ...]
    license: str
    bundled: bool
    cached: bool
    default: bool
    status: str
    missing: tuple[str, ...]
    fallback: bool


def _info(entry: ZooEntry) -> ModelInfo:
    missing = tuple(entry.weights[target] for target in entry.missing())
    if entry.bundled:
        status = BUNDLED
    elif not missing:
        status = CACHED
    else:
        status = NOT_DOWNLOADED if len(missing) == len(entry.weights) else PARTIAL
    return ModelInfo(
        name=entry.name,
        description=entry.description,
        targets=entry.targets,
        license=entry.license,
        bundled=entry.bundled,
        cached=status == CACHED,
        default=entry.name == DEFAULT_MODEL,
        status=status,
        missing=missing,
        fallback=entry.name == FALLBACK_MODEL,
    )


def list_models() -> list[ModelInfo]:
    """The named models and whether their weights are here, the default first, then its fallback.

    Looks at the cache only: never touches the network.

    Returns:
        one `ModelInfo` per entry of `MODELS`.
    """
    infos = [_info(entry) for entry in MODELS.values()]
    return sorted(infos, key=lambda info: (not info.default, not info.fallback))


# --- cache and download -------------------------------------------------------------------------


def cache_dir() -> Path:
    """The model cache: `$UMX_CACHE`, else `$XDG_CACHE_HOME/umx`, else `~/.cache/umx`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "umx"
    return Path.home() / ".cache" / "umx"


def model_cache_dir(name: str) -> Path:
    """The cache folder of one named model."""
    return cache_dir() / name


def _expected_hash(path: Path) -> str:
    match = HASHED_NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} has no hash in its name")
    return match["hash"]


def _stamp(path: Path, sha256: str) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}


def verify_file(path: str | os.PathLike, *, url: str | None = None, force: bool = False) -> None:
    """Check a cached `<target>-<8 hex>.pth` against the hash in its name; delete it if it fails.

    Hashing every file before every use would cost about a second per model, so a successful
    check leaves a `<file>.verified` marker recording the file's size, modification time and
    hash: while these still match the file is trusted, and any change to it (a new copy, an
    edit, a truncation) makes it be hashed again. Files put in the cache by hand have no marker
    and are hashed on first use.

    Args:
        path: the cached file.
        url: where a good copy is downloaded from, for the error message.
        force: hash the file even when its marker says it was verified.

    Raises:
        UmxError: the file does not match its name; it has been deleted.
    """
    path = Path(path)
    marker = path.with_name(path.name + VERIFIED_SUFFIX)
    expected = _expected_hash(path)
    try:
        stamp = json.loads(marker.read_text())
    except (OSError, ValueError, RecursionError):
        stamp = None
    if (
        not force
        and isinstance(stamp, dict)
        and str(stamp.get("sha256", "")).startswith(expected)
        and stamp == _stamp(path, stamp["sha256"])
    ):
        return
    actual = sha256_file(path)
    if not actual.startswith(expected):
        path.unlink()
        marker.unlink(missing_ok=True)
        remedy = f"download {url} and save it as {path}" if url else "run again to download it"
        raise UmxError(
            f"{path} is corrupt and has been deleted: its SHA-256 is {actual} but its name says "
            f"it starts with {expected}; {remedy}"
        )
    _write_marker(path, actual)


def _write_marker(path: Path, sha256: str) -> None:

    try:
        write_json_atomic(path.with_name(path.name + VERIFIED_SUFFIX), _stamp(path, sha256))
    except OSError as error:  # a read-only cache still works, it is just hashed every time
        logger.debug("could not record that %s was verified: %s", path, error)


def _network_reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


class _Unavailable(UmxError):
    """A named model's weights cannot be had; `reason` says why in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_offline(offline: bool | None = None) -> bool:
    """Whether umx must not touch the network: `offline` if given, else `$UMX_OFFLINE`.

    Raises:
        UmxError: `$UMX_OFFLINE` is neither empty, 0/1, true/false, yes/no nor on/off.
    """
    if offline is not None:
        return bool(offline)
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in _OFFLINE_ON:
        return True
    if value in _OFFLINE_OFF:
        return False
    raise UmxError(
        f"{OFFLINE_ENV} must be 1 (offline) or 0, not {short.repr(os.environ[OFFLINE_ENV])}"
    )


def _probe(url: str) -> str | None:
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
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
        try:
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

    import urllib.request  # with http.client, only when the network is used
    from http.client import HTTPException

    from tqdm import tqdm

    def fetch(out: IO[bytes]) -> None:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total,
                    desc=destination.name,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    file=sys.stderr,
                    disable=not progress or not sys.stderr.isatty(),
                    leave=False,
                ) as bar:
                    while chunk := response.read(DOWNLOAD_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError) as error:
            failure = f"could not download {url} ({_network_reason(error)})"
            raise _Unavailable(f"{failure}; {hint}", failure) from error
        if not digest.hexdigest().startswith(expected):
            raise _Unavailable(
                f"the file downloaded from {url} for {destination} is corrupt and was deleted: "
                f"its SHA-256 is {digest.hexdigest()} but should start with {expected}; {hint}",
                f"{url} gave a corrupt file",
            )

    logger.info("downloading %s to %s", url, destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(destination, fetch)
    except OSError as error:  # network errors are UmxErrors by now: this is the local disk
        reason = f"could not save {destination} ({error.strerror or error})"
        raise _Unavailable(reason, reason) from error
    _write_marker(destination, digest.hexdigest())


def download_model(
    name: str,
    *,
    targets: Sequence[str] | None = None,
    progress: bool = True,
    offline: bool | None = None,
    rehash: bool = False,
) -> Path:
    """Make sure a named model's weights are in the cache and intact, downloading what is missing.

    A cached file that fails its check is deleted and downloaded again (not when offline).

    Args:
        name: a key of `MODELS`.
        targets: the targets needed; all of the model's if None.
        progress: show download progress bars.
        offline: never touch the network; None reads `$UMX_OFFLINE` (see `is_offline`).
        rehash: hash every cached file, even those verified before.

    Returns:
        the folder holding the weights (inside the package for a bundled model).

    Raises:
        UmxError: unknown name or target; offline with files missing; failed download (the
            message names every missing file, its URL and where to save it); corrupt file.
    """
    entry = _entry(name)
    if entry.bundled:
        return entry.directory
    return _fetch(entry, _select(entry, targets), progress, is_offline(offline), rehash)


def _fetch(
    entry: ZooEntry, selected: Sequence[str], progress: bool, offline: bool, rehash: bool = False
) -> Path:
    """`download_model` for the targets `selected` (checked by `_select`)."""
    name = entry.name
    corrupt: dict[str, str] = {}  # target → why its cached file was deleted
    for target in selected:
        path = entry.directory / entry.weights[target]
        if path.is_file():
            try:
                verify_file(path, url=entry.url(target), force=rehash)
            except UmxError as error:
                if offline:
                    raise _Unavailable(
                        f"{error} (offline mode is on)", f"{path.name} in the cache is corrupt"
                    ) from None
                corrupt[target] = str(error)
                logger.info("%s was corrupt and has been deleted: downloading it again", path)
    missing = entry.missing(selected)
    if missing and offline:
        raise _Unavailable(
            f"offline mode is on and model {name} is not in the cache: to install it by hand, "
            f"{entry.placement(missing)} (or turn offline mode off: {OFFLINE_ENV}=0)",
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
        except _Unavailable as error:
            if target in corrupt:
                raise _Unavailable(
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
        names: keys of `MODELS`; None or empty for the default model.
        progress: show download progress bars.
        offline: never touch the network (then this only re-checks the cache); None reads
            `$UMX_OFFLINE`.

    Returns:
        each model's folder, in the order given (inside the package for a bundled model).

    Raises:
        UmxError: an unknown name (before anything is downloaded), a failed download, a corrupt
            file, or offline with files missing.
    """
    wanted = list(dict.fromkeys(names or [DEFAULT_MODEL]))
    for name in wanted:
        _entry(name)
    directories = []
    for name in wanted:
        entry = MODELS[name]
        if entry.bundled:
            logger.info("%s is bundled with umx: nothing to download", name)
        else:
            download_model(name, progress=progress, offline=offline, rehash=True)
            logger.info(
                "%s: all %d files verified in %s", name, len(entry.weights), entry.directory
            )
        directories.append(entry.directory)
    return directories


# --- loading separators ---------------------------------------------------------------------------


def _entry(name: str) -> ZooEntry:
    if not isinstance(name, str) or name not in MODELS:
        raise UmxError(
            f"unknown model {short.repr(name)}; the known models are {', '.join(MODELS)}"
        )
    return MODELS[name]


def _read_config(directory: Path, entry: ZooEntry) -> tuple[dict[str, Any], str]:
    """`separator.json`, which only a named model may lack: its registry entry stands in."""
    from umx.modeldir import SEPARATOR_JSON, read_separator_json

    path = directory / SEPARATOR_JSON
    if path.is_file():
        return read_separator_json(path), str(path)
    config = {
        "sample_rate": entry.sample_rate,
        "nfft": entry.n_fft,
        "nhop": entry.n_hop,
        "nb_channels": entry.nb_channels,
    }
    return config, f"the registry entry of {entry.name!r}"


def _select(entry: ZooEntry, targets: Sequence[str] | None) -> list[str]:
    """The targets of a named model to load: `targets` checked against the model's, once per
    load (all of them if None)."""
    from umx.modeldir import select_targets

    return select_targets(entry.targets, targets, f"model {entry.name!r}")


def _downloaded_files(
    entry: ZooEntry, selected: Sequence[str], progress: bool, offline: bool
) -> ModelFiles:
    """The files of a downloaded model for the targets `selected` (see `_select`)."""
    from umx.modeldir import ModelFiles

    directory = _fetch(entry, selected, progress, offline)
    config, source = _read_config(directory, entry)
    weights = {target: directory / entry.weights[target] for target in selected}
    return ModelFiles(weights, config, source)


def _named_files(
    entry: ZooEntry, targets: Sequence[str] | None, progress: bool, offline: bool
) -> ModelFiles:
    from umx.modeldir import directory_files

    if entry.bundled:  # never touches the network
        config = _read_config(entry.directory, entry)
        return directory_files(entry.directory, targets, config=config, available=entry.targets)
    return _downloaded_files(entry, _select(entry, targets), progress, offline)


def _default_or_why_not(selected: Sequence[str], offline: bool) -> str | None:
    """None if the default model's weights of the targets `selected` (see `_select`) are
    cached or reachable, else why they are not, in a few words (the full reason is logged at
    debug level).

    Only looks at the cache and, when files are missing and not offline, probes the download
    host for up to `PROBE_TIMEOUT_S` seconds; nothing is downloaded or verified.
    """
    entry = MODELS[DEFAULT_MODEL]
    missing = entry.missing(selected)
    if not missing:
        return None
    if offline:
        return "offline mode is on"
    url = entry.url(missing[0])
    reason = _probe(url)
    if reason is None:
        return None
    logger.debug("%s cannot be reached: %s", url, reason)
    return "its download host cannot be reached"


def _fallback_warning(why: str) -> str:
    """The one short line saying that the default model could not be had and which model
    separates instead; where the weights come from and where they go are `umx download`'s and
    `umx --list-models`'s to say."""
    return (
        f"{DEFAULT_MODEL} is not available ({why}), so the bundled demo model {FALLBACK_MODEL} "
        f"separates instead: run `umx download {DEFAULT_MODEL}` to get it"
    )


def _default_files(
    targets: Sequence[str] | None, progress: bool, offline: bool
) -> tuple[ModelFiles, str]:
    """The files of the default model, or of the fallback (with a warning) when the default's
    cannot be had; and the name of the model they are of."""
    default = MODELS[DEFAULT_MODEL]
    if default.bundled:  # nothing to download: no fallback
        return _named_files(default, targets, progress, offline), DEFAULT_MODEL
    selected = _select(default, targets)
    reason = _default_or_why_not(selected, offline)
    if reason is None:
        try:
            return _downloaded_files(default, selected, progress, offline), DEFAULT_MODEL
        except _Unavailable as error:
            logger.debug("downloading %s failed: %s", DEFAULT_MODEL, error)
            reason = "its download failed"
    logger.warning(_fallback_warning(reason))
    return _named_files(MODELS[FALLBACK_MODEL], targets, progress, offline), FALLBACK_MODEL


def resolve_model(
    model: str | os.PathLike | None = None,
    *,
    targets: Sequence[str] | None = None,
    offline: bool | None = None,
) -> str:
    """The model `load_separator(model)` would load, without loading or downloading anything.

    For the default (`model` None) this is `DEFAULT_MODEL` when its weights are in the cache, or
    when they are not, offline mode is off and the download host answers within
    `PROBE_TIMEOUT_S` seconds; otherwise `FALLBACK_MODEL`. `load_separator` decides the same
    way by itself (and also falls back when the download then fails), so call this only to know
    beforehand.

    Args:
        model: a name of `MODELS`, a model directory, an X-UMX checkpoint (see
            `umx.xumx_checkpoints`), or None for the default.
        targets: the targets wanted: the default counts as cached when these are.
        offline: never touch the network; None reads `$UMX_OFFLINE`.

    Returns:
        a name of `MODELS`, or the directory (or X-UMX checkpoint) as a string.

    Raises:
        UmxError: `model` is neither a known name nor a directory.
    """
    if model is None:
        selected = _select(MODELS[DEFAULT_MODEL], targets)
        reason = _default_or_why_not(selected, is_offline(offline))
        return DEFAULT_MODEL if reason is None else FALLBACK_MODEL
    if not isinstance(model, str | os.PathLike) or model == "":
        raise UmxError(f"a model is a name or a directory, not {short.repr(model)}")
    if isinstance(model, str) and model in MODELS:
        return model
    if Path(model).is_dir():
        return str(model)
    from umx.xumx_checkpoints import xumx_file  # torch: only for a model that is not a folder

    if xumx_file(model) is not None:
        return str(model)
    raise UmxError(
        f"unknown model {short.repr(str(model))}: not a directory, and not one of the known "
        f"models {', '.join(MODELS)}"
    )


def load_separator(
    model: str | os.PathLike | None = None,
    *,
    targets: Sequence[str] | None = None,
    niter: int = 1,
    softmask: bool = False,
    residual: str | None = None,
    wiener_win_len: int | None = WIENER_WIN_LEN,
    device: str | torch.device = "cpu",
    progress: bool = True,
    offline: bool | None = None,
) -> Separator:
    """Load a `Separator` from a model name or a model directory.

    With `model` None the default, `DEFAULT_MODEL` (umxl), is used when its weights are in the
    cache or can be downloaded; when they cannot (offline, the host does not answer within
    `PROBE_TIMEOUT_S` seconds, the download fails), the bundled `FALLBACK_MODEL` (umxsynth) is
    used instead and one warning says why and how to get umxl. A model named explicitly never
    falls back. `separator.model_name` says which model was loaded.

    Args:
        model: a name of `MODELS` (downloaded into the cache if needed), a directory in the
            official layout, an X-UMX checkpoint in asteroid's format (a `.pth` file, or a
            directory holding `xumx.pth`), or None for the default. A string naming a known
            model wins over a directory of that name; write `./umxl` for the directory.
        targets: the targets to load, in output order; all of the model's if None.
        niter, softmask, residual, wiener_win_len: Wiener filtering options of `Separator`.
        device: where the models run.
        progress: show download progress bars.
        offline: never touch the network; None reads `$UMX_OFFLINE` (see `is_offline`). Bundled
            models and model directories never touch it anyway.

    Returns:
        the separator, in evaluation mode, on `device`, with `model_name` set to the name
        loaded (e.g. `umxsynth` after a fallback) or the directory as a string.

    Raises:
        UmxError: unknown name or target, missing, corrupt or invalid files, failed download of
            a named model, offline with a named model not in the cache.
    """
    import torch

    from umx.modeldir import build_separator, directory_files
    from umx.xumx_checkpoints import xumx_file, xumx_separator

    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise UmxError(f"unknown device {short.repr(str(device))} ({error})") from None
    offline = is_offline(offline)
    if model is None:
        files, name = _default_files(targets, progress, offline)
    else:
        name = resolve_model(model)
        if name in MODELS and isinstance(model, str):
            entry = MODELS[name]
            if entry.notice:
                logger.info(entry.notice)
            files = _named_files(entry, targets, progress, offline)
        elif xumx_file(model) is None:
            files = directory_files(Path(model), targets)
        else:
            files = None  # an X-UMX checkpoint: one file for all targets
    options = {
        "niter": niter,
        "softmask": softmask,
        "residual": residual,
        "wiener_win_len": wiener_win_len,
    }
    if files is None:
        separator = xumx_separator(model, targets, **options)
    else:
        separator = build_separator(files, options)
    separator = separator.to(device).eval()
    separator.model_name = name
    return separator
