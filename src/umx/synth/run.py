"""`umx synth` as typed options: `SynthOptions`, checked when built, and `make_dataset`, which
finds the songs and sounds, checks them, plans the tracks and renders them into a dataset
folder (`umx.synth.dataset.synthesize`).

The options' values are checked when they are built; what needs the files or the tools
(fluidsynth, the soundfonts, drum kits, recorded sounds, Festival's voices, the dataset folder)
is checked by the run, before any track is rendered.
"""

from __future__ import annotations

import filecmp
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from umx.defaults import (
    DURATION,
    MAX_DURATION,
    MAX_EXCERPTS,
    MAX_SONGS,
    MIN_DURATION,
    SAMPLE_RATE,
    TEST_FRACTION,
    VALID_FRACTION,
)
from umx.devices import WORKERS_PER_CORE, available_cores, check_cores
from umx.errors import UmxError, check_flags, check_number, check_path, display_path, short
from umx.folders import within

PathType = TypeVar("PathType", str, Path)

_PATH_LISTS = {
    "midi": "--midi",
    "soundfont": "--soundfont",
    "test_soundfont": "--test-soundfont",
    "drum_kits": "--drum-kits",
    "test_drum_kits": "--test-drum-kits",
    "other_samples": "--other-samples",
    "test_other_samples": "--test-other-samples",
    "test_songs_of": "--test-songs-of",
}
"""The fields that are lists of paths, and the options that set them."""
_FLAGS = {
    "production": "--production",
    "sung": "--sung",
    "dense_other": "--dense-other",
    "amp_guitars": "--amp-guitars",
    "festival_singer": "--festival-singer",
    "mix_bus": "--mix-bus",
    "force": "--force",
}
"""The yes-or-no fields, and the options that set them."""


