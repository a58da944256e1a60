"""`umx synth`'s command line: its arguments, parsed into `umx.synth.run.SynthOptions`."""

from __future__ import annotations

import argparse
from dataclasses import fields

from umx.cli_options import path_argument, path_text
from umx.defaults import (
    DURATION,
    SAMPLE_RATE,
    TEST_FRACTION,
    TEST_SOUNDFONTS,
    TRAIN_SOUNDFONTS,
    VALID_FRACTION,
)
from umx.devices import available_cores
from umx.synth.run import SynthOptions, make_dataset


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


def synth_options(args: argparse.Namespace) -> SynthOptions:
    """The options of `umx synth`'s command line, checked before any work: every field of
    `SynthOptions` is the option of the same name."""
    return SynthOptions(
        **{option.name: getattr(args, option.name) for option in fields(SynthOptions)}
    )


def run_synth(args: argparse.Namespace) -> int:
    """Runs `umx synth` with the options of :func:`add_synth_arguments`; returns the exit code."""
    make_dataset(synth_options(args), progress=not args.quiet)
    return 0
