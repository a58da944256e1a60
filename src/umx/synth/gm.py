"""General MIDI songs into the four stems: which stem each part plays, which part is re-voiced
as vocals or bass when a song has none of its own, and where each stem sounds.

The rules (`umx synth`'s, see :mod:`umx.synth.dataset`):

- drums: the percussion channel (channel 10, index 9);
- bass: the GM bass programs (33-40);
- vocals: the GM voice programs (choir aahs, voice oohs, synth voice) or, in a song with none,
  the lead melody (the highest mostly monophonic part) played on a voice program;
- other: everything else.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from umx.defaults import SOURCES
from umx.errors import UmxError
from umx.synth.midi import (
    CONTROL_CHANGE,
    NOTE_OFF,
    NOTE_ON,
    POLY_PRESSURE,
    PROGRAM_CHANGE,
    Event,
    Song,
    TempoMap,
)

"""The MUSDB18 sources, whose sum is the mixture."""
DRUM_CHANNEL = 9
BASS_PROGRAMS = frozenset(range(32, 40))
VOICE_PROGRAMS = (52, 53, 54)
"""Choir aahs, voice oohs, synth voice (GM programs 53-55, counted from 0 here)."""
GUITAR_PROGRAMS = frozenset(range(24, 32))
"""GM programs 25-32: nylon, steel, jazz, clean, muted, overdriven, distortion and harmonics."""
REVOICE_PROGRAMS = {"vocals": VOICE_PROGRAMS, "bass": tuple(sorted(BASS_PROGRAMS))}
"""The programs a lead melody or a bass line without one of theirs is re-voiced with."""
MIN_BUSY = 1 / 3
"""A part re-voiced as vocals or bass sounds in at least this fraction of the song."""
MAX_OVERLAPS = 0.2
"""A part is monophonic if at most this fraction of its notes start while another sounds."""
MIDDLE_C = 60
PARTS = {
    "vocals": "a voice program, or a lead melody among other instruments",
    "drums": "notes on channel 10",
    "bass": "GM programs 33-40, or a bass line among other instruments",
    "other": "an instrument that is not voice, drums or bass",
}
"""What a General MIDI song needs for each stem, as said in warnings."""
BANK_SELECT = frozenset((0, 32))
MIN_ACTIVITY = 0.5
"""An excerpt needs every stem sounding in at least this fraction of its seconds."""
MAX_SONG_SECONDS = 3600.0
"""The longest song analysed: its activity takes a row per second and stem, and a MIDI file of a
few bytes can declare a song of years (a long tick count at the slowest tempo)."""


@dataclass(frozen=True)
class Analysis:
    """What planning needs to know of a song.

    Attributes:
        activity: ``(nb_stems, nb_seconds)``: whether each stem sounds in each second.
        revoiced: the channels to re-voice, and the stem each then belongs to.
    """

    activity: np.ndarray
    revoiced: dict[int, str]


def stem_of(channel: int, program: int) -> str:
    """The stem a note belongs to, from its channel and the channel's GM program (from 0)."""
    if channel == DRUM_CHANNEL:
        return "drums"
    if program in VOICE_PROGRAMS:
        return "vocals"
    if program in BASS_PROGRAMS:
        return "bass"
    return "other"


def _event_stems(song: Song, revoice: dict[int, int]) -> list[str | None]:
    """For each event, the stem of its note, or None for the events that every stem needs.

    Args:
        song: the song.
        revoice: programs that replace those of some channels.
    """
    programs = [0] * 16
    sounding: dict[tuple[int, int], list[str]] = {}
    stems: list[str | None] = []
    for event in song.events:
        stem = None
        if event.kind == PROGRAM_CHANGE:
            programs[event.channel] = event.data[0]
        elif event.kind in (NOTE_ON, NOTE_OFF, POLY_PRESSURE):
            key = (event.channel, event.data[0])
            stem = stem_of(event.channel, revoice.get(event.channel, programs[event.channel]))
            if event.is_note_on:
                sounding.setdefault(key, []).append(stem)
            elif event.is_note_off and sounding.get(key):
                stem = sounding[key].pop(0)
        stems.append(stem)
    return stems


