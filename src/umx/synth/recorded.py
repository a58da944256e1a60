"""Recorded sounds layered into the `other` stem (`umx synth --other-samples`).

A soundfont's instruments are one sampler's; records hold guitars, pianos, pads and textures
recorded in rooms. A track with a layer gets one or two recorded sounds (files of a sample
pack, such as Debian's `sonic-pi-samples`), each pitch-shifted by resampling, repeated with
gaps from a random point, balanced, and mixed into `other` before its effect chain.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from umx.errors import UmxError
from umx.synth.plan import find_files

SAMPLE_SUFFIXES = frozenset((".wav", ".flac", ".ogg", ".aif", ".aiff"))
LAYER_CHANCE = 0.7
"""The fraction of tracks that get a layer."""
SOUNDS_PER_LAYER = (1, 2)
SHARE_RANGE = (0.2, 0.6)
"""The layer's share of the level of `other`, as the singers' share of the vocals."""
SHIFT_RANGE = (-5, 5)
"""Semitones a sound is shifted by (resampled: shorter when higher)."""
GAP_RANGE = (0.0, 2.0)
"""Seconds of silence between two plays of a sound."""
PAN_RANGE = 0.6
GAIN_RANGE_DB = (-6.0, 0.0)
"""A sound's gain within the layer, after levelling."""
EDGE_SECONDS = 0.005
"""Fade at both ends of each play, so that no play starts or ends with a click."""
MIN_SECONDS, MAX_SECONDS = 0.01, 60.0
"""Shorter and longer files are refused: a layer repeats short sounds, but not clicks."""


def find_samples(paths: Sequence[str | Path]) -> list[Path]:
    """The audio files given, and those under the folders given (by suffix), resolved, each
    read as audio once.

    Raises:
        UmxError: a path does not exist, a folder holds no audio file, or a file is not audio
            soundfile reads, or is under `MIN_SECONDS` or over `MAX_SECONDS` long.
    """
    files = find_files(paths, SAMPLE_SUFFIXES, "recorded sound")
    for file in files:
        try:
            info = soundfile.info(str(file))
        except (RuntimeError, soundfile.LibsndfileError) as error:
            raise UmxError(f"{file} is not an audio file soundfile reads ({error})") from None
        if not MIN_SECONDS <= info.duration <= MAX_SECONDS:
            raise UmxError(
                f"{file} lasts {info.duration:.3g} s; recorded sounds last "
                f"{MIN_SECONDS:g} to {MAX_SECONDS:g} s"
            )
    return list(dict.fromkeys(file.resolve() for file in files))


def draw_layer(rng: random.Random, samples: Sequence[str]) -> dict | None:
    """A track's layer of recorded sounds drawn among ``samples``, or None (no layer)."""
    if not samples or rng.random() >= LAYER_CHANCE:
        return None
    sounds = [
        {
            "file": rng.choice(samples),
            "shift": rng.randint(*SHIFT_RANGE),
            "gap": round(rng.uniform(*GAP_RANGE), 3),
            "offset": round(rng.random(), 3),
            "pan": round(rng.uniform(-PAN_RANGE, PAN_RANGE), 3),
            "gain_db": round(rng.uniform(*GAIN_RANGE_DB), 2),
        }
        for _ in range(rng.randint(*SOUNDS_PER_LAYER))
    ]
    return {"share": round(rng.uniform(*SHARE_RANGE), 3), "sounds": sounds}


def play_layer(layer: dict, nb_samples: int, sample_rate: int) -> np.ndarray:
    """The layer's sounds, each levelled, given its gain and repeated over the track.

    Returns:
        ``(nb_channels=2, nb_samples)`` float64; silence when its files are silent.

    Raises:
        UmxError: a file cannot be read.
    """
    out = np.zeros((2, nb_samples))
    for sound in layer["sounds"]:
        play = _load(sound["file"], sound["shift"], sound["pan"], sample_rate)
        rms = math.sqrt(float(np.mean(np.square(play))))
        if rms == 0:
            continue
        play *= 10 ** (sound["gain_db"] / 20) / rms
        period = play.shape[1] + round(sound["gap"] * sample_rate)
        for start in range(-round(sound["offset"] * period), nb_samples, period):
            begin, end = max(start, 0), min(start + play.shape[1], nb_samples)
            if end > begin:  # the first play may end before the track starts
                out[:, begin:end] += play[:, begin - start : end - start]
    return out


def _load(path: str, shift: int, pan: float, sample_rate: int) -> np.ndarray:
    """A sound resampled to ``sample_rate`` and shifted by ``shift`` semitones, faded at its
    ends, in stereo: a mono sound placed at ``pan`` (-1 left, 1 right), a stereo one balanced.

    Returns:
        ``(nb_channels=2, nb_frames)`` float64.
    """
    try:
        audio, rate = soundfile.read(path, dtype="float64", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise UmxError(f"cannot read the recorded sound {path} ({error})") from None
    if not np.isfinite(audio).all():
        raise UmxError(f"the recorded sound {path} holds samples that are not finite numbers")
    audio = audio.T[:2] if audio.shape[1] > 1 else np.repeat(audio.T, 2, axis=0)
    ratio = Fraction(sample_rate / rate / 2 ** (shift / 12)).limit_denominator(256)
    if ratio != 1:
        audio = resample_poly(audio, ratio.numerator, ratio.denominator, axis=1)
    edge = min(round(EDGE_SECONDS * sample_rate), audio.shape[1] // 2)
    if edge:
        ramp = np.linspace(0, 1, edge)
        audio[:, :edge] *= ramp
        audio[:, audio.shape[1] - edge :] *= ramp[::-1]
    angle = (pan + 1) * math.pi / 4
    return audio * math.sqrt(2) * np.array([[math.cos(angle)], [math.sin(angle)]])
