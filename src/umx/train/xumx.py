"""`umx train --architecture xumx`: one X-UMX model of every source, in one run.

`XumxTrainer` is the `Trainer` of Open-Unmix with X-UMX's parts: items with every source
(`umx.data.datasets.SourcesDataset`), a `umx.model.CrossUnmix`, the multi-domain and combination
losses (`umx.train.xumx_losses`) in training and validation, and its outputs, each written
atomically after every epoch::

    <output>/
      xumx.chkpnt   the checkpoint a killed run resumes from (`--checkpoint <output>`)
      xumx.pth      the best model, in asteroid's format (`umx --model <output>` separates)
      xumx.json     the options, the loss history and the versions
      xumx_loss.png the loss curves

The sources are the musdb sources (vocals, drums, bass, other) or, for trackfolder_fix, the
stems of `--target-file` and `--interferer-files`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Subset

from umx.data.datasets import SourcesDataset
from umx.defaults import SOURCES
from umx.errors import UmxError
from umx.files import write_json_atomic
from umx.model import CrossUnmix
from umx.train.checkpoints import _json_options
from umx.train.config import XUMX_NAME, TrainConfig
from umx.train.epochs import _segments
from umx.train.inputs import _pad_for_stft, make_datasets
from umx.train.loop import Trainer
from umx.train.plots import CURVE_SUFFIX, plot_history
from umx.train.xumx_losses import TIME_WEIGHT, multi_domain_loss
from umx.transforms import stft
from umx.xumx_checkpoints import save_xumx, xumx_architecture


def source_names(config: TrainConfig) -> list[str]:
    """The sources an X-UMX run trains, in output order (see the module docstring)."""
    if config.dataset == "musdb":
        return list(SOURCES)
    return [Path(name).stem for name in (config.target_file, *config.interferer_files)]


def xumx_loss(
    model: torch.nn.Module,
    mixture: Tensor,
    sources: Tensor,
    *,
    n_fft: int,
    n_hop: int,
    time_weight: float = TIME_WEIGHT,
) -> Tensor:
    """X-UMX's loss on a batch: the multi-domain loss over every target and combination.

    The estimated waveforms are the estimated magnitudes with the mixture's phase (no Wiener
    filter), through a differentiable inverse STFT.

    Args:
        model: a `CrossUnmix` (possibly DistributedDataParallel-wrapped).
        mixture: `(nb_samples, nb_channels, nb_timesteps)`.
        sources: `(nb_samples, nb_targets, nb_channels, nb_timesteps)`, in the model's order.
        n_fft, n_hop: the STFT.
        time_weight: weight of the time-domain term; 0 leaves it out.

    Returns:
        the loss, a scalar.
    """
    mix_stft = stft(mixture, n_fft, n_hop)
    estimates = model(mix_stft.abs())  # (nb_targets, nb_samples, nb_channels, nb_bins, nb_frames)
    truth = sources.transpose(0, 1)  # (nb_targets, nb_samples, nb_channels, nb_timesteps)
    magnitudes = (estimates, stft(truth, n_fft, n_hop).abs())
    if time_weight == 0:
        return multi_domain_loss(magnitudes, None)
    spectra = torch.polar(estimates, mix_stft.angle().expand_as(estimates))
    window = torch.hann_window(n_fft, device=mixture.device, dtype=mixture.dtype)
    waveforms = torch.istft(
        spectra.reshape(-1, *spectra.shape[-2:]),
        n_fft=n_fft,
        hop_length=n_hop,
        window=window,
        center=True,
        length=mixture.shape[-1],
    ).reshape(truth.shape)
    return multi_domain_loss(magnitudes, (waveforms, truth), time_weight=time_weight)


class XumxTrainer(Trainer):
    """The training run of an X-UMX model (see the module docstring)."""

    def _make_datasets(self) -> tuple[SourcesDataset, SourcesDataset]:
        config = self.config
        self.names = source_names(config)
        # The track datasets draw every source; their target is the first one.
        train_set, valid_set = make_datasets(config, self.names[0])
        return SourcesDataset(train_set, self.names), SourcesDataset(valid_set, self.names)

    def _build(self, state: dict[str, Any]) -> CrossUnmix:
        return CrossUnmix(self.names, **xumx_architecture(state, self.names))

    def _new_model(self) -> CrossUnmix:
        return CrossUnmix(self.names, **self._new_model_arguments())

    def criterion(self, model: torch.nn.Module, mixture: Tensor, sources: Tensor) -> Tensor:
        """X-UMX's loss on a batch (see `xumx_loss`)."""
        return xumx_loss(model, mixture, sources, n_fft=self.config.nfft, n_hop=self.config.nhop)

    @torch.no_grad()
    def _validate(self, dataset: Subset, segment: int) -> float:
        """The loss of training, averaged over the validation tracks' segments (as asteroid's
        recipe validates), the segments of each track going through the model one by one."""
        self.model.eval()
        n_fft = self.config.nfft
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, count
        for index in range(len(dataset)):
            mixture, sources = dataset[index]
            for start, stop in _segments(mixture.shape[-1], segment, n_fft):
                pieces = [
                    _pad_for_stft(audio[None, ..., start:stop].to(self.device), n_fft)
                    for audio in (mixture, sources)
                ]
                loss = self.criterion(self.model, *pieces)
                total += torch.stack([loss.double(), total.new_tensor(1.0)])
        total = self.distributed.all_sum(total)
        if total[1] == 0:
            raise UmxError("the validation set is empty")
        return float(total[0] / total[1])

    def _write_outputs(self) -> None:
        """Write the checkpoint, then the best model (asteroid's format), its json and the
        curve, each atomically: a run killed at any moment can be resumed."""
        config = self.config
        self._write_checkpoint()
        best = self._build(self.best_state)
        best.load_state_dict(self.best_state)
        metadata = {"args": _json_options(config), **self._metadata()}
        save_xumx(
            best,
            self.output / f"{XUMX_NAME}.pth",
            sample_rate=self.sample_rate,
            n_fft=config.nfft,
            n_hop=config.nhop,
            infos={"training": metadata},
        )
        write_json_atomic(self.output / f"{XUMX_NAME}.json", metadata)
        plot_history(self.history, self.output / f"{XUMX_NAME}{CURVE_SUFFIX}", XUMX_NAME)
