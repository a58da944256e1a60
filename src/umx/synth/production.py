"""Production for synthetic tracks: a randomised effect chain per stem, as records are mixed.

:func:`draw_production` draws a track's settings: a room (a reverb shared by the stems, which
send to it in different amounts) and, per stem, an equaliser (low shelf, a bell, high shelf),
a compressor, and for some stems an overdrive (other, sometimes bass) or a chorus (other,
vocals). :func:`apply_chain` runs one stem through its chain, in that order: equaliser,
overdrive, compressor, chorus, reverb. Everything is computed with numpy and scipy on the
stem alone, so the mixture, the sum of the processed stems, still equals their sum exactly.

Two reverb families exist, so that a test split can be produced with one that training never
heard: ``noise`` (an impulse response of exponentially decaying, low-passed noise: a diffuse
room) and ``schroeder`` (parallel feedback combs into allpasses: a classic algorithmic reverb).
"""

from __future__ import annotations

import math
import random

import numpy as np
from scipy.signal import fftconvolve, lfilter

REVERB_FAMILIES = ("noise", "schroeder")
TRAIN_REVERB, TEST_REVERB = REVERB_FAMILIES
"""Training tracks get the noise reverb; test tracks the Schroeder reverb, unheard in training."""
RT60_RANGE = (0.3, 2.5)
"""Seconds for the reverb to decay by 60 dB."""
PREDELAY_RANGE = (0.0, 0.05)
DAMPING_RANGE = (2000.0, 10000.0)
"""Cut-off of the reverb's low-pass (Hz): darker or brighter rooms."""
SEND_RANGE = {
    "vocals": (0.05, 0.45),
    "drums": (0.0, 0.35),
    "bass": (0.0, 0.1),
    "other": (0.05, 0.5),
}
"""Reverb send of each stem: the wet signal's level relative to the dry one."""
EQ_GAIN_DB = 6.0
"""Every equaliser band boosts or cuts by up to this much."""
COMPRESSION_CHANCE = 0.7
DRIVE_CHANCE = {"other": 0.4, "bass": 0.2}
CHORUS_CHANCE = {"other": 0.3, "vocals": 0.2}
COMBS = (0.0297, 0.0371, 0.0411, 0.0437)
"""Comb delays (s) of the Schroeder reverb, mutually prime in samples for the usual rates."""
ALLPASSES = ((0.005, 0.7), (0.0017, 0.7))
"""Allpass delays (s) and gains of the Schroeder reverb."""


def draw_production(rng: random.Random, stems: tuple[str, ...], family: str) -> dict:
    """A track's production settings, JSON-serialisable.

    Args:
        rng: the track's random generator.
        stems: the stems' names.
        family: the reverb family, one of :data:`REVERB_FAMILIES`.

    Returns:
        ``{"room": {...}, "stems": {stem: {...}}}``.
    """
    room = {
        "family": family,
        "rt60": round(rng.uniform(*RT60_RANGE), 3),
        "predelay": round(rng.uniform(*PREDELAY_RANGE), 4),
        "damping": round(rng.uniform(*DAMPING_RANGE)),
        "seed": rng.getrandbits(31),
    }
    settings = {}
    for stem in stems:
        chain: dict = {
            "eq": [
                [
                    "lowshelf",
                    round(rng.uniform(60, 250)),
                    round(rng.uniform(-1, 1) * EQ_GAIN_DB, 2),
                ],
                [
                    "bell",
                    round(math.exp(rng.uniform(math.log(250), math.log(5000)))),
                    round(rng.uniform(-1, 1) * EQ_GAIN_DB, 2),
                    round(rng.uniform(0.5, 2.0), 2),
                ],
                [
                    "highshelf",
                    round(rng.uniform(3000, 10000)),
                    round(rng.uniform(-1, 1) * EQ_GAIN_DB, 2),
                ],
            ],
            "send": round(rng.uniform(*SEND_RANGE.get(stem, (0.0, 0.3))), 3),
        }
        if rng.random() < DRIVE_CHANCE.get(stem, 0.0):
            chain["drive"] = {
                "gain_db": round(rng.uniform(6, 26), 1),
                "tone": round(rng.uniform(2500, 7000)),
            }
        if rng.random() < COMPRESSION_CHANCE:
            chain["compressor"] = {
                "threshold_db": round(rng.uniform(-24, -6), 1),
                "ratio": round(rng.uniform(1.5, 6.0), 2),
                "attack": round(rng.uniform(0.002, 0.03), 4),
                "release": round(rng.uniform(0.05, 0.3), 3),
            }
        if rng.random() < CHORUS_CHANCE.get(stem, 0.0):
            chain["chorus"] = {
                "rate": round(rng.uniform(0.3, 1.5), 2),
                "depth": round(rng.uniform(0.001, 0.004), 4),
                "mix": round(rng.uniform(0.3, 0.6), 2),
            }
        settings[stem] = chain
    return {"room": room, "stems": settings}


