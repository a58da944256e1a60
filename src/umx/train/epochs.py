"""One epoch: a pass of training over the batches, and the validation loss over whole tracks.

Both work on a target model that takes magnitudes `(nb_samples, nb_channels, nb_bins, nb_frames)`
and sum their losses over the processes of a distributed run, so that every process returns the
same figure. `umx.train.loop`'s `Trainer` calls them once per epoch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from umx.data.datasets import UnmixDataset
from umx.errors import UmxError
from umx.model import OpenUnmix
from umx.train.distributed import Distributed
from umx.train.inputs import _pad_for_stft
from umx.transforms import Spectrogram


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    spectrogram: Spectrogram,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    distributed: Distributed | None = None,
    progress: bool = True,
    criterion: Callable[[torch.nn.Module, Tensor, Tensor], Tensor] | None = None,
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
        criterion: the loss of `model` on a batch's `(mixture, target)` instead of the MSE of
            the magnitudes (X-UMX's losses, for example).

    Returns:
        the mean training loss over all samples of all processes.
    """
    distributed = distributed or Distributed()
    model.train()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, sample count
    bar = tqdm(loader, desc="batches", unit="batch", disable=not progress, leave=False)
    try:
        for mixture, target in bar:
            mixture, target = mixture.to(device), target.to(device)
            optimizer.zero_grad()
            if criterion is None:
                loss = F.mse_loss(model(spectrogram(mixture)), spectrogram(target))
            else:
                loss = criterion(model, mixture, target)
            loss.backward()
            optimizer.step()
            total += torch.stack(
                [loss.detach().double() * len(mixture), total.new_tensor(len(mixture))]
            )
            if progress:
                bar.set_postfix(loss=f"{float(total[0] / total[1]):.4g}")
    except UmxError as error:  # a data error, maybe in a DataLoader worker (--nb-workers)
        raise UmxError(worker_error_message(error)) from None
    total = distributed.all_sum(total)
    return float(total[0] / total[1])


def worker_error_message(error: Exception) -> str:
    """The message of an error raised in a DataLoader worker process: torch raises it again in
    the main process with the worker's traceback as its message ("Caught UmxError in
    DataLoader worker process 0. Original Traceback ... umx.errors.UmxError: MESSAGE"), and
    only MESSAGE is meant for the user. Any other error's message is returned as it is."""
    text = str(error)
    name = f"{type(error).__module__}.{type(error).__qualname__}: "
    head, found, message = text.rpartition(name)
    return message.strip() if found and "Original Traceback" in head else text


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