def _notes(song: Song, stems: list[str | None]) -> Iterator[tuple[Event, int, str]]:
    """Each note of ``song``: its note-on event, the tick it ends and its stem."""
    started: dict[tuple[int, int], list[tuple[Event, str]]] = {}
    for event, stem in zip(song.events, stems, strict=True):
        key = (event.channel, event.data[0]) if event.kind in (NOTE_ON, NOTE_OFF) else None
        if event.is_note_on:
            started.setdefault(key, []).append((event, stem))
        elif key and event.is_note_off and started.get(key):
            yield started[key][0][0], event.tick, started[key].pop(0)[1]
    for notes in started.values():
        for event, stem in notes:
            yield event, song.end_tick, stem


def _activity(song: Song, stems: list[str | None]) -> dict[tuple[int, str], np.ndarray]:
    """Whether the notes of each channel and stem sound in each second of the song.

    Raises:
        UmxError: the song lasts more than `MAX_SONG_SECONDS`.
    """
    tempo_map = TempoMap(song)
    length = tempo_map.seconds(song.end_tick)
    if length > MAX_SONG_SECONDS:
        raise UmxError(
            f"it lasts {length / 60:.3g} minutes; umx takes songs of up to "
            f"{MAX_SONG_SECONDS / 60:g} minutes"
        )
    nb_seconds = math.ceil(length) + 1
    activity: dict[tuple[int, str], np.ndarray] = {}
    for event, end, stem in _notes(song, stems):
        row = activity.setdefault((event.channel, stem), np.zeros(nb_seconds, dtype=bool))
        first = int(tempo_map.seconds(event.tick))
        row[first : max(math.ceil(tempo_map.seconds(end)), first + 1)] = True
    return activity


