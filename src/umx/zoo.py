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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import sys
import urllib.error
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

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "umxsynth"
CACHE_ENV = "UMX_CACHE"
MIRROR_ENV = "UMX_ZOO_URL"
ZENODO_URL = "https://zenodo.org/records/{record}/files"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

SEPARATOR_JSON = "separator.json"
WEIGHTS_SUFFIX = ".pth"
VERIFIED_SUFFIX = ".verified"
HASH_DIGITS = 8
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0
USER_AGENT = "umx (Open-Unmix model zoo)"
SHOWN_KEYS = 3  # how many offending state dict keys an error message names

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
            notice="umxsynth is a small model trained on synthetic music; for real recordings "
            "use --model umxhq or --model umxl (downloaded once)",
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
    """What `umx --list-models` shows about a named model."""

    name: str
    description: str
    targets: tuple[str, ...]
    license: str
    bundled: bool
    cached: bool  # every weights file is already in the cache (not re-verified here)
    default: bool


def list_models() -> list[ModelInfo]:
    """The named models, the default first.

    Returns:
        one `ModelInfo` per entry of `MODELS`.
    """
    infos = [
        ModelInfo(
            name=entry.name,
            description=entry.description,
            targets=entry.targets,
            license=entry.license,
            bundled=entry.bundled,
            cached=not entry.bundled
            and all((entry.directory / name).is_file() for name in entry.weights.values()),
            default=entry.name == DEFAULT_MODEL,
        )
        for entry in MODELS.values()
    ]
    return sorted(infos, key=lambda info: not info.default)


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


def verify_file(path: str | os.PathLike) -> None:
    """Check a cached `<target>-<8 hex>.pth` against the hash in its name; delete it if it fails.

    Hashing every file before every use would cost about a second per model, so a successful
    check leaves a `<file>.verified` marker recording the file's size, modification time and
    hash: while these still match the file is trusted, and any change to it (a new copy, an
    edit, a truncation) makes it be hashed again. Files put in the cache by hand have no marker
    and are hashed on first use.

    Raises:
        UmxError: the file does not match its name; it has been deleted.
    """
    path = Path(path)
    marker = path.with_name(path.name + VERIFIED_SUFFIX)
    expected = _expected_hash(path)
    try:
        stamp = json.loads(marker.read_text())
    except (OSError, ValueError):
        stamp = None
    if (
        isinstance(stamp, dict)
        and str(stamp.get("sha256", "")).startswith(expected)
        and stamp == _stamp(path, stamp["sha256"])
    ):
        return
    actual = sha256_file(path)
    if not actual.startswith(expected):
        path.unlink()
        marker.unlink(missing_ok=True)
        raise UmxError(
            f"{path} is corrupt and has been deleted: its SHA-256 is {actual} but its name says "
            f"it starts with {expected}; run again to download it anew"
        )
    _write_marker(path, actual)


def _write_marker(path: Path, sha256: str) -> None:
    try:
        write_json_atomic(path.with_name(path.name + VERIFIED_SUFFIX), _stamp(path, sha256))
    except OSError as error:  # a read-only cache still works, it is just hashed every time
        logger.debug("could not record that %s was verified: %s", path, error)


