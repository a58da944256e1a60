"""Training of one Open-Unmix target model: datasets from options, input statistics, the
training loop, early stopping, resumable checkpoints and distributed data parallel training.

`umx train` parses its options with `add_train_arguments` and calls `run_training`;
`python -m umx.train` does the same. Under `torchrun --nproc_per_node=N` the same command trains
with DistributedDataParallel (NCCL on GPUs, gloo on CPUs); only rank 0 writes.

The STFT is computed with `center=True`, as `umx.transforms` and the separator do (the reference
trainer used `center=False`): training and separation see the same frames.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import json
import logging
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from umx import __version__
from umx.data.augment import AUGMENTATIONS, DEFAULT_AUGMENTATIONS, Compose
from umx.data.datasets import (
    MUSDB_SAMPLES_PER_TRACK,
    AlignedDataset,
    FixedSourcesTrackFolderDataset,
    MUSDBDataset,
    SourceFolderDataset,
    UnmixDataset,
    VariableSourcesTrackFolderDataset,
)
from umx.devices import resolve_device
from umx.errors import UmxError
from umx.model import OpenUnmix
from umx.modeldir import (
    SEPARATOR_JSON,
    WEIGHTS_SUFFIX,
    check_target_name,
    infer_architecture,
    save_target_model,
    torch_save_atomic,
    write_json_atomic,
)
from umx.transforms import Spectrogram, bandwidth_to_max_bin, check_stft
from umx.zoo import load_separator

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger("umx.train")  # also when run as __main__

DATASETS = ("musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")
CHECKPOINT_SUFFIX = ".chkpnt"
CURVE_SUFFIX = "_loss.png"
NB_LAYERS = 3
LR_COOLDOWN = 10  # epochs without learning-rate decay after a decay, as in Open-Unmix
STD_FLOOR = 1e-4  # the input scale is at least this fraction of the largest one
VALID_SEGMENT = 30.0  # seconds of a validation track the model sees at once (bounds memory)
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

ARCHITECTURE = ("nfft", "nhop", "hidden_size", "nb_channels", "bandwidth", "unidirectional")
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


# --- options ----------------------------------------------------------------------------------


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
        help=f"augmentations applied to every source before mixing, in order, from "
        f"{', '.join(AUGMENTATIONS)}; none if given without names",
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
    if isinstance(config.nb_channels, bool) or config.nb_channels not in (1, 2):
        raise UmxError(f"--nb-channels must be 1 or 2, not {config.nb_channels!r}")
    try:
        check_stft(config.nfft, config.nhop)
    except UmxError as error:
        raise UmxError(f"--nfft {config.nfft} and --nhop {config.nhop}: {error}") from None
    check_target_name(config.target, "--target")


def make_datasets(config: argparse.Namespace) -> tuple[UnmixDataset, UnmixDataset]:
    """The training and validation datasets of a run's options (see `resolve_options`)."""
    augment = Compose(config.source_augmentations) if config.source_augmentations else None
    common = {"nb_channels": config.nb_channels}
    train_only = {"seq_duration": config.seq_dur, "samples_per_track": config.samples_per_track}
    valid_only = {"seq_duration": None}
    if config.dataset == "musdb":
        files = {"is_wav": config.is_wav, "valid_tracks": config.valid_tracks}
        return (
            MUSDBDataset(
                config.root,
                config.target,
                split="train",
                augment=augment,
                random_track_mix=config.random_track_mix,
                **files,
                **common,
                **train_only,
            ),
            MUSDBDataset(
                config.root, config.target, split="valid", **files, **common, **valid_only
            ),
        )
    if config.dataset == "aligned":
        files = {"input_file": config.input_file, "output_file": config.output_file}
        return (
            AlignedDataset(config.root, "train", **files, **common, **train_only),
            AlignedDataset(config.root, "valid", **files, **common, **valid_only),
        )
    if config.dataset == "sourcefolder":
        files = {
            "target_dir": config.target_dir,
            "interferer_dirs": config.interferer_dirs,
            "ext": config.ext,
            "seq_duration": config.seq_dur,
        }
        return (
            SourceFolderDataset(
                config.root,
                "train",
                nb_samples=config.nb_train_samples,
                augment=augment,
                **files,
                **common,
            ),
            SourceFolderDataset(
                config.root,
                "valid",
                nb_samples=config.nb_valid_samples,
                deterministic=True,
                **files,
                **common,
            ),
        )
    if config.dataset == "trackfolder_fix":
        files = {"target_file": config.target_file, "interferer_files": config.interferer_files}
        return (
            FixedSourcesTrackFolderDataset(
                config.root,
                "train",
                augment=augment,
                random_track_mix=config.random_track_mix,
                **files,
                **common,
                **train_only,
            ),
            FixedSourcesTrackFolderDataset(config.root, "valid", **files, **common, **valid_only),
        )
    files = {
        "target_file": config.target_file,
        "ext": config.ext,
        "silence_missing": config.silence_missing,
    }
    return (
        VariableSourcesTrackFolderDataset(
            config.root,
            "train",
            augment=augment,
            random_interferer_mix=config.random_interferer_mix,
            **files,
            **common,
            **train_only,
        ),
        VariableSourcesTrackFolderDataset(config.root, "valid", **files, **common, **valid_only),
    )


