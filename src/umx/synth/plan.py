"""`umx synth`'s plan: which songs, excerpts, soundfonts and parameters make each track.

A song is a General MIDI file or a seed of :mod:`umx.synth.procedural`. Songs, not tracks, are
split into train, valid and test; every random choice of a track (excerpt, soundfont,
transposition, tempo, stem gains and panning, drum kit, effects, singers, mix bus, guitar amp,
recorded sounds)
is drawn from a generator seeded by the run's seed and the track's name, so a plan is
reproduced exactly.
"""

from __future__ import annotations

import importlib
import logging
import random
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from umx.defaults import (
    DURATION,
    SOURCES,
    TEST_FRACTION,
    VALID_FRACTION,
)
from umx.errors import UmxError
from umx.synth.gm import REVOICE_PROGRAMS, analyse, valid_starts
from umx.synth.midi import (
    Song,
    read_midi,
)
from umx.synth.procedural import generate_song

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MIDI_SUFFIXES = frozenset((".mid", ".midi", ".kar"))
GAIN_RANGE_DB = (-6.0, 6.0)
PAN_RANGE = 0.3
"""Stereo balance of a stem: -1 left, 0 centre, 1 right."""
PEAK_RANGE_DB = (-6.0, -1.0)
"""The peak level of the loudest of a track's mixture and stems."""
TRANSPOSE_RANGE = (-3, 3)
TEMPO_RANGE = (0.9, 1.1)
SUNG_CHANCE = 0.8
SUNG_SHARE = (0.3, 1.0)
"""With --sung, this fraction of tracks has the singer in its vocals, at this share of the level."""


@dataclass(frozen=True)
class SongRef:
    """Where a song comes from: a MIDI file, or a seed of the procedural generator.

    Attributes:
        name: a short unique name, the prefix of its tracks' names.
        path: the General MIDI file, or None for a procedural song.
        seed: the procedural song's seed.
        min_seconds: the procedural song's shortest length.
        dense: the procedural song has the dense `other` parts of
            :func:`umx.synth.procedural.generate_song`.
    """

    name: str
    path: str | None = None
    seed: int | None = None
    min_seconds: float = 0.0
    dense: bool = False

    def load(self) -> Song:
        """The song's events."""
        if self.path is None:
            return generate_song(self.seed, self.min_seconds, self.dense)
        return read_midi(self.path)


@dataclass(frozen=True)
class TrackPlan:
    """Everything that decides how one track sounds.

    Attributes:
        name: the track's folder name.
        split: ``train``, ``valid`` or ``test``.
        song: the song it is an excerpt of.
        soundfont: the soundfont it is rendered with.
        start: where the excerpt starts in the song, in seconds at the song's own tempo.
        tempo: the playback speed (1.1 = 10% faster).
        transpose: semitones added to every pitched note.
        revoice: ``{channel: GM program}`` for the parts re-voiced as vocals or bass.
        gains_db: each stem's gain after levelling.
        pans: each stem's stereo balance.
        peak_db: the peak of the loudest of the mixture and the stems.
        drum_kit: the Hydrogen drum kit that plays the drums, or None for the soundfont's.
        production: the effect chains of :func:`umx.synth.production.draw_production`, or None.
        sung: the formant singer's share of the vocals (0: the voice patch alone).
        seed: the seed of the kit's, the singer's and the effects' own random choices.
        mix_bus: the mix bus of :func:`umx.synth.bus.draw_bus`, or None.
        amp: the guitars' amp and cabinet of :func:`umx.synth.amp.draw_amp`, or None.
        festival: the Festival singer of :func:`umx.synth.festival.draw_festival`, or None.
        recorded: the recorded sounds in `other`, of :func:`umx.synth.recorded.draw_layer`, or
            None.
    """

    name: str
    split: str
    song: SongRef
    soundfont: str
    start: float
    tempo: float
    transpose: int
    revoice: dict[int, int]
    gains_db: dict[str, float]
    pans: dict[str, float]
    peak_db: float
    drum_kit: str | None = None
    production: dict | None = None
    sung: float = 0.0
    seed: int = 0
    mix_bus: dict | None = None
    amp: dict | None = None
    festival: dict | None = None
    recorded: dict | None = None


