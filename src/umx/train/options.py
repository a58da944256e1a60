"""The command line of `umx train` and `python -m umx.train`: the argument table and the
options given on it.

`add_train_arguments` declares every option with default None, so that
`umx.train.config.resolve_options` can tell the options given on the command line from those
restored from a checkpoint; it fills in `DEFAULTS` and the dataset's own defaults and builds the
checked `TrainConfig`, before any data is read.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from umx.cli_options import OneLineParser, path_argument
from umx.cli_run import run_command
from umx.defaults import MUSDB_SAMPLES_PER_TRACK
from umx.train.config import ARCHITECTURES, DATASETS, DEFAULTS


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option of `umx train` to `parser` (all with default None; see `DEFAULTS`)."""
    data = parser.add_argument_group("data")
    _add_data_arguments(data)
    _add_dataset_arguments(data)
    _add_training_arguments(parser.add_argument_group("training"))
    _add_model_arguments(parser.add_argument_group("model"))
    _add_output_arguments(parser.add_argument_group("output and resuming"))


def _add(group: argparse._ArgumentGroup, *flags: str, help: str, **kwargs: Any) -> None:
    """Add an option of `DEFAULTS` with default None, its help ending with the real default."""
    dest = next(f for f in flags if f.startswith("--"))[2:].replace("-", "_")
    default = DEFAULTS[dest]
    if default is not None and default is not False:
        if isinstance(default, list):
            shown = " ".join(default)
        else:
            shown = f"{default:g}" if isinstance(default, float) else default
        help = f"{help} (default: {shown})"
    group.add_argument(*flags, default=None, help=help, **kwargs)


def _add_data_arguments(data: argparse._ArgumentGroup) -> None:
    """The options of every dataset: which, where, the target, the excerpts."""
    _add(data, "--dataset", choices=DATASETS, help="dataset type")
    _add(data, "--root", type=path_argument, metavar="DIR", help="dataset folder (required)")
    _add(
        data,
        "--target",
        help="name of the trained target and of its files in --output; for musdb the source "
        "(vocals, drums, bass or other, default: vocals); by default the stem of "
        "--output-file/--target-file or the name of --target-dir for the other datasets",
    )
    _add(
        data,
        "--seq-dur",
        type=float,
        metavar="SECONDS",
        help="length of the training excerpts; shorter files are zero-padded",
    )
    _add(
        data,
        "--source-augmentations",
        nargs="*",
        metavar="NAME",
        help="augmentations applied to every source before mixing, in order (the others are "
        "listed in docs/training.md); none if given without names",
    )
    _add(
        data,
        "--samples-per-track",
        type=int,
        metavar="N",
        help="training excerpts per track and epoch (default: "
        f"{MUSDB_SAMPLES_PER_TRACK} for musdb, 1 for aligned and the track folders)",
    )
    _add(
        data,
        "--random-track-mix",
        action=argparse.BooleanOptionalAction,
        help="musdb, trackfolder_fix: mix each interferer from a random track (default: on "
        "for musdb, off for trackfolder_fix)",
    )


def _add_dataset_arguments(data: argparse._ArgumentGroup) -> None:
    """The options of one dataset each (or a few), their help starting with its name."""
    _add(data, "--is-wav", action="store_true", help="musdb: read MUSDB18-HQ wav folders")
    _add(
        data,
        "--valid-tracks",
        type=int,
        metavar="N",
        help="musdb: hold out the last N train tracks (by name) for validation instead of "
        "those listed by <root>/setup.yaml or the official split; folders holding none of "
        "the listed tracks hold out a tenth (at least one) by default",
    )
    _add(data, "--input-file", metavar="NAME", help="aligned: input file name in each track folder")
    _add(
        data, "--output-file", metavar="NAME", help="aligned: output file name in each track folder"
    )
    _add(data, "--target-dir", metavar="NAME", help="sourcefolder: folder of target files")
    _add(
        data,
        "--interferer-dirs",
        nargs="+",
        metavar="NAME",
        help="sourcefolder: folders of interfering files",
    )
    _add(data, "--ext", help="sourcefolder, trackfolder_var: extension of the audio files")
    _add(
        data,
        "--nb-train-samples",
        type=int,
        metavar="N",
        help="sourcefolder: training mixtures per epoch",
    )
    _add(
        data,
        "--nb-valid-samples",
        type=int,
        metavar="N",
        help="sourcefolder: validation mixtures (the same every epoch)",
    )
    _add(
        data,
        "--target-file",
        metavar="NAME",
        help="trackfolder_fix, trackfolder_var: target file name in each track folder",
    )
    _add(
        data,
        "--interferer-files",
        nargs="+",
        metavar="NAME",
        help="trackfolder_fix: interferer file names in each track folder",
    )
    _add(
        data,
        "--silence-missing",
        "--silence-missing-targets",
        action="store_true",
        help="trackfolder_var: use silence as the target of tracks without the target file",
    )
    _add(
        data,
        "--random-interferer-mix",
        action="store_true",
        help="trackfolder_var: take the interferers from a random track",
    )


