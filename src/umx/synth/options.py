"""The `umx synth` command: its options, checked, turned into a rendered dataset."""

from __future__ import annotations

import argparse
import filecmp
import os
from collections.abc import Iterator
from pathlib import Path

from umx.cli_options import path_argument, path_text
from umx.defaults import (
    DURATION,
    MAX_DURATION,
    MAX_EXCERPTS,
    MAX_SONGS,
    MIN_DURATION,
    SAMPLE_RATE,
    TEST_FRACTION,
    TEST_SOUNDFONTS,
    TRAIN_SOUNDFONTS,
    VALID_FRACTION,
)
from umx.devices import WORKERS_PER_CORE, available_cores, check_cores
from umx.errors import UmxError, check_number, display_path
from umx.files import within


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `umx synth` to ``parser``."""
    parser.add_argument(
        "--root", required=True, type=path_argument, metavar="DIR", help="dataset folder to create"
    )
    _add_sound_arguments(parser)
    _add_lever_arguments(parser)
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=TEST_FRACTION,
        metavar="F",
        help=f"fraction of the songs in the test split (default: {TEST_FRACTION})",
    )
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=VALID_FRACTION,
        metavar="F",
        help="fraction of the songs in the validation split, kept in train/ and listed in "
        f"setup.yaml (default: {VALID_FRACTION})",
    )
    parser.add_argument(
        "--excerpts",
        type=int,
        default=1,
        metavar="K",
        help="tracks per song, each a random excerpt (default: 1)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DURATION,
        metavar="SECONDS",
        help=f"length of each track (default: {DURATION:g})",
    )
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=int(SAMPLE_RATE),
        metavar="HZ",
        help=f"sample rate of the tracks (default: {int(SAMPLE_RATE)})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every random choice: the same seed gives the same files (default: 0)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=available_cores(),
        metavar="N",
        help="tracks rendered in parallel (default: the cores umx may use)",
    )
    parser.add_argument("--force", action="store_true", help="replace a dataset already in --root")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")


def _add_sound_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `umx synth` that choose the songs and how they sound."""
    parser.add_argument(
        "--midi",
        nargs="+",
        action="extend",
        default=[],
        type=path_text,
        metavar="PATH",
        help="General MIDI files, or folders searched for .mid/.midi/.kar files",
    )
    parser.add_argument(
        "--procedural",
        type=int,
        default=0,
        metavar="N",
        help="number of songs from umx's procedural song generator (default: 0)",
    )
    parser.add_argument(
        "--soundfont",
        nargs="+",
        type=path_argument,
        metavar="SF",
        help="soundfonts for the train and valid splits (default: the installed ones of "
        f"{', '.join(map(str, TRAIN_SOUNDFONTS))})",
    )
    parser.add_argument(
        "--test-soundfont",
        nargs="+",
        type=path_argument,
        metavar="SF",
        help="soundfonts for the test split, none of them in --soundfont "
        f"(default: {', '.join(map(str, TEST_SOUNDFONTS))})",
    )
    parser.add_argument(
        "--drum-kits",
        nargs="+",
        type=path_argument,
        default=[],
        metavar="KIT",
        help="Hydrogen drum kit folders (with a drumkit.xml) for the train and valid splits: "
        "each track's drums are played by one of them or the soundfont (default: none)",
    )
    parser.add_argument(
        "--test-drum-kits",
        nargs="+",
        type=path_argument,
        default=[],
        metavar="KIT",
        help="Hydrogen drum kit folders for the test split, none of them in --drum-kits",
    )
    parser.add_argument(
        "--other-samples",
        nargs="+",
        type=path_argument,
        default=[],
        metavar="PATH",
        help="recorded sounds (audio files, or folders searched for them) for the train and "
        "valid splits: most tracks get one or two, shifted and repeated, in their `other` stem "
        "(e.g. apt-get install sonic-pi-samples; default: none)",
    )
    parser.add_argument(
        "--test-other-samples",
        nargs="+",
        type=path_argument,
        default=[],
        metavar="PATH",
        help="recorded sounds for the test split, none of them in --other-samples",
    )


