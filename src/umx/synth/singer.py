"""A small formant singer: a melody sung on vowels, with vibrato, consonants and breaths.

General MIDI voice patches (choir aahs, voice oohs) are sustained vowels with no words. The
singer sings the notes of a vocal part instead, one syllable per note:

- the voice is additive: harmonics of the note's pitch with a glottal roll-off (about -12 dB
  per octave), weighted by a vowel's formants (the resonances of the vocal tract, three per
  vowel), so the spectrum has the peaks of a sung ``a``, ``e``, ``i``, ``o`` or ``u``;
- the pitch glides between notes (portamento) and has vibrato (a sine of 4.5-6.5 Hz of a
  third to two thirds of a semitone, faded in after the note starts);
- the vowel moves from one syllable's to the next over the note's first 60 ms;
- a syllable may start with a consonant: a burst of filtered noise (a fricative such as
  ``s``/``sh``/``f``, or a short plosive click);
- silences of at least 0.3 s between notes get a breath: soft band-passed noise.

The melody is the highest sounding note at any time (a choir's top line).
"""

from __future__ import annotations

import math
import random

import numpy as np
from scipy.signal import lfilter

from umx.synth.midi import Song
from umx.synth.production import biquad
from umx.synth.sampler import note_events

VOWELS = {
    "a": ((800, 80), (1150, 90), (2900, 120)),
    "e": ((400, 70), (1600, 80), (2700, 100)),
    "i": ((270, 60), (2140, 90), (2950, 100)),
    "o": ((450, 70), (800, 80), (2830, 100)),
    "u": ((325, 50), (700, 60), (2530, 170)),
}
"""Formant frequencies and bandwidths (Hz) of sung vowels (soprano-to-tenor averages)."""
FORMANT_GAINS_DB = (0.0, -6.0, -14.0)
CONSONANTS = {
    "s": (5000, 9000),
    "sh": (2000, 5000),
    "f": (1500, 8000),
    "t": (2500, 8000),
    "k": (1200, 4000),
}
"""Noise band (Hz) of each consonant; ``t`` and ``k`` are short plosives."""
PLOSIVES = frozenset(("t", "k"))
CONSONANT_CHANCE = 0.6
MAX_HARMONIC_HZ = 6000.0
"""Harmonics above this are left out (their formant weights are negligible)."""
GLIDE_SECONDS = 0.05
VOWEL_SECONDS = 0.06
ATTACK_SECONDS, RELEASE_SECONDS = 0.03, 0.08
BREATH_GAP = 0.3
"""Seconds of silence that get a breath."""


def melody(song: Song) -> list[tuple[float, float, int, int]]:
    """The top line of ``song``'s notes: ``(start, end, key, velocity)`` with no overlap.

    A higher note cuts the one sounding when it starts; a note that starts while a higher or
    equal one sounds is left out.
    """
    line: list[tuple[float, float, int, int]] = []
    for start, end, key, velocity in sorted(note_events(song), key=lambda n: (n[0], -n[2])):
        if line and start < line[-1][1]:
            previous = line[-1]
            if key <= previous[2] or start == previous[0]:
                continue
            line[-1] = (previous[0], start, previous[2], previous[3])
        line.append((start, end, key, velocity))
    return line


