"""Renders one planned track: each stem by ``fluidsynth`` (or the drum sampler and the singers;
the guitars of `other` through an amp if it has one, its recorded sounds mixed in), then
levelled, panned, faded, through the mix bus if it has one, and quantised to 16 bits; the
mixture is the exact sum of the stems.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import IO

import numpy as np
import soundfile

from umx.defaults import (
    SOUNDFONT_PACKAGES,
)
from umx.errors import UmxError, display_path, printable
from umx.synth.gm import DRUM_CHANNEL, split_guitars, split_stems
from umx.synth.midi import (
    CONTROL_CHANGE,
    Event,
    Song,
    TempoMap,
    encode_midi,
    excerpt,
    scale_tempo,
    transpose,
)
from umx.synth.plan import TrackPlan, lever

SUSTAIN_PEDAL, ALL_NOTES_OFF = 64, 123
SILENCE_DB = -60.0
"""An excerpt with a stem quieter than this (RMS, dB full scale, as rendered) is skipped."""
RENDER_TIMEOUT = 600
"""Seconds one fluidsynth run may take: it renders a track many times faster than real time."""
RENDER_GAIN = 0.5
"""fluidsynth's master gain; stems are levelled afterwards, so it only sets the silence scale."""
STEM_DB = -20.0
"""Every stem is first brought to this RMS level, then given a random gain."""
PCM_SCALE = 32768
LOAD_FAILURE, ERROR = "Failed to load SoundFont", "fluidsynth: error: "
"""What fluidsynth writes when it cannot load a soundfont, and how its errors begin."""


def check_fluidsynth() -> str:
    """The path of the fluidsynth program.

    Raises:
        UmxError: it is not installed.
    """
    path = shutil.which("fluidsynth")
    if path is None:
        raise UmxError("fluidsynth is not installed (apt-get install fluidsynth)")
    return path


