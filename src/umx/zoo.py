"""Model names → weights on disk: the registry, download, verification, cache, model directories.

A model directory holds the official Open-Unmix layout, which `umx train` writes too::

    mymodel/
      separator.json    {"sample_rate": 44100.0, "nfft": 4096, "nhop": 1024, "nb_channels": 2}
      vocals.json       {"args": {...}, ...}  (optional when loading)
      vocals.pth        state dict of one `OpenUnmix` (or vocals-<8 hex>.pth)
      ...

Named models are either downloaded into the cache (`$UMX_CACHE`, else `$XDG_CACHE_HOME/umx`,
else `~/.cache/umx`, one folder per model) or bundled with the package under
`umx/pretrained/<name>/`. Downloaded files carry the first 8 hex digits of their SHA-256 in their
name; a file is checked against them when downloaded and again before use (see `verify_file`).

The default model is the published `umxl`. When its weights are neither in the cache nor
downloadable (no network, `$UMX_OFFLINE` set, a failed download), `load_separator(None)` falls
back to the bundled `umxsynth` with one warning; a model asked for by name never falls back.

Model directories are untrusted input: every field of their json files is checked, their target
names must be safe file names (stems are written under them), and weights must be finite.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import reprlib
import secrets
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor
from tqdm import tqdm

from umx.errors import UmxError
from umx.model import OpenUnmix
from umx.separator import WIENER_WIN_LEN, Separator
from umx.transforms import check_stft

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "umxl"  # the reference's default published model
FALLBACK_MODEL = "umxsynth"  # bundled: what the default falls back to when umxl cannot be had
CACHE_ENV = "UMX_CACHE"
MIRROR_ENV = "UMX_ZOO_URL"
OFFLINE_ENV = "UMX_OFFLINE"  # 1: never touch the network
ZENODO_URL = "https://zenodo.org/records/{record}/files"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

SEPARATOR_JSON = "separator.json"
WEIGHTS_SUFFIX = ".pth"
VERIFIED_SUFFIX = ".verified"
HASH_DIGITS = 8
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 3.0  # how long the default model waits for the download host before falling back
USER_AGENT = "umx (Open-Unmix model zoo)"
SHOWN_KEYS = 3  # how many offending state dict keys an error message names

# Bounds of what a model directory may say.
MAX_JSON_BYTES = 1 << 20
MIN_SAMPLE_RATE = 1000.0
MAX_SAMPLE_RATE = 768000.0
MAX_NFFT = 65536
MAX_TARGET_NAME = 64  # characters; target names become file names
MAX_MODEL_SIZE = 1 << 16  # hidden_size, nb_layers, max_bin in a target json

# Model statuses shown by `umx --list-models`.
BUNDLED = "bundled"
CACHED = "cached"
PARTIAL = "partial"
NOT_DOWNLOADED = "not downloaded"

_OFFLINE_ON = frozenset({"1", "true", "yes", "on"})
_OFFLINE_OFF = frozenset({"", "0", "false", "no", "off"})
# Characters a target name must not hold: path separators and control characters.
_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40

# `<target>-<hash>.pth` or `<target>_<hash>.pth`, the hash being the start of the SHA-256.
_HASHED_NAME = re.compile(rf"^(?P<target>.+)[-_](?P<hash>[0-9a-f]{{{HASH_DIGITS}}})\.pth$")
# Keys of a reference `Separator` or of old reference models that are not model weights.
_EXTRA_KEYS = frozenset({"sample_rate", "stft.window", "istft.window"})
_EXTRA_PREFIX = "transform."

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
            unhashed = [name for name in self.weights.values() if not _HASHED_NAME.match(name)]
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
    match = _HASHED_NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} has no hash in its name")
    return match["hash"]


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(DOWNLOAD_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
        f"{OFFLINE_ENV} must be 1 (offline) or 0, not {_short.repr(os.environ[OFFLINE_ENV])}"
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
        _write_atomic(destination, fetch)
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
    selected = _select(entry.targets, targets, f"model {name!r}")
    offline = is_offline(offline)
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


# --- atomic writes --------------------------------------------------------------------------------


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over `path`.

    Readers see either the old file or the complete new one; on any failure the temporary file
    is removed and `path` is untouched.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as file:  # honours the umask, unlike tempfile's 0600
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically (temporary file + rename).

    Values JSON cannot represent (paths, for example) are written as their `str`.
    """
    text = json.dumps(data, indent=2, default=str) + "\n"
    _write_atomic(Path(path), lambda file: file.write(text.encode()))


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to `path` atomically (temporary file + rename)."""
    _write_atomic(Path(path), lambda file: torch.save(obj, file))


# --- one target model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetArchitecture:
    """The hyper-parameters that fix the shapes of an `OpenUnmix` state dict."""

    nb_bins: int
    nb_channels: int
    hidden_size: int
    nb_layers: int
    unidirectional: bool
    max_bin: int

    @classmethod
    def of(cls, model: OpenUnmix) -> TargetArchitecture:
        """The architecture of a model."""
        return cls(
            nb_bins=model.nb_output_bins,
            nb_channels=model.nb_channels,
            hidden_size=model.hidden_size,
            nb_layers=model.nb_layers,
            unidirectional=model.unidirectional,
            max_bin=model.nb_bins,
        )

    def build(self) -> OpenUnmix:
        """A new model of this architecture, with fresh weights."""
        return OpenUnmix(
            nb_bins=self.nb_bins,
            nb_channels=self.nb_channels,
            hidden_size=self.hidden_size,
            nb_layers=self.nb_layers,
            unidirectional=self.unidirectional,
            max_bin=self.max_bin,
        )


def infer_architecture(state_dict: Mapping[str, Tensor]) -> TargetArchitecture:
    """Read the architecture off an `OpenUnmix` state dict.

    `nb_bins` is the length of `output_mean`, `max_bin` that of `input_mean`, `hidden_size` the
    output width of `fc1` and `nb_channels` its input width over `max_bin`; the LSTM has one
    layer per `lstm.weight_ih_l<k>` key and is unidirectional when no `_reverse` key exists.

    Raises:
        ValueError: a key needed is missing or the shapes do not fit together.
    """
    for key in ("input_mean", "output_mean", "fc1.weight", "lstm.weight_ih_l0"):
        if key not in state_dict:
            raise ValueError(f"it has no {key!r} entry")
    max_bin = state_dict["input_mean"].numel()
    hidden_size, fc1_inputs = state_dict["fc1.weight"].shape
    if max_bin == 0 or fc1_inputs % max_bin:
        raise ValueError(
            f"fc1 takes {fc1_inputs} inputs, not a multiple of the {max_bin} input bins"
        )
    nb_layers = 0
    while f"lstm.weight_ih_l{nb_layers}" in state_dict:
        nb_layers += 1
    return TargetArchitecture(
        nb_bins=state_dict["output_mean"].numel(),
        nb_channels=fc1_inputs // max_bin,
        hidden_size=hidden_size,
        nb_layers=nb_layers,
        unidirectional=not any(key.endswith("_reverse") for key in state_dict),
        max_bin=max_bin,
    )


def _args_mismatch(arch: TargetArchitecture, args: Mapping[str, Any]) -> str | None:
    """Describe the first disagreement between the json args and the weights, if any."""
    if args.get("nfft") is not None and int(args["nfft"]) // 2 + 1 != arch.nb_bins:
        return (
            f"its args say nfft {args['nfft']} ({int(args['nfft']) // 2 + 1} bins) but the "
            f"weights have {arch.nb_bins} bins"
        )
    for key in ("nb_channels", "hidden_size", "nb_layers", "max_bin", "unidirectional"):
        if args.get(key) is not None and args[key] != getattr(arch, key):
            return f"its args say {key} {args[key]} but the weights have {getattr(arch, key)}"
    return None


def _shape_mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str | None:
    """Describe how a state dict differs from the one the model expects, if it does."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")

    missing = [key for key in expected if key not in given]
    if missing:
        return f"it lacks {some(missing)}"
    unexpected = [key for key in given if key not in expected]
    if unexpected:
        return f"it has unexpected entries {some(unexpected)}"
    wrong = [key for key in expected if given[key].shape != expected[key].shape]
    if wrong:
        key = wrong[0]
        return (
            f"its {key} has shape {tuple(given[key].shape)} where the shapes of its other "
            f"entries imply {tuple(expected[key].shape)}"
        )
    return None


