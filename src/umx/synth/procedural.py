"""A procedural song generator: General MIDI songs for the four stems, all from one seed.

A song has a tempo, a key, a chord progression per section (verse, chorus), a drum pattern with
fills, a bass line, one to three accompanying instruments (chords, pulses, arpeggios) and a sung
melody built from repeated motifs and, if dense, three more `other` parts (held string or pad
chords, a synth lead, distorted-guitar power chords), on these channels:

=======  ==================================================  ============
channel  part                                                stem
=======  ==================================================  ============
0        melody, on a voice program (choir, voice, synth)    vocals
1        bass line, on a GM bass program                     bass
2-4      accompaniment                                       other
5-7      dense parts: strings or pad, synth lead, guitar     other
9        drum kit                                            drums
=======  ==================================================  ============

The same seed always gives the same events (Python's :class:`random.Random` is seeded with it),
so a song needs no storage: its seed is enough. The dense parts draw from a generator of their
own, so a dense song is the plain song of its seed with these parts added.
"""

from __future__ import annotations

import math
import random

from umx.synth.midi import (
    CONTROL_CHANGE,
    PROGRAM_CHANGE,
    Event,
    Song,
    note,
    tempo_event,
)

TICKS_PER_BEAT = 480
STEP = TICKS_PER_BEAT // 4
"""A sixteenth note: patterns below count in steps, sixteen to a bar of 4/4."""
BAR = 16 * STEP

MELODY_CHANNEL, BASS_CHANNEL, DRUM_CHANNEL = 0, 1, 9
ACCOMPANIMENT_CHANNELS = (2, 3, 4)

VOICE_PROGRAMS = (52, 53, 54)
"""Choir aahs, voice oohs, synth voice (GM programs 53-55, counted from 0 here)."""
BASS_PROGRAMS = tuple(range(32, 40))
ACCOMPANIMENT_PROGRAMS = (
    *range(0, 8),  # pianos
    *range(16, 21),  # organs
    *range(24, 32),  # guitars
    *range(48, 52),  # string ensembles
    *range(56, 64),  # brass
    *range(64, 72),  # reeds
    *range(72, 80),  # pipes
    *range(80, 85),  # synth leads
    *range(88, 96),  # synth pads
)

TEMPO_RANGE = (80, 140)
"""Beats per minute."""
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 3), (1, 4, 0, 0), (0, 3, 0, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 5, 3, 4), (0, 3, 6, 2)),
}
"""Four-chord progressions as scale degrees (0 = tonic), one chord a bar."""

