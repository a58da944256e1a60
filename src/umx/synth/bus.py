"""A mix bus for synthetic tracks: stereo width, a bus compressor and a limiter, as records are
mastered, without breaking the sum of the stems.

:func:`draw_bus` draws a track's settings; :func:`apply_bus` runs the stems through them. The
width (a gain on the side signal, ``(left - right) / 2``) is linear, so it is applied to each
stem. The compressor and the limiter are not: their gain is computed once from the mixture (the
sum of the widened stems, both channels linked) and applied, sample by sample, to every stem
alike. So the processed stems still sum to the processed mixture, and `umx synth`'s quantised
stems still sum exactly to its mixture.
"""

from __future__ import annotations

import random

import numpy as np
from scipy.ndimage import minimum_filter1d

from umx.synth.production import compression_gain

WIDTH_RANGE = (0.6, 1.4)
"""Gain of the side signal: 0 is mono, 1 unchanged, above 1 wider."""
THRESHOLD_RANGE_DB = (-18.0, -6.0)
"""The bus compressor's threshold, below the mixture's loudest RMS level."""
RATIO_RANGE = (1.5, 4.0)
LIMIT_RANGE_DB = (1.0, 8.0)
"""How far the limiter brings the mixture's peaks down."""
LOOKAHEAD = 0.005
"""Seconds over which the limiter's gain falls before a peak."""
LIMITER_RELEASE_RANGE = (0.03, 0.2)
"""Seconds the limiter holds its gain after a peak (it then recovers over the look-ahead)."""


def draw_bus(rng: random.Random) -> dict:
    """A track's mix bus settings, JSON-serialisable: ``{"width", "compressor", "limiter"}``."""
    return {
        "width": round(rng.uniform(*WIDTH_RANGE), 3),
        "compressor": {
            "threshold_db": round(rng.uniform(*THRESHOLD_RANGE_DB), 1),
            "ratio": round(rng.uniform(*RATIO_RANGE), 2),
            "attack": round(rng.uniform(0.005, 0.03), 4),
            "release": round(rng.uniform(0.05, 0.3), 3),
        },
        "limiter": {
            "reduction_db": round(rng.uniform(*LIMIT_RANGE_DB), 2),
            "release": round(rng.uniform(*LIMITER_RELEASE_RANGE), 3),
        },
    }


def widen(audio: np.ndarray, width: float) -> np.ndarray:
    """``audio`` with its side signal scaled by ``width`` (0: mono, 1: unchanged).

    Args:
        audio: ``(nb_channels=2, nb_samples)``.

    Returns:
        ``(nb_channels=2, nb_samples)``.
    """
    mid, side = (audio[0] + audio[1]) / 2, (audio[0] - audio[1]) / 2 * width
    return np.stack([mid + side, mid - side])


def limiter_gain(
    audio: np.ndarray, reduction_db: float, release: float, sample_rate: int
) -> np.ndarray:
    """The gain of a look-ahead peak limiter whose ceiling is ``reduction_db`` below the peak.

    Each sample needs the gain that brings its peak (the louder channel) to the ceiling; the
    gain is the least of these from ``release`` seconds before to :data:`LOOKAHEAD` after,
    averaged over the look-ahead, so it falls before a peak, holds after it, and never lets a
    sample above the ceiling.

    Args:
        audio: ``(nb_channels, nb_samples)``, the signal the detector listens to.

    Returns:
        ``(nb_samples,)``, between 0 and 1.
    """
    peaks = np.abs(audio).max(axis=0)
    ceiling = peaks.max() * 10 ** (-reduction_db / 20)
    needed = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-300))
    ahead, behind = max(round(LOOKAHEAD * sample_rate), 1), round(release * sample_rate)
    size = behind + ahead + 1
    padded = np.concatenate([np.ones(behind), needed, np.ones(ahead)])
    held = minimum_filter1d(padded, size)[size // 2 : size // 2 + len(needed)]
    sums = np.cumsum(np.concatenate([np.full(ahead, held[0]), held]))
    return np.minimum((sums[ahead:] - sums[:-ahead]) / ahead, 1.0)


def apply_bus(stems: dict[str, np.ndarray], bus: dict, sample_rate: int) -> dict[str, np.ndarray]:
    """Runs a track's stems through its mix bus.

    Args:
        stems: ``{stem: (nb_channels=2, nb_samples)}`` float64.
        bus: the settings of :func:`draw_bus`.
        sample_rate: samples per second.

    Returns:
        ``{stem: (nb_channels=2, nb_samples)}``: widened, then multiplied by the compressor's
        and the limiter's gain, both computed from the mixture.
    """
    widened = {stem: widen(audio, bus["width"]) for stem, audio in stems.items()}
    mixture = sum(widened.values())
    gain = compression_gain(mixture, **bus["compressor"], sample_rate=sample_rate)
    gain *= limiter_gain(mixture * gain, **bus["limiter"], sample_rate=sample_rate)
    return {stem: audio * gain for stem, audio in widened.items()}