def _add_training_arguments(training: argparse._ArgumentGroup) -> None:
    """The options of the optimiser, early stopping, the seed and where it runs."""
    _add(training, "--epochs", type=int, help="maximum number of epochs")
    _add(training, "--batch-size", type=int, help="excerpts per batch")
    _add(training, "--lr", type=float, help="Adam learning rate")
    _add(training, "--weight-decay", type=float, help="Adam weight decay")
    _add(
        training,
        "--patience",
        type=int,
        help="stop after this many epochs without a lower validation loss",
    )
    _add(
        training,
        "--lr-decay-patience",
        type=int,
        help="epochs without improvement before the learning rate decays",
    )
    _add(training, "--lr-decay-gamma", type=float, help="learning-rate decay factor")
    _add(
        training,
        "--seed",
        type=int,
        help="random seed; with the same seed, workers and processes a CPU run is reproducible",
    )
    _add(training, "--nb-workers", type=int, metavar="N", help="data loading worker processes")
    _add(
        training,
        "--device",
        help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps (under torchrun: "
        "cuda:LOCAL_RANK)",
    )


def _add_model_arguments(model: argparse._ArgumentGroup) -> None:
    """The options that fix the model's architecture and STFT
    (`umx.train.config.ARCHITECTURE`)."""
    _add(model, "--nfft", type=int, help="STFT size")
    _add(model, "--nhop", type=int, help="STFT hop")
    _add(model, "--hidden-size", type=int, help="width of the hidden layers")
    _add(model, "--nb-channels", type=int, choices=(1, 2), help="audio channels of the model")
    _add(
        model,
        "--bandwidth",
        type=float,
        metavar="HZ",
        help="highest frequency the LSTM sees (input and output stay full-band)",
    )
    _add(model, "--unidirectional", action="store_true", help="causal, forward-only LSTM")
    _add(
        model,
        "--architecture",
        choices=ARCHITECTURES,
        help="umx: one Open-Unmix model of --target; xumx: one X-UMX (CrossNet-Open-Unmix) "
        "model of every source, with the multi-domain and combination losses (musdb or "
        "trackfolder_fix datasets; writes xumx.pth in asteroid's format)",
    )


def _add_output_arguments(output: argparse._ArgumentGroup) -> None:
    """Where the model goes, what it starts from, resuming, and how much is said."""
    _add(
        output,
        "--output",
        type=path_argument,
        metavar="DIR",
        help="model directory to write (the --checkpoint directory when resuming)",
    )
    _add(
        output,
        "--model",
        metavar="NAME|DIR",
        help="fine-tune the target of a zoo model or of a model directory",
    )
    _add(
        output,
        "--checkpoint",
        type=path_argument,
        metavar="DIR",
        help="resume the run whose <target>.chkpnt is in DIR; its options are restored, "
        "options given here override them (except the model's)",
    )
    _add(
        output,
        "--force",
        action="store_true",
        help="overwrite the target's files of another run in --output",
    )
    _add(
        output,
        "--debug",
        action="store_true",
        help="skip the input statistics (mean 0, scale 1) and log debug messages",
    )
    _add(
        output,
        "-q",
        "--quiet",
        action="store_true",
        help="warnings only: no progress bars (on a terminal) or lines per epoch (otherwise)",
    )


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (those not None), by field of `TrainConfig`."""
    return {key: value for key in DEFAULTS if (value := getattr(args, key, None)) is not None}


def run_train(args: argparse.Namespace) -> int:
    """`umx train`: train as the options given say. Returns 0 (see `run_training`)."""
    from umx.train.loop import run_training

    return run_training(given_options(args))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m umx.train`: the same as `umx train`, its errors and stops (SIGTERM under
    torchrun) included. Returns the exit code."""
    parser = OneLineParser(
        prog="python -m umx.train", description="Train an Open-Unmix target model."
    )
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="umx: %(message)s"
    )
    return run_command(lambda: run_train(args))