# --- distributed set-up -----------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Read torchrun's `RANK`, `WORLD_SIZE` and `LOCAL_RANK`."""
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    def all_sum(self, values: Tensor) -> Tensor:
        """Sum a tensor over all processes (itself without torchrun)."""
        if not self.enabled:
            return values
        summed = values.to(_collective_device())
        dist.all_reduce(summed)
        return summed.to(values.device)

    def all_gather(self, values: Tensor) -> list[Tensor]:
        """Every process's `values`, in rank order (just `values` without torchrun)."""
        if not self.enabled:
            return [values]
        local = values.to(_collective_device())
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [part.to(values.device) for part in parts]


def _collective_device() -> torch.device:
    """NCCL exchanges GPU tensors only; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def seed_everything(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch, numpy and `random` from `(seed, epoch, rank)`.

    The trainer reseeds at the start of every epoch, so the random state of an epoch depends on
    these three numbers only: a resumed run draws the same excerpts, augmentations and dropout
    masks as an uninterrupted one, and each process of a distributed run draws its own.
    """
    words = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    state = int(words[0]) << 32 | int(words[1])
    torch.manual_seed(state)
    np.random.seed(int(words[0]))
    random.seed(state)


# --- statistics -------------------------------------------------------------------------------


def compute_statistics(
    dataset: UnmixDataset,
    n_fft: int,
    n_hop: int,
    *,
    distributed: Distributed | None = None,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-bin mean and standard deviation of the mono training magnitudes, in float64.

    Computed over every frame of `dataset.eval_view()` (whole tracks, unaugmented), one track at
    a time: per-track means and squared deviations are merged exactly (Chan et al.), also across
    processes, each of which takes its share of the tracks. The standard deviation is the
    population one, floored at `STD_FLOOR` times its maximum so that silent bins cannot blow up
    the input scaling.

    Args:
        dataset: the training set.
        n_fft, n_hop: the STFT.
        distributed: this process's place in a distributed run.
        progress: show a progress bar.

    Returns:
        mean and standard deviation, `(nb_bins,)` each, float64.
    """
    distributed = distributed or Distributed()
    view = dataset.eval_view()
    spectrogram = Spectrogram(n_fft, n_hop, mono=True)
    nb_bins = n_fft // 2 + 1
    zeros = torch.zeros(nb_bins, dtype=torch.float64)
    count, mean, m2 = 0, zeros, zeros  # frames, mean, sum of squared deviations
    indices = range(distributed.rank, len(view), distributed.world_size)
    for index in tqdm(indices, desc="statistics", unit="track", disable=not progress, leave=False):
        mixture, _ = view[index]
        mixture = _pad_for_stft(mixture[None].double(), n_fft)  # a track shorter than a frame
        frames = spectrogram(mixture)[0, 0]  # (nb_bins, nb_frames)
        deviations = frames - frames.mean(1, keepdim=True)
        track = (frames.shape[1], frames.mean(1), deviations.square().sum(1))
        count, mean, m2 = _merge_moments((count, mean, m2), track)
    if distributed.enabled:
        local = torch.cat([torch.tensor([float(count)], dtype=torch.float64), mean, m2])
        count, mean, m2 = 0, zeros, zeros
        for part in distributed.all_gather(local):
            count, mean, m2 = _merge_moments(
                (count, mean, m2), (int(part[0]), part[1 : 1 + nb_bins], part[1 + nb_bins :])
            )
    std = (m2 / count).sqrt() if count else m2
    if float(std.max()) == 0:
        raise UmxError("the training data is silent: its magnitudes do not vary")
    return mean, std.clamp(min=STD_FLOOR * float(std.max()))


def _merge_moments(
    a: tuple[int, Tensor, Tensor], b: tuple[int, Tensor, Tensor]
) -> tuple[int, Tensor, Tensor]:
    """Merge (count, mean, sum of squared deviations) of two sets of frames."""
    count = a[0] + b[0]
    if a[0] == 0 or b[0] == 0:
        return b if a[0] == 0 else a
    delta = b[1] - a[1]
    mean = a[1] + delta * (b[0] / count)
    return count, mean, a[2] + b[2] + delta**2 * (a[0] * b[0] / count)


# --- one epoch --------------------------------------------------------------------------------


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    spectrogram: Spectrogram,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    distributed: Distributed | None = None,
    progress: bool = True,
) -> float:
    """One pass over the training data: MSE between estimated and true target magnitudes.

    Args:
        model: the target model (possibly DistributedDataParallel-wrapped), magnitudes
            `(nb_samples, nb_channels, nb_bins, nb_frames)` in and out.
        loader: batches of `(mixture, target)`, `(nb_samples, nb_channels, nb_timesteps)` each.
        spectrogram: waveforms → magnitudes.
        optimizer: updated after every batch.
        device: where the model is.
        distributed: this process's place in a distributed run.
        progress: show a progress bar.

    Returns:
        the mean training loss over all samples of all processes.
    """
    distributed = distributed or Distributed()
    model.train()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, sample count
    bar = tqdm(loader, desc="batches", unit="batch", disable=not progress, leave=False)
    for mixture, target in bar:
        mixture, target = mixture.to(device), target.to(device)
        optimizer.zero_grad()
        loss = F.mse_loss(model(spectrogram(mixture)), spectrogram(target))
        loss.backward()
        optimizer.step()
        total += torch.stack(
            [loss.detach().double() * len(mixture), total.new_tensor(len(mixture))]
        )
        if progress:
            bar.set_postfix(loss=f"{float(total[0] / total[1]):.4g}")
    total = distributed.all_sum(total)
    return float(total[0] / total[1])


@torch.no_grad()
def validate(
    model: OpenUnmix,
    dataset: UnmixDataset | Subset,
    spectrogram: Spectrogram,
    device: torch.device,
    *,
    segment: int,
    distributed: Distributed | None = None,
) -> float:
    """Validation loss: MSE of the target magnitudes over whole tracks, in bounded memory.

    Each track stays on the host and goes through the model `segment` samples at a time
    (the last piece joins the previous one when shorter than the STFT), so memory does not grow
    with the track's length. The loss is the mean over all frames and bins of all tracks of all
    processes.

    Args:
        model: the target model, unwrapped.
        dataset: `(mixture, target)` pairs, `(nb_channels, nb_timesteps)` each.
        spectrogram: waveforms → magnitudes.
        device: where the model is.
        segment: samples per forward pass.
        distributed: this process's place in a distributed run.

    Returns:
        the validation loss.
    """
    distributed = distributed or Distributed()
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # squared error sum, count
    for index in range(len(dataset)):
        mixture, target = dataset[index]
        for start, stop in _segments(mixture.shape[-1], segment, spectrogram.n_fft):
            pieces = [
                _pad_for_stft(audio[None, :, start:stop].to(device), spectrogram.n_fft)
                for audio in (mixture, target)
            ]
            estimate = model(spectrogram(pieces[0]))
            truth = spectrogram(pieces[1])
            total += torch.stack(
                [(estimate - truth).double().square().sum(), total.new_tensor(truth.numel())]
            )
    total = distributed.all_sum(total)
    if total[1] == 0:
        raise UmxError("the validation set is empty")
    return float(total[0] / total[1])


def _segments(nb_timesteps: int, segment: int, n_fft: int) -> list[tuple[int, int]]:
    bounds = [*range(0, nb_timesteps, segment), nb_timesteps]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < n_fft:
        del bounds[-2]
    return list(itertools.pairwise(bounds))


def _pad_for_stft(audio: Tensor, n_fft: int) -> Tensor:
    """Zero-pad audio too short for the STFT's reflect padding."""
    missing = n_fft // 2 + 1 - audio.shape[-1]
    return F.pad(audio, (0, missing)) if missing > 0 else audio


# --- run state --------------------------------------------------------------------------------


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not decreased for `patience` epochs."""

    patience: int
    best: float = math.inf
    num_bad_epochs: int = 0

    def step(self, loss: float) -> bool:
        """Record an epoch's validation loss; returns whether it is a new best."""
        if loss < self.best:
            self.best, self.num_bad_epochs = loss, 0
            return True
        self.num_bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.num_bad_epochs >= self.patience


@dataclass
class History:
    """Per-epoch records, saved in `<target>.json` and the checkpoint."""

    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    best_epoch: int = 0


# --- the run ----------------------------------------------------------------------------------


def run_training(args: argparse.Namespace) -> int:
    """Train one target model as `args` say (see `add_train_arguments`). Returns 0.

    Raises:
        UmxError: bad options or data, or an output directory holding another run.
    """
    distributed = Distributed.from_env()
    if not distributed.is_main:
        logging.getLogger("umx").setLevel(logging.WARNING)  # rank 0 speaks for all
    elif args.debug:
        logging.getLogger("umx").setLevel(logging.DEBUG)
    device = resolve_device(args.device or DEFAULTS["device"], distributed.local_rank)
    if distributed.enabled:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        logger.info("training on %d processes (%s)", distributed.world_size, dist.get_backend())
    try:
        Trainer(args, distributed, device).run()
        if distributed.enabled:
            dist.barrier()  # no rank tears gloo down while another still talks to it
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        raise UmxError(
            f"{device} ran out of memory: lower --batch-size, --seq-dur or --hidden-size"
        ) from None
    finally:
        if distributed.enabled:
            dist.destroy_process_group()
    return 0


def _out_of_memory(error: BaseException) -> bool:
    """Whether an error is an allocation failure (torch reports the CPU's as RuntimeError)."""
    text = str(error)
    return (
        isinstance(error, MemoryError | torch.OutOfMemoryError)
        or "can't allocate memory" in text
        or "out of memory" in text
    )


class Trainer:
    """One training run: set-up from options, the epoch loop and the outputs."""

    def __init__(
        self, args: argparse.Namespace, distributed: Distributed, device: torch.device
    ) -> None:
        self.distributed = distributed
        self.device = device
        self.progress = distributed.is_main and not args.quiet
        self.bars = self.progress and sys.stderr.isatty()  # a log file gets lines, not bars
        if importlib.util.find_spec("matplotlib") is None:
            raise UmxError("umx train draws its loss curve with matplotlib: pip install umx[train]")
        checkpoint = _read_checkpoint(args, device) if args.checkpoint is not None else None
        self.config = config = resolve_options(args, checkpoint)
        self.output = Path(config.output)
        self.target = config.target
        self.train_set, self.valid_set = make_datasets(config)
        self.sample_rate = self.train_set.sample_rate
        if self.valid_set.sample_rate != self.sample_rate:
            raise UmxError(
                f"the validation data of {config.root} is at {self.valid_set.sample_rate:g} Hz, "
                f"the training data at {self.sample_rate:g} Hz"
            )
        if checkpoint is not None and checkpoint["sample_rate"] != self.sample_rate:
            raise UmxError(
                f"the checkpoint was trained at {checkpoint['sample_rate']:g} Hz but the data of "
                f"{config.root} is at {self.sample_rate:g} Hz"
            )
        given = {key: getattr(args, key) for key in ARCHITECTURE if getattr(args, key) is not None}
        pretrained = None
        if config.model is not None and checkpoint is None:
            pretrained = self._pretrained_model(given)
        excerpt = round(config.seq_dur * self.sample_rate)
        if excerpt < config.nfft:
            raise UmxError(
                f"--seq-dur {config.seq_dur:g} is {excerpt} samples at {self.sample_rate:g} Hz, "
                f"shorter than one STFT frame of --nfft {config.nfft}: use at least "
                f"{math.ceil(1000 * config.nfft / self.sample_rate) / 1000:g} s"
            )
        if distributed.is_main:
            _check_output(self.output, self.target, config, self.sample_rate, checkpoint)

        seed_everything(config.seed, 0)
        if checkpoint is not None:
            self.model = _checkpoint_part(
                config, lambda: infer_architecture(checkpoint["model"]).build()
            )
        else:
            self.model = pretrained or self._new_model()
        self.model.to(device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            factor=config.lr_decay_gamma,
            patience=config.lr_decay_patience,
            cooldown=LR_COOLDOWN,
        )
        self.stopper = EarlyStopping(config.patience)
        self.history = History()
        self.epoch = 0
        self.best_state = _cpu_state(self.model)
        if checkpoint is not None:
            _checkpoint_part(config, lambda: self._restore(checkpoint))
        self.spectrogram = Spectrogram(config.nfft, config.nhop)

    def _new_model(self) -> OpenUnmix:
        """A model of the options, its input scaling set from the training statistics."""
        config = self.config
        mean = scale = None
        if not config.debug:
            if self.progress and not self.bars:
                nb_items = len(self.train_set.eval_view())
                logger.info("computing the input statistics over %d training items", nb_items)
            mean, scale = compute_statistics(
                self.train_set,
                config.nfft,
                config.nhop,
                distributed=self.distributed,
                progress=self.bars,
            )
        return OpenUnmix(
            nb_bins=config.nfft // 2 + 1,
            nb_channels=config.nb_channels,
            hidden_size=config.hidden_size,
            nb_layers=NB_LAYERS,
            unidirectional=config.unidirectional,
            input_mean=mean,
            input_scale=scale,
            max_bin=bandwidth_to_max_bin(self.sample_rate, config.nfft, config.bandwidth),
        )

    def _pretrained_model(self, given: dict[str, Any]) -> OpenUnmix:
        """The `--model` target to fine-tune. The options of the model are set from it; those
        `given` on the command line must agree."""
        config = self.config
        separator = load_separator(config.model, targets=[self.target], niter=0, progress=self.bars)
        if separator.sample_rate != self.sample_rate:
            raise UmxError(
                f"{config.model} works at {separator.sample_rate:g} Hz but the data of "
                f"{config.root} is at {self.sample_rate:g} Hz"
            )
        model = separator.target_models[self.target]
        found = {
            "nfft": separator.n_fft,
            "nhop": separator.n_hop,
            "nb_channels": separator.nb_channels,
            "hidden_size": model.hidden_size,
            "unidirectional": model.unidirectional,
            "bandwidth": (model.nb_bins - 1) * self.sample_rate / separator.n_fft,
        }
        for key, value in found.items():
            same = (
                bandwidth_to_max_bin(self.sample_rate, found["nfft"], given[key]) == model.nb_bins
                if key == "bandwidth" and key in given
                else given.get(key, value) == value
            )
            if not same:
                raise UmxError(
                    f"--{key.replace('_', '-')} {given[key]} differs from {config.model}'s "
                    f"{value}: fine-tuning keeps the model"
                )
            setattr(config, key, value)
        logger.info("fine-tuning %s of %s", self.target, config.model)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model.train()

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        """Take the state of `checkpoint`.

        Raises:
            ValueError, KeyError, TypeError, RuntimeError: it does not fit this run.
        """
        numbers = (int, float)
        stopping, history = checkpoint["early_stopping"], checkpoint["history"]
        if not (
            isinstance(checkpoint["epoch"], int)
            and checkpoint["epoch"] >= 0
            and isinstance(stopping.get("best"), numbers)
            and isinstance(stopping.get("num_bad_epochs"), int)
            and isinstance(history.get("best_epoch"), int)
            and all(
                isinstance(history.get(key), list)
                and len(history[key]) == checkpoint["epoch"]
                and all(isinstance(value, numbers) for value in history[key])
                for key in ("train_loss", "valid_loss", "lr", "epoch_time")
            )
        ):
            raise ValueError("its epoch, early-stopping state or history is inconsistent")
        if infer_architecture(checkpoint["best_model"]) != infer_architecture(checkpoint["model"]):
            raise ValueError("its best and current models differ in shape")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.stopper = EarlyStopping(**checkpoint["early_stopping"])
        self.stopper.patience = self.config.patience
        self.history = History(**checkpoint["history"])
        self.best_state = checkpoint["best_model"]
        self.epoch = checkpoint["epoch"]
        logger.info("resuming %s after epoch %d", self.config.checkpoint or self.output, self.epoch)

    def run(self) -> None:
        config, distributed = self.config, self.distributed
        if self.stopper.should_stop or self.epoch >= config.epochs:
            logger.info("training already finished after %d epochs", self.epoch)
            if distributed.is_main:  # a run killed while writing its last epoch: complete it
                self._write_outputs()
            return
        sampler = DistributedSampler(
            self.train_set,
            num_replicas=distributed.world_size,
            rank=distributed.rank,
            shuffle=True,
            seed=config.seed,
        )
        loader = DataLoader(
            self.train_set,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.nb_workers,
            pin_memory=self.device.type == "cuda",
        )
        valid_share = Subset(
            self.valid_set, range(distributed.rank, len(self.valid_set), distributed.world_size)
        )
        model: torch.nn.Module = self.model
        if distributed.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(self.model, device_ids=device_ids)
        segment = round(VALID_SEGMENT * self.sample_rate)

        epochs = tqdm(
            range(self.epoch + 1, config.epochs + 1),
            desc="epochs",
            unit="epoch",
            initial=self.epoch,
            total=config.epochs,
            disable=not self.bars,
        )
        for epoch in epochs:
            started = time.monotonic()
            seed_everything(config.seed, epoch, distributed.rank)
            sampler.set_epoch(epoch)
            train_loss = train_epoch(
                model,
                loader,
                self.spectrogram,
                self.optimizer,
                self.device,
                distributed=distributed,
                progress=self.bars,
            )
            if not math.isfinite(train_loss):
                raise UmxError(
                    f"the training loss is {train_loss} in epoch {epoch}; try a lower --lr"
                )
            valid_loss = validate(
                self.model,
                valid_share,
                self.spectrogram,
                self.device,
                segment=segment,
                distributed=distributed,
            )
            self.scheduler.step(valid_loss)
            best = self.stopper.step(valid_loss)
            if best:
                self.best_state = _cpu_state(self.model)
                self.history.best_epoch = epoch
            seconds = time.monotonic() - started
            self.history.train_loss.append(train_loss)
            self.history.valid_loss.append(valid_loss)
            self.history.lr.append(self.optimizer.param_groups[0]["lr"])
            self.history.epoch_time.append(seconds)
            self.epoch = epoch
            if self.bars:
                epochs.set_postfix(train=f"{train_loss:.4g}", valid=f"{valid_loss:.4g}")
            elif self.progress:  # a log file: one line per epoch instead of bars
                logger.info(
                    "epoch %d/%d: train loss %.6g, valid loss %.6g%s, %.1f s",
                    epoch,
                    config.epochs,
                    train_loss,
                    valid_loss,
                    " (best)" if best else "",
                    seconds,
                )
            if distributed.is_main:
                self._write_outputs()
            if self.stopper.should_stop:
                logger.info("early stopping after epoch %d", epoch)
                break
        epochs.close()
        logger.info(
            "best validation loss %.6g in epoch %d; model in %s",
            self.stopper.best,
            self.history.best_epoch,
            self.output,
        )

    def _write_outputs(self) -> None:
        """Write the checkpoint, then the best model, its json, separator.json and the curve.

        The checkpoint goes first, each file atomically: a run killed at any moment leaves a
        directory whose `<target>.chkpnt` holds the latest completed epoch, so that it can
        always be resumed with `--checkpoint` (the other files are written again from it).
        """
        config = self.config
        self.output.mkdir(parents=True, exist_ok=True)
        torch_save_atomic(
            {
                "epoch": self.epoch,
                "args": _json_options(config),
                "sample_rate": self.sample_rate,
                "model": _cpu_state(self.model),
                "best_model": self.best_state,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "early_stopping": asdict(self.stopper),
                "history": asdict(self.history),
            },
            self.output / f"{self.target}{CHECKPOINT_SUFFIX}",
        )
        best = infer_architecture(self.best_state).build()
        best.load_state_dict(self.best_state)
        history = self.history
        save_target_model(
            best,
            self.output,
            self.target,
            sample_rate=self.sample_rate,
            n_fft=config.nfft,
            n_hop=config.nhop,
            args=_json_options(config),
            metadata={
                "epochs_trained": self.epoch,
                "best_epoch": history.best_epoch,
                "best_loss": self.stopper.best,
                "num_bad_epochs": self.stopper.num_bad_epochs,
                "stopped_early": self.stopper.should_stop,
                "train_loss_history": history.train_loss,
                "valid_loss_history": history.valid_loss,
                "lr_history": history.lr,
                "train_time_history": history.epoch_time,
                "versions": {
                    "umx": __version__,
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                },
            },
        )
        write_json_atomic(
            self.output / SEPARATOR_JSON,
            _separator_config(self.output, self.target, config, self.sample_rate),
        )
        plot_history(history, self.output / f"{self.target}{CURVE_SUFFIX}", self.target)


def _checkpoint_part(config: argparse.Namespace, use: Callable[[], Any]) -> Any:
    """Run `use`, which reads the checkpoint; a checkpoint that does not fit is a user error."""
    try:
        return use()
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as error:
        path = Path(config.checkpoint) / f"{config.target}{CHECKPOINT_SUFFIX}"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UmxError(f"{path} is a damaged checkpoint ({reason[:200]})") from None


def _cpu_state(model: torch.nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


def _json_options(config: argparse.Namespace) -> dict[str, Any]:
    """The run's options as JSON values (paths as strings)."""
    return {
        key: str(value) if isinstance(value, Path) else value for key, value in vars(config).items()
    }


def _read_checkpoint(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Load `<target>.chkpnt` from the `--checkpoint` directory.

    Raises:
        UmxError: no such checkpoint, an unreadable one, or one of another target.
    """
    directory = Path(args.checkpoint)
    if not directory.is_dir():
        raise UmxError(f"{directory} does not exist or is not a directory")
    found = sorted(
        path.name[: -len(CHECKPOINT_SUFFIX)] for path in directory.glob(f"*{CHECKPOINT_SUFFIX}")
    )
    target = args.target
    models = sorted(
        path.name[: -len(WEIGHTS_SUFFIX)] for path in directory.glob(f"*{WEIGHTS_SUFFIX}")
    )
    if target is None and not found and models:
        raise UmxError(
            f"{directory} holds no checkpoint to resume: its {', '.join(models)} model"
            f"{'s have' if len(models) > 1 else ' has'} none (train again with --output "
            f"{directory} --force to overwrite it)"
        )
    if target is None:
        if len(found) != 1:
            names = ", ".join(found) or "none"
            raise UmxError(
                f"{directory} must hold exactly one checkpoint to resume without --target "
                f"(it holds {names})"
            )
        target = found[0]
    path = directory / f"{target}{CHECKPOINT_SUFFIX}"
    if not path.is_file():
        if target in models:
            raise UmxError(
                f"{path} does not exist: the {target} model in {directory} has no checkpoint "
                f"to resume (train again with --output {directory} --force to overwrite it)"
            )
        names = ", ".join(found) or "none"
        raise UmxError(f"{path} does not exist: {directory} holds checkpoints of {names}")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a damaged file fails in many ways: all mean unreadable
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UmxError(f"{path} is not a readable checkpoint ({reason})") from None
    keys = ("epoch", "args", "sample_rate", "model", "best_model", "optimizer", "scheduler")
    keys += ("early_stopping", "history")
    if (
        not isinstance(checkpoint, dict)
        or not all(key in checkpoint for key in keys)
        or not isinstance(checkpoint["args"], dict)
    ):
        raise UmxError(f"{path} is not a umx training checkpoint")
    if checkpoint["args"].get("target") != target:
        raise UmxError(
            f"{path} is a checkpoint of target {checkpoint['args'].get('target')!r}, not {target!r}"
        )
    return checkpoint


def _check_output(
    output: Path,
    target: str,
    config: argparse.Namespace,
    sample_rate: float,
    checkpoint: dict[str, Any] | None,
) -> None:
    """Refuse an output directory holding another run of the same target, or another STFT.

    Raises:
        UmxError: unless `--force` is given or the run resumes from this very directory.
    """
    if output.exists() and not output.is_dir():
        raise UmxError(f"{output} is a file, not a directory")
    resuming_here = checkpoint is not None and output.resolve() == Path(config.checkpoint).resolve()
    ours = [
        path.name
        for suffix in (CHECKPOINT_SUFFIX, WEIGHTS_SUFFIX, ".json")
        if (path := output / f"{target}{suffix}").exists()
    ]
    if ours and not (resuming_here or config.force):
        # The checkpoint is written first: a run killed at any moment leaves one to resume.
        if (output / f"{target}{CHECKPOINT_SUFFIX}").exists():
            remedy = f"use --checkpoint {output} to resume it or --force to overwrite it"
        else:
            remedy = "it has no checkpoint to resume: use --force to overwrite it"
        raise UmxError(
            f"{output} already holds a {target} model of another run ({', '.join(ours)}); {remedy}"
        )
    existing = _read_separator_json(output / SEPARATOR_JSON)
    if existing is not None and not config.force:
        wanted = _separator_config(output, target, config, sample_rate)
        different = [
            key
            for key in ("sample_rate", "nfft", "nhop", "nb_channels")
            if key in existing and existing[key] != wanted[key]
        ]
        if different:
            key = different[0]
            raise UmxError(
                f"{output / SEPARATOR_JSON} says {key} {existing[key]} but this run has "
                f"{wanted[key]}: train into another --output (or use --force)"
            )


def _read_separator_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UmxError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise UmxError(f"{path} does not hold a JSON object")
    return data


def _separator_config(
    output: Path, target: str, config: argparse.Namespace, sample_rate: float
) -> dict[str, Any]:
    """separator.json for the output directory; an existing `targets` list gains `target`."""
    existing = _read_separator_json(output / SEPARATOR_JSON) or {}
    data = {
        "sample_rate": float(sample_rate),
        "nfft": config.nfft,
        "nhop": config.nhop,
        "nb_channels": config.nb_channels,
    }
    targets = existing.get("targets")
    if isinstance(targets, list):
        data["targets"] = targets if target in targets else [*targets, target]
    return data


def plot_history(history: History, path: Path, target: str) -> None:
    """Write the training and validation loss curves as a PNG, atomically."""
    buffer = io.BytesIO()
    loss_figure(history, target).savefig(buffer, format="png", dpi=100)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, path)


def loss_figure(history: History, target: str) -> Figure:
    """The loss curves: whole epochs on the x axis, plain numbers on the (log) loss axis."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.add_subplot()
    epochs = range(1, len(history.train_loss) + 1)
    marker = "." if len(epochs) <= 30 else None  # few epochs: show each
    axes.plot(epochs, history.train_loss, marker=marker, label="training")
    axes.plot(epochs, history.valid_loss, marker=marker, label="validation")
    if history.best_epoch:
        axes.axvline(history.best_epoch, color="gray", linestyle=":", label="best")
    axes.set(xlabel="epoch", ylabel="loss (MSE)", title=f"{target}: loss")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    losses = [v for v in (*history.train_loss, *history.valid_loss) if math.isfinite(v) and v > 0]
    ticks = loss_ticks(min(losses), max(losses)) if losses else None
    if ticks is not None:
        axes.set_yscale("log")
        axes.set_yticks(ticks)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(NullFormatter())
        margin = (max(losses) / min(losses)) ** 0.05
        axes.set_ylim(min(losses) / margin, max(losses) * margin)
    else:
        axes.ticklabel_format(axis="y", useOffset=False)
    axes.legend()
    return figure


def loss_ticks(low: float, high: float) -> list[float] | None:
    """Ticks of a log loss axis from `low` to `high` (positive): round numbers, 3 to 12 of them.

    The coarsest of the series 1, 10, 100... (every other decade if that is too many),
    1, 2, 5, 10... and 1, 2, 3, 4, 6, 8, 10... that puts at least 3 ticks in the range.

    Returns:
        the ticks, or None when the range is too narrow for a log axis to help (a linear axis
        then reads better).
    """
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 4, 6, 8)):
        ticks = [float(f"{m}e{e}") for e in range(first, last + 1) for m in mantissas]
        ticks = [t for t in ticks if low <= t <= high]
        if mantissas == (1,) and len(ticks) > 12:
            ticks = ticks[:: math.ceil(len(ticks) / 12)]
        if len(ticks) >= 3:
            return ticks
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m umx.train`: the same as `umx train`. Returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m umx.train", description="Train an Open-Unmix target model."
    )
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="umx: %(message)s"
    )
    try:
        return run_training(args)
    except UmxError as error:
        logger.error("error: %s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