def biquad(
    kind: str, frequency: float, gain_db: float, q: float, sample_rate: int
) -> tuple[np.ndarray, np.ndarray]:
    """The coefficients ``(b, a)`` of an equaliser band (the Audio EQ Cookbook's formulas).

    Args:
        kind: ``lowshelf``, ``bell``, ``highshelf``, or ``lowpass``, ``highpass`` and
            ``bandpass`` (0 dB at ``frequency``), which ignore ``gain_db``.
        frequency: the corner or centre frequency in Hz.
        gain_db: the boost (positive) or cut of a shelf or bell.
        q: the quality factor (shelves use a slope of 1 whatever it is).
        sample_rate: samples per second.
    """
    amplitude = 10 ** (gain_db / 40)
    omega = 2 * math.pi * min(frequency, 0.45 * sample_rate) / sample_rate
    cos, sin = math.cos(omega), math.sin(omega)
    if kind == "bell":
        alpha = sin / (2 * q)
        b = [1 + alpha * amplitude, -2 * cos, 1 - alpha * amplitude]
        a = [1 + alpha / amplitude, -2 * cos, 1 - alpha / amplitude]
    elif kind == "bandpass":
        alpha = sin / (2 * q)
        b = [alpha, 0.0, -alpha]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    elif kind == "lowpass":
        alpha = sin / (2 * q)
        b = [(1 - cos) / 2, 1 - cos, (1 - cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    elif kind == "highpass":
        alpha = sin / (2 * q)
        b = [(1 + cos) / 2, -1 - cos, (1 + cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    else:
        alpha = sin / math.sqrt(2)
        root = 2 * math.sqrt(amplitude) * alpha
        sign = 1 if kind == "lowshelf" else -1
        plus, minus = amplitude + 1, amplitude - 1
        b = [
            amplitude * (plus - sign * minus * cos + root),
            2 * sign * amplitude * (minus - sign * plus * cos),
            amplitude * (plus - sign * minus * cos - root),
        ]
        a = [
            plus + sign * minus * cos + root,
            -2 * sign * (minus + sign * plus * cos),
            plus + sign * minus * cos - root,
        ]
    b, a = np.array(b), np.array(a)
    return b / a[0], a / a[0]


def _one_pole(signal: np.ndarray, seconds: float, sample_rate: int) -> np.ndarray:
    """``signal`` smoothed along its last axis with time constant ``seconds``."""
    pole = math.exp(-1 / max(seconds * sample_rate, 1.0))
    return lfilter([1 - pole], [1, -pole], signal, axis=-1)


def compress(
    audio: np.ndarray,
    threshold_db: float,
    ratio: float,
    attack: float,
    release: float,
    sample_rate: int,
) -> np.ndarray:
    """A feed-forward compressor with a stereo-linked RMS detector (see
    :func:`compression_gain`).

    Args:
        audio: ``(nb_channels, nb_samples)``.

    Returns:
        ``(nb_channels, nb_samples)``, no louder than ``audio`` anywhere.
    """
    return audio * compression_gain(audio, threshold_db, ratio, attack, release, sample_rate)


def compression_gain(
    audio: np.ndarray,
    threshold_db: float,
    ratio: float,
    attack: float,
    release: float,
    sample_rate: int,
) -> np.ndarray:
    """The gain of a feed-forward compressor with a stereo-linked RMS detector.

    The level is measured over ``release`` seconds, relative to the signal's peak RMS level;
    above ``threshold_db`` it is reduced by ``1 - 1 / ratio`` of the excess, the reduction
    smoothed over ``attack`` seconds.

    Args:
        audio: ``(nb_channels, nb_samples)``, the signal the detector listens to.

    Returns:
        ``(nb_samples,)``, between 0 and 1.
    """
    power = _one_pole(np.mean(np.square(audio), axis=0), release, sample_rate)
    level_db = 10 * np.log10(np.maximum(power, 1e-20))
    excess = np.maximum(level_db - (level_db.max() + threshold_db), 0.0)
    reduction_db = _one_pole(excess * (1 - 1 / ratio), attack, sample_rate)
    return 10 ** (-reduction_db / 20)


def overdrive(audio: np.ndarray, gain_db: float, tone: float, sample_rate: int) -> np.ndarray:
    """Soft clipping (tanh) driven ``gain_db`` above the peak, then a low-pass at ``tone`` Hz."""
    peak = np.abs(audio).max()
    if peak == 0:
        return audio
    drive = 10 ** (gain_db / 20)
    clipped = np.tanh(drive * audio / peak) * peak
    b, a = biquad("lowpass", tone, 0.0, 0.707, sample_rate)
    return lfilter(b, a, clipped, axis=-1)


def chorus(
    audio: np.ndarray, rate: float, depth: float, mix: float, sample_rate: int
) -> np.ndarray:
    """Adds a copy delayed by ``depth`` seconds, swept by a sine at ``rate`` Hz (the channels in
    quadrature), at ``mix`` of the dry level."""
    times = np.arange(audio.shape[1])
    out = audio.copy()
    for channel in range(audio.shape[0]):
        phase = 2 * math.pi * rate * times / sample_rate + channel * math.pi / 2
        delay = depth * sample_rate * (1.5 + np.sin(phase))
        out[channel] += mix * np.interp(times - delay, times, audio[channel], left=0.0)
    return out


def reverb_response(room: dict, sample_rate: int) -> np.ndarray:
    """The room's stereo impulse response, ``(nb_channels=2, nb_taps)``, of unit energy per
    channel."""
    rt60, length = room["rt60"], round(min(room["rt60"] * 1.2, 3.0) * sample_rate)
    rng = np.random.default_rng(room["seed"])
    if room["family"] == "noise":
        decay = np.exp(-6.9 * np.arange(length) / (rt60 * sample_rate))
        response = rng.standard_normal((2, length)) * decay
    elif room["family"] == "schroeder":
        response = np.zeros((2, length))
        for channel in range(2):
            for delay in COMBS:
                step = round(delay * sample_rate * (1 + 0.03 * channel + 0.02 * rng.random()))
                taps = np.arange(step, length, step)
                response[channel, taps] += 10 ** (-3 * taps / (rt60 * sample_rate))
            for delay, gain in ALLPASSES:
                step = round(delay * sample_rate)
                allpass = np.zeros(length)
                allpass[0] = -gain
                taps = np.arange(step, length, step)
                allpass[taps] = (1 - gain**2) * gain ** (np.arange(len(taps)))
                response[channel] = fftconvolve(response[channel], allpass)[:length]
    else:
        raise ValueError(f"unknown reverb family {room['family']!r}")
    b, a = biquad("lowpass", room["damping"], 0.0, 0.707, sample_rate)
    response = lfilter(b, a, response, axis=-1)
    response = np.pad(response, ((0, 0), (round(room["predelay"] * sample_rate), 0)))
    return response / np.sqrt(np.sum(np.square(response), axis=1, keepdims=True))


def apply_chain(audio: np.ndarray, chain: dict, room: dict, sample_rate: int) -> np.ndarray:
    """Runs a stem through its effect chain.

    Args:
        audio: ``(nb_channels=2, nb_samples)`` float64.
        chain: the stem's settings from :func:`draw_production`.
        room: the track's room from :func:`draw_production`.
        sample_rate: samples per second.

    Returns:
        ``(nb_channels=2, nb_samples)`` float64, the same length (the reverb tail is cut).
    """
    for kind, frequency, gain_db, *q in chain["eq"]:
        b, a = biquad(kind, frequency, gain_db, q[0] if q else 0.707, sample_rate)
        audio = lfilter(b, a, audio, axis=-1)
    if "drive" in chain:
        audio = overdrive(audio, **chain["drive"], sample_rate=sample_rate)
    if "compressor" in chain:
        audio = compress(audio, **chain["compressor"], sample_rate=sample_rate)
    if "chorus" in chain:
        audio = chorus(audio, **chain["chorus"], sample_rate=sample_rate)
    if chain["send"] > 0:
        response = reverb_response(room, sample_rate)
        dry_rms = np.sqrt(np.mean(np.square(audio)))
        wet = np.stack([fftconvolve(audio[c], response[c])[: audio.shape[1]] for c in range(2)])
        wet_rms = np.sqrt(np.mean(np.square(wet)))
        if wet_rms > 0:
            audio = audio + wet * chain["send"] * dry_rms / wet_rms
    return audio