def _formant_weight(frequency: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """The vocal tract's amplitude response at ``frequency``: a sum of resonances.

    Args:
        frequency: ``(nb_samples,)`` Hz.
        formants: ``(nb_formants, 2, nb_samples)``: each formant's centre and bandwidth.
    """
    weight = np.zeros_like(frequency)
    for (centre, bandwidth), gain_db in zip(formants, FORMANT_GAINS_DB, strict=True):
        weight += 10 ** (gain_db / 20) / (1 + ((frequency - centre) / (bandwidth / 2)) ** 2)
    return weight


def sing(song: Song, nb_samples: int, sample_rate: int, seed: int) -> np.ndarray:
    """Sings the top line of ``song``'s notes.

    Args:
        song: the vocal part (its notes on any channel).
        nb_samples: the length of the result.
        sample_rate: samples per second.
        seed: draws the vowels, consonants, vibrato and breaths.

    Returns:
        ``(nb_channels=2, nb_samples)`` float64, the same in both channels (a centred voice).
    """
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    times = np.arange(nb_samples) / sample_rate
    pitch = np.full(nb_samples, np.nan)
    amplitude = np.zeros(nb_samples)
    formants = np.repeat(np.array(VOWELS["a"], dtype=float)[:, :, None], nb_samples, axis=2)
    consonants = np.zeros(nb_samples)
    vibrato_rate, vibrato_depth = rng.uniform(4.5, 6.5), rng.uniform(0.3, 0.7)
    previous_vowel = rng.choice(list(VOWELS))
    previous_end = 0.0
    for start, end, key, velocity in melody(song):
        first, last = round(start * sample_rate), min(round(end * sample_rate), nb_samples)
        if first >= nb_samples or last <= first:
            continue
        span = slice(first, last)
        local = times[span] - start
        vowel = rng.choice(list(VOWELS))
        move = np.clip(local / VOWEL_SECONDS, 0, 1)
        for index, (a, b) in enumerate(zip(VOWELS[previous_vowel], VOWELS[vowel], strict=True)):
            formants[index, :, span] = np.outer(a, 1 - move) + np.outer(b, move)
        previous_vowel = vowel
        vibrato = (
            vibrato_depth
            * np.sin(2 * math.pi * vibrato_rate * local)
            * np.clip(local / 0.3 - 0.5, 0, 1)
        )
        pitch[span] = key + vibrato
        envelope = np.minimum(
            np.clip(local / ATTACK_SECONDS, 0, 1),
            np.clip((end - start - local) / RELEASE_SECONDS, 0, 1),
        )
        amplitude[span] = np.maximum(amplitude[span], envelope * velocity / 127)
        if start - previous_end >= BREATH_GAP:
            _breath(consonants, previous_end, start, sample_rate, rng, noise)
        if rng.random() < CONSONANT_CHANCE:
            _consonant(consonants, start, sample_rate, rng, noise)
        previous_end = end
    if np.all(np.isnan(pitch)):
        return np.zeros((2, nb_samples))
    # the pitch holds through silences and glides to each note (portamento)
    sounding = ~np.isnan(pitch)
    index = np.maximum.accumulate(np.where(sounding, np.arange(nb_samples), 0))
    held = pitch[np.maximum(index, np.argmax(sounding))]
    pole = math.exp(-1 / (GLIDE_SECONDS * sample_rate))
    semitones = lfilter([1 - pole], [1, -pole], held - held[0]) + held[0]
    frequency = 440 * 2 ** ((semitones - 69) / 12)
    phase = 2 * math.pi * np.cumsum(frequency) / sample_rate
    voice = np.zeros(nb_samples)
    for harmonic in range(1, int(MAX_HARMONIC_HZ / frequency.min()) + 1):
        partial = harmonic * frequency
        audible = partial < min(MAX_HARMONIC_HZ, sample_rate / 2)
        weight = _formant_weight(partial, formants) * audible / harmonic**2
        voice += weight * np.sin(harmonic * phase)
    voice *= amplitude
    peak = np.abs(voice).max()
    voice = voice / peak if peak > 0 else voice
    mono = voice + consonants
    return np.stack([mono, mono])


def _consonant(
    out: np.ndarray, start: float, sample_rate: int, rng: random.Random, noise: np.random.Generator
) -> None:
    """Adds a consonant's noise burst ending at ``start`` (the syllable's vowel onset)."""
    name = rng.choice(list(CONSONANTS))
    seconds = rng.uniform(0.01, 0.025) if name in PLOSIVES else rng.uniform(0.05, 0.12)
    _noise_burst(
        out, start - seconds, seconds, CONSONANTS[name], rng.uniform(0.1, 0.3), sample_rate, noise
    )


def _breath(
    out: np.ndarray,
    gap_start: float,
    gap_end: float,
    sample_rate: int,
    rng: random.Random,
    noise: np.random.Generator,
) -> None:
    """Adds a breath in the last part of a silence that ends at ``gap_end``."""
    seconds = min(rng.uniform(0.2, 0.4), gap_end - gap_start)
    _noise_burst(
        out,
        gap_end - seconds - 0.05,
        seconds,
        (500, 3000),
        rng.uniform(0.03, 0.08),
        sample_rate,
        noise,
    )


def _noise_burst(
    out: np.ndarray,
    start: float,
    seconds: float,
    band: tuple[float, float],
    level: float,
    sample_rate: int,
    noise: np.random.Generator,
) -> None:
    """Adds band-passed noise with a raised-cosine envelope from ``start`` for ``seconds``."""
    first = max(round(start * sample_rate), 0)
    length = min(round(seconds * sample_rate), len(out) - first)
    if length <= 8:
        return
    burst = noise.standard_normal(length)
    low, high = band
    centre, q = math.sqrt(low * high), math.sqrt(low * high) / (high - low)
    b, a = biquad("bandpass", centre, 0.0, q, sample_rate)
    burst = lfilter(b, a, burst)
    burst *= level / (np.sqrt(np.mean(np.square(burst))) + 1e-12) * np.hanning(length)
    out[first : first + length] += burst
