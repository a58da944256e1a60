"""`umx distill`: its options, parsed into `umx.distill.run.DistillOptions`, and the command
that resumes a run."""

from __future__ import annotations

import argparse
import logging
import shlex
from dataclasses import fields

from umx.cli_options import path_argument, path_text
from umx.distill.run import (
    TRAINING_DEFAULTS,
    TRAINING_OPTIONS,
    VALID_FRACTION,
    WORK_SUFFIX,
    DistillOptions,
    run_distillation,
)

logger = logging.getLogger("umx")


def add_distill_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `umx distill`."""
    p.add_argument(
        "music",
        nargs="+",
        type=path_text,
        metavar="MUSIC",
        help="folders of songs (searched recursively), audio files or glob patterns: "
        "unlabelled music, only read",
    )
    _add_teacher_arguments(p)
    p.add_argument(
        "--output",
        required=True,
        type=path_argument,
        metavar="DIR",
        help="the student's model directory",
    )
    p.add_argument(
        "--work",
        type=path_argument,
        metavar="DIR",
        help=f"where the teacher's stems and the training set go (default: OUTPUT{WORK_SUFFIX})",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        metavar="TARGET",
        help="train only these of the teacher's stems (default: all)",
    )
    p.add_argument(
        "--niter",
        type=int,
        help="the teacher's Wiener filter iterations (default: umx batch's, 1)",
    )
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=VALID_FRACTION,
        metavar="F",
        help=f"share of the songs held out for validation, at most 0.5 (default: "
        f"{VALID_FRACTION:g}; at least one song)",
    )
    p.add_argument(
        "--unidirectional",
        action="store_true",
        help="a causal student (forward-only LSTM), for umx stream",
    )
    p.add_argument(
        "--student",
        metavar="MODEL",
        help="start each student target from this model's (a name or directory), keeping its "
        "architecture, instead of new weights: e.g. umxsynth-rt, to adapt it to your music",
    )
    for key, (kind, metavar, text) in TRAINING_OPTIONS.items():
        p.add_argument(
            f"--{key.replace('_', '-')}",
            type=kind,
            metavar=metavar,
            help=f"{text} (default: {TRAINING_DEFAULTS[key]:g})",
        )
    p.add_argument("--device", help="where the teacher and the student run (default: auto)")
    p.add_argument(
        "--jobs", type=int, metavar="N", help="the teacher's worker processes (default: 1)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="train the student from scratch into an output folder of another run or with "
        "other settings (the teacher's stems are kept)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")


def _add_teacher_arguments(p: argparse.ArgumentParser) -> None:
    """--teacher or --teacher-stems: one is required."""
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument(
        "--teacher",
        help="the teacher: a model name or directory, or an ONNX export folder (umx export)",
    )
    teacher.add_argument(
        "--teacher-stems",
        type=path_argument,
        metavar="DIR",
        help="instead of a teacher model, the stems another separator made of the songs "
        "(Demucs, Spleeter...): a folder per song named after it, e.g. DIR/SONG/vocals.wav",
    )


def resume_command(options: DistillOptions) -> str:
    """The command that resumes a run: the same options, without --force."""
    words = ["umx", "distill", *options.music, "--output", str(options.output)]
    words += ["--work", str(options.work)]
    for field in fields(options):
        key, value = field.name, getattr(options, field.name)
        if key in ("music", "output", "work", "force"):
            continue
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            words.append(flag)
        elif isinstance(value, tuple):
            words += [flag, *map(str, value)]
        elif value is not None and value is not False:
            words += [flag, str(value)]
    return shlex.join(words)


def run_distill(args: argparse.Namespace) -> int:
    """Run `umx distill`; returns 0 (a stop prints the command that resumes it)."""
    given = {field.name: getattr(args, field.name) for field in fields(DistillOptions)}
    options = DistillOptions(**given)
    try:
        run_distillation(options)
    except BaseException as stop:
        if not isinstance(stop, Exception):  # Ctrl-C, SIGTERM
            logger.warning("to resume the distillation: %s", resume_command(options))
        raise
    return 0