@dataclass(frozen=True)
class SynthOptions:
    """A dataset `umx synth` renders: its songs, sounds, levers, splits and tracks. Checked when
    built (one-line errors naming the command line's options, whose names, defaults and
    meanings the fields have), before any file is read.

    Attributes:
        root: the dataset folder to create; made a `Path`.
        midi: General MIDI files, or folders searched for .mid/.midi/.kar files; kept as text.
        procedural: songs from umx's procedural song generator.
        soundfont, test_soundfont: the soundfonts of the train and valid splits, and of the
            test split; None for the installed defaults.
        drum_kits, test_drum_kits: Hydrogen drum kit folders of the train and valid splits,
            and of the test split.
        other_samples, test_other_samples: recorded sounds (audio files, or folders searched
            for them) of the train and valid splits, and of the test split.
        production, sung, dense_other, amp_guitars, festival_singer, mix_bus: the levers
            that bring the tracks closer to produced records (see docs/synthetic-data.md).
        test_festival_voice: with `festival_singer`, the test split's Festival voice; None
            for the training voice.
        test_songs_of: earlier `umx synth` datasets whose test songs go to this one's test
            split.
        test_fraction, valid_fraction: the shares of the songs in the test and valid splits.
        excerpts: tracks per song.
        duration: seconds per track.
        sample_rate: samples per second.
        seed: the seed of every random choice.
        jobs: tracks rendered in parallel.
        force: replace a dataset already in `root`.

    The lists of paths are stored as tuples (`Path`s, `midi` text), the numbers as `int` or
    `float`, so that ``synth.json`` records them as the command line does.

    Raises:
        UmxError: a number out of its range or of the wrong type, fractions above 1 together,
            a flag that is not a bool, a path or list of paths of the wrong type (text where
            a list belongs), or `test_festival_voice` without `festival_singer`.
    """

    root: Path
    midi: tuple[str, ...] = ()
    procedural: int = 0
    soundfont: tuple[Path, ...] | None = None
    test_soundfont: tuple[Path, ...] | None = None
    drum_kits: tuple[Path, ...] = ()
    test_drum_kits: tuple[Path, ...] = ()
    other_samples: tuple[Path, ...] = ()
    test_other_samples: tuple[Path, ...] = ()
    production: bool = False
    sung: bool = False
    dense_other: bool = False
    amp_guitars: bool = False
    festival_singer: bool = False
    test_festival_voice: str | None = None
    mix_bus: bool = False
    test_songs_of: tuple[Path, ...] = ()
    test_fraction: float = TEST_FRACTION
    valid_fraction: float = VALID_FRACTION
    excerpts: int = 1
    duration: float = DURATION
    sample_rate: int = int(SAMPLE_RATE)
    seed: int = 0
    jobs: int = field(default_factory=available_cores)
    force: bool = False

    def __post_init__(self) -> None:
        self._check_numbers()
        check_path("--root", self.root, what="a folder")
        object.__setattr__(self, "root", Path(self.root))
        for name, option in _PATH_LISTS.items():
            value = getattr(self, name)
            if value is not None or name not in ("soundfont", "test_soundfont"):
                paths = _paths(option, value, str if name == "midi" else Path)
                object.__setattr__(self, name, paths)
        check_flags({option: getattr(self, name) for name, option in _FLAGS.items()})
        voice = self.test_festival_voice
        if voice is not None and not isinstance(voice, str):
            raise UmxError(f"--test-festival-voice must be a voice name, not {short.repr(voice)}")
        if voice is not None and not self.festival_singer:
            raise UmxError("--test-festival-voice needs --festival-singer")

    def _check_numbers(self) -> None:
        """Check the numbers, and store them as `int` or `float` (numpy's scalars included)."""
        check_number("--procedural", self.procedural, minimum=0, maximum=MAX_SONGS, integer=True)
        check_number("--excerpts", self.excerpts, minimum=1, maximum=MAX_EXCERPTS, integer=True)
        check_number("--jobs", self.jobs, minimum=1, integer=True)
        check_cores("--jobs", self.jobs, WORKERS_PER_CORE)
        check_number("--duration", self.duration, minimum=MIN_DURATION, maximum=MAX_DURATION)
        check_number("--sample-rate", self.sample_rate, minimum=8000, maximum=96000, integer=True)
        check_number("--test-fraction", self.test_fraction, minimum=0, maximum=1)
        check_number("--valid-fraction", self.valid_fraction, minimum=0, maximum=1)
        if self.test_fraction + self.valid_fraction > 1:
            raise UmxError("--test-fraction and --valid-fraction must be 1 at most together")
        check_number("--seed", self.seed, integer=True)
        for name in ("procedural", "excerpts", "jobs", "sample_rate", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("duration", "test_fraction", "valid_fraction"):
            object.__setattr__(self, name, float(getattr(self, name)))


def _paths(option: str, value: object, kind: Callable[[str], PathType]) -> tuple[PathType, ...]:
    """A list of paths as a tuple of `kind` (`Path`, or `str` for text), refusing text or a
    path (taken as a list, the letters of a name) and items that are not paths.

    Raises:
        UmxError: naming the option as the command line spells it (`--midi`).
    """
    if isinstance(value, str | bytes | os.PathLike) or not isinstance(value, Iterable):
        raise UmxError(f"{option} must be a list of paths, not {short.repr(value)}")
    items = tuple(value)
    for item in items:
        check_path(option, item)
    return tuple(kind(os.fspath(item)) for item in items)


def make_dataset(options: SynthOptions, *, progress: bool = True) -> dict:
    """Render the dataset `options` describe into `options.root`, which appears whole or not
    at all: the songs found and split, the sounds of each split checked, the tracks planned
    and rendered (see `umx.synth.dataset.synthesize`).

    Args:
        options: the dataset.
        progress: show a progress bar on a terminal.

    Returns:
        The contents of ``synth.json``: the options, songs per split, tracks with their levels.

    Raises:
        UmxError: `root` is refused (see `umx.synth.dataset.check_root`), no songs, a MIDI
            file, soundfont, drum kit, recorded sound, Festival voice or earlier dataset umx
            cannot use, a sound inside `root`, fluidsynth missing or failing, or every track
            skipped.
    """
    from umx.synth.dataset import SETTINGS, check_root, read_test_songs, synthesize
    from umx.synth.plan import (
        MIDI_SUFFIXES,
        TEMPO_RANGE,
        SongRef,
        derive_seed,
        find_files,
        plan_tracks,
    )
    from umx.synth.render import check_fluidsynth

    check_root(options.root, options.force)
    midi = find_files(options.midi, MIDI_SUFFIXES, "MIDI file")
    songs = [SongRef(name, path=str(path)) for name, path in _named(midi)]
    songs += [
        SongRef(
            f"procedural-{index:05d}",
            seed=derive_seed(options.seed, "procedural", index),
            min_seconds=options.duration * TEMPO_RANGE[1] * 2,
            dense=options.dense_other,
        )
        for index in range(options.procedural)
    ]
    if not songs:
        raise UmxError("no songs: give General MIDI files with --midi, or --procedural N")
    held_out = frozenset(song for root in options.test_songs_of for song in read_test_songs(root))
    check_fluidsynth()
    _check_festival_voices(options)
    soundfonts, kits, samples = _split_sounds(options, options.test_fraction > 0 or bool(held_out))
    for kind, sounds in (("soundfont", soundfonts), ("drum kit", kits), ("sound", samples)):
        _check_outside(options.root, [path for paths in sounds.values() for path in paths], kind)
    plans = plan_tracks(
        songs,
        soundfonts,
        drum_kits=kits,
        other_samples=samples,
        production=options.production,
        sung=options.sung,
        mix_bus=options.mix_bus,
        amp_guitars=options.amp_guitars,
        festival_singer=options.festival_singer,
        test_festival_voice=options.test_festival_voice,
        held_out=held_out,
        seed=options.seed,
        duration=options.duration,
        excerpts=options.excerpts,
        test_fraction=options.test_fraction,
        valid_fraction=options.valid_fraction,
    )
    return synthesize(
        options.root,
        plans,
        duration=options.duration,
        sample_rate=options.sample_rate,
        jobs=options.jobs,
        force=options.force,
        progress=progress,
        settings={key: getattr(options, key) for key in SETTINGS},
    )


def _check_outside(root: Path, inputs: list[Path], kind: str) -> None:
    """Refuse sounds inside `root`: an earlier dataset's stems, which a folder of sounds holding
    `root` would give (inputs the user put in a dataset are refused by `check_root`).

    Raises:
        UmxError: naming the first such input.
    """
    folder = os.path.realpath(root)
    for path in inputs:
        if within(os.path.realpath(path), folder):
            raise UmxError(
                f"the {kind} {path} is inside --root {root}, which this run writes: keep the "
                "dataset and its inputs apart"
            )


def _split_sounds(
    options: SynthOptions, tested: bool
) -> tuple[dict[str, list[Path]], dict[str, list[Path]], dict[str, list[Path]]]:
    """The soundfonts, drum kits and recorded sounds of each split, checked; the test split's
    only when ``tested`` (it will have songs).

    Raises:
        UmxError: a soundfont, drum kit or recorded sound umx cannot play.
    """
    from umx.synth.dataset import default_soundfonts
    from umx.synth.plan import lever
    from umx.synth.render import check_soundfont

    train = [check_soundfont(p) for p in options.soundfont or default_soundfonts(test=False)]
    kits = [_kit(path, "--drum-kits") for path in options.drum_kits]
    samples = lever("recorded").find_samples(options.other_samples) if options.other_samples else []
    test, test_kits, test_samples = [], [], []
    if tested:
        test = [check_soundfont(p) for p in options.test_soundfont or default_soundfonts(test=True)]
        _check_not_copies(train, test)
        test_kits = [_kit(path, "--test-drum-kits") for path in options.test_drum_kits]
        if options.test_other_samples:
            test_samples = lever("recorded").find_samples(options.test_other_samples)
    return (
        {"train": train, "valid": train, "test": test},
        {"train": kits, "valid": kits, "test": test_kits},
        {"train": samples, "valid": samples, "test": test_samples},
    )


def _check_not_copies(train: list[Path], test: list[Path]) -> None:
    """Refuse a test soundfont that is a copy of a training one (the same bytes under another
    name): the test split would be rendered with the training instruments. The same path is
    refused by `plan_tracks`.

    Raises:
        UmxError: naming both files.
    """
    for held_out in test:
        for trained in train:
            if held_out != trained and filecmp.cmp(held_out, trained, shallow=False):
                raise UmxError(
                    f"the test soundfont {display_path(held_out)} is a copy of the training "
                    f"soundfont {display_path(trained)}: give the test split another soundfont"
                )


def _check_festival_voices(options: SynthOptions) -> None:
    """With `festival_singer`, check that Festival and its voices are installed: the training
    voice, and `test_festival_voice` even without a test split.

    Raises:
        UmxError: Festival or a voice is missing, or the test voice is unknown.
    """
    from umx.synth.plan import lever

    if not options.festival_singer:
        return
    lever("festival").check_festival()
    if options.test_festival_voice is not None:
        lever("festival").check_festival(options.test_festival_voice)


def _kit(path: Path, option: str) -> Path:
    """A drum kit folder of `option`, checked (named as given) and resolved.

    Raises:
        UmxError: it is not a folder, or not a Hydrogen kit umx can play.
    """
    from umx.synth.plan import lever

    if not path.is_dir():
        what = "is not a folder" if os.path.lexists(path) else "does not exist"
        raise UmxError(
            f"{option} {display_path(path)} {what}: give the folder of a Hydrogen drum kit, "
            "which holds its drumkit.xml"
        )
    lever("sampler").load_kit(path)
    return path.resolve()


def _named(paths: list[Path]) -> Iterator[tuple[str, Path]]:
    """Unique track-name prefixes for MIDI files: their names, numbered when repeated."""
    seen: dict[str, int] = {}
    for path in paths:
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)
        seen[name] = seen.get(name, 0) + 1
        yield (name if seen[name] == 1 else f"{name}-{seen[name]}"), path
