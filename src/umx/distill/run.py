"""A distillation's run, from the music to the student's model directory: its typed options
(`DistillOptions`, checked when built) and `run_distillation` (teacher's pass or the import of
a teacher's stems, training set, training, provenance), resumable by running it again."""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umx.defaults import MAX_NITER, MUSDB_SAMPLES_PER_TRACK
from umx.devices import resolve_device
from umx.errors import UmxError, check_flags, check_number, check_path, display_path, short
from umx.folders import check_folder_option, check_writable, claimed_folder, overlap
from umx.messages import duration, plural
from umx.onnx.options import is_export_folder
from umx.train.config import ARCHITECTURE, DEFAULTS, require_train_extra

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


@dataclass(frozen=True)
class DistillOptions:
    """A distillation: the music, the teacher (a model, or the stems another separator made),
    the student and its training, where they go. Checked when built, before any work, with the
    messages of `umx distill`'s options, whose names and meanings the fields have.

    Attributes:
        music: folders of songs (searched recursively), audio files or glob patterns: one, or
            a sequence of them; only read.
        output: the student's model directory.
        teacher: the teacher: a model name or directory, or an ONNX export folder.
        teacher_stems: instead of `teacher`, the folder of the stems another separator made
            (see `umx.distill.stems`).
        work: the work folder; None for `output` with `WORK_SUFFIX`.
        targets: the teacher's stems to train (None: all).
        niter: the teacher's Wiener filter iterations (None: `umx batch`'s).
        valid_fraction: the share of the songs held out for validation, at most 0.5.
        unidirectional: a causal student.
        student: the model whose weights and architecture each target starts from.
        epochs, patience, batch_size, lr, seq_dur, samples_per_track, seed, hidden_size, nfft,
            nhop, nb_channels: the student's training (`TRAINING_OPTIONS`); None takes
            `TRAINING_DEFAULTS` (or, for the architecture, the `student`'s).
        device: where a PyTorch teacher and the student run (None: auto).
        jobs: the teacher's worker processes (None: `umx batch`'s).
        force: train the student from scratch into an output folder of another run or with
            other settings.
        quiet: warnings only.

    Raises:
        UmxError: a bad value, neither or both of `teacher` and `teacher_stems`, an option of
            a teacher's pass with `teacher_stems`, an ONNX export as `student`, or the output
            or work folder inside a music folder (a glob pattern's included), the teacher's or
            student's model directory or the stems folder (or one holding it), or one another.
    """

    music: tuple[str, ...]
    output: Path
    teacher: str | None = None
    teacher_stems: str | os.PathLike | None = None
    work: Path | None = None
    targets: tuple[str, ...] | None = None
    niter: int | None = None
    valid_fraction: float = VALID_FRACTION
    unidirectional: bool = False
    student: str | None = None
    epochs: int | None = None
    patience: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seq_dur: float | None = None
    samples_per_track: int | None = None
    seed: int | None = None
    hidden_size: int | None = None
    nfft: int | None = None
    nhop: int | None = None
    nb_channels: int | None = None
    device: str | None = None
    jobs: int | None = None
    force: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        music = (self.music,) if isinstance(self.music, str | os.PathLike) else self.music
        if not isinstance(music, Sequence) or isinstance(music, bytes):
            raise UmxError(f"MUSIC must be a path or a list of paths, not {short.repr(music)}")
        for item in music:
            check_path("MUSIC", item)
        if not music:
            raise UmxError("give the music to distil on: folders, audio files or glob patterns")
        object.__setattr__(self, "music", tuple(os.fspath(item) for item in music))
        if self.targets is not None:
            targets = (self.targets,) if isinstance(self.targets, str) else self.targets
            object.__setattr__(self, "targets", tuple(targets))
        flags = {"--unidirectional": self.unidirectional, "--force": self.force}
        check_flags({**flags, "--quiet": self.quiet})
        check_path("--output", self.output)
        check_path("--work", self.work, optional=True)
        check_path("--teacher-stems", self.teacher_stems, optional=True)
        if self.device is not None:  # the teacher's pass and the training run here
            check_path("--device", self.device, what="a device name")
            resolve_device(self.device)
        if (self.teacher is None) == (self.teacher_stems is None):
            raise UmxError(
                "give one teacher: a model (--teacher) or the stems of one (--teacher-stems)"
            )
        output, work = _check_folders(self)
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "work", work)
        training_options(self)  # its numbers, now rather than after the teacher's pass


def run_distillation(options: DistillOptions) -> dict[str, Any]:
    """Distil: the teacher's pass (or the import of its stems), the training set, the student's
    targets and its provenance file; a run stopped before its end goes on where it stopped
    when run again with the same options.

    Returns:
        the student's provenance (`umx.distill.student.write_provenance`).

    Raises:
        UmxError: see `docs/distillation.md`: the work folder of a run with other settings or
            holding files umx did not write, an output folder of another run (without
            `force`), a teacher or student that cannot be used, too few songs, an output or
            work folder that cannot be written (said before the teacher's pass), a work folder
            another umx distill is using.
    """
    require_train_extra()  # before the teacher's pass, which may take hours
    for option, folder in (("--output", options.output), ("--work", options.work)):
        check_writable(option, folder)
    busy = (
        f"another umx distill is using {display_path(options.work)}; wait for it to end, or "
        "give another --work"
    )
    with claimed_folder(options.work, busy):  # for the whole run: it rebuilds the training set
        return _distil(options)