def _choose_part(
    parts: dict[int, list[tuple[int, int, int]]], busy: dict[int, float], highest: bool
) -> int | None:
    """The channel of a song's lead melody (``highest``) or bass line among ``parts``.

    Args:
        parts: ``{channel: [(start tick, end tick, key)]}``.
        busy: the fraction of the song's seconds in which each channel sounds.
        highest: pick the highest part, else the lowest.

    Returns:
        Among the parts that sound in enough of the song (and, for a bass line, lie below
        middle C), the highest (or lowest) of those that mostly play one note at a time, else
        of all; None if there is none.
    """

    def mean_key(channel: int) -> float:
        return sum(key for *_, key in parts[channel]) / len(parts[channel])

    def rank(channel: int) -> tuple[bool, float]:
        spans = sorted(parts[channel])
        overlaps = sum(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
        return overlaps <= MAX_OVERLAPS * len(spans), mean_key(channel) * (1 if highest else -1)

    candidates = [
        channel
        for channel in sorted(parts)
        if busy[channel] >= MIN_BUSY and (highest or mean_key(channel) < MIDDLE_C)
    ]
    return max(candidates, key=rank, default=None)


def analyse(song: Song) -> Analysis:
    """Finds when each stem sounds, and the parts to re-voice for missing vocals or bass.

    A song without a voice program gets its lead melody re-voiced as vocals, one without a
    bass program its bass line re-voiced as bass, if such a part stands out among the other
    instruments and at least one of them is left.

    Raises:
        UmxError: a stem still has no notes (one sentence naming the stem and what it needs),
            or the song lasts more than `MAX_SONG_SECONDS`.
    """
    stems = _event_stems(song, {})
    activity = _activity(song, stems)
    if not activity:
        raise UmxError("it has no notes")
    sounding = max(1, np.any(list(activity.values()), axis=0).sum())
    taken = {channel for channel, stem in activity if stem != "other"}
    parts: dict[int, list[tuple[int, int, int]]] = {}
    for event, end, _ in _notes(song, stems):
        if event.channel not in taken:
            parts.setdefault(event.channel, []).append((event.tick, end, event.data[0]))
    busy = {channel: activity[channel, "other"].sum() / sounding for channel in parts}
    revoiced: dict[int, str] = {}
    for stem in ("vocals", "bass"):
        if stem not in stems and len(parts) > 1:
            channel = _choose_part(parts, busy, highest=stem == "vocals")
            if channel is not None:
                revoiced[channel] = stem
                del parts[channel]
    nb_seconds = len(next(iter(activity.values())))
    rows = {stem: np.zeros(nb_seconds, dtype=bool) for stem in SOURCES}
    for (channel, stem), row in activity.items():
        rows[revoiced.get(channel, stem)] |= row
    for stem, row in rows.items():
        if not row.any():
            raise UmxError(f"it has no {stem} part ({PARTS[stem]}); is it General MIDI?")
    return Analysis(np.stack([rows[stem] for stem in SOURCES]), revoiced)


def valid_starts(activity: np.ndarray, seconds: float) -> np.ndarray:
    """The whole seconds where an excerpt of ``seconds`` can start with every stem active."""
    length = math.ceil(seconds)
    nb_starts = activity.shape[1] - length + 1
    if nb_starts < 1:
        return np.zeros(0, dtype=int)
    counts = np.cumsum(np.pad(activity, ((0, 0), (1, 0))), axis=1)
    active = (counts[:, length:] - counts[:, :-length])[:, :nb_starts]
    return np.flatnonzero((active >= MIN_ACTIVITY * length).all(axis=0))


def split_stems(song: Song, revoice: dict[int, int]) -> dict[str, Song]:
    """The song's events for each stem: its own notes and every event that is not a note.

    Args:
        song: the song.
        revoice: ``{channel: GM program}``: these channels' program and bank changes are
            replaced by one program change after the set-up events at tick 0.
    """
    events = [
        (event, stem)
        for event, stem in zip(song.events, _event_stems(song, revoice), strict=True)
        if event.channel not in revoice
        or not (
            event.kind == PROGRAM_CHANGE
            or (event.kind == CONTROL_CHANGE and event.data[0] in BANK_SELECT)
        )
    ]
    index = next(
        (i for i, (event, _) in enumerate(events) if event.tick > 0 or event.is_note_on),
        len(events),
    )
    events[index:index] = [
        (Event(0, PROGRAM_CHANGE | channel, bytes((program,))), None)
        for channel, program in sorted(revoice.items())
    ]
    return {
        name: Song(song.ticks_per_beat, [e for e, s in events if s in (None, name)], song.end_tick)
        for name in SOURCES
    }


def split_guitars(song: Song) -> tuple[Song, Song]:
    """``song`` (a stem's events) cut in two: the notes played on a guitar program
    (:data:`GUITAR_PROGRAMS`, off the drum channel), and the other notes. Every event that is not
    a note goes to both, so each sounds as it does in ``song``.

    Returns:
        ``(guitars, rest)``.
    """
    programs = [0] * 16
    sounding: dict[tuple[int, int], list[bool]] = {}
    guitars: list[Event] = []
    rest: list[Event] = []
    for event in song.events:
        guitar = None
        if event.kind == PROGRAM_CHANGE:
            programs[event.channel] = event.data[0]
        elif event.kind in (NOTE_ON, NOTE_OFF, POLY_PRESSURE):
            key = (event.channel, event.data[0])
            guitar = event.channel != DRUM_CHANNEL and programs[event.channel] in GUITAR_PROGRAMS
            if event.is_note_on:
                sounding.setdefault(key, []).append(guitar)
            elif event.is_note_off and sounding.get(key):
                guitar = sounding[key].pop(0)
        if guitar is not False:
            guitars.append(event)
        if not guitar:
            rest.append(event)
    return (
        Song(song.ticks_per_beat, guitars, song.end_tick),
        Song(song.ticks_per_beat, rest, song.end_tick),
    )
