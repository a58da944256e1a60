"""The options of a training run as one typed, checked object: `TrainConfig`.

Its fields and defaults are those of `umx train` (`DEFAULTS`); building one fills in the
dataset's own defaults (excerpts per track, random mixing, the target's name) and refuses values
that make no sense, before any data is read, whether they come from the command line
(`umx.train.options`), a checkpoint (untrusted input too) or a caller. `resolve_options` merges
the defaults, a resumed checkpoint's options and those given.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from umx.defaults import DEFAULT_AUGMENTATIONS, MUSDB_SAMPLES_PER_TRACK
from umx.errors import UmxError

DATASETS = ("musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")
ARCHITECTURES = ("umx", "xumx")  # one Open-Unmix per target; X-UMX, all targets in one model
XUMX_NAME = "xumx"  # the file names of an X-UMX run: xumx.chkpnt, xumx.pth, xumx.json
XUMX_DATASETS = ("musdb", "trackfolder_fix")  # datasets whose tracks hold fixed sources
MAX_SEED = 2**32 - 1
MAX_COUNT = 2**31 - 1
"""The largest count (--epochs, --batch-size, --hidden-size, excerpts, tracks...): far beyond
any run that fits in memory (past that, training says memory ran out), and below the integers
that Python's `range` and `itertools.islice` (`sys.maxsize`) and torch's sizes take, which
larger ones crashed with a traceback (`--batch-size 10**24` in torch's sampler)."""
MAX_SEQ_DUR = 86400.0  # seconds: a day, far beyond any excerpt that fits in memory
MAX_ADAM = {"lr": 1.0, "weight_decay": 1.0}
"""The largest --lr and --weight-decay: Adam's steps are about --lr in size (Open-Unmix uses
0.001), and torch's Adam stops with a traceback past float32's range (--lr 1e39)."""


def require_train_extra() -> None:
    """Refuse a run without the `train` extra, before any work (a teacher's pass for distill).

    Raises:
        UmxError: matplotlib, which draws the loss curve, is not installed.
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise UmxError(
            "umx train draws its loss curve with matplotlib, which is not installed: "
            "pip install 'umx[train]'"
        )


ARCHITECTURE = (
    "nfft",
    "nhop",
    "hidden_size",
    "nb_channels",
    "bandwidth",
    "unidirectional",
    "architecture",
)
"""Options fixed by the model: taken from `--model` or `--checkpoint`, which they must match."""

PER_INVOCATION = ("checkpoint", "output", "force", "quiet", "debug", "device")
"""Options a resumed run does not take from its checkpoint."""

DATASET_OPTIONS: dict[str, tuple[str, ...]] = {
    "musdb": (
        "is_wav",
        "valid_tracks",
        "samples_per_track",
        "random_track_mix",
        "source_augmentations",
    ),
    "aligned": ("input_file", "output_file", "samples_per_track"),
    "sourcefolder": (
        "target_dir",
        "interferer_dirs",
        "ext",
        "nb_train_samples",
        "nb_valid_samples",
        "source_augmentations",
    ),
    "trackfolder_fix": (
        "target_file",
        "interferer_files",
        "samples_per_track",
        "random_track_mix",
        "source_augmentations",
    ),
    "trackfolder_var": (
        "target_file",
        "ext",
        "silence_missing",
        "samples_per_track",
        "random_interferer_mix",
        "source_augmentations",
    ),
}
REQUIRED_OPTIONS: dict[str, tuple[str, ...]] = {
    "musdb": (),
    "aligned": ("input_file", "output_file"),
    "sourcefolder": ("target_dir", "interferer_dirs"),
    "trackfolder_fix": ("target_file", "interferer_files"),
    "trackfolder_var": ("target_file",),
}


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (see `umx train --help` for each, as `--name-of-field`).

    The dataset's options that are None are filled in when built: `samples_per_track`
    (`MUSDB_SAMPLES_PER_TRACK` for musdb, else 1), `random_track_mix` (on for musdb) and
    `target` (vocals for musdb, else the stem of the target's file or folder; `XUMX_NAME` for
    an X-UMX run, which trains every source: see `_check_xumx`).

    Raises:
        UmxError: one sentence naming the first option that makes no sense (see
            `check_options`), or a required option of the dataset that is missing.
    """

    dataset: str = "musdb"
    root: Path | None = None
    target: str | None = None
    output: str | Path = "open-unmix"
    model: str | None = None
    checkpoint: Path | None = None
    force: bool = False
    epochs: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    patience: int = 140
    lr_decay_patience: int = 80
    lr_decay_gamma: float = 0.3
    weight_decay: float = 1e-5
    seed: int = 42
    seq_dur: float = 6.0
    unidirectional: bool = False
    architecture: str = "umx"
    nfft: int = 4096
    nhop: int = 1024
    hidden_size: int = 512
    bandwidth: float = 16000.0
    nb_channels: int = 2
    nb_workers: int = 0
    device: str = "auto"
    debug: bool = False
    quiet: bool = False
    source_augmentations: list[str] = field(default_factory=lambda: list(DEFAULT_AUGMENTATIONS))
    samples_per_track: int | None = None
    random_track_mix: bool | None = None
    is_wav: bool = False
    valid_tracks: int | None = None
    input_file: str | None = None
    output_file: str | None = None
    target_dir: str | None = None
    interferer_dirs: list[str] | None = None
    ext: str = ".wav"
    nb_train_samples: int = 1000
    nb_valid_samples: int = 100
    target_file: str | None = None
    interferer_files: list[str] | None = None
    silence_missing: bool = False
    random_interferer_mix: bool = False

    def __post_init__(self) -> None:
        dataset = check_dataset(self.dataset)
        for key in ("root", *REQUIRED_OPTIONS[dataset]):
            if getattr(self, key) is None:
                raise UmxError(f"the {dataset} dataset needs --{key.replace('_', '-')}")
        if self.architecture == XUMX_NAME:
            self._check_xumx()
        if self.samples_per_track is None:
            samples = MUSDB_SAMPLES_PER_TRACK if dataset == "musdb" else 1
            object.__setattr__(self, "samples_per_track", samples)
        if self.random_track_mix is None:
            object.__setattr__(self, "random_track_mix", dataset == "musdb")
        if self.target is None:
            object.__setattr__(self, "target", self._default_target())
        check_options(self)

    def _check_xumx(self) -> None:
        """Refuse options an X-UMX run cannot use, and name its files `XUMX_NAME`.* (a resumed
        X-UMX run's checkpoint holds that target)."""
        if self.target not in (None, XUMX_NAME):
            raise UmxError("--target does not apply to --architecture xumx: it trains every source")
        if self.model is not None:
            raise UmxError(
                "--model fine-tunes an Open-Unmix target; --architecture xumx trains a new model "
                "(resume one with --checkpoint)"
            )
        if self.dataset not in XUMX_DATASETS:
            raise UmxError(
                f"--architecture xumx needs tracks with every source: the "
                f"{' or '.join(XUMX_DATASETS)} dataset, not {self.dataset}"
            )
        object.__setattr__(self, "target", XUMX_NAME)

    def _default_target(self) -> str:
        """The target's name when none is given: vocals for musdb, else the stem of the
        target's file or folder."""
        return {
            "musdb": "vocals",
            "aligned": Path(str(self.output_file)).stem,
            "sourcefolder": str(self.target_dir),
            "trackfolder_fix": Path(str(self.target_file)).stem,
            "trackfolder_var": Path(str(self.target_file)).stem,
        }[self.dataset]


DEFAULTS: dict[str, Any] = {
    option.name: option.default if option.default is not MISSING else option.default_factory()
    for option in fields(TrainConfig)
}
"""Every option of `umx train` and its default (the fields of `TrainConfig`). The parser's
defaults are None, so that the options given on the command line can be told apart from those
restored from a checkpoint."""


def check_dataset(dataset: object) -> str:
    """The dataset's name; only a checkpoint can hold another than `DATASETS` (the parser
    checks).

    Raises:
        UmxError: not one of `DATASETS`.
    """
    if dataset not in DATASETS:
        raise UmxError(f"--dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    return str(dataset)


def is_xumx_run(given: Mapping[str, Any]) -> bool:
    """Whether the options `given` (by field name; None: not given) ask for X-UMX: architecture
    xumx, or resuming an X-UMX run (a `checkpoint` directory holding `xumx.chkpnt`) without an
    architecture."""
    if given.get("architecture") is not None:
        return given["architecture"] == XUMX_NAME
    checkpoint = given.get("checkpoint")
    return checkpoint is not None and (Path(checkpoint) / f"{XUMX_NAME}.chkpnt").is_file()


def resolve_options(
    given: Mapping[str, Any], checkpoint: dict[str, Any] | None = None
) -> TrainConfig:
    """The options of a run: defaults, then those of `checkpoint`, then those `given`.

    Args:
        given: the options given on the command line, by field name (None: not given).
        checkpoint: the checkpoint resumed, if any (its `args` are restored).

    Returns:
        the run's options, resolved for the dataset and checked.

    Raises:
        UmxError: an option does not apply to the dataset, a required one is missing, an
            option of the model contradicts the checkpoint, or a value makes no sense.
    """
    given = {key: value for key, value in given.items() if key in DEFAULTS and value is not None}
    options = dict(DEFAULTS)
    if checkpoint is not None:
        saved = checkpoint["args"]
        for key in ARCHITECTURE:
            if key in given and given[key] != saved.get(key, DEFAULTS[key]):
                raise UmxError(
                    f"--{key.replace('_', '-')} {given[key]} differs from the checkpoint's "
                    f"{saved.get(key, DEFAULTS[key])}: a resumed run keeps its model"
                )
        options.update(
            {k: v for k, v in saved.items() if k in DEFAULTS and k not in PER_INVOCATION}
        )
        options["output"] = given.get("checkpoint")
    options.update(given)
    dataset = check_dataset(options["dataset"])
    for key in given:
        applies_to = [name for name, keys in DATASET_OPTIONS.items() if key in keys]
        if applies_to and dataset not in applies_to:
            raise UmxError(
                f"--{key.replace('_', '-')} applies to the {' and '.join(applies_to)} "
                f"dataset{'s' if len(applies_to) > 1 else ''}, not to {dataset}"
            )
    if "model" in given and checkpoint is not None:
        raise UmxError("--model and --checkpoint exclude each other: a resumed run has its model")
    return TrainConfig(**options)


WHOLE_NUMBERS: dict[str, tuple[int, int | None]] = {
    "epochs": (1, MAX_COUNT),
    "batch_size": (1, MAX_COUNT),
    "patience": (1, MAX_COUNT),
    "lr_decay_patience": (0, MAX_COUNT),
    "seed": (0, MAX_SEED),
    "nb_workers": (0, None),  # at most 4 per core (`check_cores`)
    "nfft": (1, None),  # at most 65536, and --nhop at most --nfft (`check_stft`)
    "nhop": (1, None),
    "hidden_size": (1, MAX_COUNT),
    "samples_per_track": (1, MAX_COUNT),
    "valid_tracks": (1, MAX_COUNT),
    "nb_train_samples": (1, MAX_COUNT),
    "nb_valid_samples": (1, MAX_COUNT),
}
"""Whole-number options and their bounds (inclusive; None: bounded by a later check)."""

POSITIVE_NUMBERS = ("lr", "seq_dur", "bandwidth")
"""Real options that must be finite and greater than zero."""

NAME_OPTIONS = {
    "input_file": "file",
    "output_file": "file",
    "target_file": "file",
    "interferer_files": "file",
    "target_dir": "folder",
    "interferer_dirs": "folder",
}
"""Options naming a file inside every track folder, or a folder inside each split: plain names
(see `umx.data.datasets.check_source_names`; the datasets also refuse one named twice)."""


def _check_names(config: TrainConfig, flag: Callable[[str], str]) -> None:
    """Refuse `NAME_OPTIONS` that are not plain names: a path would pair the stems of another
    track, in every track.

    Raises:
        UmxError: one sentence naming the first bad option.
    """
    from umx.data.datasets import check_source_names

    for key, kind in NAME_OPTIONS.items():
        value = getattr(config, key)
        names = value if isinstance(value, list) else [] if value is None else [value]
        check_source_names([(flag(key), str(name)) for name in names], kind, distinct=False)


def _check_reals(config: TrainConfig, flag: Callable[[str], str]) -> None:
    """Refuse the real-valued options (`POSITIVE_NUMBERS`, --weight-decay, --lr-decay-gamma)
    that are not finite numbers or are out of their range; `flag` names an option.

    Raises:
        UmxError: one sentence naming the first bad option.
    """
    reals = {key: getattr(config, key) for key in (*POSITIVE_NUMBERS, "weight_decay")}
    reals["lr_decay_gamma"] = config.lr_decay_gamma
    for key, value in reals.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UmxError(f"{flag(key)} must be a number, not {value!r}")
        if not math.isfinite(value):
            raise UmxError(f"{flag(key)} must be a finite number, not {value}")
    for key in POSITIVE_NUMBERS:
        if reals[key] <= 0:
            raise UmxError(f"{flag(key)} must be positive, not {reals[key]}")
    if reals["seq_dur"] > MAX_SEQ_DUR:
        raise UmxError(f"--seq-dur must be at most {MAX_SEQ_DUR:g} seconds, not {reals['seq_dur']}")
    if reals["weight_decay"] < 0:
        raise UmxError(f"--weight-decay must be zero or positive, not {reals['weight_decay']}")
    for key, maximum in MAX_ADAM.items():
        if reals[key] > maximum:
            raise UmxError(
                f"{flag(key)} must be at most {maximum:g} (the default is {DEFAULTS[key]:g}), "
                f"not {reals[key]:g}"
            )
    if not 0 < reals["lr_decay_gamma"] < 1:
        raise UmxError(
            f"--lr-decay-gamma multiplies the learning rate, so it must lie between 0 and 1 "
            f"(exclusive), not {reals['lr_decay_gamma']}"
        )


def check_options(config: TrainConfig) -> None:
    """Refuse options that make no sense, before any data is read.

    Every option is checked, whether given on the command line or restored from a checkpoint
    (which is untrusted input too): types, NaN, infinities, zero and negative values where they
    mean nothing, and STFT settings that cannot be inverted (see `umx.transforms.check_stft`).

    Raises:
        UmxError: one sentence naming the first bad option.
    """
    from umx.devices import WORKERS_PER_CORE, check_cores
    from umx.modeldir import check_model_target, check_open_unmix_target
    from umx.transforms import check_stft

    def flag(key: str) -> str:
        return "--" + key.replace("_", "-")

    for key, value in vars(config).items():  # the types a checkpoint could get wrong
        if key in WHOLE_NUMBERS or key in POSITIVE_NUMBERS or key not in DEFAULTS:
            continue
        default = DEFAULTS[key]
        if isinstance(default, bool) or key == "random_track_mix":
            right = isinstance(value, bool)
        elif isinstance(default, list) or key in ("interferer_dirs", "interferer_files"):
            right = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif isinstance(default, int | float):
            right = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            right = isinstance(value, str | Path)
        if not (right or (value is None and default is None)):
            raise UmxError(f"{flag(key)} cannot be {value!r}")

    for key, (low, high) in WHOLE_NUMBERS.items():
        value = getattr(config, key)
        if value is None and key == "valid_tracks":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise UmxError(f"{flag(key)} must be a whole number, not {value!r}")
        if value < low or (high is not None and value > high):
            if high in (None, MAX_COUNT):  # a cap against overflow: not worth naming below it
                bounds = f"at least {low}" if value < low else f"at most {high}"
            else:
                bounds = f"from {low} to {high}"
            raise UmxError(f"{flag(key)} must be {bounds}, not {value}")
    check_cores("--nb-workers", config.nb_workers, WORKERS_PER_CORE)
    _check_reals(config, flag)
    _check_names(config, flag)
    if config.hidden_size % 2 and not config.unidirectional:  # half of it runs each way
        raise UmxError(
            f"--hidden-size must be even for a bidirectional LSTM, not {config.hidden_size}: "
            f"give {config.hidden_size + 1}, or --unidirectional"
        )
    if config.architecture not in ARCHITECTURES:  # only a checkpoint can hold another
        raise UmxError(f"--architecture must be one of {', '.join(ARCHITECTURES)}")
    if isinstance(config.nb_channels, bool) or config.nb_channels not in (1, 2):
        raise UmxError(f"--nb-channels must be 1 or 2, not {config.nb_channels!r}")
    try:
        check_stft(config.nfft, config.nhop)
    except UmxError as error:
        raise UmxError(f"--nfft {config.nfft} and --nhop {config.nhop}: {error}") from None
    if config.architecture == XUMX_NAME:  # its files are named xumx.* (see `_check_xumx`)
        check_model_target(config.target, "--target")
    else:
        remedy = "give the target another name with --target"
        check_open_unmix_target(config.target, _target_source(config), remedy)


def _target_source(config: TrainConfig) -> str:
    """The option that named the target, for messages: `--target`, or the dataset's file or
    folder whose name it defaults to (`TrainConfig._default_target`)."""
    if config.dataset == "musdb" or config.target != config._default_target():
        return "--target"
    key = {"aligned": "output_file", "sourcefolder": "target_dir"}.get(
        config.dataset, "target_file"
    )
    return f"--{key.replace('_', '-')} {getattr(config, key)}"
