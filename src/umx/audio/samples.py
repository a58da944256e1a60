"""What counts as audio: the checks that reading files, the Python API and the stream share.

A sample rate must lie in [`MIN_RATE`, `MAX_RATE`] Hz, and every sample must be finite and within
±`MAX_SAMPLE`. Float audio may exceed full scale (±1), but not by 80 dB: such values are not
audio (16-bit PCM stored as float, say) and would separate into noise, so they are refused with
the time of the first one, never rescaled into quiet garbage.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from umx.errors import MAX_RATE, MIN_RATE, UmxError

MAX_SAMPLE = 1e4
"""The largest magnitude of a sample umx takes, 80 dB above full scale (±1)."""


def peak(samples: Tensor) -> float:
    """The largest absolute sample (0.0 for none; NaN if one is NaN), from two reductions:
    `samples.abs().max()` would first copy them all (800 MB for ten minutes of four stems)."""
    if not samples.numel():
        return 0.0
    return float(torch.maximum(samples.max(), -samples.min()))


def check_rate(rate: float, source: str) -> None:
    """Refuse a sample rate outside [`MIN_RATE`, `MAX_RATE`] with one line naming `source`."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise UmxError(
            f"{source}: a sample rate of {rate:g} Hz is not one umx separates (it takes "
            f"{MIN_RATE:g} to {MAX_RATE:g} Hz)"
        )


def check_samples(
    samples: Tensor, start: float, rate: float, source: str, hint: str = "", *, offset: int = 0
) -> None:
    """Refuse samples that are NaN, infinite or beyond `MAX_SAMPLE`, with one line naming the
    input and the time of the first such sample.

    Args:
        samples: `(..., nb_timesteps)`, e.g. the next block of an input, `(nb_channels,
            nb_block)`.
        start: the time of the first of them from the start of the input, in seconds.
        rate: the samples' rate, in Hz.
        source: how the user knows the input (the message starts with it).
        hint: appended to the message, e.g. what to do about a likely cause.
        offset: frames between `start` and the first of `samples` (a block of an input read
            block by block, whose time is told from the excerpt's start as a whole read tells it).

    Raises:
        UmxError: a sample is not audio.
    """
    if peak(samples) <= MAX_SAMPLE:  # NaN compares false
        return  # the usual case, found without a copy of the samples
    bad = ~(samples.abs() <= MAX_SAMPLE)  # NaN compares false
    bad_at = bad.reshape(-1, bad.shape[-1]).any(dim=0)
    index = int(bad_at.nonzero()[0])
    value = float(samples[..., index][bad[..., index]][0])
    if math.isnan(value):
        what = "a NaN sample"
    elif math.isinf(value):
        what = "an infinite sample"
    else:
        what = f"the sample {value:.3g}"
    at = start + (offset + index) / rate
    raise UmxError(
        f"{source}: {what} at {at:.3f} s is not audio (samples must be "
        f"finite and within ±{MAX_SAMPLE:g}, full scale being ±1){hint}"
    )


def float_samples(audio: object, source: str = "audio") -> Tensor:
    """`audio` as a tensor of real floating-point samples, refusing what holds none: a numpy
    array becomes a CPU tensor sharing its memory, a tensor is returned as it is.

    Args:
        audio: a torch tensor or a numpy array of any shape and floating-point type.
        source: how the user knows it (the message starts with it).

    Raises:
        TypeError: not a tensor or numpy array; integer PCM (whose sample values would be taken
            as 32768 times full scale), complex or boolean samples; a meta tensor (no samples).
    """
    if not isinstance(audio, Tensor | np.ndarray):
        raise TypeError(
            f"{source} must be a torch tensor or a numpy array, not {type(audio).__name__}"
        )
    dtype = audio.dtype
    floating = dtype.is_floating_point if isinstance(audio, Tensor) else dtype.kind == "f"
    if not floating:
        raise TypeError(
            f"{source} must hold real floating-point samples in [-1, 1], not {dtype} "
            "(convert integer PCM with / 32768, take .real of complex data)"
        )
    if isinstance(audio, Tensor) and audio.is_meta:
        raise TypeError(f"{source} is a meta tensor, which holds no samples")
    if isinstance(audio, np.ndarray) and any(stride < 0 for stride in audio.strides):
        audio = audio.copy()  # a reversed view: torch takes no negative strides
    return torch.as_tensor(audio)
