"""`umx distill`: its options, and a run from the music to the student's model directory
(teacher's pass, training set, training, provenance), resumable by running it again."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umx.cli_options import path_argument, path_text
from umx.defaults import MAX_NITER, MUSDB_SAMPLES_PER_TRACK
from umx.errors import UmxError, check_number, display_path
from umx.files import overlap
from umx.messages import plural
from umx.onnx.options import EXPORT_JSON, is_export_folder
from umx.train.config import ARCHITECTURE, DEFAULTS

if TYPE_CHECKING:
    from umx.distill.stems import StemsMatch

logger = logging.getLogger("umx")

VALID_FRACTION = 0.1
"""The share of the songs held out for validation by default."""
WORK_SUFFIX = "-work"
"""The default work folder is the output's path with this suffix."""

TRAINING_OPTIONS: dict[str, tuple[type, str, str]] = {
    "epochs": (int, "N", "maximum number of epochs per target"),
    "patience": (int, "N", "stop a target after this many epochs without a lower validation loss"),
    "batch_size": (int, "N", "excerpts per batch"),
    "lr": (float, "LR", "Adam learning rate"),
    "seq_dur": (float, "SECONDS", "length of the training excerpts"),
    "samples_per_track": (int, "N", "training excerpts per song and epoch"),
    "seed": (int, "N", "random seed of the training and of the validation split"),
    "hidden_size": (int, "N", "width of the student's hidden layers"),
    "nfft": (int, "N", "the student's STFT size"),
    "nhop": (int, "N", "the student's STFT hop"),
    "nb_channels": (int, "N", "audio channels of the student, 1 or 2"),
}
"""The options of `umx train` a distillation passes on: type, metavar and help."""
TRAINING_DEFAULTS: dict[str, Any] = {
    **{key: DEFAULTS[key] for key in (*TRAINING_OPTIONS, "unidirectional")},
    "samples_per_track": MUSDB_SAMPLES_PER_TRACK,  # umx train's is 1 for folder datasets
}
"""Their defaults: `umx train`'s, but as many excerpts per song as for MUSDB18."""


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
    p.add_argument("--jobs", type=int, metavar="N", help="the teacher's worker processes")
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


def check_distill_args(args: argparse.Namespace) -> tuple[Path, Path]:
    """Refuse options that make no sense and folders that would mix the model with the music.

    Returns:
        the output and work folders, absolute.

    Raises:
        UmxError: a bad number, or the output or work folder inside a music folder (a glob
            pattern's included) or the teacher's or student's model directory (or one holding
            it), or holding a music file.
    """
    check_number("--valid-fraction", args.valid_fraction, above=0, maximum=0.5)
    _refuse_onnx_export(args.student)
    if args.niter is not None:
        check_number("--niter", args.niter, minimum=0, maximum=MAX_NITER, integer=True)
    if args.jobs is not None:
        check_number("--jobs", args.jobs, above=0, integer=True)
    if args.teacher_stems is not None:
        _check_stems_folder(args)
    output = Path(os.path.abspath(args.output))
    work = Path(os.path.abspath(args.work or f"{output}{WORK_SUFFIX}"))
    if overlap(str(work), str(output)):
        raise UmxError(
            f"--work {display_path(work)} and --output {display_path(output)} overlap: the "
            "model directory stays small, and the work folder can be deleted once trained"
        )
    for music in args.music:
        path, shown = _music_path(music)
        _check_apart(output, work, path, shown, "music")
    for option in ("--teacher", "--student"):
        model = getattr(args, option[2:])
        if model is not None and os.path.isdir(model):  # a model directory, not a name
            shown = f"{option} {display_path(model)}"
            _check_apart(output, work, model, shown, f"{option[2:]}'s model directory")
    if args.teacher_stems is not None:
        shown = f"--teacher-stems {display_path(args.teacher_stems)}"
        _check_apart(output, work, args.teacher_stems, shown, "teacher's stems folder")
    return output, work


def _check_stems_folder(args: argparse.Namespace) -> None:
    """Refuse a --teacher-stems that is not a folder, and the options of a teacher model's pass
    with it.

    Raises:
        UmxError: naming the option.
    """
    if not os.path.isdir(args.teacher_stems):
        raise UmxError(
            f"--teacher-stems {display_path(args.teacher_stems)} is not a folder: give the "
            "folder holding a folder of stems per song"
        )
    for option in ("--niter", "--jobs"):
        if getattr(args, option[2:]) is not None:
            raise UmxError(
                f"{option} sets the teacher model's pass, which --teacher-stems replaces: leave "
                f"{option} out"
            )


