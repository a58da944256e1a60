"""Time-frequency transforms: STFT, inverse STFT and magnitude.

All transforms use a periodic Hann window, `center=True` (reflect padding) and one-sided spectra,
as the Open-Unmix separator does. The same settings serve training and separation. Streaming
uses non-centred frames (`stft(..., center=False)`), inverted piece by piece by `istft_frames`.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from umx.errors import UmxError

N_FFT = 4096
N_HOP = 1024
BANDWIDTH = 16000.0


MAX_N_FFT = 2**16
"""The largest STFT size taken (1.5 s at 44.1 kHz; Open-Unmix uses 4096): a model directory's
or an option's n_fft of 10**8 would take minutes and gigabytes to check, then to build."""
MAX_OVERLAP = 16
"""The most STFT frames that may overlap (`n_fft / n_hop`): Open-Unmix's models use 4 (a hop of
1024 for an n_fft of 4096) and umxse 2 (512 for 1024). Each frame costs a pass of the model, so a
hop of 1 would make a frame per sample: separating 2 s would take minutes."""
NOLA_TOLERANCE = 1e-11
"""Smallest summed squared window the inverse STFT divides by (torch.istft's own bound)."""


def check_stft(n_fft: object, n_hop: object) -> None:
    """Refuse STFT settings that cannot be inverted, or whose hop is absurdly short.

    The inverse STFT divides the overlap-added frames by the summed squared windows; where that
    sum vanishes (the NOLA condition fails, e.g. a hop as long as the window, whose periodic Hann
    starts at 0) samples cannot be recovered and would come out as NaN.

    Hops shorter than `n_fft / MAX_OVERLAP` are refused too: they only multiply the work.

    Raises:
        UmxError: `n_fft` or `n_hop` is not a positive whole number, the pair fails NOLA, or
            the hop is below `n_fft / MAX_OVERLAP`.
    """
    for name, value in (("n_fft", n_fft), ("n_hop", n_hop)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UmxError(f"the STFT {name} must be a positive whole number, not {value!r}")
    if not 2 <= n_fft <= MAX_N_FFT:
        raise UmxError(f"the STFT size n_fft must be from 2 to {MAX_N_FFT}, not {n_fft}")
    if n_hop > n_fft or _smallest_envelope(n_fft, n_hop) < NOLA_TOLERANCE:
        raise UmxError(
            f"an STFT hop of {n_hop} with n_fft {n_fft} cannot be inverted: the windows do not "
            "overlap enough (use a hop of at most n_fft // 2, e.g. n_fft // 4)"
        )
    if n_hop * MAX_OVERLAP < n_fft:
        raise UmxError(
            f"an STFT hop of {n_hop} with n_fft {n_fft} is too short: umx takes hops down to "
            f"n_fft / {MAX_OVERLAP} (Open-Unmix uses n_fft / 4)"
        )


@functools.cache
def _smallest_envelope(n_fft: int, n_hop: int) -> float:
    """The smallest sum of the periodic Hann window's squares over the frames that overlap a
    sample (plain Python: the check also runs where tensors have no values, e.g. on the meta
    device; cached, as every inverse STFT checks its settings)."""
    squares = [math.sin(math.pi * n / n_fft) ** 4 for n in range(n_fft)]
    return min(sum(squares[k::n_hop]) for k in range(n_hop))


def _window(n_fft: int, like: Tensor) -> Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=like.real.dtype, device=like.device)


