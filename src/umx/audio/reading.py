"""Reading audio files: decoding with libsndfile or ffmpeg, excerpts and the channel policy.

Formats libsndfile reads (wav, flac, ogg, aiff, mp3) go through ``soundfile``; anything else
(m4a, mp4, aac, the mixture of a stem .mp4), and mp3 files libsndfile cannot open, are decoded by
``ffmpeg`` when it is installed.

Every input file is treated as hostile:

- Only regular files are read: a named pipe, a device or a socket is refused before it is
  opened (reading one would block or never end).
- A file whose first bytes announce no format libsndfile reads is not handed to it (its MPEG
  decoder prints noise on stderr); ffmpeg tries it, else it is "not decodable audio".
- A file must hold all the audio its header declares, or it is refused as truncated, whether
  the whole file or an excerpt is read: the truncation policy, with the lengths each format
  declares, is in :mod:`umx.audio.headers`.
- No buffer is sized from a declared length before the file was found to hold it: files whose
  length is not checked are decoded block by block, and a read needing more memory than the
  machine has is refused.
- Its sample rate and samples must be audio (:mod:`umx.audio.samples`): a rate of 1 Hz or a
  float file holding 16-bit values is refused, naming the file, never separated into noise.

Excerpts given in seconds become frames as open-unmix computes them, by truncation:
``int(seconds * sample_rate)`` (:func:`seconds_to_frames`); ffmpeg's output is cut with the same
rule, so excerpts are sample-exact in every format.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile
import torch

from umx.audio.headers import _audio_beyond_declared, _check_declared_size, _sniff, _xing_tag
from umx.audio.messages import (
    _FFMPEG_MISSING,
    _ffmpeg_failure,
    _libsndfile_reason,
    _past_the_end,
    _truncated,
    _undecodable,
    display_path,
    io_errors,
)
from umx.audio.regular import _open_regular
from umx.audio.resampling import resample
from umx.audio.samples import check_rate, check_samples
from umx.errors import MAX_RATE, MIN_RATE, UmxError, check_number

MAX_CHANNELS = 2
"""umx separates mono or stereo audio; files with more channels need ``downmix``."""

_LIBSNDFILE_HAS_MP3 = "MP3" in soundfile.available_formats()
"""Whether this libsndfile has MPEG support, to read and to write mp3 (else ffmpeg does)."""

_LIBSNDFILE_EXTENSIONS = frozenset({"wav", "flac", "ogg", "aif", "aiff"}) | (
    {"mp3"} if _LIBSNDFILE_HAS_MP3 else set()
)


class _Undecodable(Exception):
    """libsndfile cannot open a file; the reason is the exception's message."""


# --- Memory ---------------------------------------------------------------------------------------


def _physical_memory() -> int | None:
    """This machine's memory in bytes, or ``None`` when the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(path: Path, nb_frames: int, nb_channels: int, rate: float) -> None:
    """Refuses to hold ``nb_frames`` float32 frames when they exceed the machine's memory."""
    need, memory = nb_frames * nb_channels * 4, _physical_memory()
    if memory is not None and need > memory:
        raise UmxError(
            f"{display_path(path)} is too long to read at once: {nb_frames / rate:.2f} s of "
            f"audio need {need / 2**30:.1f} GiB, more than this machine's "
            f"{memory / 2**30:.1f} GiB of memory"
        )


# --- Decoding with libsndfile ---------------------------------------------------------------------

_SF_COUNT_MAX = 2**63 - 1
"""The length libsndfile reports when a file declares none (FLAC with 0 total samples)."""

_BLOCK_FRAMES = 1 << 16
"""Frames decoded at a time when a file's length is not known to be held."""

_MP3_FRAME = 1152
"""Samples in an MPEG-1 layer III frame: the slack allowed on an mp3's declared length."""


