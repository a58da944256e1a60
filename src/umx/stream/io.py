"""`umx stream`'s engine: a causal separation from a file or raw PCM, block by block, to files or
raw PCM, optionally paced by the clock.

The separation itself is `umx.stream.engine.StreamingSeparator`; this module reads the input in
blocks (a file through `umx.audio.AudioBlocks`, decoded as it goes, or raw interleaved PCM from
a binary stream such as standard input), resamples it to the model's rate when needed
(`StreamResampler`), and writes the chosen stems or groups to files (`AudioWriter`: atomic, no
overwrite without `force`) or as raw PCM to a binary stream, so that `umx stream` can sit in a
pipeline between a decoder and a player. Stems are written at the model's sample rate, with the
channels the separator works on.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from umx.api import (
    DEFAULT_TEMPLATE,
    check_aggregate,
    plan_outputs,
    too_short,
)
from umx.audio import (
    AudioBlocks,
    AudioWriter,
    StreamResampler,
    WriteReport,
    check_samples,
    display_path,
    finish_together,
    match_channels,
    peak,
)
from umx.audio.headers import piped_container
from umx.defaults import (  # noqa: F401 (STREAM_MODEL: re-exported)
    DEFAULT_BLOCK,
    LONG_NAMES_HINT,
    PCM_DTYPES,
    STREAM_MODEL,
)
from umx.errors import (
    MAX_RATE,
    MIN_RATE,
    UmxError,
    check_flags,
    check_number,
    check_path,
    os_reason,
)
from umx.folders import output_folders
from umx.separator import Separator
from umx.stream.engine import StreamingSeparator

logger = logging.getLogger("umx")

PCM_FORMATS = {name: np.dtype(dtype) for name, dtype in PCM_DTYPES.items()}
"""Raw PCM sample formats: little-endian float32 in [-1, 1], little-endian signed 16-bit."""
DEFAULT_PCM = "f32le"
"""The raw PCM format where none is given."""
S16_SCALE = 32768.0
STDIN_NAME = "stdin"
"""The track name of standard input in `--filename` templates."""
S16_HINT = "; if it is 16-bit PCM, give --format s16le"
"""What a float32 input whose samples are not audio most likely is."""


class OutputClosed(Exception):
    """The reader of the raw PCM output went away (a closed pipe)."""


MAX_BLOCK = 1 << 24
"""The largest block, in samples (6 minutes at 44.1 kHz)."""


def check_block(block: object) -> None:
    """Refuse a `--block` that is not a whole number of samples from 1 to `MAX_BLOCK`."""
    check_number("--block", block, above=0, integer=True)
    if block > MAX_BLOCK:
        raise UmxError(f"--block must be at most {MAX_BLOCK} samples, not {block}")


def check_pcm_input(rate: object, nb_channels: object, fmt: str) -> None:
    """Refuse a raw PCM input description that cannot be read."""
    check_number("--rate", rate, minimum=MIN_RATE, maximum=MAX_RATE)
    if not float(rate).is_integer():  # raw PCM has whole frames a second
        raise UmxError(
            f"--rate must be a whole number of samples per second, not {rate}: e.g. "
            f"--rate {round(rate)}"
        )
    check_number("--channels", nb_channels, above=0, integer=True)
    if nb_channels > 2:
        raise UmxError(
            f"--channels {nb_channels}: umx separates mono or stereo audio; downmix the input "
            "first (e.g. ffmpeg -ac 2)"
        )
    check_pcm_format(fmt)


def check_pcm_format(fmt: str) -> None:
    """Refuse a raw PCM format (in or out) that is not one of `PCM_FORMATS`."""
    if fmt not in PCM_FORMATS:
        raise UmxError(f"--format must be one of {', '.join(PCM_FORMATS)}, not {fmt!r}")


def check_input(
    input_path: str | os.PathLike,
    rate: float | None,
    nb_channels: int | None,
    fmt: str | None,
    *,
    stdout: bool = False,
) -> int | None:
    """Refuse an input description that cannot be read: raw PCM on standard input (`-`) needs
    a good `rate` (and channels, 2 if None; `fmt` `DEFAULT_PCM` if None); a file gives its
    own, and takes a `fmt` only for raw PCM on standard output (`stdout`).

    Returns:
        the channels of raw PCM, None for a file.
    """
    if os.fspath(input_path) != "-":
        if rate is not None or nb_channels is not None:
            raise UmxError(
                "--rate and --channels describe raw PCM on standard input (-); an input file "
                "gives its own and is resampled to the model's rate"
            )
        if fmt is not None and not stdout:
            raise UmxError(
                "--format describes raw PCM, on standard input (-) or --stdout; stem files "
                "are written as --ext and --subtype say"
            )
        return None
    if rate is None:
        raise UmxError("raw PCM on standard input needs its sample rate: give --rate")
    nb_channels = 2 if nb_channels is None else nb_channels
    check_pcm_input(rate, nb_channels, fmt or DEFAULT_PCM)
    return nb_channels


@dataclass
class Source:
    """An input stream: its rate, channels and blocks `(nb_channels, nb_block)` of float32,
    how messages name it, and what they suggest when its samples are not audio."""

    rate: float
    nb_channels: int
    blocks: Iterator[Tensor]
    name: str
    hint: str = ""


def file_source(
    stack: ExitStack, path: str | os.PathLike, block: int, *, downmix: bool = False
) -> Source:
    """A file decoded block by block as `umx separate` reads it (`AudioBlocks`, open in
    `stack`: its header's refusals come here, the others as they are decoded) and given out in
    blocks of `block` samples, so that what is held of it is a few blocks, however long."""
    audio = stack.enter_context(AudioBlocks(path, downmix=downmix))
    return Source(audio.rate, audio.nb_channels, _reblocked(audio, block), display_path(path))


def _reblocked(pieces: Iterable[Tensor], block: int) -> Iterator[Tensor]:
    """The frames of `pieces`, each `(nb_channels, nb_piece)`, in blocks of `block` (the
    last may be shorter)."""
    held: list[Tensor] = []
    nb_held = 0
    for piece in pieces:
        held.append(piece)
        nb_held += piece.shape[-1]
        if nb_held >= block:
            joined = torch.cat(held, dim=-1)
            whole = nb_held - nb_held % block
            yield from joined[:, :whole].split(block, dim=-1)
            held, nb_held = [joined[:, whole:]], nb_held - whole
    if nb_held:
        yield torch.cat(held, dim=-1)


def pcm_source(file: BinaryIO, rate: float, nb_channels: int, fmt: str, block: int) -> Source:
    """Raw interleaved PCM read from `file` in blocks of `block` frames.

    A stream that ends in the middle of a frame (fewer bytes than one sample of every channel)
    has its whole frames separated; the incomplete frame is dropped with a warning.

    Raises:
        UmxError: (from the blocks) the stream ends before its first whole frame.
    """
    check_pcm_input(rate, nb_channels, fmt)
    dtype = PCM_FORMATS[fmt]
    frame_bytes = dtype.itemsize * nb_channels

    def blocks() -> Iterator[Tensor]:
        nb_frames = 0
        while data := file.read(block * frame_bytes):
            whole = len(data) - len(data) % frame_bytes
            if not nb_frames:
                _refuse_a_file(data, fmt)
            if not nb_frames and not whole:
                raise UmxError(
                    f"standard input contains no audio: its {len(data)} bytes are less than "
                    f"one frame ({frame_bytes} bytes: {nb_channels} channels of {fmt})"
                )
            if whole < len(data):
                logger.warning(
                    "the input ended in the middle of a frame: its last %d bytes (a frame is %d "
                    "bytes: %d channels of %s) were dropped",
                    len(data) - whole,
                    frame_bytes,
                    nb_channels,
                    fmt,
                )
            frames = np.frombuffer(data[:whole], dtype).reshape(-1, nb_channels).T
            nb_frames += frames.shape[1]
            samples = torch.from_numpy(frames.astype(np.float32))
            yield samples / S16_SCALE if fmt == "s16le" else samples
            if len(data) < block * frame_bytes:
                return
        if not nb_frames:
            raise UmxError("standard input contains no audio")

    hint = S16_HINT if fmt == "f32le" else ""
    return Source(float(rate), nb_channels, blocks(), "standard input", hint)


PIPED_FILES = {
    "wav": "a WAV",
    "aiff": "an AIFF",
    "flac": "a FLAC",
    "ogg": "an Ogg",
    "mp3": "an MP3",
    "mp4": "an MP4 or M4A",
    "matroska": "a WebM or Matroska",
    "aac": "an AAC",
}
"""What `_refuse_a_file` calls each kind of audio file (`piped_container`); another: "an audio"."""


def _refuse_a_file(data: bytes, fmt: str) -> None:
    """Refuse raw PCM input whose first bytes, ``data``, begin an audio file: read as samples,
    a WAV's header would shift every frame (swapping the channels of 16-bit stereo) and be
    heard as a click, and a compressed file would be separated as noise."""
    kind = piped_container(data)
    if kind is not None:
        named = PIPED_FILES.get(kind, "an audio")
        raise UmxError(
            f"standard input is {named} file, not raw PCM: give the file as the input instead "
            f"of '-', or decode it to raw PCM first (ffmpeg ... -f {fmt} -)"
        )


class PcmWriter:
    """Raw interleaved PCM written to a binary stream, flushed after every block.

    float32 is written as it is; 16-bit samples are clamped to full scale. A block that holds
    NaN or infinite samples is refused, never written.

    Raises:
        OutputClosed: the stream's reader went away.
        UmxError: a block holds NaN or infinite samples, or the stream cannot be written.
    """

    def __init__(self, file: BinaryIO, fmt: str, rate: float) -> None:
        self.file, self.dtype, self.fmt, self.rate = file, PCM_FORMATS[fmt], fmt, rate
        self.nb_written = 0

    def write(self, block: Tensor) -> None:
        frames = block.detach().cpu().numpy().T
        finite = np.isfinite(frames).all(axis=1)
        if not finite.all():
            at = (self.nb_written + int(np.argmin(finite))) / self.rate
            raise UmxError(
                f"standard output: the stems hold NaN or infinite samples at {at:.3f} s; "
                "they were not written"
            )
        self.nb_written += len(frames)
        if self.fmt == "s16le":
            frames = np.clip(np.round(frames * S16_SCALE), -S16_SCALE, S16_SCALE - 1)
        try:
            self.file.write(np.ascontiguousarray(frames, self.dtype).tobytes())
            self.file.flush()
        except BrokenPipeError:
            raise OutputClosed from None
        except OSError as error:  # a full disk behind `> file`
            raise UmxError(f"cannot write to standard output ({os_reason(error)})") from None


@dataclass
class StreamReport:
    """What a stream did: samples in (at the model's rate), blocks, missed deadlines, time."""

    nb_samples: int
    nb_blocks: int
    missed: int
    latency: int
    sample_rate: float
    seconds: float


def stream_to(
    separator: Separator,
    source: Source,
    write: Callable[[str, Tensor], None],
    *,
    aggregate: Mapping[str, Sequence[str]] | None = None,
    realtime: bool = False,
    block: int = DEFAULT_BLOCK,
) -> StreamReport:
    """Separate `source` block by block and pass each stem's new samples to `write(name, stem)`.

    The input is resampled to the separator's rate when it differs, and mono input is
    duplicated for a stereo model. With `realtime` each block is taken no sooner than its last
    sample would arrive from a live input, and a block whose stems are not ready by the time the
    next block arrives has missed its deadline (`MissedDeadlines`: counted, logged once a second).

    Args:
        separator: loaded unidirectional target models and their filtering options.
        source: the input's blocks.
        write: called with each stem's (or group's) next samples, `(nb_channels, nb_out)`.
        aggregate: groups of targets to write instead of the targets.
        realtime: pace the input by the clock and report missed deadlines.
        block: samples per input block (for the latency: multiples of the hop wait less).

    Raises:
        UmxError: a bidirectional model, channels it cannot take, bad samples, or silence.
    """
    check_aggregate(aggregate, separator)
    nb_channels = separator.channels_for(source.nb_channels)
    resampler = None
    if source.rate != separator.sample_rate:
        resampler = StreamResampler(source.rate, separator.sample_rate, nb_channels)
    multiple = 1 if resampler is not None else block
    stream = StreamingSeparator(separator, nb_channels=nb_channels, block_multiple=multiple)

    peaks = {"mix": 0.0, "separated": 0.0}  # for the check that stems are not all silent

    def emit(stems: Tensor) -> None:
        if stems.shape[-1]:
            peaks["separated"] = max(peaks["separated"], peak(stems))
            for name, stem in separator.to_dict(stems[None], aggregate).items():
                write(name, stem[0])

    started = time.monotonic()
    nb_read = nb_samples = nb_blocks = 0
    deadlines = MissedDeadlines()
    carry = torch.zeros(nb_channels, 0)  # samples short of a multiple, kept for the next block
    for samples in source.blocks:
        check_samples(samples, nb_read / source.rate, source.rate, source.name, source.hint)
        nb_read += samples.shape[-1]
        peaks["mix"] = max(peaks["mix"], peak(samples))
        arrival = started + nb_read / source.rate  # when its last sample would arrive live
        if realtime:
            time.sleep(max(0.0, arrival - time.monotonic()))
        samples = match_channels(samples, nb_channels)
        if resampler is not None:
            samples = resampler.process(samples)
        nb_samples += samples.shape[-1]
        samples = torch.cat([carry, samples], dim=-1)
        whole = samples.shape[-1] - samples.shape[-1] % multiple
        emit(stream.process(samples[:, :whole]))
        carry = samples[:, whole:]
        nb_blocks += 1
        due = arrival + block / source.rate  # before the next block arrives
        if realtime:
            deadlines.check(due, nb_blocks, nb_read / source.rate)
    if resampler is not None:
        rest = resampler.flush()
        nb_samples += rest.shape[-1]
        carry = torch.cat([carry, rest], dim=-1)
    emit(stream.flush(carry))
    _check_stems(separator, source, nb_read, nb_samples, peaks)
    return StreamReport(
        nb_samples,
        nb_blocks,
        deadlines.missed,
        stream.latency,
        separator.sample_rate,
        time.monotonic() - started,
    )


def _check_stems(
    separator: Separator, source: Source, nb_read: int, nb_samples: int, peaks: dict[str, float]
) -> None:
    """Refuse the stems of a stream too short for one sample at the model's rate, or silent
    from audible input (`Separator.check_stems`)."""
    if nb_read and not nb_samples:
        raise too_short(source.name, nb_read, source.rate, separator.sample_rate)
    separator.check_stems(peaks["mix"], peaks["separated"], source.name)


class MissedDeadlines:
    """The blocks of a real-time stream that missed their deadline: all counted, logged at most
    once a second (the first at once), so that a machine too slow for the stream says so in a
    few lines, not one for every block."""

    def __init__(self) -> None:
        self.missed = 0
        self._unlogged = 0  # late blocks since the last line
        self._logged_at = -math.inf

    def check(self, due: float, nb_blocks: int, position: float) -> None:
        """Count block number `nb_blocks`, ending `position` seconds into the stream, if it
        missed its deadline `due` (on the monotonic clock)."""
        now = time.monotonic()
        late = now - due
        if late <= 0:
            return
        self.missed += 1
        self._unlogged += 1
        if now - self._logged_at < 1.0:
            return
        more = self._unlogged - 1
        logger.warning(
            "block %d (%.3f s into the stream) missed its deadline by %.1f ms%s",
            nb_blocks,
            position,
            1000 * late,
            f", as did {more} more since the last such line" if more else "",
        )
        self._logged_at, self._unlogged = now, 0


def check_stdout_names(names: Sequence[str]) -> None:
    """Refuse raw PCM output of anything but one stem or group."""
    if len(names) != 1:
        raise UmxError(
            f"--stdout writes one stem or group, but {len(names)} are chosen "
            f"({', '.join(names)}): choose one with --targets or --aggregate"
        )


def _file_writers(
    stack: ExitStack,
    paths: Mapping[str, Path],
    separator: Separator,
    nb_channels: int,
    options: Mapping[str, Any],
) -> dict[str, AudioWriter]:
    """One open `AudioWriter` per stem or group in `paths`, closed by `stack`, their missing
    folders created (and removed again if the stream fails: `output_folders`).

    Args:
        separator: gives the stems' sample rate and channels.
        nb_channels: the input's channels.
        options: `AudioWriter`'s keyword options (subtype, clip, force).
    """
    stack.enter_context(output_folders(paths.values(), LONG_NAMES_HINT))
    rate, nb_channels = separator.sample_rate, separator.channels_for(nb_channels)
    return {
        name: stack.enter_context(AudioWriter(path, rate, nb_channels, **options))
        for name, path in paths.items()
    }


def _stem_paths(
    input_path: str | os.PathLike,
    names: list[str],
    stdout: BinaryIO | None,
    outdir: object,
    filename: str,
    ext: str,
    fmt: str,
) -> dict[str, Path]:
    """Each stem's file (`umx.api.plan_outputs`) under an `outdir` that must be given, or
    none where one stem goes to `stdout` as raw PCM in `fmt`."""
    if stdout is not None:
        check_stdout_names(names)
        check_pcm_format(fmt)
        return {}
    check_path("--outdir", outdir, what="a path (or give stdout for raw PCM)")
    (paths,) = plan_outputs([input_path], names, outdir, filename, ext)
    return paths


def separate_stream(
    input_path: str | os.PathLike,
    separator: Separator,
    *,
    outdir: str | os.PathLike | None = None,
    filename: str = DEFAULT_TEMPLATE,
    ext: str = "wav",
    subtype: str | None = None,
    clip: str = "rescale",
    force: bool = False,
    stdout: BinaryIO | None = None,
    stdin: BinaryIO | None = None,
    rate: float | None = None,
    nb_channels: int | None = None,
    fmt: str | None = None,
    downmix: bool = False,
    aggregate: Mapping[str, Sequence[str]] | None = None,
    realtime: bool = False,
    block: int = DEFAULT_BLOCK,
) -> tuple[StreamReport, list[WriteReport]]:
    """Separate a file, or raw PCM from `stdin` (`input_path` "-"), as a stream, into files
    under `outdir` or into raw PCM on `stdout`.

    Every check a user can fail runs before the input is read: the block size, the PCM
    description, the groups, the output paths (never over the input, none existing without
    `force`), a bidirectional model. Files are written whole or not at all.

    Args:
        input_path: an audio file in any format `read_audio` reads, or "-" for `stdin`.
        separator: loaded unidirectional target models and their filtering options.
        outdir, filename, ext, subtype, clip, force: files out, as `umx.api.separate_file`.
        stdout: write the one stem or group as raw PCM here instead of files.
        stdin: where raw PCM comes from when `input_path` is "-".
        rate, nb_channels, fmt: the raw PCM input's sample rate, channels (2 if None) and
            `PCM_FORMATS` name (`DEFAULT_PCM` if None; `fmt` is also the raw output's); a file
            has its own rate and channels, and takes `fmt` only with `stdout`.
        downmix: average files with more than two channels instead of refusing them.
        aggregate, realtime, block: see `stream_to`.

    Returns:
        what the stream did, and one report per written file (none with `stdout`).

    Raises:
        UmxError: a bad option, input, output or model.
        OutputClosed: the reader of `stdout` went away.
    """
    check_block(block)
    check_flags({"--force": force, "--downmix": downmix, "--realtime": realtime})
    check_aggregate(aggregate, separator)
    names = separator.output_names(aggregate)
    from_stdin = os.fspath(input_path) == "-"
    nb_channels = check_input(input_path, rate, nb_channels, fmt, stdout=stdout is not None)
    fmt = fmt or DEFAULT_PCM
    input_name = STDIN_NAME if from_stdin else input_path
    paths = _stem_paths(input_name, names, stdout, outdir, filename, ext, fmt)
    # Refuses a bidirectional model before any input is read or file opened.
    StreamingSeparator(separator, nb_channels=separator.channels_for(nb_channels or 2))
    with ExitStack() as stack:
        if from_stdin:
            source = pcm_source(stdin, rate, nb_channels, fmt, block)
        else:
            source = file_source(stack, input_path, block, downmix=downmix)
        if stdout is not None:
            writers = {names[0]: PcmWriter(stdout, fmt, separator.sample_rate)}
        else:
            options = {"subtype": subtype, "clip": clip, "force": force}
            writers = _file_writers(stack, paths, separator, source.nb_channels, options)
        report = stream_to(
            separator,
            source,
            lambda name, stem: writers[name].write(stem),
            aggregate=aggregate,
            realtime=realtime,
            block=block,
        )
        if stdout is None:
            finish_together(writers.values())
    files = [w.report for w in writers.values() if isinstance(w, AudioWriter)]
    return report, files