def derive_seed(seed: int, *names: object) -> int:
    """An independent seed for the thing ``names`` name, from the run's ``seed``."""
    return random.Random(":".join(map(str, (seed, *names)))).getrandbits(31)


def find_files(paths: Sequence[str | Path], suffixes: AbstractSet[str], kind: str) -> list[Path]:
    """The files given, and the regular files under the folders given whose suffix (in any
    case) is one of ``suffixes``, in a stable order.

    Raises:
        UmxError: a path does not exist (naming it a ``kind`` or folder), is neither a folder
            nor a regular file (a pipe, a device), or is a folder without such a file.
    """
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix.lower() in suffixes)
            found = sorted(p for p in found if p.is_file())
            if not found:
                raise UmxError(f"{path} holds no {kind} ({', '.join(sorted(suffixes))})")
            files += found
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise UmxError(f"{kind} {path} is not a regular file: give a file or a folder")
        else:
            raise UmxError(f"{kind} or folder {path} not found")
    return files


def _split(
    songs: Sequence[SongRef], seed: int, test: float, valid: float, held_out: AbstractSet[str]
) -> dict[str, list[SongRef]]:
    """Splits MIDI files and procedural songs apart, so that each split gets both kinds: each
    group shuffled with ``seed`` and cut by the fractions. The MIDI songs named in ``held_out``
    go to the test split first, counting towards its share (a procedural song of such a name is
    this seed's own song)."""
    splits: dict[str, list[SongRef]] = {split: [] for split in SPLITS}
    for procedural in (False, True):
        group = [song for song in songs if (song.path is None) == procedural]
        random.Random(derive_seed(seed, "split")).shuffle(group)
        nb_test, nb_valid = round(test * len(group)), round(valid * len(group))
        forced = [song for song in group if not procedural and song.name in held_out]
        group = forced + [song for song in group if song not in forced]
        nb_test = max(nb_test, len(forced))
        splits["test"] += group[:nb_test]
        splits["valid"] += group[nb_test : nb_test + nb_valid]
        splits["train"] += group[nb_test + nb_valid :]
    return splits


