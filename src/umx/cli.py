"""The `umx` command: parses arguments, shows progress and calls the library."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Collection, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from umx import __version__
from umx.cli_options import (
    MODEL_HELP,
    OneLineParser,
    add_input_arguments,
    add_output_arguments,
    add_separation_arguments,
    check_inputs,
    check_readable,
    check_separation_args,
    not_a_command,
    output_options,
    path_text,
    spelled_out,
)
from umx.cli_run import run_command
from umx.defaults import DEFAULT_BLOCK, PCM_DTYPES, STREAM_MODEL
from umx.devices import check_cores
from umx.errors import UmxError, check_number, display_path
from umx.zoo import (
    CACHE_ENV,
    DEFAULT_MODEL,
    MODELS,
    PARTIAL,
    cache_dir,
    download_models,
    list_models,
)
from umx.zoo.download import download_command
from umx.zoo.registry import known_name

if TYPE_CHECKING:
    from tqdm import tqdm

    from umx.audio import WriteReport
    from umx.options import SeparationOptions

logger = logging.getLogger("umx")

CLOSED_PIPE_STATUS = 128 + getattr(signal, "SIGPIPE", 13)
"""`umx stream --stdout`'s exit status when its reader goes away: a shell's for a process that
SIGPIPE ended (141)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run `umx`; `umx INPUT...` is short for `umx separate INPUT...`. Returns the exit code."""
    argv = spelled_out(list(sys.argv[1:] if argv is None else argv), COMMANDS)
    if argv[-1:] == ["--"] and argv.index("--") == len(argv) - 1:
        argv.pop()  # nothing after it: argparse would call it an unrecognized argument
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        problem = argv and not argv[0].startswith("-") and not_a_command(argv[0], COMMANDS)
        if problem:
            print(f"umx: error: {problem}", file=sys.stderr)
            return 2
        argv.insert(0, "separate")
    args = build_parser({argv[0]}).parse_args(argv)
    setup_logging(args.quiet)
    return run_command(lambda: args.run(args))


def setup_logging(quiet: bool) -> None:
    """Messages go to stderr as `umx: ...` lines; `--quiet` keeps only warnings and errors."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("umx: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser of `umx`, with the options of `commands` only (all if None): `main` builds
    those of the command it runs, so that `umx --help` and `umx CMD --help` import no other
    command's modules (and none but `umx export` imports torch)."""
    parser = OneLineParser(
        prog="umx",
        description="Open-Unmix music source separation. `umx INPUT...` separates files "
        "with the default model, `umx --list-models` lists the models; see `umx COMMAND --help`.",
    )
    parser.add_argument("--version", action="version", version=f"umx {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True)
    for name, (summary, description, add_arguments) in COMMAND_PARSERS.items():
        p = subparsers.add_parser(name, help=summary, description=description)
        if commands is None or name in commands:
            add_arguments(p)
    return parser


def add_batch_command(p: argparse.ArgumentParser) -> None:
    from umx.batch.options import add_batch_arguments, run_batch

    add_batch_arguments(p)
    p.set_defaults(run=run_batch)


def add_train_command(p: argparse.ArgumentParser) -> None:
    from umx.train.options import add_train_arguments, run_train

    add_train_arguments(p)
    p.set_defaults(run=run_train)


def add_distill_command(p: argparse.ArgumentParser) -> None:
    from umx.distill.options import add_distill_arguments, run_distill

    add_distill_arguments(p)
    p.set_defaults(run=run_distill)


def add_evaluate_command(p: argparse.ArgumentParser) -> None:
    from umx.evaluate.options import add_evaluate_arguments, run_evaluate

    add_evaluate_arguments(p)
    p.set_defaults(run=run_evaluate)


def add_synth_command(p: argparse.ArgumentParser) -> None:
    from umx.synth.options import add_synth_arguments, run_synth

    add_synth_arguments(p)
    p.set_defaults(run=run_synth)


def add_download_command(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help=f"models to download, or all of them: all (default: {DEFAULT_MODEL}; see --list)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--list",
        action="store_true",
        help="list the models (as umx --list-models: what each is, its size here, whether it "
        "is cached) and exit",
    )
    p.set_defaults(run=run_download)


def add_export_command(p: argparse.ArgumentParser) -> None:
    from umx.onnx.options import add_export_arguments, run_export

    add_export_arguments(p)
    p.set_defaults(run=run_export)


def add_serve_command(p: argparse.ArgumentParser) -> None:
    from umx.web.options import add_serve_arguments, run_serve

    add_serve_arguments(p)
    p.set_defaults(run=run_serve)


def run_download(args: argparse.Namespace) -> int:
    if args.list:
        if args.models:
            raise UmxError(f"--list lists every model: leave out {' '.join(args.models)}")
        print_models()
        return 0
    for directory in download_models(args.models or None, progress=not args.quiet):
        print(display_path(directory))
    return 0


def add_separate_command(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=run_separate)
    p.add_argument(
        "inputs", nargs="*", type=path_text, metavar="INPUT", help="audio files to separate"
    )
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument(
        "--list-models",
        action="store_true",
        help="list the known models (bundled, cached or to download) and exit",
    )
    add_output_arguments(p, ext_aliases=("--format",))
    p.add_argument(
        "--start", type=float, default=0.0, help="start of the excerpt, in seconds (default: 0)"
    )
    p.add_argument(
        "--duration", type=float, help="length of the excerpt, in seconds (default: to the end)"
    )
    add_input_arguments(p)
    add_separation_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")


def run_separate(args: argparse.Namespace) -> int:
    if args.list_models:
        print_models()
        return 0
    options = check_inputs(args)
    from umx.api import (
        check_aggregate,
        check_outdir,
        parse_aggregate,
        plan_outputs,
        separate_file,
        separator_for,
    )
    from umx.jobs import TaskOptions

    task = TaskOptions(
        options,
        output_options(args),
        aggregate=parse_aggregate(args.aggregate),
        downmix=args.downmix,
        match_input=args.match_input,
        start=args.start,
        duration=args.duration,
    )
    output = task.output
    check_outdir(output.outdir)
    known = known_names(options, task.aggregate)
    if known is not None:
        plan_outputs(args.inputs, known, output.outdir, output.filename, output.ext)
    separator = separator_for(options, progress=not args.quiet)
    check_aggregate(task.aggregate, separator)
    names = separator.output_names(task.aggregate)
    plan_outputs(args.inputs, names, output.outdir, output.filename, output.ext)
    failed = 0
    for path in args.inputs:
        try:
            with closing(AudioProgress(display_path(Path(path).name), args.quiet)) as progress:
                reports = separate_file(
                    path, separator, **task.file_options(), on_progress=progress
                )
        except UmxError as error:
            logger.error("error: %s", error)
            failed += 1
            continue
        logger.info("%s: separated with %s", display_path(path), separator.model_name)
        print_reports(reports)
    if failed:
        logger.error("%d of %d inputs failed", failed, len(args.inputs))
    return 1 if failed else 0


def add_stream_command(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=run_stream)
    p.add_argument(
        "input", type=path_text, metavar="INPUT", help="audio file, or - for raw PCM on stdin"
    )
    p.add_argument(
        "--model",
        help=f"causal model name or directory (default: the bundled {STREAM_MODEL})",
    )
    p.add_argument(
        "--rate", type=float, help="sample rate of raw PCM on standard input (required with -)"
    )
    p.add_argument(
        "--channels", type=int, help="channels of raw PCM on standard input (default: 2)"
    )
    p.add_argument(
        "--format",
        dest="pcm_format",
        choices=tuple(PCM_DTYPES),
        help="raw PCM sample format of standard input and of --stdout (default: f32le)",
    )
    p.add_argument(
        "--stdout",
        action="store_true",
        help="write one stem or group as raw PCM to standard output instead of files",
    )
    p.add_argument(
        "--block",
        type=float,
        default=DEFAULT_BLOCK,
        metavar="SAMPLES",
        help=f"samples per block read from the input (default: {DEFAULT_BLOCK})",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="pace the input by the clock, as a live input, and report blocks that miss "
        "their deadline",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads of torch (default: 1, the fastest for one stream)",
    )
    p.add_argument(
        "--downmix",
        action="store_true",
        help="average input files with more than two channels instead of refusing them",
    )
    add_output_arguments(p, unset=True)  # --stdout refuses each one given
    add_separation_arguments(p, chunks=False)
    p.add_argument("-q", "--quiet", action="store_true", help="no messages")


def run_stream(args: argparse.Namespace) -> int:
    import torch

    from umx.api import parse_aggregate
    from umx.stream.io import OutputClosed, check_stdout_names
    from umx.stream.run import FILE_OPTIONS, StreamOptions, refuse_file_options
    from umx.stream.run import run_stream as stream

    check_number("--threads", args.threads, above=0, integer=True)
    check_cores("--threads", args.threads)
    args.model = STREAM_MODEL if args.model is None else args.model  # '' is refused
    if args.stdout:  # any given, at its default value too
        given = [option for name, option in FILE_OPTIONS.items() if getattr(args, name) is not None]
        refuse_file_options(given)
    options = StreamOptions(
        args.input,
        check_separation_args(args),
        output_options(args),
        stdout=args.stdout,
        rate=args.rate,
        channels=args.channels,
        pcm_format=args.pcm_format,
        downmix=args.downmix,
        aggregate=parse_aggregate(args.aggregate),
        realtime=args.realtime,
        block=int(args.block) if float(args.block).is_integer() else args.block,
    )
    if args.input != "-":  # before the model loads, with what to do instead (a folder: batch)
        check_readable([args.input])
    if args.stdout:
        known = known_names(options.separation, options.aggregate)
        if known is not None:
            check_stdout_names(known)
        if sys.stdout.isatty():
            raise UmxError("--stdout writes raw PCM; pipe it to a player or a file, not a terminal")
    if args.input == "-" and sys.stdin.isatty():
        raise UmxError("INPUT - reads raw PCM from standard input; pipe it in, e.g. from ffmpeg")
    torch.set_num_threads(args.threads)
    try:
        _, files = stream(
            options, stdin=sys.stdin.buffer, stdout=sys.stdout.buffer, progress=not args.quiet
        )
    except OutputClosed:
        # The reader went away (e.g. `| head`): stop quietly with the status of a process
        # killed by SIGPIPE, and keep Python from flushing into the closed pipe at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_PIPE_STATUS
    print_reports(files)
    return 0


def print_reports(reports: Sequence[WriteReport]) -> None:
    """One line per written file: its path, and what the clip policy did if anything."""
    for report in reports:
        note = {  # clamping has no gain: it says how far the peak went beyond full scale
            "rescaled": f" (rescaled by {report.gain:.3f})",
            "clamped": f" (clamped: it peaked at {report.peak:.2f})",
            "silenced": f" (nearly silent: it peaked at {report.peak:.1e}, below the file's "
            "smallest step; use --subtype FLOAT)",
        }.get(report.action, "")
        print(f"{display_path(report.path)}{note}")


def print_models() -> None:
    """`umx --list-models`: each model's name and role, where it is, targets and description;
    then the cache folder and, while the default model is not all there, where each of its
    missing files comes from and goes (the fallback warning leaves these out)."""
    for info in list_models():
        role = " (default)" if info.default else " (offline)" if info.fallback else ""
        missing = f" (missing: {', '.join(info.missing)})" if info.status == PARTIAL else ""
        size = "-" if info.size is None else f"{info.size / 1e6:.1f} MB"
        print(
            f"{info.name + role:20s} {info.status:15s} {size:>9s}  {' '.join(info.targets):24s} "
            f"{info.description}{missing}"
        )
    print(f"cache: {display_path(cache_dir())} (set {CACHE_ENV} to move it)")
    default = MODELS[DEFAULT_MODEL]
    missing = default.missing()
    if missing:
        print(
            f"to get {DEFAULT_MODEL}: `{download_command(DEFAULT_MODEL)}`, or by hand, "
            f"{default.placement(missing)}"
        )


def known_names(options: SeparationOptions, aggregate: dict | None) -> list[str] | None:
    """The stem names known before the model is loaded, when they are."""
    if aggregate is not None:
        return list(aggregate)
    targets = options.targets
    model = options.model or DEFAULT_MODEL
    if targets is None and known_name(model) is not None:
        targets = MODELS[known_name(model)].targets
    if targets is None:
        return None
    return [*targets, *([options.residual] if options.residual else [])]


class AudioProgress:
    """A progress bar in seconds of audio done, per file, from the first report on (when the
    length is known); only on a terminal, never with `quiet`."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name, self.quiet = name, quiet
        self.bar: tqdm | None = None

    def __call__(self, done: float, total: float) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=round(total, 1),
                desc=self.name,
                unit="s",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio "
                "[{elapsed}<{remaining}]",
                disable=True if self.quiet else None,  # None: only on a terminal
                leave=False,
            )
        self.bar.update(min(done, self.bar.total) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


COMMAND_PARSERS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = {
    "separate": (
        "separate audio files into stems",
        "Separate audio files into stems, written to OUTDIR/<track>/<target>.<ext> by default.",
        add_separate_command,
    ),
    "stream": (
        "separate a stream block by block with a causal model",
        "Separate a file, or raw PCM on standard input, block by block with a causal "
        "(unidirectional) model, into stem files or raw PCM on standard output, e.g. "
        "ffmpeg -i song.mp3 -f f32le -ac 2 -ar 44100 - | umx stream - --rate 44100 --stdout "
        '--aggregate \'{"karaoke": ["drums", "bass", "other"]}\' | '
        "ffplay -f f32le -ar 44100 -ch_layout stereo -  (see docs/streaming.md).",
        add_stream_command,
    ),
    "batch": (
        "separate folders of songs as one resumable job, locally or on a Ray cluster",
        "Separate many files (folders, glob patterns, list files) with worker processes or on "
        "a Ray cluster (--ray), recording each input's outcome in a job directory: the same "
        "command resumes the job, skipping verified outputs (see docs/batch.md).",
        add_batch_command,
    ),
    "train": (
        "train a target model",
        "Train one Open-Unmix target model into a model directory that `umx separate --model "
        "DIR` loads (see docs/training.md). Under torchrun it trains with "
        "DistributedDataParallel.",
        add_train_command,
    ),
    "distill": (
        "train a small or causal student on your own music with a teacher's stems as targets",
        "Separate a folder of unlabelled music with a teacher model (a umx batch job), or "
        "take the stems another separator made of it (--teacher-stems), and train a student, "
        "one target per teacher stem, on the teacher's stems: the same command resumes every "
        "step (see docs/distillation.md).",
        add_distill_command,
    ),
    "evaluate": (
        "score a model or baseline with BSSEval v4",
        "Separate a test set (MUSDB18 or a folder in its layout) and score it with museval's "
        "BSSEval v4 (see docs/evaluation.md).",
        add_evaluate_command,
    ),
    "synth": (
        "render synthetic 4-stem training data from General MIDI songs",
        "Render General MIDI files and procedural songs into a MUSDB18-HQ-layout dataset with "
        "FluidSynth (see docs/synthetic-data.md).",
        add_synth_command,
    ),
    "download": (
        "download and verify published models",
        "Download the weights of published models into the cache and verify their SHA-256, "
        "so that later runs work offline.",
        add_download_command,
    ),
    "export": (
        "export a model to ONNX graphs for onnxruntime",
        "Write one ONNX graph per target (magnitudes in, magnitudes out; a streaming graph too "
        "for causal models) and umx-onnx.json, which describes the STFT, rate and targets, into "
        "OUTDIR (see docs/deploy.md). Needs the extra umx[onnx].",
        add_export_command,
    ),
    "serve": (
        "a local web page to separate songs, listen to the stems and download them",
        "Serve a page on this machine where songs are dropped, separated, played with each "
        "stem's volume, mute and solo, and downloaded (needs umx[web]; see docs/web.md).",
        add_serve_command,
    ),
}
"""Each command: its one-line help, its description, and what adds its options (importing its
module only then)."""
COMMANDS = tuple(COMMAND_PARSERS)

if __name__ == "__main__":
    sys.exit(main())