def _refuse_onnx_export(model: str | None) -> None:
    """Refuse a --student that is an `umx export` folder (`umx.onnx.options.is_export_folder`):
    a student is a PyTorch model, trained.

    Raises:
        UmxError: naming, where its JSON says it, the model exported.
    """
    if not is_export_folder(model):
        return
    try:
        source = json.loads((Path(model) / EXPORT_JSON).read_bytes()).get("model")
    except (OSError, ValueError, RecursionError, AttributeError):
        source = None
    given = (
        f"the model it was exported from ({source})"
        if isinstance(source, str)
        else ("the PyTorch model directory or name it was exported from")
    )
    raise UmxError(
        f"--student {display_path(model)} is an ONNX export (umx export), which umx distill "
        f"cannot train: give {display_path(given)}"
    )


def _music_path(music: str) -> tuple[str, str]:
    """What a MUSIC argument reads, as a path, and how a message names it: a folder, a file,
    or the folder a glob pattern searches (its parts before the first with `*`, `?` or `[`;
    an argument is a pattern as `umx.batch.inputs.collect_inputs` reads it)."""
    from umx.batch.inputs import GLOB_CHARACTERS  # imports torch (umx.audio): only here

    if os.path.isdir(music):
        return music, f"the music folder {display_path(music)}"
    if not GLOB_CHARACTERS & set(music) or os.path.lexists(music):
        return music, f"the music file {display_path(music)}"
    parts = Path(music).parts
    fixed = next(i for i, part in enumerate(parts) if GLOB_CHARACTERS & set(part))
    base = str(Path(*parts[:fixed])) if fixed else os.curdir
    return base, f"the music folder {display_path(base)} (of the pattern {display_path(music)})"


def _check_apart(output: Path, work: Path, folder: str, shown: str, what: str) -> None:
    """Refuse an output or work folder that is `folder`, lies inside it or holds it.

    Raises:
        UmxError: naming both, `shown` for `folder` and `what` it is.
    """
    real = os.path.realpath(folder)
    for option, written in (("--output", output), ("--work", work)):
        if overlap(os.path.realpath(written), real):
            raise UmxError(
                f"{option} {display_path(written)} and {shown} overlap: put the {option[2:]} "
                f"folder outside the {what}, so that neither is read or written as the other"
            )


