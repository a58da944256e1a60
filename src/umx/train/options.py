"""The options of `umx train`: the argument table, the defaults and the checks.

`add_train_arguments` declares every option with default None, so that `resolve_options` can
tell the options given on the command line from those restored from a checkpoint; it fills in
`DEFAULTS` and the dataset's own defaults, then `check_options` refuses values that make no
sense, before any data is read.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from umx.defaults import DEFAULT_AUGMENTATIONS, MUSDB_SAMPLES_PER_TRACK
from umx.errors import UmxError

DATASETS = ("musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")
ARCHITECTURES = ("umx", "xumx")  # one Open-Unmix per target; X-UMX, all targets in one model
XUMX_NAME = "xumx"  # the file names of an X-UMX run: xumx.chkpnt, xumx.pth, xumx.json
XUMX_DATASETS = ("musdb", "trackfolder_fix")  # datasets whose tracks hold fixed sources
MAX_SEED = 2**32 - 1
MAX_SEQ_DUR = 86400.0  # seconds: a day, far beyond any excerpt that fits in memory

DEFAULTS: dict[str, Any] = {
    "dataset": "musdb",
    "root": None,
    "target": None,
    "output": "open-unmix",
    "model": None,
    "checkpoint": None,
    "force": False,
    "epochs": 1000,
    "batch_size": 16,
    "lr": 1e-3,
    "patience": 140,
    "lr_decay_patience": 80,
    "lr_decay_gamma": 0.3,
    "weight_decay": 1e-5,
    "seed": 42,
    "seq_dur": 6.0,
    "unidirectional": False,
    "architecture": "umx",
    "nfft": 4096,
    "nhop": 1024,
    "hidden_size": 512,
    "bandwidth": 16000.0,
    "nb_channels": 2,
    "nb_workers": 0,
    "device": "auto",
    "debug": False,
    "quiet": False,
    "source_augmentations": list(DEFAULT_AUGMENTATIONS),
    "samples_per_track": None,  # MUSDB_SAMPLES_PER_TRACK for musdb, 1 for the folder datasets
    "random_track_mix": None,  # on for musdb, off for trackfolder_fix
    "is_wav": False,
    "valid_tracks": None,
    "input_file": None,
    "output_file": None,
    "target_dir": None,
    "interferer_dirs": None,
    "ext": ".wav",
    "nb_train_samples": 1000,
    "nb_valid_samples": 100,
    "target_file": None,
    "interferer_files": None,
    "silence_missing": False,
    "random_interferer_mix": False,
}
"""Every option of `umx train` and its default. The parser's defaults are None, so that the
options given on the command line can be told apart from those restored from a checkpoint."""

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


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option of `umx train` to `parser` (all with default None; see `DEFAULTS`)."""

    def add(group: argparse._ArgumentGroup, *flags: str, help: str, **kwargs: Any) -> None:
        dest = next(f for f in flags if f.startswith("--"))[2:].replace("-", "_")
        default = DEFAULTS[dest]
        if default is not None and default is not False:
            if isinstance(default, list):
                shown = " ".join(default)
            else:
                shown = f"{default:g}" if isinstance(default, float) else default
            help = f"{help} (default: {shown})"
        group.add_argument(*flags, default=None, help=help, **kwargs)

    data = parser.add_argument_group("data")
    add(data, "--dataset", choices=DATASETS, help="dataset type")
    add(data, "--root", type=Path, metavar="DIR", help="dataset folder (required)")
    add(
        data,
        "--target",
        help="name of the trained target and of its files in --output; for musdb the source "
        "(vocals, drums, bass or other, default: vocals); by default the stem of "
        "--output-file/--target-file or the name of --target-dir for the other datasets",
    )
    add(
        data,
        "--seq-dur",
        type=float,
        metavar="SECONDS",
        help="length of the training excerpts; shorter files are zero-padded",
    )
    add(
        data,
        "--source-augmentations",
        nargs="*",
        metavar="NAME",
        help="augmentations applied to every source before mixing, in order (default: "
        f"{' '.join(DEFAULT_AUGMENTATIONS)}; the others are listed in docs/training.md); none "
        "if given without names",
    )
    add(
        data,
        "--samples-per-track",
        type=int,
        metavar="N",
        help="training excerpts per track and epoch (default: "
        f"{MUSDB_SAMPLES_PER_TRACK} for musdb, 1 for aligned and the track folders)",
    )
    add(
        data,
        "--random-track-mix",
        action=argparse.BooleanOptionalAction,
        help="musdb, trackfolder_fix: mix each interferer from a random track (default: on "
        "for musdb, off for trackfolder_fix)",
    )
    add(data, "--is-wav", action="store_true", help="musdb: read MUSDB18-HQ wav folders")
    add(
        data,
        "--valid-tracks",
        type=int,
        metavar="N",
        help="musdb: hold out the last N train tracks (by name) for validation instead of "
        "those listed by <root>/setup.yaml or the official split; folders holding none of "
        "the listed tracks hold out a tenth (at least one) by default",
    )
    add(data, "--input-file", metavar="NAME", help="aligned: input file name in each track folder")
    add(
        data, "--output-file", metavar="NAME", help="aligned: output file name in each track folder"
    )
    add(data, "--target-dir", metavar="NAME", help="sourcefolder: folder of target files")
    add(
        data,
        "--interferer-dirs",
        nargs="+",
        metavar="NAME",
        help="sourcefolder: folders of interfering files",
    )
    add(data, "--ext", help="sourcefolder, trackfolder_var: extension of the audio files")
    add(
        data,
        "--nb-train-samples",
        type=int,
        metavar="N",
        help="sourcefolder: training mixtures per epoch",
    )
    add(
        data,
        "--nb-valid-samples",
        type=int,
        metavar="N",
        help="sourcefolder: validation mixtures (the same every epoch)",
    )
    add(
        data,
        "--target-file",
        metavar="NAME",
        help="trackfolder_fix, trackfolder_var: target file name in each track folder",
    )
    add(
        data,
        "--interferer-files",
        nargs="+",
        metavar="NAME",
        help="trackfolder_fix: interferer file names in each track folder",
    )
    add(
        data,
        "--silence-missing",
        "--silence-missing-targets",
        action="store_true",
        help="trackfolder_var: use silence as the target of tracks without the target file",
    )
    add(
        data,
        "--random-interferer-mix",
        action="store_true",
        help="trackfolder_var: take the interferers from a random track",
    )

    training = parser.add_argument_group("training")
    add(training, "--epochs", type=int, help="maximum number of epochs")
    add(training, "--batch-size", type=int, help="excerpts per batch")
    add(training, "--lr", type=float, help="Adam learning rate")
    add(training, "--weight-decay", type=float, help="Adam weight decay")
    add(
        training,
        "--patience",
        type=int,
        help="stop after this many epochs without a lower validation loss",
    )
    add(
        training,
        "--lr-decay-patience",
        type=int,
        help="epochs without improvement before the learning rate decays",
    )
    add(training, "--lr-decay-gamma", type=float, help="learning-rate decay factor")
    add(
        training,
        "--seed",
        type=int,
        help="random seed; with the same seed, workers and processes a CPU run is reproducible",
    )
    add(training, "--nb-workers", type=int, metavar="N", help="data loading worker processes")
    add(
        training,
        "--device",
        help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps (under torchrun: "
        "cuda:LOCAL_RANK)",
    )

    model = parser.add_argument_group("model")
    add(model, "--nfft", type=int, help="STFT size")
    add(model, "--nhop", type=int, help="STFT hop")
    add(model, "--hidden-size", type=int, help="width of the hidden layers")
    add(model, "--nb-channels", type=int, choices=(1, 2), help="audio channels of the model")
    add(
        model,
        "--bandwidth",
        type=float,
        metavar="HZ",
        help="highest frequency the LSTM sees (input and output stay full-band)",
    )
    add(model, "--unidirectional", action="store_true", help="causal, forward-only LSTM")
    add(
        model,
        "--architecture",
        choices=ARCHITECTURES,
        help="umx: one Open-Unmix model of --target; xumx: one X-UMX (CrossNet-Open-Unmix) "
        "model of every source, with the multi-domain and combination losses (musdb or "
        "trackfolder_fix datasets; writes xumx.pth in asteroid's format)",
    )

    output = parser.add_argument_group("output and resuming")
    add(
        output,
        "--output",
        type=Path,
        metavar="DIR",
        help="model directory to write (the --checkpoint directory when resuming)",
    )
    add(
        output,
        "--model",
        metavar="NAME|DIR",
        help="fine-tune the target of a zoo model or of a model directory",
    )
    add(
        output,
        "--checkpoint",
        type=Path,
        metavar="DIR",
        help="resume the run whose <target>.chkpnt is in DIR; its options are restored, "
        "options given here override them (except the model's)",
    )
    add(
        output,
        "--force",
        action="store_true",
        help="overwrite the target's files of another run in --output",
    )
    add(
        output,
        "--debug",
        action="store_true",
        help="skip the input statistics (mean 0, scale 1) and log debug messages",
    )
    add(
        output,
        "-q",
        "--quiet",
        action="store_true",
        help="warnings only: no progress bars (on a terminal) or lines per epoch (otherwise)",
    )


def resolve_options(
    args: argparse.Namespace, checkpoint: dict[str, Any] | None = None
) -> argparse.Namespace:
    """The options of a run: defaults, then those of `checkpoint`, then those given in `args`.

    Args:
        args: parsed options; None means not given.
        checkpoint: the checkpoint resumed, if any (its `args` are restored).

    Returns:
        every key of `DEFAULTS`, resolved for the dataset.

    Raises:
        UmxError: an option does not apply to the dataset, a required one is missing, or an
            option of the model contradicts the checkpoint.
    """
    given = {key: getattr(args, key) for key in DEFAULTS if getattr(args, key, None) is not None}
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
        options["output"] = args.checkpoint
    options.update(given)
    config = argparse.Namespace(**options)

    dataset = config.dataset
    if dataset not in DATASETS:  # only a checkpoint can hold another: the parser checks
        raise UmxError(f"--dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    for key in given:
        applies_to = [name for name, keys in DATASET_OPTIONS.items() if key in keys]
        if applies_to and dataset not in applies_to:
            raise UmxError(
                f"--{key.replace('_', '-')} applies to the {' and '.join(applies_to)} "
                f"dataset{'s' if len(applies_to) > 1 else ''}, not to {dataset}"
            )
    for key in ("root", *REQUIRED_OPTIONS[dataset]):
        if getattr(config, key) is None:
            raise UmxError(f"the {dataset} dataset needs --{key.replace('_', '-')}")
    if config.architecture == XUMX_NAME:
        _check_xumx(config, given)
    if config.samples_per_track is None:
        config.samples_per_track = MUSDB_SAMPLES_PER_TRACK if dataset == "musdb" else 1
    if config.random_track_mix is None:
        config.random_track_mix = dataset == "musdb"
    if config.target is None:
        config.target = {
            "musdb": "vocals",
            "aligned": Path(str(config.output_file)).stem,
            "sourcefolder": str(config.target_dir),
            "trackfolder_fix": Path(str(config.target_file)).stem,
            "trackfolder_var": Path(str(config.target_file)).stem,
        }[dataset]
    if "model" in given and checkpoint is not None:
        raise UmxError("--model and --checkpoint exclude each other: a resumed run has its model")
    check_options(config)
    return config


def is_xumx_run(args: argparse.Namespace) -> bool:
    """Whether `umx train` options ask for X-UMX: `--architecture xumx`, or resuming an X-UMX
    run (a `--checkpoint` directory holding `xumx.chkpnt`) without `--architecture`."""
    if args.architecture is not None:
        return args.architecture == XUMX_NAME
    return args.checkpoint is not None and (Path(args.checkpoint) / f"{XUMX_NAME}.chkpnt").is_file()


def _check_xumx(config: argparse.Namespace, given: dict[str, Any]) -> None:
    """Refuse options an X-UMX run cannot use, and name its files `xumx.*`."""
    if "target" in given:
        raise UmxError("--target does not apply to --architecture xumx: it trains every source")
    if config.model is not None:
        raise UmxError(
            "--model fine-tunes an Open-Unmix target; --architecture xumx trains a new model "
            "(resume one with --checkpoint)"
        )
    if config.dataset not in XUMX_DATASETS:
        raise UmxError(
            f"--architecture xumx needs tracks with every source: the "
            f"{' or '.join(XUMX_DATASETS)} dataset, not {config.dataset}"
        )
    config.target = XUMX_NAME


WHOLE_NUMBERS: dict[str, tuple[int, int | None]] = {
    "epochs": (1, None),
    "batch_size": (1, None),
    "patience": (1, None),
    "lr_decay_patience": (0, None),
    "seed": (0, MAX_SEED),
    "nb_workers": (0, None),
    "nfft": (1, None),
    "nhop": (1, None),
    "hidden_size": (1, None),
    "samples_per_track": (1, None),
    "valid_tracks": (1, None),
    "nb_train_samples": (1, None),
    "nb_valid_samples": (1, None),
}
"""Whole-number options and their bounds (inclusive; None: unbounded)."""

POSITIVE_NUMBERS = ("lr", "seq_dur", "bandwidth")
"""Real options that must be finite and greater than zero."""


def check_options(config: argparse.Namespace) -> None:
    """Refuse options that make no sense, before any data is read.

    Every option is checked, whether given on the command line or restored from a checkpoint
    (which is untrusted input too): types, NaN, infinities, zero and negative values where they
    mean nothing, and STFT settings that cannot be inverted (see `umx.transforms.check_stft`).

    Raises:
        UmxError: one sentence naming the first bad option.
    """
    from umx.modeldir import check_target_name
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
            bounds = f"at least {low}" if high is None else f"from {low} to {high}"
            raise UmxError(f"{flag(key)} must be {bounds}, not {value}")
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
    if not 0 < reals["lr_decay_gamma"] < 1:
        raise UmxError(
            f"--lr-decay-gamma multiplies the learning rate, so it must lie between 0 and 1 "
            f"(exclusive), not {reals['lr_decay_gamma']}"
        )
    if config.architecture not in ARCHITECTURES:  # only a checkpoint can hold another
        raise UmxError(f"--architecture must be one of {', '.join(ARCHITECTURES)}")
    if isinstance(config.nb_channels, bool) or config.nb_channels not in (1, 2):
        raise UmxError(f"--nb-channels must be 1 or 2, not {config.nb_channels!r}")
    try:
        check_stft(config.nfft, config.nhop)
    except UmxError as error:
        raise UmxError(f"--nfft {config.nfft} and --nhop {config.nhop}: {error}") from None
    check_target_name(config.target, "--target")
