"""Guitar amps for synthetic tracks: the guitar parts of `other` through an amp and a cabinet.

A soundfont's guitars are recorded clean or through one fixed amp; records put guitars through
many. :func:`draw_amp` draws a track's amp; :func:`amplify` runs the guitars' rendering through
it, in a guitar amp's order: a pre-EQ (a high-pass that tightens the low end, a mid boost into
the drive, as a pedal or a preamp does), the drive (asymmetric soft clipping, which adds even
harmonics as well as odd), the tone stack (bass, middle and treble) and the cabinet
(:func:`cabinet`: a loudspeaker in its box, miked: no deep bass, a low resonance, a presence
peak and a steep roll-off above a few kHz). `umx synth` renders the guitar notes of `other` on
their own (:func:`umx.synth.gm.split_guitars`), amplifies them and adds them back to the rest
of `other`, so no other stem, and no other instrument of `other`, is touched.
"""

from __future__ import annotations

import math
import random

import numpy as np
from scipy.signal import lfilter

from umx.synth.production import biquad

TONE_DB = 6.0
"""The tone stack's bass, middle and treble each boost or cut by up to this much."""


def draw_amp(rng: random.Random) -> dict:
    """A track's amp and cabinet, JSON-serialisable: ``{"pre_eq", "drive", "tone", "cabinet"}``."""
    return {
        "pre_eq": {
            "highpass": round(rng.uniform(80, 200)),
            "boost": round(math.exp(rng.uniform(math.log(600), math.log(1200)))),
            "boost_db": round(rng.uniform(2, 9), 1),
        },
        "drive": {"gain_db": round(rng.uniform(6, 32), 1), "bias": round(rng.uniform(0, 0.3), 2)},
        "tone": {
            "bass": round(rng.uniform(-1, 1) * TONE_DB, 1),
            "middle": round(rng.uniform(-1, 1) * TONE_DB, 1),
            "middle_frequency": round(rng.uniform(400, 900)),
            "treble": round(rng.uniform(-1, 1) * TONE_DB, 1),
        },
        "cabinet": {
            "low": round(rng.uniform(70, 130)),
            "resonance": round(rng.uniform(90, 160)),
            "presence": round(rng.uniform(1500, 3500)),
            "presence_db": round(rng.uniform(2, 6), 1),
            "high": round(rng.uniform(3500, 6500)),
        },
    }


def _filters(audio: np.ndarray, bands: list[tuple], sample_rate: int) -> np.ndarray:
    """``audio`` through the biquads ``(kind, frequency, gain_db, q)`` in turn."""
    for kind, frequency, gain_db, q in bands:
        b, a = biquad(kind, frequency, gain_db, q, sample_rate)
        audio = lfilter(b, a, audio, axis=-1)
    return audio


def drive(audio: np.ndarray, gain_db: float, bias: float) -> np.ndarray:
    """Asymmetric soft clipping, ``tanh(g x + bias) - tanh(bias)``, driven ``gain_db`` above the
    peak (the bias makes the two half-waves clip differently: even harmonics)."""
    peak = np.abs(audio).max()
    if peak == 0:
        return audio
    driven = 10 ** (gain_db / 20) * audio / peak
    return (np.tanh(driven + bias) - math.tanh(bias)) * peak


def cabinet(audio: np.ndarray, settings: dict, sample_rate: int) -> np.ndarray:
    """A miked loudspeaker cabinet: a high-pass at ``low`` Hz, a resonance at ``resonance``, a
    presence peak and two low-passes at ``high`` (a 24 dB per octave roll-off).

    Args:
        audio: ``(nb_channels, nb_samples)``.
        settings: the ``cabinet`` of :func:`draw_amp`.
        sample_rate: samples per second.
    """
    bands = [
        ("highpass", settings["low"], 0.0, 0.707),
        ("bell", settings["resonance"], 4.0, 2.0),
        ("bell", settings["presence"], settings["presence_db"], 1.0),
        ("lowpass", settings["high"], 0.0, 0.707),
        ("lowpass", settings["high"], 0.0, 0.707),
    ]
    return _filters(audio, bands, sample_rate)


def amplify(audio: np.ndarray, amp: dict, sample_rate: int) -> np.ndarray:
    """Runs a guitar rendering through an amp and its cabinet.

    Args:
        audio: ``(nb_channels=2, nb_samples)`` float64.
        amp: the settings of :func:`draw_amp`.
        sample_rate: samples per second.

    Returns:
        ``(nb_channels=2, nb_samples)`` float64 at the RMS level of ``audio``.
    """
    rms = np.sqrt(np.mean(np.square(audio)))
    if rms == 0:
        return audio
    pre, tone = amp["pre_eq"], amp["tone"]
    audio = _filters(
        audio,
        [("highpass", pre["highpass"], 0.0, 0.707), ("bell", pre["boost"], pre["boost_db"], 0.7)],
        sample_rate,
    )
    audio = drive(audio, **amp["drive"])
    audio = _filters(
        audio,
        [
            ("lowshelf", 120, tone["bass"], 0.707),
            ("bell", tone["middle_frequency"], tone["middle"], 0.8),
            ("highshelf", 3000, tone["treble"], 0.707),
        ],
        sample_rate,
    )
    audio = cabinet(audio, amp["cabinet"], sample_rate)
    return audio * rms / np.sqrt(np.mean(np.square(audio)))
