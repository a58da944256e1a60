"""What a run trains on: the datasets of its options and the input statistics of the model.

The statistics (per-bin mean and standard deviation of the training magnitudes) set the input
scaling of a new model; processes of a distributed run each take their share of the tracks.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm import tqdm

from umx.audio import seconds_to_frames
from umx.data.augment import Compose
from umx.data.datasets import (
    AlignedDataset,
    FixedSourcesTrackFolderDataset,
    SourcesDataset,
    UnmixDataset,
    VariableSourcesTrackFolderDataset,
)
from umx.data.musdb import MUSDBDataset
from umx.data.sources import SourceFolderDataset
from umx.errors import UmxError
from umx.train.config import MAX_COUNT, TrainConfig
from umx.train.distributed import Distributed
from umx.transforms import Spectrogram

logger = logging.getLogger("umx.train")  # the command's name, not this module's
STD_FLOOR = 1e-4  # the input scale is at least this fraction of the largest one


def make_datasets(
    config: TrainConfig, target: str | None = None
) -> tuple[UnmixDataset, UnmixDataset]:
    """The training and validation datasets of a run's options (a `TrainConfig`); `target` is
    the musdb source they yield as the target (default: the run's target), for an X-UMX run,
    which trains every source."""
    if config.dataset in ("trackfolder_fix", "trackfolder_var"):
        return _track_folder_datasets(config)
    augment, common, train_only, valid_only = _dataset_arguments(config)
    if config.dataset == "musdb":
        files = {"is_wav": config.is_wav, "valid_tracks": config.valid_tracks}
        target = target or config.target
        return (
            MUSDBDataset(
                config.root,
                target,
                split="train",
                augment=augment,
                random_track_mix=config.random_track_mix,
                **files,
                **common,
                **train_only,
            ),
            MUSDBDataset(config.root, target, split="valid", **files, **common, **valid_only),
        )
    if config.dataset == "aligned":
        files = {"input_file": config.input_file, "output_file": config.output_file}
        return (
            AlignedDataset(config.root, "train", **files, **common, **train_only),
            AlignedDataset(config.root, "valid", **files, **common, **valid_only),
        )
    files = {  # sourcefolder
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


def check_epoch(dataset: UnmixDataset | SourcesDataset, samples_per_track: int) -> None:
    """Refuse a training epoch of more than `MAX_COUNT` excerpts: `--samples-per-track` times
    the tracks, each within its own limit, overflowed what torch's sampler shuffles (which was
    then reported as memory running out).

    Raises:
        UmxError: naming --samples-per-track and the most it can be for these tracks.
    """
    nb_items = len(dataset)
    if nb_items <= MAX_COUNT:
        return
    nb_tracks = len(dataset.eval_view())
    raise UmxError(
        f"--samples-per-track {samples_per_track} with {nb_tracks} training tracks makes "
        f"{nb_items} excerpts per epoch, more than {MAX_COUNT}: give at most "
        f"{MAX_COUNT // nb_tracks}"
    )


def cap_excerpts(datasets: tuple[Any, Any], seq_dur: float, n_fft: int) -> None:
    """Shorten the excerpts of a `--seq-dur` longer than the longest track of a dataset to
    that track (`UnmixDataset.longest`, at least one STFT frame), saying so once: past it an
    excerpt is zero padding only, which costs memory (a day of it ran out) and teaches nothing.

    Args:
        datasets: the training and validation datasets (those of whole tracks keep them).
        seq_dur: the `--seq-dur` asked for.
        n_fft: the STFT size, the shortest excerpt.
    """
    train, valid = (d.tracks if isinstance(d, SourcesDataset) else d for d in datasets)
    if cut_excerpts(train, n_fft):
        logger.info(
            "--seq-dur %g is longer than the longest training track: excerpts of %g s, the "
            "rest would be padding",
            seq_dur,
            train.seq_duration,
        )
    cut_excerpts(valid, n_fft)  # sourcefolder validates on excerpts too


def cut_excerpts(dataset: UnmixDataset, minimum: int = 1) -> bool:
    """Shorten `dataset`'s excerpts longer than its longest track (or file) to it, or to
    `minimum` frames if more; returns whether they were."""
    length, longest = dataset.seq_len, max(dataset.longest, minimum)
    if length is None or length <= longest:
        return False
    seconds = longest / dataset.sample_rate
    while seconds_to_frames(seconds, dataset.sample_rate) < longest:  # float rounding
        seconds = math.nextafter(seconds, math.inf)
    dataset.seq_duration = seconds
    return True


def _dataset_arguments(
    config: TrainConfig,
) -> tuple[Compose | None, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """What every dataset takes: the augmentation of the training sources, the arguments of
    both splits, of the training split only and of the validation split only."""
    augment = Compose(config.source_augmentations) if config.source_augmentations else None
    common = {"nb_channels": config.nb_channels}
    train_only = {"seq_duration": config.seq_dur, "samples_per_track": config.samples_per_track}
    return augment, common, train_only, {"seq_duration": None}


def _track_folder_datasets(config: TrainConfig) -> tuple[UnmixDataset, UnmixDataset]:
    """`make_datasets` for the trackfolder_fix and trackfolder_var datasets."""
    augment, common, train_only, valid_only = _dataset_arguments(config)
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
def _pad_for_stft(audio: Tensor, n_fft: int) -> Tensor:
    """Zero-pad audio too short for the STFT's reflect padding."""
    missing = n_fft // 2 + 1 - audio.shape[-1]
    return F.pad(audio, (0, missing)) if missing > 0 else audio
