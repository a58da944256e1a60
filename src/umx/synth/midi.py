"""Standard MIDI files in and out, and the edits synthesis needs: excerpt, transpose, tempo.

A :class:`Song` holds the events of every track merged into one list in time order, with
absolute times in ticks, which is all a synthesizer needs (it is what a format-0 file holds).
Reading accepts formats 0 and 1 with metrical time; writing always produces format 0.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from umx.errors import UmxError

NOTE_OFF = 0x80
NOTE_ON = 0x90
POLY_PRESSURE = 0xA0
CONTROL_CHANGE = 0xB0
PROGRAM_CHANGE = 0xC0
META = 0xFF
META_TEMPO = 0x51
META_END_OF_TRACK = 0x2F

DEFAULT_TEMPO = 500_000
"""Microseconds per beat until the first tempo event: 120 beats per minute."""

_CHANNEL_DATA_LENGTH = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}


class Event(NamedTuple):
    """One MIDI event.

    Attributes:
        tick: absolute time in ticks.
        status: the status byte: a channel message (``0x80``-``0xEF``, channel in the low
            nibble), ``0xFF`` for a meta event, ``0xF0`` or ``0xF7`` for system exclusive.
        data: the bytes after the status: the data bytes of a channel message, the type, length
            and payload of a meta event as in the file, the payload of a system-exclusive message.
    """

    tick: int
    status: int
    data: bytes

    @property
    def kind(self) -> int:
        """The message type without the channel (``NOTE_ON``...), or the status itself."""
        return self.status & 0xF0 if self.status < 0xF0 else self.status

    @property
    def channel(self) -> int | None:
        """The channel (0-15) of a channel message, else None."""
        return self.status & 0x0F if self.status < 0xF0 else None

    @property
    def is_note_on(self) -> bool:
        """A note-on with a non-zero velocity."""
        return self.kind == NOTE_ON and self.data[1] > 0

    @property
    def is_note_off(self) -> bool:
        """A note-off, or a note-on with velocity zero."""
        return self.kind == NOTE_OFF or (self.kind == NOTE_ON and self.data[1] == 0)


@dataclass
class Song:
    """The events of a MIDI file, merged in time order.

    Attributes:
        ticks_per_beat: the time division: ticks per quarter note.
        events: events sorted by tick; ties keep the order of the file.
        end_tick: the end of the song (its last end-of-track), at least the last event's tick.
        missing_tracks: tracks its header declares that its file does not hold (the file was
            cut between two tracks, or its header miscounts them, as some real files do).
    """

    ticks_per_beat: int
    events: list[Event] = field(default_factory=list)
    end_tick: int = 0
    missing_tracks: int = 0


def note(tick: int, channel: int, key: int, velocity: int, length: int) -> tuple[Event, Event]:
    """A note as its note-on and note-off events, ``length`` ticks apart."""
    return (
        Event(tick, NOTE_ON | channel, bytes((key, velocity))),
        Event(tick + length, NOTE_OFF | channel, bytes((key, 0))),
    )


def tempo_event(tick: int, microseconds_per_beat: int) -> Event:
    """A set-tempo meta event."""
    return Event(tick, META, bytes((META_TEMPO, 3)) + microseconds_per_beat.to_bytes(3, "big"))


def read_midi(path: str | Path) -> Song:
    """Reads a standard MIDI file of format 0 or 1.

    Args:
        path: the file.

    Returns:
        Its events, all tracks merged.

    Raises:
        UmxError: the file cannot be read or is not a MIDI file umx understands; the message
            names the file.
    """
    path = Path(path)
    try:
        return parse_midi(path.read_bytes())
    except OSError as error:
        raise UmxError(f"cannot read {path} ({error.strerror})") from error
    except (ValueError, IndexError, struct.error) as error:
        raise UmxError(f"{path} is not a readable MIDI file ({error})") from error


def parse_midi(data: bytes) -> Song:
    """Parses the bytes of a standard MIDI file; see :func:`read_midi`.

    Raises:
        ValueError: the bytes are not a MIDI file of format 0 or 1 with metrical time, or a
            track chunk is truncated (IndexError or struct.error: they end too soon).
    """
    if data[:4] != b"MThd":
        raise ValueError("no MThd header")
    header_length, file_format, nb_tracks, division = struct.unpack(">IHHH", data[4:14])
    if file_format not in (0, 1):
        raise ValueError(f"MIDI format {file_format} is not supported")
    if division & 0x8000 or division == 0:
        raise ValueError("SMPTE time division is not supported")
    position = 8 + header_length
    tracks: list[list[Event]] = []
    end_tick = 0
    while position + 8 <= len(data) and len(tracks) < nb_tracks:
        chunk_type, chunk_length = struct.unpack(">4sI", data[position : position + 8])
        chunk = data[position + 8 : position + 8 + chunk_length]
        position += 8 + chunk_length
        if chunk_type == b"MTrk":
            events, track_end = _read_track(chunk, chunk_length, len(tracks) + 1)
            tracks.append(events)
            end_tick = max(end_tick, track_end)
    if not tracks:
        raise ValueError("no tracks")
    events = sorted((event for track in tracks for event in track), key=lambda e: e.tick)
    return Song(division, events, end_tick, nb_tracks - len(tracks))


def _read_track(chunk: bytes, declared: int, number: int) -> tuple[list[Event], int]:
    """The events of track ``number`` and the tick where it ends (see :func:`_parse_track`),
    from its chunk as the file holds it, ``declared`` bytes long by its header.

    A chunk the file holds only part of is refused: cut between two events, it would read as
    a shorter song. A track that ends with its end-of-track event within what the file holds
    is complete, only its declared length is wrong, and is read; a whole chunk need not end
    with one (real files sometimes lack it).

    Raises:
        ValueError: the chunk is truncated, or its events cannot be read.
    """
    truncated = len(chunk) < declared
    message = f"truncated: its track {number} declares {declared:,} bytes, the file holds "
    try:
        events, end_tick, ended = _parse_track(chunk)
    except (ValueError, IndexError) as error:
        if truncated:  # cut inside an event: the cut is the fault, not the event
            raise ValueError(f"{message}{len(chunk):,}") from error
        raise
    if truncated and not ended:
        raise ValueError(f"{message}{len(chunk):,}")
    return events, end_tick


def _parse_track(chunk: bytes) -> tuple[list[Event], int, bool]:
    """The events of one track chunk (end-of-track dropped), the tick where it ends, and
    whether it ended with an end-of-track event (else with the chunk)."""
    events: list[Event] = []
    position = tick = 0
    running_status = 0
    while position < len(chunk):
        delta, position = _read_varlen(chunk, position)
        tick += delta
        status = chunk[position]
        if status & 0x80:
            position += 1
        elif running_status:
            status = running_status
        else:
            raise ValueError(f"data byte without a status at byte {position} of a track")
        if status == META:
            meta_type = chunk[position]
            length, start = _read_varlen(chunk, position + 1)
            if meta_type == META_END_OF_TRACK:
                return events, tick, True
            payload = chunk[position:start] + chunk[start : start + length]
            position = start + length
        elif status in (0xF0, 0xF7):
            length, start = _read_varlen(chunk, position)
            payload = chunk[start : start + length]
            position = start + length
        elif status < 0xF0:
            running_status = status
            length = _CHANNEL_DATA_LENGTH[status & 0xF0]
            payload = chunk[position : position + length]
            if any(byte & 0x80 for byte in payload):  # would be read as a status when written
                raise ValueError(f"a data byte above 127 at byte {position} of a track")
            position += length
        else:
            raise ValueError(f"system message 0x{status:02X} in a file")
        if position > len(chunk):
            raise ValueError("a track ends inside an event")
        events.append(Event(tick, status, bytes(payload)))
    return events, tick, False


def _read_varlen(data: bytes, position: int) -> tuple[int, int]:
    """A variable-length quantity at ``position``: its value and the position after it."""
    value = 0
    for _ in range(4):
        byte = data[position]
        position += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, position
    raise ValueError("variable-length quantity longer than 4 bytes")


def _varlen(value: int) -> bytes:
    """A variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def encode_midi(song: Song) -> bytes:
    """The bytes of a format-0 standard MIDI file holding ``song``."""
    track = bytearray()
    tick = 0
    for event in song.events:
        track += _varlen(event.tick - tick)
        tick = event.tick
        track.append(event.status)
        if event.status in (0xF0, 0xF7):
            track += _varlen(len(event.data))
        track += event.data
    track += _varlen(max(song.end_tick - tick, 0)) + bytes((META, META_END_OF_TRACK, 0))
    header = struct.pack(">4sIHHH", b"MThd", 6, 0, 1, song.ticks_per_beat)
    return header + struct.pack(">4sI", b"MTrk", len(track)) + bytes(track)