def _distil(options: DistillOptions) -> dict[str, Any]:
    """The run of `run_distillation`, into its checked output and work folders (named as given
    in messages, absolute where they are recorded)."""
    from umx.distill.stems import import_teacher_stems, stems_rate
    from umx.distill.student import check_settings, train_student, write_provenance, write_settings
    from umx.distill.teacher import build_training_set, teacher_pass
    from umx.modeldir import select_targets

    training = training_options(options)
    settings = {
        "music": [os.path.abspath(music) for music in options.music],
        "teacher": options.teacher,
        "teacher_stems": options.teacher_stems and os.path.abspath(options.teacher_stems),
        "niter": options.niter,
        "targets": options.targets,
        "valid_fraction": options.valid_fraction,
        **training,
        "output": os.path.abspath(options.output),
    }
    check_settings(options.work, options.output, settings, force=options.force)
    output, work = Path(os.path.abspath(options.output)), Path(os.path.abspath(options.work))
    if options.teacher_stems is None:
        _check_models(options, training, None)
        teacher = teacher_pass(
            options.music,
            options.teacher,
            options.work,
            niter=options.niter,
            device=options.device,
            jobs=options.jobs,
            quiet=options.quiet,
        )
    else:
        match = _match_stems(options)
        _check_models(options, training, match.targets, stems_rate(match))
        teacher = import_teacher_stems(match, work)
    targets = select_targets(teacher.targets, options.targets, _teacher_name(options))
    data = build_training_set(
        teacher.tracks, work, valid_fraction=options.valid_fraction, seed=training["seed"]
    )
    write_settings(work, settings)
    logger.info(
        "distilling %s into %s: %s (%s), %d for validation; targets %s",
        _teacher_name(options),
        display_path(options.output),
        plural(len(data.train) + len(data.valid), "song"),
        duration(data.seconds),
        len(data.valid),
        ", ".join(targets),
    )
    train_student(
        data,
        Path(options.output),  # as given: its training lines name it so
        targets,
        training,
        work=work,
        force=options.force,
        device=options.device,
        quiet=options.quiet,
    )
    provenance = write_provenance(output, teacher, data, targets)
    shown = display_path(options.output)
    logger.info("student model in %s: umx --model %s SONG", shown, shlex.quote(shown))
    return provenance


def _check_models(
    options: DistillOptions,
    training: dict[str, Any],
    stems: list[str] | None,
    stems_rate: float | None = None,
) -> None:
    """Refuse now, not after the teacher's pass: targets the teacher lacks, and a --student
    at another sample rate than the teacher's stems, whose architecture contradicts `training`
    or that lacks one of the selected targets.

    Args:
        stems: the stems of --teacher-stems; None: those of the --teacher model.
        stems_rate: the sample rate of --teacher-stems (None with a --teacher model).

    Raises:
        UmxError: naming the option.
    """
    from umx.modeldir import select_targets
    from umx.onnx.folder import read_export
    from umx.train.finetune import fine_tuned_architecture
    from umx.zoo import load_separator

    if options.student is None and options.targets is None:
        return
    if stems is None and is_export_folder(options.teacher):
        export = read_export(options.teacher)
        stems, stems_rate = list(export["targets"]), export["sample_rate"]
    elif stems is None:
        teacher = load_separator(options.teacher, niter=0, progress=not options.quiet)
        stems, stems_rate = teacher.targets, teacher.sample_rate
    selected = select_targets(stems, options.targets, _teacher_name(options))
    if options.student is None:
        return
    student = load_separator(options.student, niter=0, progress=not options.quiet)
    if stems_rate is not None and student.sample_rate != stems_rate:
        teacher_at = (
            f"the teacher {options.teacher} separates at {stems_rate:g} Hz"
            if options.teacher_stems is None
            else f"the stems of --teacher-stems are at {stems_rate:g} Hz"
        )
        raise UmxError(
            f"--student {display_path(options.student)} works at {student.sample_rate:g} Hz, "
            f"but {teacher_at}: give a --student at {stems_rate:g} Hz, or leave out --student "
            "to train new weights"
        )
    architecture = {key: training.get(key) for key in ARCHITECTURE}
    for target in student.targets:
        fine_tuned_architecture(student, target, architecture, f"--student {options.student}")
    missing = [target for target in selected if target not in student.targets]
    if missing:
        covered = [target for target in selected if target in student.targets]
        advice = f"give --targets {' '.join(covered)}, or" if covered else "give"
        raise UmxError(
            f"--student {display_path(options.student)} has no {' or '.join(missing)} model (its "
            f"targets are {', '.join(student.targets)}): {advice} a --student with every "
            "target trained"
        )