def plan_tracks(
    songs: Sequence[SongRef],
    soundfonts: dict[str, Sequence[Path]],
    *,
    seed: int,
    duration: float = DURATION,
    excerpts: int = 1,
    test_fraction: float = TEST_FRACTION,
    valid_fraction: float = VALID_FRACTION,
    drum_kits: dict[str, Sequence[Path]] | None = None,
    production: bool = False,
    sung: bool = False,
    mix_bus: bool = False,
    amp_guitars: bool = False,
    festival_singer: bool = False,
    test_festival_voice: str | None = None,
    other_samples: dict[str, Sequence[Path]] | None = None,
    held_out: AbstractSet[str] = frozenset(),
) -> list[TrackPlan]:
    """Splits songs by split and draws each track's excerpt and parameters.

    MIDI files and procedural songs are split separately, so each split gets both kinds.
    Songs that cannot give a track (unreadable, a stem missing, too short) are skipped with a
    warning naming them.

    Args:
        songs: the songs.
        soundfonts: ``{split: soundfonts}``.
        seed: the run's seed.
        duration: seconds per track.
        excerpts: tracks per song.
        test_fraction: the fraction of songs for the test split.
        valid_fraction: the fraction of songs for the validation split.
        drum_kits: ``{split: Hydrogen drum kits}``: each track's drums are played by one drawn
            among them and the soundfont.
        production: give each track effect chains (the test split's reverb is a family
            training never hears).
        sung: sing the vocals of most tracks with the formant singer, mixed with the voice patch.
        mix_bus: give each track a mix bus (width, bus compressor, limiter).
        amp_guitars: play each track's guitar parts of `other` through an amp and a cabinet.
        festival_singer: sing each track's vocal melody in words with Festival, mixed with the
            vocals.
        test_festival_voice: the Festival voice of the test split (held out from training);
            None: the training voice.
        other_samples: ``{split: recorded sounds}`` layered into the `other` stem of most
            tracks (see :mod:`umx.synth.recorded`).
        held_out: names of MIDI songs that go to the test split whatever the seed (the test
            songs of an earlier dataset, so that no stage of a model trains on them).

    Returns:
        The tracks, by split then song name.

    Raises:
        UmxError: a test soundfont, drum kit, recorded sound or Festival voice is also a
            training one, a split
            with songs has no soundfont, or no song can give a track.
    """
    drum_kits, other_samples = drum_kits or {}, other_samples or {}
    voices = _festival_voices(test_festival_voice) if festival_singer else {}
    _check_held_out(soundfont=soundfonts, drum_kit=drum_kits, recorded_sound=other_samples)
    splits = _split(songs, seed, test_fraction, valid_fraction, held_out)
    levers = {"production": production, "sung": sung, "mix_bus": mix_bus, "amp": amp_guitars}
    plans = []
    for split, chosen in splits.items():
        if chosen and not soundfonts[split]:
            raise UmxError(f"no soundfont for the {split} split")
        sounds = {"drum_kits": drum_kits.get(split, ()), "samples": other_samples.get(split, ())}
        for song in sorted(chosen, key=lambda song: song.name):
            plans += [
                _produce(plan, seed, **sounds, **levers, voice=voices.get(split))
                for plan in plan_song(song, split, soundfonts[split], seed, duration, excerpts)
            ]
    if not plans:
        raise UmxError(f"none of the {len(songs)} songs can be rendered (see the warnings)")
    return plans


def _check_held_out(**sounds: dict[str, Sequence[Path]]) -> None:
    """Refuses a sound of the test split that is also a training or validation one.

    Args:
        sounds: ``{kind: {split: sounds}}``, the kind named as in the message
            (``drum_kit``: "drum kit").

    Raises:
        UmxError: naming the kind and the sound.
    """
    for kind, sources in sounds.items():
        trained = {*sources.get("train", ()), *sources.get("valid", ())}
        shared = set(sources.get("test", ())) & trained
        if shared:
            name = kind.replace("_", " ")
            raise UmxError(
                f"{name} {min(shared)} is used for both training and testing: the test split "
                f"must sound new to a model, so give it another {name}"
            )


def _festival_voices(test_voice: str | None) -> dict[str, str]:
    """The Festival singer's voice in each split: the training voice, or `test_voice` in the
    test split.

    Raises:
        UmxError: `test_voice` is the training voice.
    """
    voices = dict.fromkeys(SPLITS, lever("festival").VOICE)
    if test_voice is not None:
        if test_voice == voices["train"]:
            raise UmxError(
                f"Festival voice {test_voice} is used for both training and testing: give "
                "--test-festival-voice another voice, such as ked_diphone"
            )
        voices["test"] = test_voice
    return voices


def lever(name: str) -> ModuleType:
    """The module of a production lever: ``production`` (effects), ``sampler`` (drums),
    ``singer``, ``bus`` (the mix bus), ``amp`` (guitar amps), ``festival`` (Festival's singer)
    or ``recorded`` (recorded sounds in `other`). They need scipy (the `train` extra), so they
    load only when a dataset uses them: the `umx` command itself starts without scipy.

    Raises:
        UmxError: scipy is not installed.
    """
    try:
        return importlib.import_module(f"umx.synth.{name}")
    except ImportError as error:
        raise UmxError(
            "drum kits, --production, --sung, --mix-bus, --amp-guitars, --festival-singer and "
            f"--other-samples need scipy ({error}): pip install 'umx[train]'"
        ) from None