def _network_reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, Exception) else error
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def download_file(url: str, destination: str | os.PathLike, *, progress: bool = True) -> None:
    """Download a `<target>-<8 hex>.pth` file and check it against the hash in its name.

    The data goes to a temporary file next to `destination`, which replaces `destination` only
    once complete and verified; nothing is left behind on failure.

    Args:
        url: where to download from.
        destination: the file to create; its name carries the expected hash.
        progress: show a progress bar on stderr (only when stderr is a terminal).

    Raises:
        UmxError: the download failed (the message says where to put the file by hand) or the
            data does not match the hash.
    """
    destination = Path(destination)
    expected = _expected_hash(destination)
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
            raise UmxError(
                f"could not download {url} ({_network_reason(error)}); download it by hand and "
                f"save it as {destination}"
            ) from error
        if not digest.hexdigest().startswith(expected):
            raise UmxError(
                f"the file downloaded from {url} for {destination} is corrupt and was deleted: "
                f"its SHA-256 is {digest.hexdigest()} but should start with {expected}"
            )

    logger.info("downloading %s to %s", url, destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(destination, fetch)
    except OSError as error:  # network errors are UmxErrors by now: this is the local disk
        raise UmxError(f"could not save {destination} ({error.strerror or error})") from error
    _write_marker(destination, digest.hexdigest())


def download_model(
    name: str, *, targets: Sequence[str] | None = None, progress: bool = True
) -> Path:
    """Make sure a named model's weights are in the cache and intact, downloading what is missing.

    Args:
        name: a key of `MODELS`.
        targets: the targets needed; all of the model's if None.
        progress: show download progress bars.

    Returns:
        the folder holding the weights (inside the package for a bundled model).

    Raises:
        UmxError: unknown name or target, failed download or corrupt file.
    """
    entry = _entry(name)
    if entry.bundled:
        return entry.directory
    for target in _select(entry.targets, targets, f"model {name!r}"):
        path = entry.directory / entry.weights[target]
        if path.is_file():
            verify_file(path)
        else:
            download_file(entry.url(target), path, progress=progress)
    return entry.directory


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
        UmxError: the file is missing, unreadable, not an Open-Unmix state dict, or disagrees
            with `args`.
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
    """
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
    if name not in MODELS:
        raise UmxError(f"unknown model {name!r}; the known models are {', '.join(MODELS)}")
    return MODELS[name]


def _select(available: Sequence[str], wanted: Sequence[str] | None, owner: str) -> list[str]:
    if wanted is None:
        return list(available)
    selected = list(dict.fromkeys(wanted))
    unknown = [target for target in selected if target not in available]
    if unknown:
        raise UmxError(
            f"{owner} has no target {unknown[0]!r}; its targets are {', '.join(available)}"
        )
    if not selected:
        raise UmxError(f"no targets selected from {owner}")
    return selected


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise UmxError(f"could not read {path} ({error.strerror})") from None
    except ValueError as error:
        raise UmxError(f"{path} is not valid JSON ({error})") from None


def _read_separator_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UmxError(f"{path} is missing: a model directory needs one")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise UmxError(f"{path} does not hold a JSON object")
    for key in ("sample_rate", "nfft", "nhop", "nb_channels"):
        if not isinstance(config.get(key), int | float) or config[key] <= 0:
            raise UmxError(f"{path} lacks a positive number {key!r}")
    return config


def _read_target_args(path: Path) -> dict[str, Any] | None:
    """The `args` of a target json, or None when there is no json or it has no args."""
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise UmxError(f"{path} does not hold a JSON object")
    args = data.get("args")
    return args if isinstance(args, dict) else None


def _weight_files(directory: Path) -> dict[str, list[Path]]:
    """Target → weights files (`<target>.pth`, `<target>-<hash>.pth`) in a directory."""
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.glob(f"*{WEIGHTS_SUFFIX}")):
        match = _HASHED_NAME.match(path.name)
        found.setdefault(match["target"] if match else path.stem, []).append(path)
    return found


def _directory_targets(directory: Path, config: Mapping[str, Any]) -> list[str]:
    """The targets of a model directory, in output order.

    `separator.json` may list them under `targets` (umx writes it); otherwise they are the
    targets with weights or with a `<target>.json` holding `args`, sorted by name.
    """
    listed = config.get("targets")
    if isinstance(listed, list) and all(isinstance(target, str) for target in listed):
        return listed
    names = set(_weight_files(directory))
    for path in directory.glob("*.json"):
        if path.name != SEPARATOR_JSON and _read_target_args(path) is not None:
            names.add(path.stem)
    return sorted(names)


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
    entry: ZooEntry, targets: Sequence[str] | None, progress: bool
) -> _ModelFiles:
    selected = _select(entry.targets, targets, f"model {entry.name!r}")
    directory = download_model(entry.name, targets=selected, progress=progress)
    config, source = _read_config(directory, entry)
    weights = {target: directory / entry.weights[target] for target in selected}
    return _ModelFiles(weights, config, source)


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


def load_separator(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    targets: Sequence[str] | None = None,
    niter: int = 1,
    softmask: bool = False,
    residual: str | None = None,
    wiener_win_len: int | None = WIENER_WIN_LEN,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Separator:
    """Load a `Separator` from a model name or a model directory.

    Args:
        model: a name of `MODELS` (downloaded into the cache if needed), or a directory in the
            official layout. A string naming a known model wins over a directory of that name;
            write `./umxl` for the directory.
        targets: the targets to load, in output order; all of the model's if None.
        niter, softmask, residual, wiener_win_len: Wiener filtering options of `Separator`.
        device: where the models run.
        progress: show download progress bars.

    Returns:
        the separator, in evaluation mode, on `device`.

    Raises:
        UmxError: unknown name or target, missing or corrupt files, failed download.
    """
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise UmxError(f"unknown device {str(device)!r} ({error})") from None
    if isinstance(model, str) and model in MODELS:
        entry = MODELS[model]
        if entry.notice:
            logger.info(entry.notice)
        if entry.bundled:
            files = _directory_files(entry.directory, targets, entry)
        else:
            files = _downloaded_files(entry, targets, progress)
    elif Path(model).is_dir():
        files = _directory_files(Path(model), targets)
    else:
        raise UmxError(
            f"unknown model {str(model)!r}: not a directory, and not one of the known models "
            f"{', '.join(MODELS)}"
        )
    options = {
        "niter": niter,
        "softmask": softmask,
        "residual": residual,
        "wiener_win_len": wiener_win_len,
    }
    return _build_separator(files, options).to(device).eval()


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
