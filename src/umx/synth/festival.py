"""A recorded-voice singer: the vocal melody sung in words by Festival over a diphone voice.

The formant singer (:mod:`umx.synth.singer`) sings vowels; Festival's diphone voices are cut
from recordings of a speaker, so they sing consonants and words as a voice makes them. Each
note of the vocal part's top line (:func:`umx.synth.singer.melody`) becomes one word of
:data:`WORDS` in a Festival singing file, with its pitch in Hz and its length in seconds
(Festival 2.5 reads lengths in beats at 50 beats a minute for its stated 60, and names notes an
octave off, so neither beats nor note names are used), silences become rests, and
``text2wave -mode singing`` sings it. The voice is ``kal_diphone`` (Debian's
``festvox-kallpc16k``, an American English male speaker, 16 kHz); a test split can be sung by
another, held out from training, such as ``ked_diphone`` (``festvox-kdlpc16k``, another
American English man). Both are men, so notes above :data:`HIGHEST_KEY` are sung an octave or
two lower.
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from umx.errors import UmxError
from umx.synth.midi import Song
from umx.synth.singer import melody

VOICE = "kal_diphone"
"""The voice of the training and validation splits."""
VOICES_FOLDER = Path("/usr/share/festival/voices")
"""Where Debian installs Festival's voices, one folder per language."""
VOICE_PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k"}
"""The Debian package of each voice whose licence allows training a model to sell."""
WORDS = (
    "love", "day", "night", "home", "go", "light", "fire", "sky", "rain", "sun", "way", "time",
    "heart", "dream", "run", "stay", "now", "down", "high", "shine", "you", "me", "la", "oh",
)  # fmt: skip
"""One-syllable words, one a note."""
HIGHEST_KEY = 67
"""G4: higher notes are sung in a lower octave (the voice is a man's)."""
MIN_SECONDS = 0.06
"""Notes shorter than this are left out; silences shorter than this lengthen the note before."""
TIMEOUT = 120
"""Seconds one text2wave run may take (it sings a 20 s track in well under one)."""
SHARE_RANGE = (0.3, 1.0)
"""The Festival voice's share of the vocals' level."""


def check_festival(voice: str = VOICE) -> str:
    """The path of Festival's ``text2wave``, once ``voice`` is known to be installed.

    Raises:
        UmxError: Festival or the voice is missing (naming the Debian packages), or ``voice``
            is not one of :data:`VOICE_PACKAGES`.
    """
    if voice not in VOICE_PACKAGES:
        known = ", ".join(VOICE_PACKAGES)
        raise UmxError(f"unknown Festival voice {voice[:64]!r}: choose one of {known}")
    path = shutil.which("text2wave")
    if path is None or not any(VOICES_FOLDER.glob(f"*/{voice}")):
        packages = f"festival {VOICE_PACKAGES[voice]}"
        raise UmxError(
            f"--festival-singer needs Festival and the voice {voice} (apt-get install {packages})"
        )
    return path


def draw_festival(rng: random.Random, voice: str = VOICE) -> dict:
    """A track's Festival singer, JSON-serialisable: its share of the vocals, its seed and its
    voice (one of :data:`VOICE_PACKAGES`)."""
    return {
        "share": round(rng.uniform(*SHARE_RANGE), 3),
        "seed": rng.getrandbits(31),
        "voice": voice,
    }


def score(song: Song, seed: int) -> tuple[str, float]:
    """The Festival singing file for the top line of ``song``'s notes.

    Args:
        song: the vocal part.
        seed: draws the words.

    Returns:
        The file's text, and the time (s) its first note starts in ``song``; an empty text when
        there is no note long enough.
    """
    rng = random.Random(seed)
    notes = [note for note in melody(song) if note[1] - note[0] >= MIN_SECONDS]
    lines: list[str] = []
    for index, (start, end, key, _) in enumerate(notes):
        following = notes[index + 1][0] if index + 1 < len(notes) else end
        gap = following - end
        length = end - start + (gap if gap < MIN_SECONDS else 0.0)
        while key > HIGHEST_KEY:
            key -= 12
        frequency = 440 * 2 ** ((key - 69) / 12)
        lines.append(
            f'<PITCH FREQ="{frequency:.2f}"><DURATION SECONDS="{length:.3f}">'
            f"{rng.choice(WORDS)}</DURATION></PITCH>"
        )
        if gap >= MIN_SECONDS:
            lines.append(f'<REST SECONDS="{gap:.3f}"></REST>')
    if not lines:
        return "", 0.0
    text = "\n".join(
        [
            '<?xml version="1.0"?>',
            '<!DOCTYPE SINGING PUBLIC "-//SINGING//DTD SINGING mark up//EN" "Singing.v0_1.dtd" []>',
            '<SINGING BPM="60">',
            *lines,
            "</SINGING>",
            "",
        ]
    )
    return text, notes[0][0]


def sing(
    song: Song, nb_samples: int, sample_rate: int, seed: int, voice: str = VOICE
) -> np.ndarray:
    """Sings the top line of ``song``'s notes with Festival.

    Args:
        song: the vocal part (its notes on any channel).
        nb_samples: the length of the result.
        sample_rate: samples per second.
        seed: draws the words.
        voice: one of :data:`VOICE_PACKAGES`.

    Returns:
        ``(nb_channels=2, nb_samples)`` float64, the same in both channels (a centred voice);
        silence when there is no note to sing.

    Raises:
        UmxError: Festival or the voice is missing, or Festival fails (its last message is
            quoted).
    """
    path = check_festival(voice)  # a known name: safe inside Festival's -eval
    text, start = score(song, seed)
    out = np.zeros((2, nb_samples))
    if not text:
        return out
    with tempfile.TemporaryDirectory(prefix="umx-festival-") as folder:
        xml, wav = Path(folder, "song.xml"), Path(folder, "song.wav")
        xml.write_text(text)
        command = [path, "-mode", "singing", "-eval", f"(voice_{voice})", str(xml)]
        try:
            result = subprocess.run(
                [*command, "-o", str(wav)], capture_output=True, text=True, timeout=TIMEOUT
            )
        except subprocess.TimeoutExpired as error:
            raise UmxError(f"Festival took over {TIMEOUT} s to sing a track") from error
        if result.returncode != 0 or not wav.is_file():
            message = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UmxError(f"Festival failed to sing a track ({message})")
        voice, rate = soundfile.read(wav, dtype="float64")
    common = math.gcd(sample_rate, rate)
    voice = resample_poly(voice, sample_rate // common, rate // common)
    offset = round(start * sample_rate)
    voice = voice[: max(nb_samples - offset, 0)]
    out[:, offset : offset + len(voice)] = voice
    return out