def load_target_model(path: str | os.PathLike, args: Mapping[str, Any] | None = None) -> OpenUnmix:
    """Load one target's `OpenUnmix` from a `.pth` state dict, in evaluation mode.

    The architecture is read off the state dict (`infer_architecture`) and checked against
    `args` where they say something. Float16 weights are converted to float32, and the extra
    keys of reference files (`sample_rate`, `stft.window`, `istft.window`, `transform.*`) are
    dropped before a strict load.

    Args:
        path: the weights file.
        args: the `args` of the target's json, if known.

    Returns:
        the model, frozen (evaluation mode, no gradients), on the CPU.

    Raises:
        UmxError: the file is missing, unreadable, not an Open-Unmix state dict, holds NaN or
            infinite values or negative variances, or disagrees with `args`.
    """
    path = Path(path)
    if not path.is_file():
        raise UmxError(f"{path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load fails on damaged files with any of UnpicklingError, RuntimeError, OSError,
    # EOFError, KeyError, ...: all mean the file is not a readable torch file.
    # Their messages say little to a user (a truncated file gives "Invalid argument").
    except Exception as error:
        raise UmxError(
            f"{path} is not a readable torch file: it is corrupt or truncated"
        ) from error
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in loaded.items()
    ):
        raise UmxError(f"{path} does not hold a state dict of tensors")
    state = {
        key: value.float() if value.is_floating_point() else value
        for key, value in loaded.items()
        if key not in _EXTRA_KEYS and not key.startswith(_EXTRA_PREFIX)
    }
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UmxError(
                f"{path} is not usable: its {_short.repr(key)} holds NaN or infinite values, "
                "which would make every separation garbage"
            )
        if key.endswith("running_var") and bool((value < 0).any()):
            raise UmxError(f"{path} is not usable: its {_short.repr(key)} has negative variances")
    try:
        arch = infer_architecture(state)
    except ValueError as error:
        raise UmxError(f"{path} is not an Open-Unmix state dict: {error}") from None
    mismatch = _args_mismatch(arch, args or {})
    if mismatch:
        raise UmxError(f"{path} does not match its json: {mismatch}")
    with torch.device("meta"):  # no memory and no random initialisation: the weights follow
        model = arch.build()
    mismatch = _shape_mismatch(model.state_dict(), state)
    if mismatch:
        raise UmxError(f"{path} is not an Open-Unmix state dict: {mismatch}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.freeze()


def target_args(model: OpenUnmix, *, sample_rate: float, n_fft: int, n_hop: int) -> dict[str, Any]:
    """The `args` a target json must hold for `model`: its architecture and STFT.

    `bandwidth` is the centre frequency of the last bin the model sees, which maps back to the
    same `max_bin`.
    """
    arch = TargetArchitecture.of(model)
    if n_fft // 2 + 1 != arch.nb_bins:
        raise ValueError(f"n_fft {n_fft} gives {n_fft // 2 + 1} bins, the model has {arch.nb_bins}")
    return {
        "sample_rate": float(sample_rate),
        "nfft": n_fft,
        "nhop": n_hop,
        "nb_channels": arch.nb_channels,
        "hidden_size": arch.hidden_size,
        "nb_layers": arch.nb_layers,
        "unidirectional": arch.unidirectional,
        "max_bin": arch.max_bin,
        "bandwidth": (arch.max_bin - 1) * sample_rate / n_fft,
    }


def save_target_model(
    model: OpenUnmix,
    directory: str | os.PathLike,
    target: str,
    *,
    sample_rate: float,
    n_fft: int,
    n_hop: int,
    args: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write `<target>.pth` and `<target>.json` into a model directory, each atomically.

    Args:
        model: the target model; its state dict is saved on the CPU.
        directory: the model directory, created if needed.
        target: the target name.
        sample_rate, n_fft, n_hop: the STFT the model works with.
        args: further training arguments for the json's `args`; the model's architecture and
            STFT (see `target_args`) override any of the same name, `bandwidth` excepted.
        metadata: further top-level json fields, e.g. `best_loss`, `epochs_trained`.

    Returns:
        the path of the weights file.

    Raises:
        UmxError: `target` is not a safe file-name stem (see `check_target_name`).
    """
    check_target_name(target, "the model to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    own = target_args(model, sample_rate=sample_rate, n_fft=n_fft, n_hop=n_hop)
    bandwidth = own.pop("bandwidth")
    all_args = {"bandwidth": bandwidth, **(args or {}), **own}
    weights = directory / f"{target}{WEIGHTS_SUFFIX}"
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    torch_save_atomic(state, weights)
    write_json_atomic(directory / f"{target}.json", {**(metadata or {}), "args": all_args})
    return weights


def export_model(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    half: bool = True,
    metadata: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Copy a trained model directory into a lean one for shipping.

    Only `separator.json` and each target's `.pth` and `.json` are copied (no checkpoints or
    plots). With `half`, weight matrices are stored as float16, which `load_target_model`
    turns back into float32; the per-bin vectors and normalisation statistics stay float32.

    Args:
        source: a model directory in the official layout.
        destination: the directory to write, refused if it exists unless `force`.
        half: store weight matrices as float16, halving the size.
        metadata: top-level fields added to every target's json, e.g. how it was trained.
        force: replace the files of an existing destination.

    Returns:
        the destination directory.
    """
    source, destination = Path(source), Path(destination)
    files = _directory_files(source, None)
    if destination.exists() and not force:
        raise UmxError(f"{destination} already exists (use --force to replace it)")
    destination.mkdir(parents=True, exist_ok=True)
    for target, path in files.weights.items():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if half:
            state = {
                key: value.half() if value.is_floating_point() and value.dim() > 1 else value
                for key, value in state.items()
            }
        torch_save_atomic(state, destination / f"{target}{WEIGHTS_SUFFIX}")
        info = (
            _read_json(source / f"{target}.json") if (source / f"{target}.json").is_file() else {}
        )
        write_json_atomic(destination / f"{target}.json", {**info, **(metadata or {})})
    write_json_atomic(destination / SEPARATOR_JSON, files.config)
    return destination


# --- model directories and separators -------------------------------------------------------------


def _entry(name: str) -> ZooEntry:
    if not isinstance(name, str) or name not in MODELS:
        raise UmxError(
            f"unknown model {_short.repr(name)}; the known models are {', '.join(MODELS)}"
        )
    return MODELS[name]


def _select(available: Sequence[str], wanted: Sequence[str] | None, owner: str) -> list[str]:
    if wanted is None:
        return list(available)
    selected = list(dict.fromkeys(wanted))
    unknown = [target for target in selected if target not in available]
    if unknown:
        raise UmxError(
            f"{owner} has no target {_short.repr(unknown[0])}; its targets are "
            f"{', '.join(available)}"
        )
    if not selected:
        raise UmxError(f"no targets selected from {owner}")
    return selected


def _read_json(path: Path) -> Any:
    """A small JSON file; too large, too deeply nested or invalid files are refused."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_JSON_BYTES + 1)
    except OSError as error:
        raise UmxError(f"could not read {path} ({error.strerror or error})") from None
    if len(data) > MAX_JSON_BYTES:
        raise UmxError(f"{path} is too large for a model json (over {MAX_JSON_BYTES} bytes)")
    try:
        return json.loads(data)
    except RecursionError:
        raise UmxError(f"{path} is not a model json: it is nested too deeply") from None
    except ValueError as error:  # UnicodeDecodeError included
        raise UmxError(f"{path} is not valid JSON ({_short.repr(str(error))})") from None


def check_target_name(name: object, source: str) -> str:
    """Refuse a target name that is not a safe file-name stem (stems are written under it).

    Args:
        name: the name, from untrusted input.
        source: where it comes from, for the message, e.g. a file.

    Returns:
        the name.

    Raises:
        UmxError: not a string, empty, too long, with a path separator or a control character,
            starting with a dot or a space, or ending with a space.
    """
    if not isinstance(name, str):
        raise UmxError(f"{source} has a target name that is not a string: {_short.repr(name)}")
    if (
        not name
        or len(name) > MAX_TARGET_NAME
        or _UNSAFE_NAME.search(name)
        or name.startswith(".")
        or name != name.strip()
    ):
        raise UmxError(
            f"{source} has an unsafe target name {_short.repr(name)}: a target name is written "
            f"as a file name, so it must have 1 to {MAX_TARGET_NAME} characters, no / or \\ or "
            "control characters, and not start with a dot or a space"
        )
    return name


def _check_number(
    source: str, key: str, value: object, low: float, high: float, *, integer: bool
) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "a whole number" if integer else "a finite number"
        raise UmxError(f"{source} has a bad {key!r}: {_short.repr(value)} is not {kind}")
    if not low <= value <= high:
        raise UmxError(f"{source} has a bad {key!r}: {value!r} is not in [{low:g}, {high:g}]")


def _check_stft_fields(source: str, fields: Mapping[str, Any], required: bool) -> None:
    """Check `sample_rate`, `nfft`, `nhop` and `nb_channels` (those present unless required)."""
    rules = (
        ("sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, False),
        ("nfft", 2, MAX_NFFT, True),
        ("nhop", 1, MAX_NFFT, True),
        ("nb_channels", 1, 2, True),
    )
    for key, low, high, integer in rules:
        if fields.get(key) is None:
            if required:
                raise UmxError(f"{source} lacks {key!r}")
            continue
        _check_number(source, key, fields[key], low, high, integer=integer)
    if fields.get("nfft") is not None and fields.get("nhop") is not None:
        try:
            check_stft(fields["nfft"], fields["nhop"])
        except UmxError as error:
            raise UmxError(f"{source} is not usable: {error}") from None


def _read_separator_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UmxError(f"{path} is missing: a model directory needs one")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise UmxError(f"{path} does not hold a JSON object")
    _check_stft_fields(str(path), config, required=True)
    if "targets" in config:
        targets = config["targets"]
        if not isinstance(targets, list) or not targets:
            raise UmxError(f"{path} has a bad 'targets': it must be a non-empty list of names")
        for target in targets:
            check_target_name(target, str(path))
        if len(set(targets)) != len(targets):
            raise UmxError(f"{path} has a bad 'targets': it names a target twice")
    return config


def _read_target_args(path: Path) -> dict[str, Any] | None:
    """The `args` of a target json, checked, or None when there is no json or it has no args."""
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise UmxError(f"{path} does not hold a JSON object")
    args = data.get("args")
    if args is None:
        return None
    if not isinstance(args, dict):
        raise UmxError(f"{path} has a bad 'args': it must be a JSON object")
    source = f"the args of {path}"
    _check_stft_fields(source, args, required=False)
    for key in ("hidden_size", "nb_layers", "max_bin"):
        if args.get(key) is not None:
            _check_number(source, key, args[key], 1, MAX_MODEL_SIZE, integer=True)
    if args.get("unidirectional") is not None and not isinstance(args["unidirectional"], bool):
        raise UmxError(f"{source} has a bad 'unidirectional': it must be true or false")
    return args


def _weight_files(directory: Path) -> dict[str, list[Path]]:
    """Target → weights files (`<target>.pth`, `<target>-<hash>.pth`) in a directory.

    Hidden files (e.g. the `._vocals.pth` that macOS leaves) are not weights.
    """
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.glob(f"*{WEIGHTS_SUFFIX}")):
        if path.name.startswith("."):
            continue
        match = _HASHED_NAME.match(path.name)
        found.setdefault(match["target"] if match else path.stem, []).append(path)
    return found


def _directory_targets(directory: Path, config: Mapping[str, Any]) -> list[str]:
    """The targets of a model directory, in output order.

    `separator.json` may list them under `targets` (umx writes it); otherwise they are the
    targets with weights or with a `<target>.json` holding `args`, sorted by name.

    Raises:
        UmxError: there are none, or one has a name unsafe as a file name.
    """
    if "targets" in config:
        return list(config["targets"])  # checked by _read_separator_json
    names = set(_weight_files(directory))
    for path in directory.glob("*.json"):
        hidden = path.name.startswith(".")
        if path.name != SEPARATOR_JSON and not hidden and _read_target_args(path) is not None:
            names.add(path.stem)
    if not names:
        raise UmxError(
            f"{directory} holds no target models: no <target>.pth files, and no 'targets' in "
            f"its {SEPARATOR_JSON}"
        )
    return [check_target_name(name, f"model directory {directory}") for name in sorted(names)]


def _find_weights(directory: Path, target: str, candidates: Mapping[str, list[Path]]) -> Path:
    paths = candidates.get(target, [])
    if not paths:
        raise UmxError(
            f"{directory / (target + WEIGHTS_SUFFIX)} is missing: the model directory has no "
            f"weights for target {target!r}"
        )
    if len(paths) > 1:
        names = ", ".join(path.name for path in paths)
        raise UmxError(f"{directory} holds several weights files for {target!r} ({names})")
    return paths[0]


@dataclass(frozen=True)
class _ModelFiles:
    """What a separator is built from."""

    weights: dict[str, Path]  # target → weights file, in output order
    config: dict[str, Any]  # the values of separator.json
    config_source: str  # where they come from, for error messages


def _read_config(directory: Path, entry: ZooEntry | None) -> tuple[dict[str, Any], str]:
    """`separator.json`, which only a named model may lack: its registry entry stands in."""
    path = directory / SEPARATOR_JSON
    if entry is None or path.is_file():
        return _read_separator_json(path), str(path)
    config = {
        "sample_rate": entry.sample_rate,
        "nfft": entry.n_fft,
        "nhop": entry.n_hop,
        "nb_channels": entry.nb_channels,
    }
    return config, f"the registry entry of {entry.name!r}"


def _downloaded_files(
    entry: ZooEntry, targets: Sequence[str] | None, progress: bool, offline: bool
) -> _ModelFiles:
    selected = _select(entry.targets, targets, f"model {entry.name!r}")
    directory = download_model(entry.name, targets=selected, progress=progress, offline=offline)
    config, source = _read_config(directory, entry)
    weights = {target: directory / entry.weights[target] for target in selected}
    return _ModelFiles(weights, config, source)


def _named_files(
    entry: ZooEntry, targets: Sequence[str] | None, progress: bool, offline: bool
) -> _ModelFiles:
    if entry.bundled:  # never touches the network
        return _directory_files(entry.directory, targets, entry)
    return _downloaded_files(entry, targets, progress, offline)


def _directory_files(
    directory: Path, targets: Sequence[str] | None, entry: ZooEntry | None = None
) -> _ModelFiles:
    config, source = _read_config(directory, entry)
    available = entry.targets if entry else _directory_targets(directory, config)
    selected = _select(available, targets, f"model directory {directory}")
    candidates = _weight_files(directory)
    weights = {target: _find_weights(directory, target, candidates) for target in selected}
    return _ModelFiles(weights, config, source)


def _build_separator(files: _ModelFiles, options: Mapping[str, Any]) -> Separator:
    n_fft, nb_channels = int(files.config["nfft"]), int(files.config["nb_channels"])
    if not files.weights:
        raise UmxError(f"{files.config_source} describes a model without targets")
    models = {}
    for target, path in files.weights.items():
        model = load_target_model(path, _read_target_args(path.parent / f"{target}.json"))
        if model.nb_output_bins != n_fft // 2 + 1 or model.nb_channels != nb_channels:
            raise UmxError(
                f"{path} holds a {model.nb_channels}-channel model of {model.nb_output_bins} bins "
                f"but {files.config_source} says {nb_channels} channels and nfft {n_fft}"
            )
        models[target] = model
    return Separator(
        models,
        sample_rate=float(files.config["sample_rate"]),
        n_fft=n_fft,
        n_hop=int(files.config["nhop"]),
        nb_channels=nb_channels,
        **options,
    )


def _default_or_why_not(targets: Sequence[str] | None, offline: bool) -> str | None:
    """None if the default model's weights are cached or reachable, else why they are not.

    Only looks at the cache and, when files are missing and not offline, probes the download
    host for up to `PROBE_TIMEOUT_S` seconds; nothing is downloaded or verified.
    """
    entry = MODELS[DEFAULT_MODEL]
    missing = entry.missing(_select(entry.targets, targets, f"model {DEFAULT_MODEL!r}"))
    if not missing:
        return None
    if offline:
        return f"offline mode is on and {DEFAULT_MODEL} is not in the cache"
    url = entry.url(missing[0])
    reason = _probe(url)
    return None if reason is None else f"{url} cannot be reached: {reason}"


def _fallback_warning(reason: str, targets: Sequence[str] | None) -> str:
    entry = MODELS[DEFAULT_MODEL]
    selected = _select(entry.targets, targets, f"model {DEFAULT_MODEL!r}")
    missing = entry.missing(selected) or selected
    return (
        f"the default model {DEFAULT_MODEL} is not available ({reason}), so {FALLBACK_MODEL} "
        f"separates instead, a small demo model trained on synthetic music: to get "
        f"{DEFAULT_MODEL}, run `umx download {DEFAULT_MODEL}` with network access, or "
        f"{entry.placement(missing)}"
    )


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
        model: a name of `MODELS`, a model directory, or None for the default.
        targets: the targets wanted: the default counts as cached when these are.
        offline: never touch the network; None reads `$UMX_OFFLINE`.

    Returns:
        a name of `MODELS`, or the directory as a string.

    Raises:
        UmxError: `model` is neither a known name nor a directory.
    """
    if model is None:
        reason = _default_or_why_not(targets, is_offline(offline))
        return DEFAULT_MODEL if reason is None else FALLBACK_MODEL
    if not isinstance(model, str | os.PathLike) or model == "":
        raise UmxError(f"a model is a name or a directory, not {_short.repr(model)}")
    if isinstance(model, str) and model in MODELS:
        return model
    if Path(model).is_dir():
        return str(model)
    raise UmxError(
        f"unknown model {_short.repr(str(model))}: not a directory, and not one of the known "
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
            official layout, or None for the default. A string naming a known model wins over a
            directory of that name; write `./umxl` for the directory.
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
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise UmxError(f"unknown device {_short.repr(str(device))} ({error})") from None
    offline = is_offline(offline)
    if model is None:
        files = None
        reason = _default_or_why_not(targets, offline)
        if reason is None:
            try:
                files = _named_files(MODELS[DEFAULT_MODEL], targets, progress, offline)
            except _Unavailable as error:
                reason = error.reason
        if files is None:
            logger.warning(_fallback_warning(str(reason), targets))
            files = _named_files(MODELS[FALLBACK_MODEL], targets, progress, offline)
        name = DEFAULT_MODEL if reason is None else FALLBACK_MODEL
    else:
        name = resolve_model(model)
        if name in MODELS and isinstance(model, str):
            entry = MODELS[name]
            if entry.notice:
                logger.info(entry.notice)
            files = _named_files(entry, targets, progress, offline)
        else:
            files = _directory_files(Path(model), targets)
    options = {
        "niter": niter,
        "softmask": softmask,
        "residual": residual,
        "wiener_win_len": wiener_win_len,
    }
    separator = _build_separator(files, options).to(device).eval()
    separator.model_name = name
    return separator


def _is_model_directory(directory: Path) -> bool:
    return (directory / SEPARATOR_JSON).exists() or any(directory.glob(f"*{WEIGHTS_SUFFIX}"))


def save_separator(
    separator: Separator,
    directory: str | os.PathLike,
    *,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    force: bool = False,
) -> Path:
    """Write a separator's models in the official layout, every file atomically.

    Writes `separator.json` (`sample_rate`, `nfft`, `nhop`, `nb_channels`, plus `targets` in
    output order, which the reference ignores) and per target `<target>.pth` and
    `<target>.json` (see `save_target_model`).

    Args:
        separator: the separator to save; its residual and filtering options are not saved.
        directory: the model directory, created if needed.
        metadata: per target, further json fields; an `args` field is merged into the json's
            `args`.
        force: overwrite an existing model directory (its other weights files of the saved
            targets are removed, so that the directory stays unambiguous).

    Returns:
        the directory.

    Raises:
        UmxError: the directory already holds a model and `force` is not set, or is a file.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UmxError(f"cannot save the model into {directory}: it is a file")
    if directory.is_dir() and _is_model_directory(directory):
        if not force:
            raise UmxError(f"{directory} already holds a model; use force to overwrite it")
        stale = _weight_files(directory)
        for target in separator.target_models:
            for path in stale.get(target, []):
                if path.name != f"{target}{WEIGHTS_SUFFIX}":
                    path.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    for target, model in separator.target_models.items():
        extra = dict((metadata or {}).get(target, {}))
        save_target_model(
            model,
            directory,
            target,
            sample_rate=separator.sample_rate,
            n_fft=separator.n_fft,
            n_hop=separator.n_hop,
            args=extra.pop("args", None),
            metadata=extra,
        )
    write_json_atomic(
        directory / SEPARATOR_JSON,
        {
            "sample_rate": separator.sample_rate,
            "nfft": separator.n_fft,
            "nhop": separator.n_hop,
            "nb_channels": separator.nb_channels,
            "targets": list(separator.target_models),
        },
    )
    return directory