def _check_folders(options: DistillOptions) -> tuple[Path, Path]:
    """Refuse options that make no sense and folders that would mix the model with the music.

    Returns:
        the output and work folders, as given (the work folder `output` with `WORK_SUFFIX`
        if not given).

    Raises:
        UmxError: a bad number, or the output or work folder inside a music folder (a glob
            pattern's included) or the teacher's or student's model directory (or one holding
            it), or holding a music file.
    """
    check_number("--valid-fraction", options.valid_fraction, above=0, maximum=0.5)
    _refuse_onnx_export(options.student)
    if options.niter is not None:
        check_number("--niter", options.niter, minimum=0, maximum=MAX_NITER, integer=True)
    if options.jobs is not None:
        check_number("--jobs", options.jobs, above=0, integer=True)
    if options.teacher_stems is not None:
        _check_stems_folder(options)
    output = Path(options.output)
    work = Path(options.work or f"{output}{WORK_SUFFIX}")
    check_folder_option("--output", output)  # now, not after the teacher's pass
    check_folder_option("--work", work)
    if overlap(os.path.abspath(work), os.path.abspath(output)):
        raise UmxError(
            f"--work {display_path(work)} and --output {display_path(output)} overlap: the "
            "model directory stays small, and the work folder can be deleted once trained"
        )
    for music in options.music:
        path, shown = _music_path(music)
        _check_apart(output, work, path, shown, "music")
    for option in ("--teacher", "--student"):
        model = getattr(options, option[2:])
        if model is not None and os.path.isdir(model):  # a model directory, not a name
            shown = f"{option} {display_path(model)}"
            _check_apart(output, work, model, shown, f"{option[2:]}'s model directory")
    if options.teacher_stems is not None:
        shown = f"--teacher-stems {display_path(options.teacher_stems)}"
        _check_apart(output, work, options.teacher_stems, shown, "teacher's stems folder")
    return output, work


def _check_stems_folder(options: DistillOptions) -> None:
    """Refuse a --teacher-stems that is not a folder, and the options of a teacher model's pass
    with it.

    Raises:
        UmxError: naming the option.
    """
    if not os.path.isdir(options.teacher_stems):
        raise UmxError(
            f"--teacher-stems {display_path(options.teacher_stems)} is not a folder: give the "
            "folder holding a folder of stems per song"
        )
    for option in ("--niter", "--jobs"):
        if getattr(options, option[2:]) is not None:
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
    from umx.modeldir import exported_from  # imports torch

    if is_export_folder(model):
        raise UmxError(
            f"--student {display_path(model)} is an ONNX export (umx export), which umx distill "
            f"cannot train: give {exported_from(model)}"
        )


def _music_path(music: str) -> tuple[str, str]:
    """What a MUSIC argument reads, as a path, and how a message names it: a folder, a file,
    or the folder a glob pattern searches (its parts before the first with `*`, `?` or `[`;
    an argument is a pattern as `umx.batch.inputs.collect_inputs` reads it)."""
    from umx.batch.inputs import pattern_base  # imports torch (umx.audio): only here

    if os.path.isdir(music):
        return music, f"the music folder {display_path(music)}"
    if (base := pattern_base(music)) == music:
        return music, f"the music file {display_path(music)}"
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


def training_options(options: DistillOptions) -> dict[str, Any]:
    """The student's training options: those given, else `TRAINING_DEFAULTS`, checked by
    `umx.train.TrainConfig` now rather than after the teacher's pass.

    Raises:
        UmxError: one sentence naming the first bad option.
    """
    from umx.distill.teacher import DATA_DIR, MIXTURE_FILE
    from umx.train import TrainConfig

    given = {key: getattr(options, key) for key in TRAINING_DEFAULTS}
    training = {**TRAINING_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    if options.student is not None:  # the model's architecture, unless one is asked for
        for key in ARCHITECTURE:
            if key in training and not given[key]:
                del training[key]
        training["model"] = options.student
    files = {"input_file": MIXTURE_FILE, "output_file": MIXTURE_FILE}  # names only: none is read
    TrainConfig(dataset="aligned", root=options.work / DATA_DIR, **files, **training)
    return training


def _teacher_name(options: DistillOptions) -> str:
    """How messages name the teacher: its model, or the folder of its stems."""
    if options.teacher_stems is None:
        return f"the teacher {options.teacher}"
    return f"--teacher-stems {display_path(options.teacher_stems)}"


def _match_stems(options: DistillOptions) -> StemsMatch:
    """The songs of the music and their stems in --teacher-stems (`find_teacher_stems`); the
    stems folder and the work folder are left out of the music's search."""
    from umx.batch.inputs import collect_inputs
    from umx.distill.stems import find_teacher_stems

    folder = Path(os.path.abspath(options.teacher_stems))
    excluded = {options.work: "--work", folder: "--teacher-stems"}
    inputs = collect_inputs(options.music, exclude=excluded)
    bases = [_music_path(music)[0] for music in options.music]
    return find_teacher_stems([item.path for item in inputs], bases, folder)
