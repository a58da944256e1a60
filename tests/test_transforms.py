"""STFT, inverse STFT and magnitude."""

import math

import pytest
import torch

from umx.errors import UmxError
from umx.transforms import (
    MAX_OVERLAP,
    Spectrogram,
    check_stft,
    istft,
    istft_frames,
    magnitude,
    stft,
)


@pytest.mark.parametrize("length", [44100, 44100 + 517, 4097])
def test_round_trip_is_perfect(length):
    audio = torch.randn(2, 2, length, dtype=torch.float64)
    spec = stft(audio)
    assert spec.shape == (2, 2, 2049, length // 1024 + 1)
    back = istft(spec, length)
    assert back.shape == audio.shape
    assert (back - audio).abs().max() < 1e-6


def test_round_trip_float32():
    audio = torch.rand(1, 2, 20000) * 2 - 1
    assert (istft(stft(audio), 20000) - audio).abs().max() < 1e-6


def test_sine_peaks_at_its_bin():
    rate, n_fft = 44100, 4096
    k = 100
    freq = k * rate / n_fft
    t = torch.arange(rate, dtype=torch.float64) / rate
    audio = torch.sin(2 * math.pi * freq * t)[None, None]
    mag = magnitude(stft(audio, n_fft, 1024))
    assert mag.shape == (1, 1, 2049, 44)
    assert int(mag[0, 0, :, 20].argmax()) == k
    # periodic Hann: a bin-centred sine of amplitude 1 has magnitude sum(window) / 2 = n_fft / 4
    assert mag[0, 0, k, 20].item() == pytest.approx(n_fft / 4, rel=1e-6)


def test_magnitude_mono_averages_channels():
    spec = stft(torch.randn(1, 2, 5000), 256, 64)
    mono = magnitude(spec, mono=True)
    assert mono.shape == (1, 1, 129, 5000 // 64 + 1)
    torch.testing.assert_close(mono[:, 0], spec.abs().mean(dim=1))


def test_spectrogram_module():
    audio = torch.randn(3, 2, 3000)
    torch.testing.assert_close(Spectrogram(512, 128)(audio), stft(audio, 512, 128).abs())


@pytest.mark.parametrize(("n_fft", "n_hop"), [(4096, 1), (4096, 255), (512, 31), (32, 1)])
def test_a_hop_far_shorter_than_the_window_is_refused(n_fft, n_hop):
    """A model directory's hop of 1 made a frame per sample: separating 2 s took minutes."""
    with pytest.raises(UmxError, match=rf"hop of {n_hop} with n_fft {n_fft} is too short"):
        check_stft(n_fft, n_hop)


@pytest.mark.parametrize(("n_fft", "n_hop"), [(4096, 1024), (1024, 512), (4096, 256), (15, 1)])
def test_hops_down_to_a_sixteenth_of_the_window_are_taken(n_fft, n_hop):
    assert n_hop * MAX_OVERLAP >= n_fft
    check_stft(n_fft, n_hop)


@pytest.mark.parametrize("inverse", ["istft", "istft_frames"])
@pytest.mark.parametrize(("n_fft", "n_hop"), [(512, 512), (512, 600), (4096, 4096)])
def test_an_inverse_that_would_divide_by_zero_is_refused(inverse, n_fft, n_hop):
    """A hop as long as the periodic Hann window leaves samples that no window covers (its first
    value is 0): they cannot be recovered, and are refused rather than returned as NaN."""
    spec = stft(torch.randn(2, 4 * n_fft), n_fft, max(1, n_fft // 4))
    with pytest.raises(UmxError, match=rf"hop of {n_hop} with n_fft {n_fft} cannot be inverted"):
        if inverse == "istft":
            istft(spec, 4 * n_fft, n_fft, n_hop)
        else:
            istft_frames(spec, n_fft, n_hop)


def test_a_hop_that_overlaps_enough_is_inverted_in_pieces():
    audio = torch.randn(2, 3000, dtype=torch.float64)
    spec = stft(audio, 256, 128, center=False)
    first, tail = istft_frames(spec[..., :5], 256, 128)
    second, _ = istft_frames(spec[..., 5:], 256, 128, tail)
    back = torch.cat([first, second], dim=-1)
    torch.testing.assert_close(back[:, 128:], audio[:, 128 : back.shape[-1]])
