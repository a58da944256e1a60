"""Time-frequency transforms: STFT, inverse STFT and magnitude.

All transforms use a periodic Hann window, `center=True` (reflect padding) and one-sided spectra,
as the Open-Unmix separator does. The same settings serve training and separation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

N_FFT = 4096
N_HOP = 1024
BANDWIDTH = 16000.0


def _window(n_fft: int, like: Tensor) -> Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=like.real.dtype, device=like.device)


def stft(audio: Tensor, n_fft: int = N_FFT, n_hop: int = N_HOP) -> Tensor:
    """Short-time Fourier transform of multichannel audio.

    Args:
        audio: waveforms, `(..., nb_timesteps)`, e.g. `(nb_samples, nb_channels, nb_timesteps)`;
            `nb_timesteps` must exceed `n_fft // 2` (reflect padding).

    Returns:
        complex spectrogram, `(..., nb_bins, nb_frames)` with `nb_bins = n_fft // 2 + 1` and
        `nb_frames = nb_timesteps // n_hop + 1`.
    """
    shape = audio.shape
    spec = torch.stft(
        audio.reshape(-1, shape[-1]),
        n_fft=n_fft,
        hop_length=n_hop,
        window=_window(n_fft, audio),
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return spec.reshape(*shape[:-1], *spec.shape[-2:])


def istft(spec: Tensor, length: int, n_fft: int = N_FFT, n_hop: int = N_HOP) -> Tensor:
    """Inverse of `stft`.

    Args:
        spec: complex spectrogram, `(..., nb_bins, nb_frames)`.
        length: number of samples to return, normally the length of the analysed audio.

    Returns:
        waveforms, `(..., length)`.
    """
    shape = spec.shape
    audio = torch.istft(
        spec.reshape(-1, *shape[-2:]),
        n_fft=n_fft,
        hop_length=n_hop,
        window=_window(n_fft, spec),
        center=True,
        normalized=False,
        onesided=True,
        length=length,
    )
    return audio.reshape(*shape[:-2], length)


def magnitude(spec: Tensor, mono: bool = False) -> Tensor:
    """Magnitude of a complex spectrogram `(nb_samples, nb_channels, nb_bins, nb_frames)`.

    With `mono`, the channels' magnitudes are averaged into one channel (kept as a dimension).
    """
    mag = spec.abs()
    return mag.mean(dim=1, keepdim=True) if mono else mag


def bandwidth_to_max_bin(sample_rate: float, n_fft: int, bandwidth: float = BANDWIDTH) -> int:
    """Number of STFT bins whose centre frequency is at most `bandwidth` Hz."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    return int((freqs <= bandwidth).sum())


class Spectrogram(nn.Module):
    """Waveforms `(nb_samples, nb_channels, nb_timesteps)` → magnitudes
    `(nb_samples, nb_channels, nb_bins, nb_frames)` (one channel with `mono`)."""

    def __init__(self, n_fft: int = N_FFT, n_hop: int = N_HOP, mono: bool = False) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.n_hop = n_hop
        self.mono = mono

    def forward(self, audio: Tensor) -> Tensor:
        return magnitude(stft(audio, self.n_fft, self.n_hop), mono=self.mono)