def stft(audio: Tensor, n_fft: int = N_FFT, n_hop: int = N_HOP, center: bool = True) -> Tensor:
    """Short-time Fourier transform of multichannel audio.

    Args:
        audio: waveforms, `(..., nb_timesteps)`, e.g. `(nb_samples, nb_channels, nb_timesteps)`;
            `nb_timesteps` must exceed `n_fft // 2` (reflect padding), or with `center=False`
            be at least `n_fft`.
        center: frame `k` centred on sample `k * n_hop` of the audio reflected at its ends;
            if False, frame `k` spans samples `k * n_hop` to `k * n_hop + n_fft - 1`, and only
            frames that end within the audio are computed.

    Returns:
        complex spectrogram, `(..., nb_bins, nb_frames)` with `nb_bins = n_fft // 2 + 1` and
        `nb_frames = nb_timesteps // n_hop + 1`, or `(nb_timesteps - n_fft) // n_hop + 1`
        with `center=False`.
    """
    shape = audio.shape
    spec = torch.stft(
        audio.reshape(-1, shape[-1]),
        n_fft=n_fft,
        hop_length=n_hop,
        window=_window(n_fft, audio),
        center=center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return spec.reshape(*shape[:-1], *spec.shape[-2:])


def istft(spec: Tensor, length: int, n_fft: int = N_FFT, n_hop: int = N_HOP) -> Tensor:
    """Inverse of `stft`: inverse FFT of each frame, windowed overlap-add, and division by the
    summed squared window, as `torch.istft` computes it.

    Frames are inverted one waveform at a time, so the `(nb_frames, n_fft)` frames of only one
    waveform exist at once. The spectra are read with bins innermost: a `spec` that is the
    transposed view of a `(..., nb_frames, nb_bins)` tensor is used without any copy.

    Args:
        spec: complex spectrogram, `(..., nb_bins, nb_frames)`.
        length: number of samples to return, normally the length of the analysed audio.

    Returns:
        waveforms, `(..., length)`.

    Raises:
        UmxError: `n_fft` and `n_hop` cannot be inverted (see `check_stft`).
    """
    check_stft(n_fft, n_hop)
    if n_fft % n_hop:
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
    window = _window(n_fft, spec)
    frames_per_window = n_fft // n_hop
    nb_frames = spec.shape[-1]
    start = n_fft // 2
    stop = min(start + length, n_hop * (nb_frames + frames_per_window - 1))
    summed = window.new_empty(nb_frames + frames_per_window - 1, n_hop)
    envelope = _overlap_add(window.square().expand(nb_frames, n_fft), summed)[start:stop].clone()
    audio = spec.real.new_empty(*spec.shape[:-2], length)
    audio[..., stop - start :] = 0.0  # beyond the last frame, if `length` asks for more
    flat_spec = spec.transpose(-1, -2).reshape(-1, nb_frames, spec.shape[-2])
    for one, out in zip(flat_spec, audio.view(-1, length), strict=True):
        frames = torch.fft.irfft(one, n=n_fft, dim=-1).mul_(window)
        torch.div(_overlap_add(frames, summed)[start:stop], envelope, out=out[: stop - start])
    return audio


def istft_frames(
    spec: Tensor, n_fft: int = N_FFT, n_hop: int = N_HOP, tail: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Inverse of non-centred STFT frames (`stft(..., center=False)`), piece by piece.

    Each frame is inverse transformed and windowed; the frames are overlap-added, after the
    `tail` of the earlier frames, and divided by the steady-state sum of the squared windows that
    overlap each sample (`torch.istft`'s normalisation where every frame covering a sample is
    present). Consecutive pieces of frames, each call given the previous call's tail, give the
    same samples as one call over all the frames.

    Args:
        spec: complex spectra of consecutive frames, `(..., nb_bins, nb_frames)`; the first
            starts `n_hop` samples after the previous piece's last frame.
        tail: what the previous piece's frames add past their last hop, `(..., n_fft -
            n_hop)`, as the previous call returned it; None at the start of a signal.

    Returns:
        the `nb_frames * n_hop` samples from the start of the first frame, which no later frame
        reaches, `(..., nb_frames * n_hop)`, and the new tail, `(..., n_fft - n_hop)`. The
        first `n_fft - n_hop` samples of a signal lack the frames before its start, so only
        those are not the signal itself.

    Raises:
        UmxError: `n_fft` and `n_hop` cannot be inverted (see `check_stft`).
    """
    check_stft(n_fft, n_hop)
    window = _window(n_fft, spec)
    nb_frames = spec.shape[-1]
    lead = spec.shape[:-2]
    frames = torch.fft.irfft(spec.transpose(-1, -2), n=n_fft, dim=-1).mul_(window)
    length = (nb_frames - 1) * n_hop + n_fft
    summed = F.fold(
        frames.reshape(-1, nb_frames, n_fft).transpose(1, 2),
        output_size=(1, length),
        kernel_size=(1, n_fft),
        stride=(1, n_hop),
    ).reshape(*lead, length)
    if tail is not None:
        summed[..., : n_fft - n_hop] += tail
    # The squared windows summed over the frames overlapping each of a hop's n_hop positions.
    squares = F.pad(window.square(), (0, -n_fft % n_hop))
    envelope = squares.view(-1, n_hop).sum(dim=0).repeat(nb_frames)
    done = nb_frames * n_hop
    return summed[..., :done] / envelope, summed[..., done:]


def _overlap_add(frames: Tensor, out: Tensor) -> Tensor:
    """Sum frames `(nb_frames, n_fft)` placed `n_hop` apart into `out`,
    `(nb_frames + n_fft // n_hop - 1, n_hop)` (`n_fft` a multiple of `n_hop`); returns it flat."""
    nb_frames, n_fft = frames.shape
    n_hop = out.shape[1]
    blocks = frames.view(nb_frames, n_fft // n_hop, n_hop)
    out.zero_()
    for k in range(n_fft // n_hop):
        out[k : k + nb_frames] += blocks[:, k]
    return out.view(-1)


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