def _read_block(
    file: soundfile.SoundFile, strict: bool = True, nb_frames: int = _BLOCK_FRAMES
) -> np.ndarray:
    """The next frames, at most `nb_frames`, shape ``(nb_block, nb_channels)``. This calls
    libsndfile's ``sf_readf_float`` itself: soundfile seeks to where it thinks the file is
    after every read, and that seek fails in FLAC files declaring no length and makes
    libsndfile's MPEG decoder return silence in some files (those its own encoder writes).
    A decoding error raises, unless ``strict`` is false and some frames decoded before it."""
    out = np.empty((nb_frames, file.channels), np.float32)
    pointer = soundfile._ffi.cast("float *", out.__array_interface__["data"][0])
    count = soundfile._snd.sf_readf_float(file._file, pointer, nb_frames)
    if (error := soundfile._snd.sf_error(file._file)) and (strict or not count):
        raise soundfile.LibsndfileError(error)
    return out[:count]


def _open_soundfile(fd: int) -> soundfile.SoundFile:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return soundfile.SoundFile(fd, closefd=False)
    except soundfile.LibsndfileError as error:
        raise _Undecodable(_libsndfile_reason(error)) from None


class _Libsndfile:
    """A file open in libsndfile whose declared length was checked where it can be at once.

    Attributes:
        rate, nb_channels: the file's.
        length: frames the file was found to hold (WAV and AIFF by their chunk sizes, FLAC by
            decoding its last frame), from which buffers may be sized; ``None`` otherwise.
        declared: an mp3's declared frames, checked by decoding to the end; ``None`` otherwise.
        nb_frames: the length to report: ``length``, ``declared`` or libsndfile's (ogg),
            ``None`` where libsndfile has no length or only an estimate (mp3 without tag).
    """

    def __init__(self, path: Path, fd: int, file_size: int, kind: str, offset: int) -> None:
        self.path, self._fd = path, fd
        checked = _check_declared_size(path, fd, file_size, kind)
        xing = _xing_tag(fd, offset) if kind == "mp3" else None
        if xing is not None and xing.nb_bytes and file_size < xing.nb_bytes:
            # before libsndfile, whose MPEG decoder would print a warning: a sure truncation
            held = xing.seconds * (file_size - offset) / xing.nb_bytes
            raise _truncated(path, xing.seconds, held, about=True)
        self.file = _open_soundfile(fd)
        try:
            self.rate, self.nb_channels = self.file.samplerate, self.file.channels
            frames, known = self.file.frames, self.file.frames != _SF_COUNT_MAX
            self.length: int | None = None
            self.declared: int | None = None
            self.nb_frames: int | None = frames if known else None
            if known and checked:
                self.length = frames
            elif known and self.file.format == "FLAC":
                self._check_last_frame(frames)
                self.length = frames
            elif known and self.file.format == "MP3" and xing is not None:
                self.declared = frames
            elif self.file.format == "MP3":
                self.nb_frames = None  # an estimate from the file's size
        except BaseException:
            self.file.close()
            raise

    def __enter__(self) -> _Libsndfile:
        return self

    def __exit__(self, *_: object) -> None:
        self.file.close()

    def _check_last_frame(self, frames: int) -> None:
        """Decodes a FLAC file's last declared frame; refuses the file when it lacks it."""
        if frames == 0:
            return
        try:
            self.file.seek(frames - 1)
            if len(self.file.read(1, dtype="float32", always_2d=True)) == 1:
                self.file.seek(0)
                return
        except soundfile.LibsndfileError:
            pass
        held = self._count_decodable()
        raise _truncated(self.path, frames / self.rate, held / self.rate)

    def _count_decodable(self) -> int:
        """The frames that decode from the start, read block by block and dropped."""
        count = 0
        with contextlib.suppress(soundfile.LibsndfileError), _open_soundfile(self._fd) as file:
            while block := len(_read_block(file, strict=False)):
                count += block
        return count

    def read(self, first: int, count: int | None) -> np.ndarray:
        """Frames ``[first, first + count)`` (to the end if ``count`` is ``None``), shape
        ``(nb_timesteps, nb_channels)``; fewer past the end."""
        with io_errors(f"{display_path(self.path)} is not decodable audio"):
            # some encodings (G.721, G.723 ADPCM) cannot seek, even to the start: read from it
            if self.length is None or (first and not self.file.seekable()):
                return self._read_blocks(first, count)
            first = min(first, self.length)
            count = self.length - first if count is None else min(count, self.length - first)
            _check_memory(self.path, count, self.nb_channels, self.rate)
            if first:
                self.file.seek(first)
            audio = self.file.read(count, dtype="float32", always_2d=True)
        if len(audio) < count:
            raise _undecodable(
                self.path,
                f"decoding stopped at {(first + len(audio)) / self.rate:.2f} s of the "
                f"{self.length / self.rate:.2f} s its header declares",
            )
        return audio

    def _read_blocks(self, first: int, count: int | None) -> np.ndarray:
        """Decodes from the start in blocks, so no buffer is sized from an unchecked length.

        libsndfile's MPEG decoder also returns silence after a seek in some files (those its
        own encoder writes, for one): reading from the start avoids seeking altogether.
        """
        blocks, position, kept = [], 0, 0
        while count is None or kept < count:
            block = _read_block(self.file)
            if not len(block):
                break
            block, position = block[max(0, first - position) :], position + len(block)
            if count is not None:
                block = block[: count - kept]
            if len(block):
                blocks.append(block)
                kept += len(block)
                _check_memory(self.path, kept, self.nb_channels, self.rate)
        if self.declared is not None:
            while extra := len(_read_block(self.file)):
                position += extra
            if position + _MP3_FRAME < self.declared:
                raise _truncated(self.path, self.declared / self.rate, position / self.rate)
        if not blocks:
            return np.zeros((0, self.nb_channels), np.float32)
        return np.concatenate(blocks)


