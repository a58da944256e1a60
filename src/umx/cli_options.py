"""Command-line options shared by the commands: the separation (`umx separate`, `umx evaluate`,
`umx batch`) and the stem files (`umx separate`, `umx stream`, `umx batch`), parsed and turned
into the typed options of `umx.options`."""

from __future__ import annotations

import argparse
import difflib
import itertools
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from umx.cli_habits import (
    OTHER_TOOLS_OPTIONS,
    check_stem_words,
    given_models,
    meant_option,
    stem_option,
    two_models,
)
from umx.defaults import (
    AUDIO_EXTENSIONS,
    CLIP_POLICIES,
    DEFAULT_MODEL,
    DEFAULT_TEMPLATE,
    FALLBACK_MODEL,
    OVERLAP,
    SEGMENT,
    SUBTYPES,
    TEMPLATE_FIELDS,
    WIENER_WIN_LEN,
)
from umx.errors import (
    UmxError,
    check_excerpt,
    check_target_name,
    display_path,
    printable,
)
from umx.onnx.options import BACKENDS, QUANTIZATIONS
from umx.options import OutputOptions, SeparationOptions, ext_conflict, template_format

MODEL_HELP = (
    f"model name (see umx --list-models) or model directory (default: {DEFAULT_MODEL}, downloaded "
    f"once; the bundled {FALLBACK_MODEL} when {DEFAULT_MODEL} cannot be had or UMX_OFFLINE=1)"
)

OPTION = re.compile(r"--?[A-Za-z][A-Za-z-]*")
"""What an option looks like, which only `--` makes an input."""
EMPTY_PATH = "an empty path: give a file or folder (is a shell variable unset?)"


def path_text(text: str) -> str:
    """An argparse `type` for a file, folder or pattern kept as text: the empty string (most
    often an unset shell variable) is refused, where `Path` would read it as this folder."""
    if not text:
        raise argparse.ArgumentTypeError(EMPTY_PATH)
    return text


def path_argument(text: str) -> Path:
    """An argparse `type` for a file or folder: a `Path`, the empty string refused as by
    `path_text`."""
    return Path(path_text(text))


CLOSE_FILE = 0.85
"""How alike (difflib's ratio) a missing input's name and a file next to it must be for one to
be taken for the other: a letter or two in a name of ten or more."""


def spelled_out(argv: list[str], commands: Sequence[str]) -> list[str]:
    """`umx help [COMMAND]` and `umx version`, as newcomers type them, read as `umx [COMMAND]
    --help` and `umx --version`, unless a file has that name (which `umx FILE` separates)."""
    if not argv or os.path.lexists(argv[0]):
        return argv
    if argv[0] == "help":
        return [*(argv[1:2] if argv[1:2] and argv[1] in commands else []), "--help"]
    return ["--version"] if argv == ["version"] else argv


def not_a_command(word: str, commands: Sequence[str]) -> str | None:
    """Why `umx WORD ...` cannot mean `umx separate WORD ...`, or None when it can: WORD is
    neither a command nor an existing file, nor does it look like a file name (with an extension
    or a folder), which `umx separate` refuses when missing, before loading a model."""
    if os.path.lexists(word) or Path(word).suffix or os.sep in word:
        return None
    problem = f"{word!r} is not a command or a file"
    if word in ("models", "list"):
        return f"{problem}; to list the models: umx --list-models"
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    if close:
        return f"{problem}; did you mean {close[0]}?"
    return f"{problem}; the commands are {', '.join(commands)}"


def missing_input(path: str, problem: str, song: str = "SONG") -> str:
    """`problem`, the reason input `path` cannot be read, with the option a newcomer meant when
    the input is a stem word that is not a file (`umx song.mp3 vocals`: `umx song.mp3 --targets
    vocals`, with `song` the input that can be read)."""
    option = stem_option(path)
    if path == "-" and not os.path.lexists(path):
        return f"{problem}: umx separate reads files; umx stream - reads standard input"
    if os.path.isdir(path):
        from umx.batch.inputs import holds_songs

        if not holds_songs(path):  # umx batch would refuse it too
            return f"{problem}, and holds no audio file"
        return f"{problem}; to separate every song in it: umx batch {display_path(path)}"
    if option is None or os.path.lexists(path):
        near = nearby_file(path) if option is None else None
        return problem if near is None else f"{problem}; did you mean {display_path(near)}?"
    return f"{problem}; to ask for stems, write the option: umx {song} {option}"