KICK, SNARE, CLAP, CLOSED_HAT, OPEN_HAT, CRASH, RIDE = 36, 38, 39, 42, 46, 49, 51
LOW_TOM, MID_TOM, HIGH_TOM = 45, 47, 50
DRUM_PATTERNS = (
    {KICK: "x.......x.......", SNARE: "....x.......x...", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
    {KICK: "x...x...x...x...", CLAP: "....x.......x...", OPEN_HAT: "..x...x...x...x."},
    {KICK: "x.........x.....", SNARE: "........x.......", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
    {KICK: "x......x..x.....", SNARE: "....x.......x...", CLOSED_HAT: "xoxoxoxoxoxoxoxo"},
    {KICK: "x.....x...x.....", SNARE: "....x.......x..o", RIDE: "x.x.x.x.x.x.x.x."},
    {KICK: "x..x..x...x..x..", SNARE: "....x.......x...", CLOSED_HAT: "x.xxx.xxx.xxx.xx"},
)
"""Drum grooves: per drum, sixteen steps of a bar, ``x`` a hit, ``o`` a soft hit."""
FILLS = ("ssss", "sstt", "tTmm", "s.ss", "TTmm")
"""The last beat of a section: s snare, t high tom, T mid tom, m low tom, . rest."""
_FILL_DRUMS = {"s": SNARE, "t": HIGH_TOM, "T": MID_TOM, "m": LOW_TOM}

BASS_PATTERNS = (
    ((0, 16, "R"),),
    ((0, 4, "R"), (4, 4, "R"), (8, 4, "R"), (12, 4, "R")),
    ((0, 6, "R"), (6, 2, "R"), (8, 4, "5"), (12, 4, "R")),
    tuple((step, 2, "R") for step in range(0, 16, 2)),
    tuple((step, 2, "R" if step % 4 == 0 else "8") for step in range(0, 16, 2)),
    ((0, 4, "R"), (4, 4, "3"), (8, 4, "5"), (12, 4, "A")),
)
"""Bass bars: (step, length in steps, note): R root, 3 third, 5 fifth, 8 octave, A approach."""

ACCOMPANIMENT_STYLES = ("pad", "pulse", "arpeggio", "offbeat")
DENSE_PARTS = {
    5: ("strings", (*range(48, 52), *range(88, 96))),  # string ensembles, synth pads
    6: ("lead", tuple(range(80, 88))),  # synth leads
    7: ("guitar", (29, 30)),  # overdriven and distortion guitars
}
"""The dense parts: ``{channel: (part, GM programs)}``."""
GUITAR_RHYTHMS = ("x.x.x.x.x.x.x.x.", "x..x..x.x..x..x.", "xxx.xxx.xxx.xx.x", "x.......x.x.....")
"""Power-chord rhythms of the dense guitar, sixteen steps a bar (``x`` a chord)."""
LOW_E = 40

INTRO_BARS = 2
SECTION_BARS = 8
MELODY_LOW, MELODY_HIGH = 57, 79
"""The melody's range in MIDI keys (A3 to G5)."""


def generate_song(seed: int, min_seconds: float = 0.0, dense: bool = False) -> Song:
    """A new song, the same for the same arguments.

    Args:
        seed: chooses everything: tempo, key, progressions, instruments, parts.
        min_seconds: the song lasts at least this long (sections are added until it does).
        dense: add the dense `other` parts (strings or pad, synth lead, guitar) to the song
            the seed gives.

    Returns:
        The song: a two-bar intro without melody, then verses and choruses, and a final bar.
    """
    rng = random.Random(seed)
    bpm = rng.randint(*TEMPO_RANGE)
    mode = rng.choice(tuple(SCALES))
    root = rng.randrange(12)
    scale = SCALES[mode]
    verse, chorus = rng.sample(PROGRESSIONS[mode], 2)
    bar_seconds = 4 * 60 / bpm
    nb_sections = max(2, math.ceil((min_seconds / bar_seconds - INTRO_BARS - 1) / SECTION_BARS))
    sections = [("intro", verse, INTRO_BARS)] + [
        ("chorus" if index % 2 else "verse", chorus if index % 2 else verse, SECTION_BARS)
        for index in range(nb_sections)
    ]

    events = [tempo_event(0, round(60e6 / bpm))]
    events += _setup(rng, MELODY_CHANNEL, rng.choice(VOICE_PROGRAMS), pan=64)
    events += _setup(rng, BASS_CHANNEL, rng.choice(BASS_PROGRAMS), pan=64)
    events += _setup(rng, DRUM_CHANNEL, 0, pan=64)
    styles = rng.sample(ACCOMPANIMENT_STYLES, rng.randint(1, 3))
    channels = ACCOMPANIMENT_CHANNELS[: len(styles)]
    for channel in channels:
        events += _setup(rng, channel, rng.choice(ACCOMPANIMENT_PROGRAMS), rng.randint(24, 104))

    grooves = {name: rng.choice(DRUM_PATTERNS) for name in ("intro", "verse", "chorus")}
    bass = {name: rng.choice(BASS_PATTERNS) for name in ("intro", "verse", "chorus")}
    motifs = {name: _motif(rng) for name in ("verse", "chorus")}
    bar = 0
    bar_chords = []
    for name, progression, nb_bars in sections:
        chords = [_chord(scale, root, progression[i % 4]) for i in range(nb_bars + 1)]
        bar_chords += chords[:nb_bars]
        for index in range(nb_bars):
            tick = (bar + index) * BAR
            fill = index == nb_bars - 1
            events += _drums(rng, tick, grooves[name], crash=index == 0, fill=fill)
            events += _bass(rng, tick, bass[name], chords[index], chords[index + 1])
            for channel, style in zip(channels, styles, strict=True):
                events += _accompaniment(rng, tick, channel, style, chords[index])
        if name != "intro":
            lift = 2 if name == "chorus" else 0
            events += _melody(rng, bar * BAR, nb_bars, motifs[name], scale, root, chords, lift)
        bar += nb_bars
    events += _ending(rng, bar * BAR, _chord(scale, root, 0), channels)
    if dense:
        events += _dense_parts(random.Random(f"dense:{seed}"), bar_chords)
    events.sort(key=lambda event: (event.tick, not event.is_note_off))
    return Song(TICKS_PER_BEAT, events, end_tick=(bar + 1) * BAR)


def _setup(rng: random.Random, channel: int, program: int, pan: int) -> list[Event]:
    """Program, volume, pan, reverb and chorus sends of a channel at the start."""
    controllers = {
        7: rng.randint(90, 115),
        10: pan,
        91: rng.randint(20, 70),
        93: rng.randint(0, 40),
    }
    return [Event(0, PROGRAM_CHANGE | channel, bytes((program,)))] + [
        Event(0, CONTROL_CHANGE | channel, bytes((number, value)))
        for number, value in controllers.items()
    ]


def _chord(scale: tuple[int, ...], root: int, degree: int) -> list[int]:
    """A triad on ``degree`` of the scale: three pitch classes' keys in the octave of C3."""
    return [
        48 + root + scale[(degree + step) % 7] + 12 * ((degree + step) // 7) for step in (0, 2, 4)
    ]


def _velocity(rng: random.Random, base: int) -> int:
    """``base`` with a little human variation."""
    return min(max(base + rng.randint(-8, 8), 1), 127)


def _drums(
    rng: random.Random, tick: int, groove: dict[int, str], crash: bool, fill: bool
) -> list[Event]:
    """One bar of drums: the groove, a crash on the first beat, a fill on the last beat."""
    hits = {(step, drum): char for drum, row in groove.items() for step, char in enumerate(row)}
    if fill:
        hits = {key: char for key, char in hits.items() if key[0] < 12 or key[1] == KICK}
        for step, char in enumerate(rng.choice(FILLS), start=12):
            if char != ".":
                hits[step, _FILL_DRUMS[char]] = "x"
    if crash:
        hits[0, CRASH] = "x"
    events: list[Event] = []
    for (step, drum), char in sorted(hits.items()):
        if char != ".":
            strength = 100 if char == "x" else 60
            events += note(tick + step * STEP, DRUM_CHANNEL, drum, _velocity(rng, strength), STEP)
    return events


def _bass(
    rng: random.Random,
    tick: int,
    pattern: tuple[tuple[int, int, str], ...],
    chord: list[int],
    next_chord: list[int],
) -> list[Event]:
    """One bar of bass line over ``chord``, leading to ``next_chord``."""
    low = _bass_root(chord)
    intervals = {"R": 0, "3": chord[1] - chord[0], "5": chord[2] - chord[0], "8": 12}
    intervals["A"] = _bass_root(next_chord) - 1 - low
    events: list[Event] = []
    for step, length, choice in pattern:
        key = low + intervals[choice]
        events += note(
            tick + step * STEP, BASS_CHANNEL, key, _velocity(rng, 95), length * STEP - 10
        )
    return events


def _bass_root(chord: list[int]) -> int:
    """The key of the chord's root between E1 and D#2."""
    return 28 + (chord[0] - 28) % 12


def _accompaniment(
    rng: random.Random, tick: int, channel: int, style: str, chord: list[int]
) -> list[Event]:
    """One bar of an accompanying part playing ``chord`` in ``style``."""
    voicing = [key + 12 for key in chord]
    if style == "pad":
        notes = [(0, 16, key) for key in voicing]
    elif style == "pulse":
        notes = [(step, 3, key) for step in range(0, 16, 4) for key in voicing]
    elif style == "offbeat":
        notes = [(step, 2, key) for step in range(2, 16, 4) for key in voicing]
    else:
        tones = [*voicing, voicing[0] + 12, voicing[1] + 12, *voicing[:1]]
        notes = [(step, 2, tones[index % len(tones)]) for index, step in enumerate(range(0, 16, 2))]
    events: list[Event] = []
    for step, length, key in notes:
        events += note(tick + step * STEP, channel, key, _velocity(rng, 75), length * STEP - 10)
    return events


def _motif(rng: random.Random) -> list[tuple[int, int, int]]:
    """Two bars of melody: (step, length in steps, scale-degree move), ending with a breath."""
    notes, step = [], 0
    while step < 28:
        length = rng.choice((2, 2, 4, 4, 4, 6, 8))
        if rng.random() > 0.15:
            notes.append((step, min(length, 28 - step), rng.choice((-2, -1, -1, 0, 1, 1, 2))))
        step += length
    return notes


def _melody(
    rng: random.Random,
    tick: int,
    nb_bars: int,
    motif: list[tuple[int, int, int]],
    scale: tuple[int, ...],
    root: int,
    chords: list[list[int]],
    lift: int,
) -> list[Event]:
    """The sung melody of a section: its motif repeated, with small variations, over its chords.

    Notes on the first beat of a bar move to the nearest tone of the bar's chord; ``lift``
    raises the melody by that many scale degrees (choruses sing higher).
    """
    degree = 9 + lift
    events: list[Event] = []
    for phrase in range(0, nb_bars, 2):
        for step, length, move in motif:
            degree += move if rng.random() > 0.2 else rng.choice((-1, 1))
            degree = min(max(degree, 5), 16)
            key = _key(scale, root, degree)
            if step % 16 == 0:
                chord = chords[phrase + step // 16]
                key = min(
                    (tone + 12 * octave for tone in chord for octave in (1, 2)),
                    key=lambda tone, key=key: abs(tone - key),
                )
            key += 12 * ((key < MELODY_LOW) - (key > MELODY_HIGH))
            start = tick + phrase * BAR + step * STEP
            events += note(start, MELODY_CHANNEL, key, _velocity(rng, 90), length * STEP - 20)
    return events


def _key(scale: tuple[int, ...], root: int, degree: int) -> int:
    """The key of a scale degree: degree 0 is the tonic in the octave of C3, degree 7 above C4."""
    return 48 + root + scale[degree % 7] + 12 * (degree // 7)


def _ending(
    rng: random.Random, tick: int, chord: list[int], channels: tuple[int, ...]
) -> list[Event]:
    """The final bar: every part on the tonic chord, held, with a crash."""
    events = [
        *note(tick, DRUM_CHANNEL, CRASH, 100, BAR),
        *note(tick, DRUM_CHANNEL, KICK, 100, STEP),
    ]
    events += note(tick, BASS_CHANNEL, _bass_root(chord), _velocity(rng, 95), BAR)
    events += note(tick, MELODY_CHANNEL, chord[0] + 12, 85, BAR)
    for channel in channels:
        for key in chord:
            events += note(tick, channel, key + 12, _velocity(rng, 70), BAR)
    return events


def _dense_parts(rng: random.Random, chords: list[list[int]]) -> list[Event]:
    """The dense parts of :data:`DENSE_PARTS` over ``chords``, one a bar, from bar 0."""
    rhythm = rng.choice(GUITAR_RHYTHMS)
    events: list[Event] = []
    for channel, (part, programs) in DENSE_PARTS.items():
        events += _setup(rng, channel, rng.choice(programs), rng.randint(24, 104))
        for bar, chord in enumerate(chords):
            tick = bar * BAR
            if part == "strings":
                notes = [(0, 16, key) for key in (*chord, chord[0] + 12)]
            elif part == "lead":
                tones = [key + 24 for key in chord]
                notes = [(step, 2, rng.choice(tones)) for step in range(0, 16, 2)]
                notes = [played for played in notes if rng.random() > 0.25]
            else:
                low = LOW_E + (chord[0] - LOW_E) % 12
                hits = [step for step, char in enumerate(rhythm) if char == "x"]
                notes = [(step, 1, key) for step in hits for key in (low, low + 7, low + 12)]
            for step, length, key in notes:
                events += note(
                    tick + step * STEP, channel, key, _velocity(rng, 80), length * STEP - 10
                )
    return events
