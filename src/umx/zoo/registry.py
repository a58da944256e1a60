"""The named models: their registry entries, their folders, and what `umx --list-models` shows.

A named model is either downloaded into the cache (`$UMX_CACHE`, else `$XDG_CACHE_HOME/umx`, else
`~/.cache/umx`, one folder per model) or bundled with the package under
`umx/pretrained/<name>/` in the official layout (see `umx.modeldir`). Downloaded files carry the
first 8 hex digits of their SHA-256 in their name (see `umx.zoo.download`).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from umx.defaults import DEFAULT_MODEL, FALLBACK_MODEL, HASHED_NAME, SOURCES, STREAM_MODEL
from umx.errors import UmxError, short

CACHE_ENV = "UMX_CACHE"
MIRROR_ENV = "UMX_ZOO_URL"
ZENODO_URL = "https://zenodo.org/records/{record}/files"
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"

# Model statuses shown by `umx --list-models`.
BUNDLED = "bundled"
CACHED = "cached"
PARTIAL = "partial"
NOT_DOWNLOADED = "not downloaded"

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
        causal: whether its LSTMs are unidirectional, so that it can separate a stream.
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
    causal: bool = False

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
        base = mirror_url() or ZENODO_URL.format(record=self.record)
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
        """How to install targets' weights by hand: `save <url> as <path>` for one file, and
        for several (which share an address and a folder) `save <names> from <address> into
        <folder>`, which keeps the line readable."""
        if len(targets) == 1:
            return f"save {self.url(targets[0])} as {self.directory / self.weights[targets[0]]}"
        names = [self.weights[target] for target in targets]
        address = self.url(targets[0]).removesuffix(names[0])
        return f"save {', '.join(names)} from {address} into {self.directory}{os.sep}"


MODELS: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry(
            name="umxsynth",
            description="music: vocals/drums/bass/other, small, trained on umx's synthetic music",
            license=MIT,
            weights={target: f"{target}.pth" for target in SOURCES},
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
            weights={target: f"{target}.pth" for target in SOURCES},
            sample_rate=44100.0,
            n_fft=4096,
            n_hop=1024,
            nb_channels=2,
            notice="umxsynth-rt is a causal demo model trained on synthetic music; for real "
            "music, separate files with umxl or stream a model of your own "
            "(`umx distill --unidirectional`)",  # umx stream refuses umxl (bidirectional)
            causal=True,
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


def require_causal_model(model: object) -> None:
    """Refuse a named model whose LSTMs are bidirectional where a stream is to be separated,
    before it is downloaded or loaded (a folder is checked once loaded).

    Raises:
        UmxError: naming the model and the causal one to use instead.
    """
    entry = MODELS.get(known_name(model) or "")
    if entry is not None and not entry.causal:
        raise UmxError(
            f"{model} has bidirectional LSTMs, which need the whole future of the signal and "
            f"cannot separate a stream: use a causal model ({STREAM_MODEL}, the default: leave "
            "out --model) or train one with `umx train --unidirectional`"
        )


@dataclass(frozen=True)
class ModelInfo:
    """What `umx --list-models` shows about a named model.

    Attributes:
        status: `BUNDLED` (ships with umx), `CACHED` (every weights file is in the cache, not
            re-verified here), `PARTIAL` (some are) or `NOT_DOWNLOADED`.
        missing: the weights files not in the cache, by name.
        default: the model used when none is named.
        fallback: the bundled model the default falls back to when it cannot be had.
        size: the bytes of its weights files here (bundled or cached); None when none is.
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
    size: int | None = None


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
        size=_size_here(entry) if len(missing) < len(entry.weights) else None,
    )


def _size_here(entry: ZooEntry) -> int:
    """The bytes of the weights files of `entry` that are here."""
    sizes = []
    for name in entry.weights.values():
        with contextlib.suppress(OSError):
            sizes.append((entry.directory / name).stat().st_size)
    return sum(sizes)


def list_models() -> list[ModelInfo]:
    """The named models and whether their weights are here, the default first, then its fallback.

    Looks at the cache only: never touches the network.

    Returns:
        one `ModelInfo` per entry of `MODELS`.
    """
    infos = [_info(entry) for entry in MODELS.values()]
    return sorted(infos, key=lambda info: (not info.default, not info.fallback))


def cache_dir() -> Path:
    """The model cache: `$UMX_CACHE`, else `$XDG_CACHE_HOME/umx`, else `~/.cache/umx`.

    Raises:
        UmxError: the variable used starts with the `~user` of a user unknown here, or, with
            neither set, the home directory cannot be found.
    """
    for variable, inside in ((CACHE_ENV, ()), ("XDG_CACHE_HOME", ("umx",))):
        value = os.environ.get(variable)
        if value:
            try:
                return Path(value).expanduser().joinpath(*inside)
            except RuntimeError:  # "Could not determine home directory"
                raise UmxError(
                    f"{variable} is {short.repr(value)}, but that user has no home directory "
                    "here: set it to a full path"
                ) from None
    try:
        return Path.home() / ".cache" / "umx"
    except RuntimeError:
        raise UmxError(
            f"the home directory, where the model cache goes, is unknown: set {CACHE_ENV} to a "
            "folder for the cache"
        ) from None


def mirror_url() -> str | None:
    """`$UMX_ZOO_URL`, the address of a folder that holds the weights instead of Zenodo, or None.

    Raises:
        UmxError: it is not an http://, https:// or file:// address (no scheme, no host, an
            unclosed `[`).
    """
    value = os.environ.get(MIRROR_ENV)
    if not value:
        return None
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    scheme = parts.scheme.lower() if parts else ""
    if scheme not in ("http", "https", "file") or (scheme != "file" and not parts.hostname):
        raise UmxError(
            f"{MIRROR_ENV} must be the http://, https:// or file:// address of a folder holding "
            f"the weights, not {short.repr(value)}: correct it, or unset it to use Zenodo"
        )
    return value


def model_cache_dir(name: str) -> Path:
    """The cache folder of one named model."""
    return cache_dir() / name


def known_name(model: object) -> str | None:
    """The key of `MODELS` that `model` names, in any case (`UMXL`, unless a file or folder has
    that name); None when it names none."""
    if not isinstance(model, str):
        return None
    if model in MODELS:
        return model
    lower = model.lower()
    return lower if lower in MODELS and not os.path.lexists(model) else None


def find_model(name: str) -> ZooEntry:
    """The registry entry of a model name, in any case (see `known_name`).

    Raises:
        UmxError: `name` is not a key of `MODELS`.
    """
    known = known_name(name)
    if known is None:
        close = difflib.get_close_matches(name, MODELS, n=1) if isinstance(name, str) else []
        hint = f"did you mean {close[0]}?" if close else f"the known models are {', '.join(MODELS)}"
        raise UmxError(f"unknown model {short.repr(name)}; {hint}")
    return MODELS[known]


def model_targets(entry: ZooEntry, targets: Sequence[str] | None) -> list[str]:
    """The targets of a named model to load: `targets` checked against the model's, once per
    load (all of them if None)."""
    from umx.modeldir import select_targets

    return select_targets(entry.targets, targets, f"model {entry.name!r}")