def nearby_file(path: str) -> str | None:
    """The one file next to a missing `path` whose name differs only slightly (`song.fla`:
    `song.flac`), as the user would write it; None when there is none or the folder cannot be
    listed."""
    if os.path.lexists(path):
        return None
    folder, name = os.path.split(path)
    try:
        names = [entry.name for entry in os.scandir(folder or ".") if entry.is_file()]
    except OSError:
        return None
    close = difflib.get_close_matches(name, names, n=2, cutoff=CLOSE_FILE)
    if len(close) != 1:  # none, or two as close: which one was meant is not clear
        return None
    return os.path.join(folder, close[0])


def check_readable(paths: Sequence[str]) -> None:
    """Refuse, in one line, inputs that are missing, not regular files or unreadable, before any
    model is loaded; whether they decode is found out file by file while separating."""
    from umx.audio.reading import _open_regular

    options = [path for path in paths if OPTION.fullmatch(path) and not os.path.lexists(path)]
    if options:
        raise UmxError(
            f"{options[0]} is read as an input file, as every word after -- is, and there is no "
            "such file: write the options before -- (umx separate [OPTIONS] -- INPUT...)"
        )
    problems, missing = [], []
    for path in paths:
        try:
            with _open_regular(Path(path)):
                pass
        except UmxError as error:
            missing.append((path, str(error)))
    song = next((display_path(p) for p in paths if p not in dict(missing)), "SONG")
    # a stem word first: `umx song.mp3 a cappella` is answered for cappella, not for a
    missing.sort(key=lambda given: stem_option(given[0]) is None or os.path.lexists(given[0]))
    problems = [missing_input(path, problem, song) for path, problem in missing]
    if len(problems) > 1:
        others = len(problems) - 1
        problems[0] += f" (and {others} more input{'s' if others > 1 else ''} cannot be read)"
    if problems:
        raise UmxError(problems[0])


def check_inputs(args: argparse.Namespace) -> SeparationOptions:
    """The options and inputs of `umx separate` that can be checked before loading a model.

    Returns:
        the separation options.
    """
    if not args.inputs:
        taken = [t for t in args.targets or () if Path(t).suffix or Path(t).exists()]
        if taken:
            raise UmxError(
                f"--targets took {taken[0]!r} as a target name and no input file is left: "
                f"write the inputs first (umx {taken[0]} --targets ...) or end the target list "
                "with -- (umx --targets vocals -- song.mp3)"
            )
        raise UmxError(
            "no input files given: name the songs, e.g. umx song.mp3 (see umx separate --help)"
        )
    check_readable(args.inputs)
    check_excerpt(args.start, args.duration)
    return check_separation_args(args)


SEPARATION_DEFAULTS = {
    **{field.name: field.default for field in fields(SeparationOptions) if field.name != "model"},
    "overlap": None,  # not given: OVERLAP, or half of a shorter --segment (`default_overlap`)
}
"""The separation options but --model and their defaults (those of `SeparationOptions`)."""


def default_overlap(segment: float) -> float:
    """The cross-fade when --overlap is not given: `OVERLAP`, or half of a --segment shorter
    than twice that (`--segment 3` alone was refused, the default 2 s being over half of it)."""
    return segment / 2 if 0 < segment < 2 * OVERLAP else OVERLAP


TWO_STEMS_REST = "no_"
"""What `--two-stems TARGET` puts before TARGET to name the rest of the mixture."""