def check_soundfont(path: str | Path) -> Path:
    """``path`` resolved, if it is a SoundFont file (sf2, or sf3 with compressed samples) that
    fluidsynth loads: one it cannot would render silence, found only when every track made
    with it is skipped.

    Raises:
        UmxError: it is missing (naming the Debian package that installs it when umx knows it),
            is not a SoundFont, or fluidsynth cannot load it (or is not installed).
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UmxError(f"{display_path(path)} is not a regular file: give a SoundFont file")
    if not path.is_file():
        package = SOUNDFONT_PACKAGES.get(path)
        hint = f" (apt-get install {package})" if package else ""
        raise UmxError(f"soundfont {display_path(path)} not found{hint}")
    with open(path, "rb") as file:
        header = file.read(12)
    if header[:4] != b"RIFF" or header[8:12] != b"sfbk":
        raise UmxError(f"{display_path(path)} is not a SoundFont file")
    path = path.resolve()
    render_midi(Song(ticks_per_beat=480), path, 0, sample_rate=8000)  # loads it, plays nothing
    return path


def render_midi(song: Song, soundfont: Path, nb_samples: int, sample_rate: int) -> np.ndarray:
    """Renders ``song`` with fluidsynth.

    fluidsynth renders until every note has faded out, so the notes still held at the song's
    end are released there (sustain pedal up, all notes off, on every channel). Its fallback
    soundfont is turned off, so that a soundfont it cannot load gives silence, not another
    soundfont's sound.

    Returns:
        ``(nb_channels=2, nb_samples)`` float64 samples, cut or padded with zeros.

    Raises:
        UmxError: fluidsynth fails (its last message is quoted) or cannot load the soundfont
            (its first error is quoted).
    """
    with tempfile.TemporaryDirectory(prefix="umx-synth-") as folder:
        midi_path, wav_path = Path(folder, "song.mid"), Path(folder, "song.wav")
        release = [
            Event(song.end_tick, CONTROL_CHANGE | channel, bytes((number, 0)))
            for channel in range(16)
            for number in (SUSTAIN_PEDAL, ALL_NOTES_OFF)
        ]
        midi_path.write_bytes(encode_midi(replace(song, events=song.events + release)))
        command = [
            check_fluidsynth(), "-n", "-i", "-q", "-o", "synth.default-soundfont=",
            "-o", "synth.dynamic-sample-loading=1",
            "-F", str(wav_path), "-T", "wav", "-O", "float", "-r", str(sample_rate),
            "-g", str(RENDER_GAIN), str(soundfont), str(midi_path),
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, check=False, timeout=RENDER_TIMEOUT
            )
        except subprocess.TimeoutExpired as error:
            raise UmxError(
                f"fluidsynth took over {RENDER_TIMEOUT} s with {display_path(soundfont)}"
            ) from error
        if result.returncode != 0 or not wav_path.is_file():
            message = (result.stderr.strip().splitlines() or ["no output"])[-1]
            shown = display_path(soundfont)
            raise UmxError(f"fluidsynth failed with {shown} ({printable(message)})")
        if LOAD_FAILURE in result.stderr:  # it goes on without the soundfont, and exits 0
            errors = [line for line in result.stderr.splitlines() if line.startswith(ERROR)]
            errors.append(LOAD_FAILURE)
            raise UmxError(
                f"fluidsynth cannot load the SoundFont {display_path(soundfont)}"
                f" ({printable(errors[0].removeprefix(ERROR))}): give another SoundFont file"
            )
        audio, _ = soundfile.read(wav_path, dtype="float64", always_2d=True)
    audio = audio[:nb_samples].T
    return np.pad(audio, ((0, 0), (0, nb_samples - audio.shape[1])))


def level_db(audio: np.ndarray) -> float:
    """RMS level in dB full scale (-inf for silence)."""
    rms = float(np.sqrt(np.mean(np.square(audio))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def render_track(
    plan: TrackPlan, duration: float, sample_rate: int, fade: float = 0.0
) -> dict[str, np.ndarray] | None:
    """Renders one track.

    Args:
        plan: the track.
        duration: its length in seconds.
        sample_rate: samples per second.
        fade: seconds of fade-in and fade-out.

    Returns:
        ``{stem: (nb_samples, nb_channels=2) int16}`` for the four stems and ``mixture``, their
        exact sum; None when a stem renders silent. The loudest of the mixture and the stems
        peaks at ``plan.peak_db``.
    """
    song = plan.song.load()
    tempo_map = TempoMap(song)
    start = tempo_map.tick(plan.start)
    end = tempo_map.tick(plan.start + duration * plan.tempo)
    song = excerpt(song, start, end)
    song = transpose(scale_tempo(song, plan.tempo), plan.transpose, frozenset({DRUM_CHANNEL}))
    nb_samples = round(duration * sample_rate)
    soundfont = Path(plan.soundfont)
    parts = split_stems(song, plan.revoice)
    raw = {
        stem: lever("sampler").play_drums(
            part, lever("sampler").load_kit(plan.drum_kit), nb_samples, sample_rate, plan.seed
        )
        if stem == "drums" and plan.drum_kit
        else render_midi(part, soundfont, nb_samples, sample_rate)
        for stem, part in parts.items()
        if not (stem == "other" and plan.amp)
    }
    if plan.amp:
        other = parts["other"]
        raw["other"] = _amplified_other(other, plan.amp, soundfont, sample_rate, nb_samples)
    if any(level_db(audio) < SILENCE_DB for audio in raw.values()):
        return None
    if plan.sung:
        sung = lever("singer").sing(parts["vocals"], nb_samples, sample_rate, plan.seed)
        raw["vocals"] = _mix_in(raw["vocals"], sung, plan.sung)
    if plan.festival:
        seed, voice = plan.festival["seed"], plan.festival["voice"]
        sung = lever("festival").sing(parts["vocals"], nb_samples, sample_rate, seed, voice)
        raw["vocals"] = _mix_in(raw["vocals"], sung, plan.festival["share"])
    if plan.recorded:
        layer = lever("recorded").play_layer(plan.recorded, nb_samples, sample_rate)
        raw["other"] = _mix_in(raw["other"], layer, plan.recorded["share"])
    if plan.production:
        room = plan.production["room"]
        for stem, chain in plan.production["stems"].items():
            raw[stem] = lever("production").apply_chain(raw[stem], chain, room, sample_rate)
    envelope = np.ones(nb_samples)
    if fade:
        ramp = np.linspace(0, 1, round(fade * sample_rate))
        envelope[: len(ramp)], envelope[len(envelope) - len(ramp) :] = ramp, ramp[::-1]
    stems = {}
    for stem, audio in raw.items():
        gain = 10 ** ((STEM_DB + plan.gains_db[stem] - level_db(audio)) / 20)
        angle = (plan.pans[stem] + 1) * math.pi / 4
        balance = math.sqrt(2) * np.array([[math.cos(angle)], [math.sin(angle)]])
        stems[stem] = audio * gain * balance * envelope
    if plan.mix_bus:
        stems = lever("bus").apply_bus(stems, plan.mix_bus, sample_rate)
    peak = max(np.abs(audio).max() for audio in [sum(stems.values()), *stems.values()])
    scale = 10 ** (plan.peak_db / 20) / peak * PCM_SCALE
    tracks = {stem: np.round(audio * scale).astype(np.int16).T for stem, audio in stems.items()}
    mixture = sum(audio.astype(np.int32) for audio in tracks.values())
    tracks["mixture"] = mixture.astype(np.int16)
    return tracks


def _mix_in(stem: np.ndarray, added: np.ndarray, share: float) -> np.ndarray:
    """``stem`` with ``added`` (a singer's voice, recorded sounds) mixed in at ``share`` of the
    level (both levelled first); ``stem`` unchanged when ``added`` is silent.

    Args:
        stem: ``(nb_channels=2, nb_samples)``.
        added: ``(nb_channels=2, nb_samples)``.
        share: between 0 and 1.
    """
    if level_db(added) <= SILENCE_DB:
        return stem
    rest = stem * 10 ** (-level_db(stem) / 20)
    return rest * (1 - share) + added * 10 ** (-level_db(added) / 20) * share


def _amplified_other(
    part: Song, amp: dict, soundfont: Path, sample_rate: int, nb_samples: int
) -> np.ndarray:
    """The `other` stem with its guitar notes rendered on their own, through ``amp``, and added
    to the rest; as rendered whole when it has no guitar notes.

    Returns:
        ``(nb_channels=2, nb_samples)`` float64.
    """
    guitars, rest = split_guitars(part)
    if not any(event.is_note_on for event in guitars.events):
        return render_midi(part, soundfont, nb_samples, sample_rate)
    amplified = lever("amp").amplify(
        render_midi(guitars, soundfont, nb_samples, sample_rate), amp, sample_rate
    )
    return render_midi(rest, soundfont, nb_samples, sample_rate) + amplified


def write_pcm16(
    path: Path | IO[bytes], audio: np.ndarray, sample_rate: int, suffix: str | None = None
) -> None:
    """Writes 16-bit samples exactly, as wav or flac by ``suffix`` (by default ``path``'s; an
    open file needs it)."""
    kind = (suffix or Path(path).suffix)[1:].upper()  # type: ignore[arg-type]
    soundfile.write(path, audio, sample_rate, subtype="PCM_16", format=kind)