def _add_lever_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `umx synth` that bring its tracks closer to produced records."""
    parser.add_argument(
        "--production",
        action="store_true",
        help="give every stem a randomised effect chain (EQ, compression, overdrive, chorus, "
        "reverb); the test split's reverb is of a family training never hears",
    )
    parser.add_argument(
        "--sung",
        action="store_true",
        help="sing most tracks' vocal melody with umx's formant singer, mixed with the voice patch",
    )
    parser.add_argument(
        "--dense-other",
        action="store_true",
        help="give procedural songs three more `other` parts (strings or pad, synth lead, "
        "distorted guitar); MIDI songs are unchanged",
    )
    parser.add_argument(
        "--amp-guitars",
        action="store_true",
        help="play the guitar parts of `other` (GM programs 25-32) through a randomised amp "
        "(pre-EQ, drive, tone stack) and speaker cabinet",
    )
    parser.add_argument(
        "--festival-singer",
        action="store_true",
        help="sing every track's vocal melody in words with Festival's diphone voice, mixed "
        "with the vocals (apt-get install festival festvox-kallpc16k)",
    )
    parser.add_argument(
        "--test-festival-voice",
        metavar="VOICE",
        help="with --festival-singer, the voice of the test split's singer, held out from "
        "training (default: the training voice, kal_diphone); ked_diphone needs "
        "apt-get install festvox-kdlpc16k",
    )
    parser.add_argument(
        "--test-songs-of",
        metavar="DATASET",
        nargs="+",
        type=path_argument,
        default=[],
        help="put the General MIDI songs of these umx synth datasets' test splits in this "
        "one's test split, never in training: for a model trained in stages on several datasets",
    )
    parser.add_argument(
        "--mix-bus",
        action="store_true",
        help="give every track a mix bus: stereo width, a bus compressor and a limiter whose "
        "gain, computed from the mixture, every stem gets alike",
    )


def run_synth(args: argparse.Namespace) -> int:
    """Runs `umx synth` with the options of :func:`add_synth_arguments`; returns the exit code.

    Raises:
        UmxError: an option is invalid, or see :func:`plan_tracks` and :func:`synthesize`.
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

    check_number("--procedural", args.procedural, minimum=0, maximum=MAX_SONGS, integer=True)
    check_number("--excerpts", args.excerpts, minimum=1, maximum=MAX_EXCERPTS, integer=True)
    check_number("--jobs", args.jobs, minimum=1, integer=True)
    check_cores("--jobs", args.jobs, WORKERS_PER_CORE)
    check_number("--duration", args.duration, minimum=MIN_DURATION, maximum=MAX_DURATION)
    check_number("--sample-rate", args.sample_rate, minimum=8000, maximum=96000, integer=True)
    for name in ("--test-fraction", "--valid-fraction"):
        check_number(name, getattr(args, name[2:].replace("-", "_")), minimum=0, maximum=1)
    if args.test_fraction + args.valid_fraction > 1:
        raise UmxError("--test-fraction and --valid-fraction must be 1 at most together")
    check_root(args.root, args.force)
    midi = find_files(args.midi, MIDI_SUFFIXES, "MIDI file")
    songs = [SongRef(name, path=str(path)) for name, path in _named(midi)]
    songs += [
        SongRef(
            f"procedural-{index:05d}",
            seed=derive_seed(args.seed, "procedural", index),
            min_seconds=args.duration * TEMPO_RANGE[1] * 2,
            dense=args.dense_other,
        )
        for index in range(args.procedural)
    ]
    if not songs:
        raise UmxError("no songs: give General MIDI files with --midi, or --procedural N")
    held_out = frozenset(song for root in args.test_songs_of for song in read_test_songs(root))
    check_fluidsynth()
    test_voice = _test_festival_voice(args)
    soundfonts, kits, samples = _split_sounds(args, args.test_fraction > 0 or bool(held_out))
    for kind, sounds in (("soundfont", soundfonts), ("drum kit", kits), ("sound", samples)):
        _check_outside(args.root, [path for paths in sounds.values() for path in paths], kind)
    plans = plan_tracks(
        songs,
        soundfonts,
        drum_kits=kits,
        other_samples=samples,
        production=args.production,
        sung=args.sung,
        mix_bus=args.mix_bus,
        amp_guitars=args.amp_guitars,
        festival_singer=args.festival_singer,
        test_festival_voice=test_voice,
        held_out=held_out,
        seed=args.seed,
        duration=args.duration,
        excerpts=args.excerpts,
        test_fraction=args.test_fraction,
        valid_fraction=args.valid_fraction,
    )
    settings = {key: getattr(args, key) for key in SETTINGS}
    synthesize(
        args.root,
        plans,
        duration=args.duration,
        sample_rate=args.sample_rate,
        jobs=args.jobs,
        force=args.force,
        progress=not args.quiet,
        settings=settings,
    )
    return 0


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
    args: argparse.Namespace, tested: bool
) -> tuple[dict[str, list[Path]], dict[str, list[Path]], dict[str, list[Path]]]:
    """The soundfonts, drum kits and recorded sounds of each split, checked; the test split's
    only when ``tested`` (it will have songs).

    Raises:
        UmxError: a soundfont, drum kit or recorded sound umx cannot play.
    """
    from umx.synth.dataset import default_soundfonts
    from umx.synth.plan import lever
    from umx.synth.render import check_soundfont

    train = [check_soundfont(p) for p in args.soundfont or default_soundfonts(test=False)]
    kits = [_kit(path) for path in args.drum_kits]
    samples = lever("recorded").find_samples(args.other_samples) if args.other_samples else []
    test, test_kits, test_samples = [], [], []
    if tested:
        test = [check_soundfont(p) for p in args.test_soundfont or default_soundfonts(test=True)]
        _check_not_copies(train, test)
        test_kits = [_kit(path) for path in args.test_drum_kits]
        if args.test_other_samples:
            test_samples = lever("recorded").find_samples(args.test_other_samples)
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


def _test_festival_voice(args: argparse.Namespace) -> str | None:
    """The test split's Festival voice (None: the training voice), once the voices of
    `--festival-singer` are found installed.

    Raises:
        UmxError: `--test-festival-voice` without `--festival-singer`, or a voice is missing.
    """
    from umx.synth.plan import lever

    if args.test_festival_voice is not None and not args.festival_singer:
        raise UmxError("--test-festival-voice needs --festival-singer")
    if not args.festival_singer:
        return None
    lever("festival").check_festival()
    if args.test_festival_voice is not None:  # checked even without a test split
        lever("festival").check_festival(args.test_festival_voice)
    return args.test_festival_voice


def _kit(path: Path) -> Path:
    """A drum kit folder, checked and resolved.

    Raises:
        UmxError: it is not a Hydrogen kit umx can play.
    """
    from umx.synth.plan import lever

    lever("sampler").load_kit(path.resolve())
    return path.resolve()


def _named(paths: list[Path]) -> Iterator[tuple[str, Path]]:
    """Unique track-name prefixes for MIDI files: their names, numbered when repeated."""
    seen: dict[str, int] = {}
    for path in paths:
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)
        seen[name] = seen.get(name, 0) + 1
        yield (name if seen[name] == 1 else f"{name}-{seen[name]}"), path