def _dashed_usage(parser: argparse.ArgumentParser) -> str:
    """The command's usage with its options before `--`: `umx export [OPTIONS] -- MODEL
    OUTDIR`."""
    names = [
        (action.metavar or action.dest.upper()) + ("..." if action.nargs in ("+", "*") else "")
        for action in parser._actions
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction)
    ]
    return f"{parser.prog} [OPTIONS] -- {' '.join(names)}"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, which says where the usage is (argparse's
    own prints the whole usage first, 15 lines for `umx separate`); its sub-parsers are too.
    argparse takes a file whose name begins with a dash for an option: the error then says how
    to give it."""

    _args: tuple[str, ...] = ()
    """The arguments being parsed (shared with the sub-parsers, which argparse calls itself)."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        OneLineParser._args = tuple(sys.argv[1:] if args is None else args)
        parsed = super().parse_args(args, namespace)
        models = given_models(self._args)
        if len(models) > 1:  # argparse keeps the last: two models were meant, one is used
            parser = self._command()
            parser.error(two_models(models, parser.prog.split()[-1]))
        return parsed

    def _get_option_tuples(self, option_string: str) -> list[Any]:
        # Another tool's option is no abbreviation of one of ours that means something else
        # (`--gpu`: not --gpus-per-worker, but `--device cuda`, which the error then says).
        tuples = super()._get_option_tuples(option_string)
        ours = OTHER_TOOLS_OPTIONS.get(option_string.split("=")[0], "").split()[:1]
        if ours and all(found[1] != ours[0] for found in tuples):
            return []
        return tuples

    def error(self, message: str) -> NoReturn:
        # argparse reports a command's unknown arguments from the top-level parser: they are
        # the command's, whose help lists its options (`umx --help` lists only the commands)
        unknown = message.startswith("unrecognized arguments: ")
        parser = self._command() if unknown else self
        files = [arg for arg in self._args if arg.startswith("-") and os.path.lexists(arg)]
        if files:
            message += f"; {files[0]} is a file: write ./{files[0]}, or -- before it"
        elif unknown and ("--" in message.split() or self._options_after_dashes(parser)):
            # argparse left -- (inputs on both sides), or took options after it for inputs
            usage = _dashed_usage(parser)
            message += f"; write the options first, then -- and the arguments ({usage})"
        elif unknown:
            message += self._meant(message.removeprefix("unrecognized arguments: ").split())
        elif message.startswith("the following arguments are required: "):
            missing = message.removeprefix("the following arguments are required: ").split(", ")
            if any(not name.startswith("-") for name in missing):  # a positional argument
                message += self._taken_by_a_list()
            elif "--evaldir" in missing and "--compare" in self._args:
                message += compare_evaldir(self._args)
        # printable: the arguments quoted may hold line breaks and control characters
        self.exit(2, f"{parser.prog}: error: {printable(message)} (see {parser.prog} --help)\n")

    def _command(self) -> argparse.ArgumentParser:
        """The parser of the command given (`umx separate`), or this one if none is."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                given = [arg for arg in self._args if arg in action.choices]
                if given:
                    return action.choices[given[0]]
        return self

    def _options_after_dashes(self, parser: argparse.ArgumentParser) -> bool:
        """Whether one of the command's options was given after `--`, which makes it an
        input."""
        if "--" not in self._args:
            return False
        options = {name for action in parser._actions for name in action.option_strings}
        after = self._args[self._args.index("--") + 1 :]
        return any(arg.split("=")[0] in options for arg in after)

    def _taken_by_a_list(self) -> str:
        """`; --targets took every word after it: ...` where an option that takes a list was
        given (it takes the words up to the next option, the positional arguments after it
        too), else nothing."""
        lists = {
            name
            for action in self._actions
            if action.nargs in ("+", "*") and action.option_strings
            for name in action.option_strings
        }
        given = [arg for arg in self._args if arg in lists]
        if not given:
            return ""
        return (
            f"; {given[0]} took every word after it: give its list last, or end it with -- "
            "before what follows"
        )

    def _meant(self, unknown: list[str]) -> str:
        """What the unknown arguments meant (see `meant_option`), or nothing."""
        parser = self._command()  # the command given, whose options these would be
        options = [name for action in parser._actions for name in action.option_strings]
        command = parser.prog.split()[-1]
        return meant_option(unknown, options, command, self._args)


def compare_evaldir(args: Sequence[str]) -> str:
    """`; --compare writes ... --evaldir evals/compared`: where `umx evaluate --compare A B`
    may write its tables, beside the folders compared."""
    start = list(args).index("--compare") + 1
    compared = list(itertools.takewhile(lambda arg: not arg.startswith("-"), args[start:]))
    try:
        parent = os.path.commonpath([os.path.dirname(os.path.normpath(f)) for f in compared])
    except ValueError:  # none, or absolute and relative folders mixed
        parent = ""
    folder = display_path(os.path.join(parent, "compared"))
    return f"; --compare writes its tables and plots into it: add --evaldir {folder}, or another"


def add_separation_arguments(
    group: argparse._ActionsContainer,
    *,
    chunks: bool = True,
    two_stems: bool = True,
    inputs: bool = True,
) -> None:
    """Add the options of `SEPARATION_DEFAULTS` to a parser or an argument group; without
    `chunks`, those of a stream only (no --wiener-win-len, --segment, --overlap, --whole-track,
    which keep their defaults); with `two_stems`, the shorthand --two-stems (see
    `check_separation_args`); with `inputs`, for a command whose inputs may follow --targets."""
    _add_target_arguments(group, two_stems, inputs)
    group.add_argument("--niter", type=int, help="Wiener filter EM iterations (default: 1)")
    if chunks:
        group.add_argument(
            "--wiener-win-len",
            type=int,
            metavar="N",
            help=f"frames filtered at once; 0 for the whole segment (default: {WIENER_WIN_LEN})",
        )
    group.add_argument(
        "--softmask",
        action="store_true",
        help="start the Wiener filter from ratio masks (default: from the model magnitudes)",
    )
    group.add_argument(
        "--residual",
        metavar="NAME",
        help="add a target NAME, not one of the model's: the mixture minus the targets "
        "(default: none)",
    )
    if chunks:
        group.add_argument(
            "--segment",
            type=float,
            metavar="SECONDS",
            help=f"separate long inputs in chunks of this length (default: {SEGMENT:g})",
        )
        group.add_argument(
            "--overlap",
            type=float,
            metavar="SECONDS",
            help=f"cross-fade between chunks, at most half a chunk (default: {OVERLAP:g}, or "
            "half of a shorter --segment)",
        )
        group.add_argument(
            "--whole-track",
            action="store_true",
            help="separate each input at once, as the reference implementation does "
            "(memory grows with the duration)",
        )
    group.add_argument(
        "--device",
        help="cpu, cuda, cuda:N or mps (default: auto: a CUDA GPU if present, else MPS, "
        "else the CPU)",
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        help="what runs the target models: torch, or onnxruntime on the CPU (extra "
        "umx[onnx]; stems within 1e-5 of their peak with --niter 0, further apart with the "
        "Wiener EM: docs/deploy.md) (default: torch; onnxruntime with --quantize or a --model "
        "folder written by umx export)",
    )
    group.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="int8 dynamic quantisation of the models' LSTM and linear layers, faster and "
        "slightly less accurate; implies --backend onnxruntime (default: none, float32)",
    )
    group.set_defaults(**SEPARATION_DEFAULTS)


def _add_target_arguments(group: argparse._ActionsContainer, two_stems: bool, inputs: bool) -> None:
    """--targets (saying how to end its list where inputs may follow) and --two-stems."""
    targets = "separate only these targets (default: all of the model's)"
    if inputs:
        targets += "; it takes every word up to the next option, so end the list with -- before "
        targets += "any input that follows"
    group.add_argument("--targets", nargs="+", metavar="TARGET", help=targets)
    if two_stems:
        group.add_argument(
            "--two-stems",
            metavar="TARGET",
            help=f"write TARGET and {TWO_STEMS_REST}TARGET, the rest of the mixture (short for "
            f"--targets TARGET --residual {TWO_STEMS_REST}TARGET)",
        )


def given_separation_options(args: argparse.Namespace) -> list[str]:
    """The separation options that `args` sets to other than their defaults, as `--name`."""
    return [
        f"--{name.replace('_', '-')}"
        for name, default in SEPARATION_DEFAULTS.items()
        if getattr(args, name) != default
    ]


def check_separation_args(args: argparse.Namespace) -> SeparationOptions:
    """The separation options of `args`, checked before any model is loaded (see
    `SeparationOptions`), after rewriting `--two-stems TARGET` as the `--targets TARGET
    --residual no_TARGET` it stands for (in `args` too).

    Returns:
        the options, with `args.model` as the model.
    """
    taken = [
        target
        for target in getattr(args, "targets", None) or ()
        if os.path.lexists(target) or Path(target).suffix.lower()[1:] in AUDIO_EXTENSIONS
    ]
    if taken:
        raise UmxError(
            f"--targets took {taken[0]!r} as a target name (it takes every word up to the next "
            f"option): write the inputs before --targets, or end the target list with -- "
            f"(--targets vocals -- {taken[0]})"
        )
    two_stems = getattr(args, "two_stems", None)
    known = known_targets(getattr(args, "model", None))
    if known is not None:
        check_stem_words(args.targets, two_stems, known)
    if two_stems is not None:
        for option in ("targets", "residual", "aggregate"):
            if getattr(args, option, None) is not None:
                raise UmxError(
                    f"--two-stems {two_stems} already chooses the stems ({two_stems} and "
                    f"{TWO_STEMS_REST}{two_stems}): leave out --{option}"
                )
        rest = check_target_name(TWO_STEMS_REST + two_stems, "--two-stems")
        args.targets, args.residual, args.two_stems = [two_stems], rest, None
    if args.overlap is None:
        args.overlap = default_overlap(args.segment)
    options = SeparationOptions(
        model=getattr(args, "model", None),
        **{name: getattr(args, name) for name in SEPARATION_DEFAULTS},
    )
    args.backend = options.backend
    return options


def known_targets(model: str | None) -> tuple[str, ...] | None:
    """The targets of `model` (the default model if None) when it is a zoo name, else None."""
    from umx.zoo.registry import MODELS, known_name

    entry = MODELS.get(DEFAULT_MODEL if model is None else known_name(model) or "")
    return None if entry is None else entry.targets


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """How input files are taken and matched (`umx separate` and `umx batch`)."""
    p.add_argument(
        "--downmix",
        action="store_true",
        help="average inputs with more than two channels instead of refusing them",
    )
    p.add_argument(
        "--match-input",
        action="store_true",
        help="write the stems at the input's sample rate and channel count (default: the "
        "model's rate, stereo for stereo models)",
    )


def add_output_arguments(
    p: argparse.ArgumentParser, ext_aliases: Sequence[str] = (), unset: bool = False
) -> None:
    """The options of stem files: where, named how, in which format, clipped how, grouped how,
    and whether to overwrite (`umx separate`, `umx stream` and `umx batch`).

    Args:
        p: the command's parser.
        ext_aliases: other names of `--ext`.
        unset: every option of stem files defaults to None, so that the command knows which
            were given (`umx stream --stdout` refuses them all, default values included);
            `output_options` fills in the defaults.
    """
    p.add_argument(
        "--outdir",
        type=path_argument,
        default=None if unset else OutputOptions.outdir,
        help="output directory (default: separated)",
    )
    p.add_argument(
        "--filename",
        default=None if unset else DEFAULT_TEMPLATE,
        metavar="TEMPLATE",
        help="output path under OUTDIR, with "
        + ", ".join("{" + field + "}" for field in TEMPLATE_FIELDS)
        + f" (default: {DEFAULT_TEMPLATE})",
    )
    p.add_argument(
        "--ext",
        *ext_aliases,
        dest="ext",
        type=output_format,
        choices=tuple(SUBTYPES),
        help="output file format (default: wav, or the extension --filename ends with)",
    )
    p.add_argument(
        "--subtype",
        choices=sorted({subtype for subtypes in SUBTYPES.values() for subtype in subtypes}),
        help="sample format: PCM_16 (default for wav and flac), PCM_24 or FLOAT (wav only); "
        "MPEG_LAYER_III for mp3 (its only one)",
    )
    p.add_argument(
        "--clip",
        choices=CLIP_POLICIES,
        default=None if unset else OutputOptions.clip,
        help="what to do with stems that exceed full scale: rescale the stem so its peak fits, "
        "clamp the samples, or none (FLOAT only) (default: rescale)",
    )
    p.add_argument(
        "--aggregate",
        metavar="JSON",
        help="groups of targets to write instead, as JSON or a JSON file, e.g. "
        '\'{"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}\'',
    )
    p.add_argument(
        "--force",
        action="store_true",
        default=None if unset else False,
        help="overwrite existing output files",
    )


def output_format(ext: str) -> str:
    """`--ext`: mp3 is refused while parsing where neither libsndfile nor ffmpeg can write it
    (checked only when asked for, since it loads the audio modules)."""
    if ext == "mp3":
        from umx.audio import audio_formats

        if ext not in audio_formats():
            raise argparse.ArgumentTypeError("mp3 cannot be written here: install ffmpeg")
    return ext


def output_options(args: argparse.Namespace) -> OutputOptions:
    """The options of `add_output_arguments` that say where and how stem files are written.

    Raises:
        UmxError: also for a `--ext wav` given beside a template of another format, which
            `OutputOptions` takes for the default (wav, not chosen).
    """
    filename = DEFAULT_TEMPLATE if args.filename is None else args.filename
    written = template_format(filename)
    if args.ext is not None and written not in (None, args.ext):
        raise ext_conflict(filename, written, args.ext)
    return OutputOptions(
        outdir=OutputOptions.outdir if args.outdir is None else args.outdir,
        filename=filename,
        ext=args.ext or OutputOptions.ext,
        subtype=args.subtype,
        clip=OutputOptions.clip if args.clip is None else args.clip,
        force=bool(args.force),
    )
