"""Resampling with soxr, of a whole signal or block by block, with the same output."""

from __future__ import annotations

import math

import numpy as np
import soxr
import torch

RESAMPLE_QUALITY = "VHQ"
"""soxr quality recipe used by :func:`resample`."""


def resample(audio: torch.Tensor, orig_rate: float, new_rate: float) -> torch.Tensor:
    """Resamples with soxr at very high quality.

    Args:
        audio: shape ``(..., nb_timesteps)``, float32 or float64.
        orig_rate: its sample rate.
        new_rate: the rate wanted.

    Returns:
        Shape ``(..., floor(nb_timesteps * new_rate / orig_rate + ½))``, same dtype and device;
        ``audio`` itself when the rates are equal.

    Raises:
        ValueError: a rate is not finite and positive (soxr spins forever on NaN).
    """
    _check_rates(orig_rate, new_rate)
    if orig_rate == new_rate:
        return audio
    if audio.shape[-1] == 0:  # soxr takes no empty signal
        return audio.new_zeros((*audio.shape[:-1], 0))
    frames = np.ascontiguousarray(audio.detach().cpu().reshape(-1, audio.shape[-1]).numpy().T)
    resampled = soxr.resample(frames, orig_rate, new_rate, quality=RESAMPLE_QUALITY)
    resampled = torch.from_numpy(np.ascontiguousarray(resampled.T)).to(audio.device)
    return resampled.reshape(*audio.shape[:-1], -1)


def _check_rates(orig_rate: float, new_rate: float) -> None:
    """Refuse rates that are not finite and positive, with a ValueError (a caller's bug)."""
    if not (0 < orig_rate < math.inf and 0 < new_rate < math.inf):
        raise ValueError(
            f"sample rates must be finite and positive, not {orig_rate} and {new_rate}"
        )


def _resampled_length(nb_timesteps: int, orig_rate: float, new_rate: float) -> int:
    """The length soxr gives a whole signal: ``floor(nb_timesteps * new_rate / orig_rate + ½)``."""
    return int(nb_timesteps * new_rate / orig_rate + 0.5)


class StreamResampler:
    """Resamples a signal block by block, as :func:`resample` does the whole signal.

    Wraps ``soxr.ResampleStream`` with the quality of :func:`resample`. The concatenation of
    what :meth:`process` returns for each block and of what :meth:`flush` returns at the end
    equals :func:`resample` of the whole signal, in values and in length. The filter delays the
    output: a block's output covers less time than the block until :meth:`flush`.

    Args:
        orig_rate: the blocks' sample rate.
        new_rate: the rate wanted.
        nb_channels: the channel count of every block.
    """

    def __init__(self, orig_rate: float, new_rate: float, nb_channels: int) -> None:
        _check_rates(orig_rate, new_rate)
        self.orig_rate, self.new_rate, self.nb_channels = orig_rate, new_rate, nb_channels
        self._stream: soxr.ResampleStream | None = None
        self._dtype, self._device = torch.float32, torch.device("cpu")
        self._nb_in = self._nb_out = 0

    def process(self, block: torch.Tensor) -> torch.Tensor:
        """Resamples the next block.

        Args:
            block: shape ``(nb_channels, nb_block)``, float32 or float64, on any device.

        Returns:
            Shape ``(nb_channels, nb_out)``, same dtype and device; ``nb_out`` may be 0.
        """
        if block.ndim != 2 or block.shape[0] != self.nb_channels:
            raise ValueError(
                f"expected a block of shape ({self.nb_channels}, nb_block), "
                f"got {tuple(block.shape)}"
            )
        self._dtype, self._device = block.dtype, block.device
        self._nb_in += block.shape[1]
        if self.orig_rate == self.new_rate:
            self._nb_out += block.shape[1]
            return block
        if self._stream is None:
            dtype = "float64" if block.dtype == torch.float64 else "float32"
            self._stream = soxr.ResampleStream(
                self.orig_rate, self.new_rate, self.nb_channels, dtype, RESAMPLE_QUALITY
            )
        frames = block.detach().cpu().numpy().T
        return self._output(self._stream.resample_chunk(np.ascontiguousarray(frames)))

    def flush(self, length: int | None = None) -> torch.Tensor:
        """The rest of the output, once every block was processed.

        Args:
            length: the total output length wanted, the rest padded with zeros or cut to it
                (a signal resampled there and back may come back a sample short or long, and
                is given its original length); ``None`` for that of :func:`resample`.

        Returns:
            Shape ``(nb_channels, nb_out)``: the total output length is then ``length``, or
            that of :func:`resample` on the whole signal (unless more was output already).
        """
        expected = length
        if expected is None:
            expected = _resampled_length(self._nb_in, self.orig_rate, self.new_rate)
        dtype = np.float64 if self._dtype == torch.float64 else np.float32
        rest = np.zeros((0, self.nb_channels), dtype)
        if self._stream is not None:
            rest = self._stream.resample_chunk(rest, last=True)
        # soxr gives the whole signal's length; without `length`, the pad or cut only guards
        # against a drift
        missing = expected - self._nb_out - len(rest)
        if missing > 0:
            rest = np.concatenate([rest, np.zeros((missing, self.nb_channels), rest.dtype)])
        elif missing < 0:
            rest = rest[: max(0, len(rest) + missing)]
        return self._output(rest)

    def _output(self, frames: np.ndarray) -> torch.Tensor:
        self._nb_out += len(frames)
        audio = torch.from_numpy(np.ascontiguousarray(frames.T))
        return audio.to(device=self._device, dtype=self._dtype)