class TempoMap:
    """Converts between ticks and seconds along a song's tempo changes."""

    def __init__(self, song: Song) -> None:
        self.ticks_per_beat = song.ticks_per_beat
        self._ticks = [0]
        self._seconds = [0.0]
        self._tempos = [DEFAULT_TEMPO]
        for event in song.events:
            if event.status == META and event.data[0] == META_TEMPO and len(event.data) == 5:
                seconds = self.seconds(event.tick)
                if event.tick == self._ticks[-1]:
                    del self._ticks[-1], self._seconds[-1], self._tempos[-1]
                self._ticks.append(event.tick)
                self._seconds.append(seconds)
                self._tempos.append(max(int.from_bytes(event.data[2:5], "big"), 1))

    def seconds(self, tick: int) -> float:
        """The time in seconds of ``tick``."""
        index = bisect.bisect_right(self._ticks, tick) - 1
        beats = (tick - self._ticks[index]) / self.ticks_per_beat
        return self._seconds[index] + beats * self._tempos[index] / 1e6

    def tick(self, seconds: float) -> int:
        """The first tick at or after ``seconds``."""
        index = bisect.bisect_right(self._seconds, seconds) - 1
        beats = (seconds - self._seconds[index]) * 1e6 / self._tempos[index]
        return self._ticks[index] + int(-(-beats * self.ticks_per_beat // 1))


def excerpt(song: Song, start_tick: int, end_tick: int) -> Song:
    """The part of ``song`` from ``start_tick`` to ``end_tick``, moved to start at tick 0.

    Events before the start that set up the synthesizer (program, controllers, pitch bend,
    tempo, system exclusive) are kept at tick 0 in their order; notes that started before the
    start are dropped, and the end of the excerpt cuts the notes still sounding.
    """
    events = []
    for event in song.events:
        if event.tick >= end_tick:
            break
        if event.tick >= start_tick:
            events.append(event._replace(tick=event.tick - start_tick))
        elif event.kind not in (NOTE_ON, NOTE_OFF, POLY_PRESSURE):
            events.append(event._replace(tick=0))
    return replace(song, events=events, end_tick=end_tick - start_tick)


def transpose(song: Song, semitones: int, keep_channels: frozenset[int] = frozenset()) -> Song:
    """``song`` with its notes moved by ``semitones``, except on ``keep_channels`` (drums).

    Notes moved out of the MIDI range (0-127) are dropped.
    """
    events = []
    for event in song.events:
        if event.kind in (NOTE_ON, NOTE_OFF, POLY_PRESSURE) and event.channel not in keep_channels:
            key = event.data[0] + semitones
            if not 0 <= key < 128:
                continue
            event = event._replace(data=bytes((key, event.data[1])))
        events.append(event)
    return replace(song, events=events)


def scale_tempo(song: Song, factor: float) -> Song:
    """``song`` played ``factor`` times faster (every tempo event scaled)."""
    events = [
        tempo_event(event.tick, _scaled(int.from_bytes(event.data[2:5], "big"), factor))
        if event.status == META and event.data[0] == META_TEMPO and len(event.data) == 5
        else event
        for event in song.events
    ]
    if not any(e.tick == 0 and e.status == META and e.data[0] == META_TEMPO for e in events):
        events.insert(0, tempo_event(0, _scaled(DEFAULT_TEMPO, factor)))
    return replace(song, events=events)


def _scaled(microseconds_per_beat: int, factor: float) -> int:
    """A tempo ``factor`` times faster, within what a tempo event can hold."""
    return min(max(round(microseconds_per_beat / factor), 1), 0xFFFFFF)
