"""Reading an audio file block by block, so that what holds the decoded input is one block.

:class:`AudioBlocks` decodes a file, or an excerpt of it, as :func:`umx.audio.read_audio` does,
with the same decoder, the same checks and the same one-line refusals, but yields it in blocks:
their concatenation is ``read_audio(path, start=..., duration=..., downmix=...)[0]``, sample for
sample. Formats libsndfile reads (wav, flac, ogg, aiff, mp3) are decoded :data:`BLOCK_FRAMES`
frames at a time through libsndfile; the others (m4a, mp4, chained Ogg, joined mp3, ...) through
ffmpeg's output pipe, :data:`BLOCK_FRAMES` frames at a time, ffmpeg decoding ahead only as far as
the pipe holds.

What a whole read finds before it returns, a block read finds where it reaches it: refusals of the
header (not a regular file, not audio, a declared length the file does not hold, a sample rate or
a channel count umx does not separate) and an empty excerpt are made when the file is opened;
samples that are not audio (NaN, infinite or beyond ±10,000, told with their time in the file) in
the block that holds them; a file whose decoding stops short of its declared length (a truncated
mp3, ffmpeg failing) at its end. So a caller that puts its results in place only once the last
block was read (as :func:`umx.api.separate_file` does) leaves nothing for such a file.

Of a file with several of these faults, the one found first is told, which may not be the one a
whole read tells: a file of more than two channels without ``downmix`` is refused when opened,
where a whole read first decodes it and refuses a NaN in it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import torch

import umx.audio.reading as reading
from umx.audio.messages import (
    _ffmpeg_failure,
    _past_the_end,
    _truncated,
    _undecodable,
    io_errors,
)
from umx.audio.reading import (
    MAX_CHANNELS,
    _decoder,
    _ffmpeg_probe,
    _Libsndfile,
    _Probe,
    audio_info,
    seconds_to_frames,
)
from umx.audio.regular import _open_regular
from umx.audio.samples import check_rate, check_samples
from umx.errors import UmxError, display_path

BLOCK_FRAMES = 1 << 16
"""The most frames decoded at a time (1.5 s at 44.1 kHz)."""


def _read_block(file: soundfile.SoundFile) -> np.ndarray:
    """The next frames of `file`, at most :data:`BLOCK_FRAMES`, ``(nb_block, nb_channels)``
    (see :func:`umx.audio.reading._read_block`)."""
    return reading._read_block(file, nb_frames=BLOCK_FRAMES)


def _sndfile_blocks(decoder: _Libsndfile, first: int, count: int | None) -> Iterator[np.ndarray]:
    """``decoder.read(first, count)`` block by block, each ``(nb_block, nb_channels)``."""
    path, rate, length = decoder.path, decoder.rate, decoder.length
    message = f"{display_path(path)} is not decodable audio"
    if length is None or (first and not decoder.file.seekable()):
        yield from _sndfile_from_start(decoder, first, count)
        return
    first = min(first, length)
    count = length - first if count is None else min(count, length - first)
    if first:
        with io_errors(message):
            decoder.file.seek(first)
    kept = 0
    while kept < count:
        with io_errors(message):
            block = _read_block(decoder.file)[: count - kept]
        if not len(block):
            raise _undecodable(
                path,
                f"decoding stopped at {(first + kept) / rate:.2f} s of the {length / rate:.2f} s "
                "its header declares",
            )
        kept += len(block)
        yield block


def _sndfile_from_start(
    decoder: _Libsndfile, first: int, count: int | None
) -> Iterator[np.ndarray]:
    """As :meth:`umx.audio.reading._Libsndfile._read_blocks`, block by block: decoded from the
    start (no seek: libsndfile's MPEG decoder returns silence after one in some files), and an
    mp3's declared length checked by decoding to the end, past the excerpt."""
    message = f"{display_path(decoder.path)} is not decodable audio"
    position, kept = 0, 0
    while count is None or kept < count:
        with io_errors(message):
            block = _read_block(decoder.file)
        if not len(block):
            break
        block, position = block[max(0, first - position) :], position + len(block)
        if count is not None:
            block = block[: count - kept]
        if len(block):
            kept += len(block)
            yield block
    if decoder.declared is not None:
        with io_errors(message):
            while extra := len(_read_block(decoder.file)):
                position += extra
        if position + reading._MP3_FRAME < decoder.declared:
            raise _truncated(decoder.path, decoder.declared / decoder.rate, position / decoder.rate)


def _ffmpeg_blocks(
    path: Path, ffmpeg: str, probe: _Probe, first: int, count: int | None
) -> Iterator[np.ndarray]:
    """:func:`umx.audio.reading._ffmpeg_decode` block by block, from ffmpeg's output pipe.

    ffmpeg decodes from the start; the excerpt is cut from its samples, and ffmpeg is stopped
    once the excerpt is complete or the blocks are no longer wanted. Its failure, known when it
    ends, is raised after the last block.
    """
    nb_channels, rate, nb_frames = probe
    if nb_frames is not None:  # nothing past an MP4's declared length (an AAC encoder's padding)
        left = max(nb_frames - first, 0)
        count = left if count is None else min(count, left)
    source = f"file:{path}"
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", source, "-map", "0:a:0", "-f", "f32le"]
    command += ["-ac", str(nb_channels), "-ar", str(rate), "pipe:1"]
    frame_bytes = 4 * nb_channels
    skip, wanted = first * frame_bytes, None if count is None else count * frame_bytes
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
        finished = False
        try:
            while wanted is None or wanted > 0:
                data = _read_full(process.stdout, BLOCK_FRAMES * frame_bytes)
                finished = len(data) < BLOCK_FRAMES * frame_bytes
                cut = min(skip, len(data))
                del data[:cut]
                skip -= cut
                if wanted is not None:
                    del data[wanted:]
                    wanted -= len(data)
                del data[len(data) - len(data) % frame_bytes :]  # a last frame left incomplete
                if data:
                    yield np.frombuffer(data, dtype=np.float32).reshape(-1, nb_channels)
                if finished:
                    break
        finally:
            if not finished:
                process.kill()
            process.stdout.close()
            returncode = process.wait()
        if finished and returncode != 0:
            errors.seek(0)
            failure = _ffmpeg_failure(errors.read(), returncode, source)
            raise _undecodable(path, f"ffmpeg: {failure}")


def _read_full(stream: BinaryIO, size: int) -> bytearray:
    """The next `size` bytes of `stream`, fewer only at its end, in one buffer of that size."""
    buffer = bytearray(size)
    with memoryview(buffer) as view:
        count = 0
        while count < size and (got := stream.readinto(view[count:])):
            count += got
    del buffer[count:]
    return buffer


def _ffprobe_seconds(path: Path, ffprobe: str) -> float | None:
    """The duration ffprobe gives a file (its container's, or an estimate), or None."""
    command = [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "json"]
    command += ["-i", f"file:{path}"]
    result = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    with contextlib.suppress(ValueError, KeyError, TypeError):
        seconds = float(json.loads(result.stdout)["format"]["duration"])
        return seconds if 0 <= seconds < math.inf else None
    return None


class AudioBlocks:
    """An audio file, or an excerpt of it, read block by block as :func:`read_audio` reads it.

    Open it with ``with``, then iterate: the blocks are float32 tensors ``(nb_channels,
    nb_block)``, at most :data:`BLOCK_FRAMES` frames each, at the file's rate. The file's
    channels are kept, or averaged to mono with ``downmix`` when there are more than two.

    Args:
        path: the file, in any format :func:`read_audio` reads.
        start, duration: the excerpt, as :func:`read_audio`'s.
        downmix: average files with more than two channels to mono instead of refusing them.

    Attributes:
        rate: the file's sample rate (once open).
        nb_channels: the channels of the blocks: the file's, or 1 with ``downmix``.
        nb_frames: the excerpt's length as the file declares it, to tell progress: exact for wav,
            aiff, flac, ogg and MP4, an estimate for mp3 and ffmpeg's other formats; None where
            none is known.
        nb_read: the frames of the blocks yielded so far; once the last was, the excerpt's length.

    Raises:
        UmxError: when opened, each refusal of :func:`read_audio` the file's header shows, and an
            empty file or excerpt; while the blocks are read, the others (see the module).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        start: float = 0.0,
        duration: float | None = None,
        downmix: bool = False,
    ) -> None:
        self.path, self.start, self.duration, self.downmix = Path(path), start, duration, downmix
        if not (0 <= start < math.inf) or (duration is not None and not 0 < duration < math.inf):
            raise UmxError(
                f"{display_path(self.path)}: the excerpt needs a finite start >= 0 and duration "
                f"> 0 (got {start}, {duration})"
            )
        self.rate, self.nb_channels, self.nb_frames, self.nb_read = 0, 0, None, 0
        self._first = 0
        self._blocks: Iterator[np.ndarray] = iter(())
        self._peeked: np.ndarray | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> AudioBlocks:
        with contextlib.ExitStack() as stack:
            fd, file_size = stack.enter_context(_open_regular(self.path))
            decoder, failure = _decoder(self.path, fd, file_size)
            if decoder is not None:
                stack.enter_context(decoder)
                self._open_sndfile(decoder)
            else:
                self._open_ffmpeg(failure)
            stack.callback(self._blocks.close)
            self._peeked = next(self._blocks, None)
            if self._peeked is None:
                self._refuse_empty()
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *_: object) -> None:
        self._stack.close()

    def _excerpt(self, rate: float) -> tuple[int, int | None]:
        """The first frame and the frame count (None: to the end) of the excerpt at `rate`."""
        count = None if self.duration is None else seconds_to_frames(self.duration, rate)
        return seconds_to_frames(self.start, rate), count

    def _opened(self, rate: int, nb_channels: int, nb_frames: int | None) -> tuple[int, int | None]:
        """Check and keep what the header says: the rate, the channels (more than two only with
        ``downmix``), the file's length in frames if known; returns the excerpt's frames."""
        shown = display_path(self.path)
        check_rate(rate, shown)
        if nb_channels > MAX_CHANNELS and not self.downmix:
            raise UmxError(
                f"{shown}: {nb_channels} channels; umx separates mono or stereo audio (use "
                "--downmix to average the channels)"
            )
        self.rate, self.nb_channels = rate, 1 if nb_channels > MAX_CHANNELS else nb_channels
        first, count = self._excerpt(rate)
        self._first = first
        if nb_frames is not None:
            left = max(nb_frames - first, 0)
            self.nb_frames = left if count is None else min(count, left)
        return first, count

    def _open_sndfile(self, decoder: _Libsndfile) -> None:
        estimate = decoder.nb_frames
        if estimate is None and decoder.file.frames != reading._SF_COUNT_MAX:
            estimate = decoder.file.frames  # an mp3's without Xing tag, from its size
        first, count = self._opened(decoder.rate, decoder.nb_channels, estimate)
        self._blocks = _sndfile_blocks(decoder, first, count)

    def _open_ffmpeg(self, failure: str | None) -> None:
        ffmpeg, ffprobe = reading._ffmpeg_tools() or ("ffmpeg", "ffprobe")
        probe = _ffmpeg_probe(self.path, ffprobe, failure)
        nb_frames = probe.nb_frames
        if nb_frames is None and probe.rate > 0:
            seconds = _ffprobe_seconds(self.path, ffprobe)
            nb_frames = None if seconds is None else round(seconds * probe.rate)
        first, count = self._opened(probe.rate, probe.nb_channels, nb_frames)
        self._blocks = _ffmpeg_blocks(self.path, ffmpeg, probe, first, count)

    def _refuse_empty(self) -> None:
        """Refuse a file that holds no audio, or an excerpt of it that holds none."""
        shown = display_path(self.path)
        if self.start == 0 and self.duration is None:
            raise UmxError(f"{shown} contains no audio")
        raise UmxError(_past_the_end(shown, self.start, audio_info(self.path)))

    def __iter__(self) -> Iterator[torch.Tensor]:
        """The blocks, checked as :func:`read_audio` checks its samples.

        Yields:
            ``(nb_channels, nb_block)`` float32 tensors.

        Raises:
            UmxError: a sample that is not audio (named with its time in the file), or a
                refusal found while decoding (see the module).
        """
        while (frames := self._peeked) is not None:
            block = torch.from_numpy(frames.T)
            shown = display_path(self.path)
            check_samples(block, self._first / self.rate, self.rate, shown, offset=self.nb_read)
            if block.shape[0] > MAX_CHANNELS:
                block = block.mean(dim=0, keepdim=True)
            self.nb_read += block.shape[1]
            yield block
            del frames, block  # not held while the next block is decoded
            self._peeked = next(self._blocks, None)


class BlockWindow:
    """The frames of a signal given block by block that are still needed, joined along time:
    what a separator's chunk takes from a file read with :class:`AudioBlocks`.

    Args:
        blocks: the signal's consecutive blocks, ``(..., nb_block)`` each; one at least.

    Attributes:
        first: the index in the signal of the first frame held.
        end: the index after the last frame held (the signal's length once ``ended``).
        ended: whether every block was given.
    """

    def __init__(self, blocks: Iterable[torch.Tensor]) -> None:
        self._blocks = iter(blocks)
        self._held: list[torch.Tensor] = []  # ``(..., nb_block)`` each
        self.first = self.end = 0
        self.ended = False

    def fill(self, end: float) -> None:
        """Take blocks until the frames up to ``end`` are held, or there are no more."""
        while not self.ended and self.end < end:
            block = next(self._blocks, None)
            if block is None:
                self.ended = True
                if not self._held:
                    raise ValueError("a signal given block by block needs one block at least")
            else:
                self._held.append(block)
                self.end += block.shape[-1]

    def frames(self, start: int, end: int) -> torch.Tensor:
        """Frames ``[start, end)`` of the signal, ``(..., end - start)``, held: a view of them
        (joined once, where more than one block holds them)."""
        if len(self._held) > 1:
            self._held = [torch.cat(self._held, dim=-1)]
        return self._held[0][..., start - self.first : end - self.first]

    def drop(self, first: int) -> None:
        """Let go of the frames before ``first``."""
        while len(self._held) > 1 and self.first + self._held[0].shape[-1] <= first:
            self.first += self._held.pop(0).shape[-1]
        if self._held and first > self.first:
            self._held[0] = self._held[0][..., first - self.first :]
            self.first = first