def training_options(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The student's training options: those given, else `TRAINING_DEFAULTS`, checked by
    `umx.train.TrainConfig` now rather than after the teacher's pass.

    Raises:
        UmxError: one sentence naming the first bad option.
    """
    from umx.distill.teacher import DATA_DIR, MIXTURE_FILE
    from umx.train import TrainConfig

    given = {key: getattr(args, key) for key in TRAINING_DEFAULTS}
    training = {**TRAINING_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    if args.student is not None:  # the model's architecture, unless one is asked for
        for key in ARCHITECTURE:
            if key in training and not given[key]:
                del training[key]
        training["model"] = args.student
    files = {"input_file": MIXTURE_FILE, "output_file": MIXTURE_FILE}  # names only: none is read
    TrainConfig(dataset="aligned", root=work / DATA_DIR, **files, **training)
    return training


def resume_command(args: argparse.Namespace, work: Path) -> str:
    """The command that resumes this run: the same options, without --force."""
    words = ["umx", "distill", *args.music, "--output", str(args.output), "--work", str(work)]
    for key, value in vars(args).items():
        if key in ("music", "output", "work", "force", "run", "command"):
            continue
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        elif value is not None and value is not False:
            words += [flag, str(value)]
    return shlex.join(words)


def run_distill(args: argparse.Namespace) -> int:
    """Run `umx distill`; returns 0 (a stop prints the command that resumes it)."""
    output, work = check_distill_args(args)
    try:
        _distill(args, output, work)
    except BaseException as stop:
        if not isinstance(stop, Exception):  # Ctrl-C, SIGTERM
            logger.warning("to resume the distillation: %s", resume_command(args, work))
        raise
    return 0


def _check_models(
    args: argparse.Namespace, training: dict[str, Any], stems: list[str] | None
) -> None:
    """Refuse now, not after the teacher's pass: targets the teacher lacks, and a --student
    whose architecture contradicts `training` or that lacks one of the selected targets.

    Args:
        stems: the stems of --teacher-stems; None: those of the --teacher model.

    Raises:
        UmxError: naming the option.
    """
    from umx.modeldir import select_targets
    from umx.onnx.folder import read_export
    from umx.train.loop import fine_tuned_architecture
    from umx.zoo import load_separator

    if args.student is None and args.targets is None:
        return
    if stems is None and is_export_folder(args.teacher):
        stems = list(read_export(args.teacher)["targets"])
    elif stems is None:
        stems = load_separator(args.teacher, niter=0, progress=not args.quiet).targets
    selected = select_targets(stems, args.targets, _teacher_name(args))
    if args.student is None:
        return
    student = load_separator(args.student, niter=0, progress=not args.quiet)
    architecture = {key: training.get(key) for key in ARCHITECTURE}
    for target in student.targets:
        fine_tuned_architecture(student, target, architecture, f"--student {args.student}")
    missing = [target for target in selected if target not in student.targets]
    if missing:
        covered = [target for target in selected if target in student.targets]
        advice = f"give --targets {' '.join(covered)}, or" if covered else "give"
        raise UmxError(
            f"--student {display_path(args.student)} has no {' or '.join(missing)} model (its "
            f"targets are {', '.join(student.targets)}): {advice} a --student with every "
            "target trained"
        )


def _distill(args: argparse.Namespace, output: Path, work: Path) -> None:
    from umx.distill.stems import import_teacher_stems
    from umx.distill.student import (
        check_settings,
        train_student,
        write_provenance,
        write_settings,
    )
    from umx.distill.teacher import build_training_set, teacher_pass
    from umx.modeldir import select_targets

    training = training_options(args, work)
    settings = {
        "music": [os.path.abspath(music) for music in args.music],
        "teacher": args.teacher,
        "teacher_stems": args.teacher_stems and os.path.abspath(args.teacher_stems),
        "niter": args.niter,
        "targets": args.targets,
        "valid_fraction": args.valid_fraction,
        **training,
        "output": str(output),
    }
    check_settings(work, output, settings, force=args.force)
    if args.teacher_stems is None:
        _check_models(args, training, None)
        teacher = teacher_pass(
            args.music,
            args.teacher,
            work,
            niter=args.niter,
            device=args.device,
            jobs=args.jobs,
            quiet=args.quiet,
        )
    else:
        match = _match_stems(args, work)
        _check_models(args, training, match.targets)
        teacher = import_teacher_stems(match, work)
    targets = select_targets(teacher.targets, args.targets, _teacher_name(args))
    data = build_training_set(
        teacher.tracks, work, valid_fraction=args.valid_fraction, seed=training["seed"]
    )
    write_settings(work, settings)
    logger.info(
        "distilling %s into %s: %s (%.2f h), %d for validation; targets %s",
        _teacher_name(args),
        display_path(output),
        plural(len(data.train) + len(data.valid), "song"),
        data.seconds / 3600,
        len(data.valid),
        ", ".join(targets),
    )
    train_student(
        data,
        output,
        targets,
        training,
        force=args.force,
        device=args.device,
        quiet=args.quiet,
    )
    write_provenance(output, teacher, data, targets)
    logger.info(
        "student model in %s: umx --model %s SONG", display_path(output), shlex.quote(str(output))
    )


def _teacher_name(args: argparse.Namespace) -> str:
    """How messages name the teacher: its model, or the folder of its stems."""
    if args.teacher_stems is None:
        return f"the teacher {args.teacher}"
    return f"--teacher-stems {display_path(args.teacher_stems)}"


def _match_stems(args: argparse.Namespace, work: Path) -> StemsMatch:
    """The songs of the music and their stems in --teacher-stems (`find_teacher_stems`); the
    stems folder and the work folder are left out of the music's search."""
    from umx.batch.inputs import collect_inputs
    from umx.distill.stems import find_teacher_stems

    folder = Path(os.path.abspath(args.teacher_stems))
    inputs = collect_inputs(args.music, exclude={work: "--work", folder: "--teacher-stems"})
    bases = [_music_path(music)[0] for music in args.music]
    return find_teacher_stems([item.path for item in inputs], bases, folder)
