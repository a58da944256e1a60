"""`umx stream` as typed options: `StreamOptions`, checked when built, and `run_stream`, which
loads the causal model and streams the input through it (`umx.stream.io.separate_stream`)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from umx.audio import WriteReport, display_path
from umx.defaults import DEFAULT_BLOCK, STREAM_MODEL
from umx.errors import UmxError, check_flags, check_path
from umx.options import OutputOptions, SeparationOptions
from umx.stream.io import StreamReport, check_block, check_input, separate_stream

if TYPE_CHECKING:
    from umx.separator import Separator

logger = logging.getLogger("umx")

FILE_OPTIONS = {
    "outdir": "--outdir",
    "force": "--force",
    "filename": "--filename",
    "ext": "--ext",
    "subtype": "--subtype",
    "clip": "--clip",
}
"""The fields of `OutputOptions` and the options that set them, which describe stem files
(also the `dest` of each option on the command line)."""


@dataclass(frozen=True)
class StreamOptions:
    """What a stream separates and where its stems go, checked when built (one-line errors
    naming the command line's options), before a model is loaded or the input read.

    Attributes:
        input: an audio file, or "-" for raw PCM on standard input.
        separation: the causal model and its filter (its `model` None: `STREAM_MODEL`).
        output: the stem files; with `stdout`, left as it is.
        stdout: write the one stem or group as raw PCM to standard output instead of files.
        rate, channels, pcm_format: what raw PCM on standard input holds (`rate` needed; 2
            channels and f32le if None); `pcm_format` is also that of `stdout`, and a file
            with stem files out takes none.
        downmix, aggregate, realtime, block: see `umx.stream.io.separate_stream`.

    Raises:
        UmxError: an option that makes no sense, or file options with `stdout`.
    """

    input: str | os.PathLike
    separation: SeparationOptions = field(
        default_factory=lambda: SeparationOptions(model=STREAM_MODEL)
    )
    output: OutputOptions = field(default_factory=OutputOptions)
    stdout: bool = False
    rate: float | None = None
    channels: int | None = None
    pcm_format: str | None = None
    downmix: bool = False
    aggregate: Mapping[str, Sequence[str]] | None = None
    realtime: bool = False
    block: int = DEFAULT_BLOCK

    def __post_init__(self) -> None:
        check_path("INPUT", self.input, what="a file, or - for standard input")
        flags = {"--stdout": self.stdout, "--downmix": self.downmix, "--realtime": self.realtime}
        check_flags(flags)
        check_block(self.block)
        if self.separation.model is None:
            object.__setattr__(
                self, "separation", dataclasses.replace(self.separation, model=STREAM_MODEL)
            )
        check_input(self.input, self.rate, self.channels, self.pcm_format, stdout=self.stdout)
        if self.stdout:
            self._refuse_file_options()

    def _refuse_file_options(self) -> None:
        """Refuse, with `stdout`, output options that describe stem files: raw PCM in
        `pcm_format` would quietly replace what they ask for."""
        default = OutputOptions()
        refuse_file_options(
            [
                option
                for name, option in FILE_OPTIONS.items()
                if getattr(self.output, name) != getattr(default, name)
            ]
        )


def refuse_file_options(given: Sequence[str]) -> None:
    """Refuse the options of stem files in `given` beside `--stdout` (the command line refuses
    every one given, at its default value too; `StreamOptions`, those that differ from it).

    Raises:
        UmxError: `given` is not empty.
    """
    if given:
        raise UmxError(
            f"{', '.join(given)} describe{'s' if len(given) == 1 else ''} stem files, but "
            "--stdout writes raw PCM in --format (f32le or s16le): leave out one or the other"
        )


def run_stream(
    options: StreamOptions,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    progress: bool = True,
) -> tuple[StreamReport, list[WriteReport]]:
    """Load the causal model of `options` and stream its input through it, logging what the
    stream did (and, in real time, how many blocks missed their deadline).

    Args:
        options: the stream.
        stdin: where raw PCM comes from when the input is "-".
        stdout: where raw PCM goes with `options.stdout`.
        progress: show a download's progress bar.

    Returns:
        what the stream did, and one report per written file (none with `stdout`).

    Raises:
        UmxError: a model that is not causal, or a bad input or output.
        umx.stream.io.OutputClosed: the reader of `stdout` went away.
    """
    from umx.api import separator_for

    if options.stdout and stdout is None:
        raise UmxError("--stdout needs a stream to write raw PCM to: give stdout")
    separator = separator_for(options.separation, progress=progress, causal=True)
    refuse_groups_of_bidirectional(separator, options.aggregate)
    report, files = separate_stream(
        options.input,
        separator,
        **options.output.as_kwargs(),
        stdout=stdout if options.stdout else None,
        stdin=stdin,
        rate=options.rate,
        nb_channels=options.channels,
        fmt=options.pcm_format,
        downmix=options.downmix,
        aggregate=options.aggregate,
        realtime=options.realtime,
        block=options.block,
    )
    seconds = report.nb_samples / report.sample_rate
    logger.info(
        "%s: %.1f s streamed with %s in %.1f s (%.2f x real time), latency %.1f ms",
        display_path(options.input) if os.fspath(options.input) != "-" else "standard input",
        seconds,
        separator.model_name,
        report.seconds,
        report.seconds / seconds if seconds else 0.0,
        1000 * report.latency / report.sample_rate,
    )
    if options.realtime:
        log = logger.warning if report.missed else logger.info
        log("%d of %d blocks missed their deadline", report.missed, report.nb_blocks)
    return report, files


def refuse_groups_of_bidirectional(
    separator: Separator, aggregate: Mapping[str, Sequence[str]] | None
) -> None:
    """With `aggregate`, refuse a separator some of whose targets are bidirectional with a
    command that streams the groups asked for (`aggregate_advice`): the engine's advice, the
    `--targets` of the causal ones, was refused beside groups that sum a bidirectional one.

    Raises:
        UmxError: naming the bidirectional targets and what to type.
    """
    models = separator.target_models.items()
    causal = [name for name, model in models if model.unidirectional]
    bidirectional = [name for name, model in models if not model.unidirectional]
    if aggregate is None or not causal or not bidirectional:
        return  # the engine says the rest
    many = len(bidirectional) > 1
    raise UmxError(
        f"the {', '.join(bidirectional)} model{'s' * many} of "
        f"{separator.model_name or 'the separator'} {'are' if many else 'is'} bidirectional "
        f"and cannot stream; {aggregate_advice(separator, aggregate, causal)}, or train "
        f"{' and '.join(bidirectional)} with --unidirectional"
    )


def aggregate_advice(
    separator: Separator, aggregate: Mapping[str, Sequence[str]], causal: Sequence[str]
) -> str:
    """What to give to stream `aggregate` with the `causal` targets of `separator` alone, each
    command checked as `umx stream` checks it: `--targets` of them where the groups sum only
    them; else, where one group sums bidirectional targets, that group as the residual of the
    others (`--targets vocals --residual karaoke`, kept a group of its own); else the groups
    that can stream; else the causal targets without `--aggregate`."""
    import json
    import shlex

    given = {name: list(group) for name, group in aggregate.items()}
    allowed = {*causal, *([separator.residual] if separator.residual is not None else [])}
    blocked = [name for name, group in given.items() if not set(group) <= allowed]
    targets = " ".join(causal)
    if not blocked and _streams(separator, causal, separator.residual, given):
        return f"--aggregate sums only its causal {', '.join(causal)}: give --targets {targets}"
    if len(blocked) == 1:
        rest = [name for name in separator.target_models if name not in given[blocked[0]]]
        groups = {name: [blocked[0]] if name in blocked else group for name, group in given.items()}
        if rest and set(rest) <= set(causal) and _streams(separator, rest, blocked[0], groups):
            return (
                f"for {blocked[0]}, the mix without {', '.join(rest)}, give --targets "
                f"{' '.join(rest)} --residual {blocked[0]} --aggregate "
                f"{shlex.quote(json.dumps(groups))}"
            )
    usable = {name: group for name, group in given.items() if name not in blocked}
    if usable and _streams(separator, causal, separator.residual, usable):
        summed = {target for name in blocked for target in given[name]} - allowed
        return (
            f"--aggregate's {', '.join(blocked)} sum{'s' * (len(blocked) == 1)} "
            f"{', '.join(name for name in separator.target_models if name in summed)}; for the "
            f"other groups, give --targets {targets} --aggregate {shlex.quote(json.dumps(usable))}"
        )
    return f"its causal {', '.join(causal)} can: give --targets {targets} without --aggregate"


def _streams(
    separator: Separator,
    targets: Sequence[str],
    residual: str | None,
    aggregate: Mapping[str, Sequence[str]],
) -> bool:
    """Whether `umx stream` takes `--targets targets --residual residual --aggregate aggregate`
    of `separator`'s model: the separator it would load, and its groups, checked."""
    from umx.api import check_aggregate
    from umx.separator import Separator

    try:
        chosen = Separator(
            {name: separator.target_models[name] for name in targets},
            sample_rate=separator.sample_rate,
            n_fft=separator.n_fft,
            n_hop=separator.n_hop,
            nb_channels=separator.nb_channels,
            residual=residual,
            model_targets=separator.model_targets,
        )
        check_aggregate(aggregate, chosen)
    except UmxError:
        return False
    return True
