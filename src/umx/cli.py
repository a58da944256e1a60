"""The `umx` command: parses arguments, shows progress and calls the library."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from umx import __version__
from umx.api import DEFAULT_TEMPLATE, parse_aggregate, separate_file
from umx.audio import CLIP_POLICIES, SUBTYPES, audio_formats
from umx.data.synth import add_synth_arguments, run_synth
from umx.devices import keep_freed_memory
from umx.errors import UmxError
from umx.evaluate import add_evaluate_arguments, run_evaluate
from umx.options import add_separation_arguments, segment_from_args, separator_from_args
from umx.train import add_train_arguments, run_training
from umx.zoo import DEFAULT_MODEL, list_models

logger = logging.getLogger("umx")

COMMANDS = ("separate", "train", "evaluate", "synth")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `umx`; `umx INPUT...` is short for `umx separate INPUT...`. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv.insert(0, "separate")
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    keep_freed_memory()
    try:
        return args.run(args)
    except UmxError as error:
        logger.error("error: %s", error)
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


def setup_logging(quiet: bool) -> None:
    """Messages go to stderr as `umx: ...` lines; `--quiet` keeps only warnings and errors."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("umx: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="umx",
        description="Open-Unmix music source separation. `umx INPUT...` separates files "
        "with the default model; see `umx COMMAND --help`.",
    )
    parser.add_argument("--version", action="version", version=f"umx {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    add_separate_command(commands)
    train = commands.add_parser(
        "train",
        help="train a target model",
        description="Train one Open-Unmix target model into a model directory that "
        "`umx separate --model DIR` loads (see docs/training.md). Under torchrun it trains "
        "with DistributedDataParallel.",
    )
    add_train_arguments(train)
    train.set_defaults(run=run_training)
    evaluate = commands.add_parser(
        "evaluate",
        help="score a model or baseline with BSSEval v4",
        description="Separate a test set (MUSDB18 or a folder in its layout) and score it "
        "with museval's BSSEval v4 (see docs/evaluation.md).",
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(run=run_evaluate)
    synth = commands.add_parser(
        "synth",
        help="render synthetic 4-stem training data from General MIDI songs",
        description="Render General MIDI files and procedural songs into a MUSDB18-HQ-layout "
        "dataset with FluidSynth (see docs/synthetic-data.md).",
    )
    add_synth_arguments(synth)
    synth.set_defaults(run=run_synth)
    return parser


def add_separate_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "separate",
        help="separate audio files into stems",
        description="Separate audio files into stems, written to "
        "OUTDIR/<track>/<target>.<ext> by default.",
    )
    p.set_defaults(run=run_separate)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files to separate")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name (see --list-models) or model directory (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--list-models", action="store_true", help="list the known models and exit")
    p.add_argument("--outdir", type=Path, default=Path("separated"), help="output directory")
    p.add_argument(
        "--filename",
        default=DEFAULT_TEMPLATE,
        metavar="TEMPLATE",
        help="output path under OUTDIR, with {track}, {target} and {ext} "
        f"(default: {DEFAULT_TEMPLATE})",
    )
    p.add_argument(
        "--ext",
        "--format",
        dest="ext",
        choices=audio_formats(),
        default="wav",
        help="output file format (default: wav)",
    )
    p.add_argument(
        "--subtype",
        choices=sorted({subtype for subtypes in SUBTYPES.values() for subtype in subtypes}),
        help="sample format: PCM_16 (default for wav and flac), PCM_24 or FLOAT (wav only)",
    )
    p.add_argument(
        "--clip",
        choices=CLIP_POLICIES,
        default="rescale",
        help="what to do with stems that exceed full scale: rescale the stem so its peak fits, "
        "clamp the samples, or none (FLOAT only) (default: rescale)",
    )
    p.add_argument("--start", type=float, default=0.0, help="start of the excerpt, in seconds")
    p.add_argument("--duration", type=float, help="length of the excerpt, in seconds")
    p.add_argument(
        "--downmix",
        action="store_true",
        help="average inputs with more than two channels instead of refusing them",
    )
    p.add_argument(
        "--aggregate",
        metavar="JSON",
        help="groups of targets to write instead, as JSON or a JSON file, e.g. "
        '\'{"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}\'',
    )
    add_separation_arguments(p)
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")


def run_separate(args: argparse.Namespace) -> int:
    if args.list_models:
        for info in list_models():
            where = "bundled" if info.bundled else "cached" if info.cached else "download"
            name = f"{info.name}{' (default)' if info.default else ''}"
            print(f"{name:20s} {where:9s} {' '.join(info.targets):24s} {info.description}")
        return 0
    if not args.inputs:
        raise UmxError("no input files given (try `umx --help`)")
    separator = separator_from_args(args, args.model)
    aggregate = parse_aggregate(args.aggregate)
    failed = 0
    for path in args.inputs:
        try:
            with tqdm(
                total=1.0,
                desc=Path(path).name,
                unit="track",
                disable=True if args.quiet else None,  # None: only on a terminal
                leave=False,
            ) as bar:
                reports = separate_file(
                    path,
                    separator,
                    outdir=args.outdir,
                    filename=args.filename,
                    ext=args.ext,
                    subtype=args.subtype,
                    clip=args.clip,
                    start=args.start,
                    duration=args.duration,
                    downmix=args.downmix,
                    segment=segment_from_args(args),
                    overlap=args.overlap,
                    aggregate=aggregate,
                    force=args.force,
                    on_progress=lambda fraction, bar=bar: bar.update(fraction - bar.n),
                )
        except UmxError as error:
            logger.error("error: %s", error)
            failed += 1
            continue
        for report in reports:
            note = f" ({report.action} by {report.gain:.3f})" if report.action != "none" else ""
            print(f"{report.path}{note}")
    if failed:
        logger.error("%d of %d inputs failed", failed, len(args.inputs))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
