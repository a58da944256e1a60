"""What a training run tells its user: one summary line before the first epoch, each epoch's
line with the time the next epoch and the early-stopping window should take, and on
interruption the command that resumes the run. Only text; the loop decides when to say it."""

from __future__ import annotations

import math
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path

from umx.data.datasets import SourcesDataset, TrackDataset, UnmixDataset
from umx.defaults import AUTO
from umx.errors import display_path
from umx.messages import duration
from umx.train.checkpoints import CHECKPOINT_SUFFIX, EarlyStopping
from umx.train.config import XUMX_NAME

RECENT_EPOCHS = 5
"""Epochs whose mean time predicts the next ones (the first is slower: caches warm up)."""


def data_extent(dataset: UnmixDataset | SourcesDataset) -> tuple[int, float]:
    """How many tracks a dataset holds and their total duration in seconds; for `sourcefolder`
    datasets, the target folder's files."""
    if isinstance(dataset, SourcesDataset):  # every source of a track dataset's items (X-UMX)
        dataset = dataset.tracks
    if isinstance(dataset, TrackDataset):
        infos = [track.files[0] for track in dataset.tracks]
    else:
        infos = dataset.pools[0]
    return len(infos), sum(info.nb_frames for info in infos) / dataset.sample_rate


def count(number: int, noun: str, plural: str | None = None) -> str:
    """`1 track`, `3 tracks`; `plural` where it is not the noun and an s."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def summary(
    *,
    target: str,
    train_set: UnmixDataset,
    valid_set: UnmixDataset,
    device: str,
    nb_parameters: int,
    batch_size: int,
    epochs: int,
    patience: int,
    output: Path,
) -> str:
    """The line said before the first epoch: what is trained on what, where, how long at most.

    Args:
        batch_size: samples per optimiser step, all processes together.
    """
    tracks, seconds = data_extent(train_set)
    valid_tracks, valid_seconds = data_extent(valid_set)
    samples = len(train_set)
    parameters = (
        f"{nb_parameters / 1e6:.3g} M" if nb_parameters >= 1e6 else f"{nb_parameters / 1e3:.3g} k"
    )
    batches = count(math.ceil(samples / batch_size), "batch", "batches")
    return (
        f"training {target} on {device} into {display_path(output)}: {count(tracks, 'track')} "
        f"({duration(seconds)}), {valid_tracks} ({duration(valid_seconds)}) to validate; "
        f"{parameters} parameters; {batches} ({count(samples, 'sample')}) an epoch; at most "
        f"{count(epochs, 'epoch')}, patience {patience}"
    )


def outlook(epoch: int, epochs: int, stopper: EarlyStopping, epoch_times: Sequence[float]) -> str:
    """After `epoch`: how long the next epoch should take and when the run ends if the
    validation loss does not improve (the early-stopping window, or the last epoch if sooner);
    empty when the run ends now."""
    left = min(stopper.patience - stopper.num_bad_epochs, epochs - epoch)
    if left <= 0:
        return ""
    mean = statistics.fmean(epoch_times[-RECENT_EPOCHS:])
    if epoch + left == epochs:
        end = f"last epoch {epochs} in ~{duration(left * mean)}"
    else:
        end = (
            f"early stop after epoch {epoch + left} in ~{duration(left * mean)} unless the "
            "validation loss improves"
        )
    return f"next epoch ~{duration(mean)}, {end}"


def resume_hint(output: Path, target: str, device: str = AUTO) -> str:
    """What to run to go on after an interruption: the command that resumes from the last
    epoch completed once a checkpoint is written (after every epoch), else the same again.
    The options are in the checkpoint, but for those of one invocation: `device` is repeated."""
    if (output / f"{target}{CHECKPOINT_SUFFIX}").is_file():
        words = ["umx", "train", "--checkpoint", str(output)]
        words += ["--target", target] if target != XUMX_NAME else []  # X-UMX: every source
        words += ["--device", device] if device != AUTO else []
        command = display_path(shlex.join(words))
        return f"to resume from the last epoch completed: {command}"
    return "no epoch was completed, so nothing can be resumed: run the same command again"