# --- Decoding with ffmpeg -------------------------------------------------------------------------


def _ffmpeg_tools() -> tuple[str, str] | None:
    """The paths of ffmpeg and ffprobe, or ``None`` unless both are installed."""
    ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
    return (ffmpeg, ffprobe) if ffmpeg and ffprobe else None


class _Probe(NamedTuple):
    """What ffprobe says of a file's first audio stream."""

    nb_channels: int
    rate: int
    nb_frames: int | None  # the exact length, where the container declares one (MP4's)


def _exact_length(probe: dict, rate: int) -> int | None:
    """The stream's length in frames as an MP4 container declares it, else ``None``.

    AAC encoders pad the last frame with up to 2048 samples that ffmpeg decodes; MP4 (m4a,
    stem files) declares the length without them (the edit list), other containers do not.
    """
    try:
        if "mp4" not in probe["format"]["format_name"].split(","):
            return None
        stream = probe["streams"][0]
        return round(int(stream["duration_ts"]) * Fraction(stream["time_base"]) * rate)
    except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError):
        return None


def _ffmpeg_probe(path: Path, ffprobe: str, failure: str | None = None) -> _Probe:
    """The channels, sample rate and declared length of a file's first audio stream.

    Args:
        failure: the reason given if ffprobe fails; ``None`` gives ffprobe's.
    """
    source = f"file:{path}"
    command = [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries"]
    command += ["stream=channels,sample_rate,time_base,duration_ts:format=format_name"]
    command += ["-of", "json", "-i", source]
    result = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        failure = failure or f"ffmpeg: {_ffmpeg_failure(result.stderr, result.returncode, source)}"
        raise _undecodable(path, failure)
    try:
        probe = json.loads(result.stdout)
        stream = probe["streams"][0]
        nb_channels, rate = int(stream["channels"]), int(stream["sample_rate"])
    except (ValueError, KeyError, IndexError, TypeError):
        nb_channels = rate = 0
    if nb_channels <= 0 or rate <= 0:
        raise UmxError(f"{display_path(path)} has no audio stream")
    nb_frames = _exact_length(probe, rate)
    return _Probe(nb_channels, rate, None if nb_frames is None or nb_frames < 0 else nb_frames)


def _ffmpeg_decode(
    path: Path, ffmpeg: str, probe: _Probe, first: int, count: int | None
) -> np.ndarray:
    """Frames ``[first, first + count)`` of the first audio stream; as `_Libsndfile.read`.

    ffmpeg decodes from the start and the excerpt is cut from its samples, as libsndfile's are:
    seeking in ffmpeg (``-ss``) is sample-exact for neither AAC nor mp3. Only the excerpt is
    kept, and ffmpeg is stopped once it is complete. Nothing past the length the container
    declares is kept (an AAC encoder's padding).
    """
    nb_channels, rate, nb_frames = probe
    if nb_frames is not None:
        left = max(nb_frames - first, 0)
        count = left if count is None else min(count, left)
    source = f"file:{path}"
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", source, "-map", "0:a:0", "-f", "f32le"]
    command += ["-ac", str(nb_channels), "-ar", str(rate), "pipe:1"]
    frame_bytes = 4 * nb_channels
    skip, wanted = first * frame_bytes, None if count is None else count * frame_bytes
    kept = bytearray()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
        finished = False
        try:
            while wanted is None or len(kept) < wanted:
                chunk = process.stdout.read(1 << 20)
                if not chunk:
                    finished = True
                    break
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
                kept += chunk if wanted is None else chunk[: wanted - len(kept)]
                _check_memory(path, len(kept) // frame_bytes, nb_channels, rate)
        finally:
            if not finished:
                process.kill()
            process.stdout.close()
            returncode = process.wait()
        if finished and returncode != 0:
            errors.seek(0)
            failure = _ffmpeg_failure(errors.read(), returncode, source)
            raise _undecodable(path, f"ffmpeg: {failure}")
    del kept[len(kept) - len(kept) % frame_bytes :]
    return np.frombuffer(kept, dtype=np.float32).reshape(-1, nb_channels)


# --- Reading --------------------------------------------------------------------------------------


_UNKNOWN_FORMAT = "neither libsndfile nor ffmpeg knows its format"


def _decoder(path: Path, fd: int, file_size: int) -> tuple[_Libsndfile | None, str | None]:
    """Opens a file in libsndfile, or says that ffmpeg is to decode it.

    libsndfile reads the files whose first bytes say wav, aiff, flac, ogg or mp3, whatever their
    name. ffmpeg, when installed, reads the others, those libsndfile cannot open unless
    their name says a format libsndfile reads (an mp3 libsndfile cannot open goes to ffmpeg),
    and chained Ogg files and joined mp3 files, of which libsndfile decodes only the first
    stream or file (see :mod:`umx.audio.headers`).

    Returns:
        The file open in libsndfile, or ``None`` and the reason to give if ffprobe fails
        (``None``: ffprobe's own).

    Raises:
        UmxError: the file is empty or undecodable, or only ffmpeg could read it and it is
            not installed.
    """
    if file_size == 0:
        raise _undecodable(path, "the file is empty")
    tools = _ffmpeg_tools()
    needs_ffmpeg = UmxError(
        f"{display_path(path)} can only be read with ffmpeg, but {_FFMPEG_MISSING}"
    )
    named = path.suffix.lower().lstrip(".") in _LIBSNDFILE_EXTENSIONS
    kind, offset = _sniff(fd)  # by content: a name without extension (an upload) is checked too
    if kind is None or (kind == "mp3" and not _LIBSNDFILE_HAS_MP3):
        if tools is not None:
            return None, _UNKNOWN_FORMAT if kind is None and named else None
        if kind == "mp3" or not named:
            raise needs_ffmpeg
        raise _undecodable(path, "no WAV, AIFF, FLAC, Ogg or MP3 header")
    if joined := _audio_beyond_declared(fd, kind, offset, file_size):
        if tools is None:  # libsndfile would stop at the end of the first stream or file
            raise UmxError(
                f"{display_path(path)} is {joined}: only ffmpeg reads it whole, but "
                f"{_FFMPEG_MISSING}"
            )
        return None, None
    try:
        return _Libsndfile(path, fd, file_size, kind, offset), None
    except _Undecodable as error:  # ffmpeg may read what libsndfile cannot (Opus in Ogg, ...)
        if tools is None or (kind != "mp3" and named):
            raise _undecodable(path, str(error)) from None
        return None, None


def _read(path: Path, excerpt: Callable[[float], tuple[int, int | None]]) -> tuple[np.ndarray, int]:
    """Reads the frames ``excerpt(sample_rate)`` names: ``(first, count or None)``.

    Returns:
        The frames, shape ``(nb_timesteps, nb_channels)``, and the file's sample rate.
    """
    with _open_regular(path) as (fd, file_size):
        decoder, failure = _decoder(path, fd, file_size)
        if decoder is not None:
            with decoder:
                check_rate(decoder.rate, display_path(path))
                return decoder.read(*excerpt(decoder.rate)), decoder.rate
        ffmpeg, ffprobe = _ffmpeg_tools() or ("ffmpeg", "ffprobe")
        probe = _ffmpeg_probe(path, ffprobe, failure)
        check_rate(probe.rate, display_path(path))
        return _ffmpeg_decode(path, ffmpeg, probe, *excerpt(probe.rate)), probe.rate


@dataclass(frozen=True)
class AudioFileInfo:
    """What a file says of its audio, read without decoding it all.

    Attributes:
        sample_rate: in Hz.
        nb_channels: the channel count (of the first audio stream, for ffmpeg's formats).
        nb_frames: the length in frames; ``None`` where it is not known without decoding the
            whole file (mp3 without Xing/Info tag, FLAC declaring no length, ffmpeg's formats
            other than MP4).
    """

    sample_rate: float
    nb_channels: int
    nb_frames: int | None


def audio_info(path: str | os.PathLike) -> AudioFileInfo:
    """Reads a file's sample rate, channels and length, with the checks of :func:`read_audio`.

    The file must be a regular file, decodable, and hold the length its header declares (see
    the truncation policy in :mod:`umx.audio.headers`; an mp3's Xing length is only checked by
    decoding it).

    Args:
        path: the file, in any format :func:`read_audio` reads.

    Returns:
        Its description.

    Raises:
        UmxError: the file is missing, not a regular file, not audio (see
            :mod:`umx.audio.samples`) or truncated.
    """
    path = Path(path)
    with _open_regular(path) as (fd, file_size):
        decoder, failure = _decoder(path, fd, file_size)
        if decoder is not None:
            with decoder:
                info = AudioFileInfo(float(decoder.rate), decoder.nb_channels, decoder.nb_frames)
        else:
            _, ffprobe = _ffmpeg_tools() or ("ffmpeg", "ffprobe")
            probe = _ffmpeg_probe(path, ffprobe, failure)
            info = AudioFileInfo(float(probe.rate), probe.nb_channels, probe.nb_frames)
    check_rate(info.sample_rate, display_path(path))
    return info


def seconds_to_frames(seconds: float, sample_rate: float) -> int:
    """A time in seconds as frames, truncated as open-unmix does: ``int(seconds * sample_rate)``.

    Excerpt starts and durations, here and in the datasets, all go through this one rule.
    """
    return int(seconds * sample_rate)


def read_frames(
    path: str | os.PathLike, start: int = 0, nb_frames: int | None = None
) -> tuple[torch.Tensor, float]:
    """Reads frames ``[start, start + nb_frames)`` of a file as float32, as the file holds them.

    No channel policy and no resampling; past the end of the file fewer frames come back,
    possibly none.

    Args:
        path: the file, in any format :func:`read_audio` reads.
        start: the first frame.
        nb_frames: how many frames; ``None`` reads to the end.

    Returns:
        The audio, shape ``(nb_channels, nb_timesteps)``, and its sample rate.

    Raises:
        UmxError: the file is missing, not a regular file, not audio (see
            :mod:`umx.audio.samples`) or truncated.
    """
    if start < 0 or (nb_frames is not None and nb_frames < 0):
        raise ValueError(f"start and nb_frames must not be negative, not {start}, {nb_frames}")
    audio, rate = _read(Path(path), lambda _: (start, nb_frames))
    frames = torch.from_numpy(np.ascontiguousarray(audio.T))
    check_samples(frames, start / rate, rate, display_path(path))
    return frames, float(rate)


def match_channels(audio: torch.Tensor, nb_channels: int) -> torch.Tensor:
    """Mono ↔ stereo: duplicate mono for stereo, average stereo for mono.

    Args:
        audio: shape ``(..., nb_channels_in, nb_timesteps)`` with 1 or 2 channels.
        nb_channels: the channel count wanted, 1 or 2.

    Returns:
        shape ``(..., nb_channels, nb_timesteps)``; ``audio`` itself when it already fits.
    """
    if audio.shape[-2] == nb_channels:
        return audio
    if nb_channels == 1:
        return audio.mean(dim=-2, keepdim=True)
    return audio.expand(*audio.shape[:-2], nb_channels, audio.shape[-1])


def _channel_policy(
    audio: torch.Tensor, nb_channels: int | None, downmix: bool, path: Path
) -> torch.Tensor:
    """Applies the channel policy to ``(nb_channels_in, nb_timesteps)`` audio read from ``path``."""
    if audio.shape[0] > MAX_CHANNELS:
        if not downmix:
            raise UmxError(
                f"{display_path(path)}: {audio.shape[0]} channels; umx separates mono or stereo "
                "audio (use --downmix to average the channels)"
            )
        audio = audio.mean(dim=0, keepdim=True)
    return audio if nb_channels is None else match_channels(audio, nb_channels).contiguous()


def read_audio(
    path: str | os.PathLike,
    *,
    start: float = 0.0,
    duration: float | None = None,
    sample_rate: float | None = None,
    nb_channels: int | None = None,
    downmix: bool = False,
) -> tuple[torch.Tensor, float]:
    """Reads an audio file, or an excerpt of it, as a float32 tensor.

    Args:
        path: the file. wav, flac, ogg, aiff and mp3 are read with libsndfile; other formats
            (m4a, mp4, aac, stem .mp4 whose first stream is the mixture) need ffmpeg.
        start: where the excerpt starts, in seconds: frame ``int(start * rate)``, as open-unmix.
        duration: length of the excerpt in seconds, ``int(duration * rate)`` frames; ``None``
            reads to the end.
        sample_rate: resample to this rate (soxr), from 1 kHz to 768 kHz; ``None`` keeps the
            file's rate.
        nb_channels: the channel count wanted, 1 or 2. Mono input is duplicated to stereo and
            stereo is averaged to mono; ``None`` keeps the file's channels.
        downmix: average files with more than two channels to mono instead of refusing them.

    Returns:
        The audio, shape ``(nb_channels, nb_timesteps)``, and its sample rate.

    Raises:
        UmxError: the file is missing, not a regular file, not audio, truncated, empty (or the
            excerpt is), too long for memory, has a sample rate or samples that are not audio
            (see :mod:`umx.audio.samples`), has more than two channels without ``downmix``, or
            the excerpt or ``sample_rate`` is invalid.
    """
    path = Path(path)
    if nb_channels not in (None, 1, 2):
        raise ValueError(f"nb_channels must be 1, 2 or None, not {nb_channels}")
    if sample_rate is not None:  # NaN made soxr spin forever, 1e12 run out of memory
        check_number("sample_rate", sample_rate, minimum=MIN_RATE, maximum=MAX_RATE)
    if not (0 <= start < math.inf) or (duration is not None and not 0 < duration < math.inf):
        raise UmxError(
            f"{display_path(path)}: the excerpt needs a finite start >= 0 and duration > 0 "
            f"(got {start}, {duration})"
        )

    def excerpt(rate: float) -> tuple[int, int | None]:
        count = None if duration is None else seconds_to_frames(duration, rate)
        return seconds_to_frames(start, rate), count

    audio, rate = _read(path, excerpt)
    if len(audio) == 0:
        if start == 0 and duration is None:
            raise UmxError(f"{display_path(path)} contains no audio")
        raise UmxError(_past_the_end(display_path(path), start, audio_info(path)))
    waveform = torch.from_numpy(audio.T)
    check_samples(waveform, seconds_to_frames(start, rate) / rate, rate, display_path(path))
    waveform = _channel_policy(waveform, nb_channels, downmix, path)
    if sample_rate is None:
        return waveform, float(rate)
    return resample(waveform, rate, sample_rate), float(sample_rate)