def _produce(
    plan: TrackPlan,
    seed: int,
    *,
    drum_kits: Sequence[Path],
    samples: Sequence[Path],
    production: bool,
    sung: bool,
    mix_bus: bool,
    amp: bool,
    voice: str | None,
) -> TrackPlan:
    """``plan`` with its drum kit, effect chains, singers, mix bus, guitar amp and recorded
    sounds drawn (each lever from a generator of its own, so that a dataset without it is the
    same as before it existed); ``voice``: the Festival singer's voice, None: no Festival
    singer."""
    if drum_kits or production or sung:
        effects = lever("production")
        rng = random.Random(derive_seed(seed, plan.name, "production"))
        kits = [None, *map(str, drum_kits)]
        family = effects.TEST_REVERB if plan.split == "test" else effects.TRAIN_REVERB
        plan = replace(
            plan,
            drum_kit=rng.choice(kits),
            production=effects.draw_production(rng, SOURCES, family) if production else None,
            sung=round(rng.uniform(*SUNG_SHARE), 3) if sung and rng.random() < SUNG_CHANCE else 0.0,
            seed=rng.getrandbits(31),
        )
    if mix_bus:
        rng = random.Random(derive_seed(seed, plan.name, "mix-bus"))
        plan = replace(plan, mix_bus=lever("bus").draw_bus(rng))
    if amp:
        rng = random.Random(derive_seed(seed, plan.name, "amp"))
        plan = replace(plan, amp=lever("amp").draw_amp(rng))
    if voice is not None:
        rng = random.Random(derive_seed(seed, plan.name, "festival"))
        plan = replace(plan, festival=lever("festival").draw_festival(rng, voice))
    if samples:
        rng = random.Random(derive_seed(seed, plan.name, "recorded"))
        plan = replace(plan, recorded=lever("recorded").draw_layer(rng, list(map(str, samples))))
    return plan


def plan_song(
    song: SongRef,
    split: str,
    soundfonts: Sequence[Path],
    seed: int,
    duration: float,
    excerpts: int,
) -> list[TrackPlan]:
    """The tracks of one song, or none (with a warning) if it cannot give any."""
    label = song.path or f"procedural song {song.seed}"
    try:
        events = song.load()
    except UmxError as error:
        logger.warning("%s; skipping it", error)
        return []
    if events.missing_tracks:
        logger.warning(
            "%s lacks %d of the tracks its header declares (cut short?); using those it holds",
            label,
            events.missing_tracks,
        )
    try:
        analysis = analyse(events)
    except UmxError as error:
        logger.warning("skipping %s: %s", label, error)
        return []
    plans = []
    for index in range(excerpts):
        rng = random.Random(derive_seed(seed, song.name, index))
        tempo = round(rng.uniform(*TEMPO_RANGE), 3)
        starts = valid_starts(analysis.activity, duration * tempo + 1)
        if not len(starts):
            logger.warning(
                "skipping %s: no %g-second passage where all four stems play", label, duration
            )
            return []
        plans.append(
            TrackPlan(
                name=f"{song.name}-{index:02d}",
                split=split,
                song=song,
                soundfont=str(rng.choice(soundfonts)),
                start=int(rng.choice(starts)) + round(rng.random(), 3),
                tempo=tempo,
                transpose=rng.randint(*TRANSPOSE_RANGE),
                revoice={
                    channel: rng.choice(REVOICE_PROGRAMS[stem])
                    for channel, stem in sorted(analysis.revoiced.items())
                },
                gains_db={stem: round(rng.uniform(*GAIN_RANGE_DB), 2) for stem in SOURCES},
                pans={stem: round(rng.uniform(-PAN_RANGE, PAN_RANGE), 3) for stem in SOURCES},
                peak_db=round(rng.uniform(*PEAK_RANGE_DB), 2),
            )
        )
    return plans
