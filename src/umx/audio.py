"""Audio files in and out: reading, writing, resampling and the channel policy.

Every waveform here has the shape ``(nb_channels, nb_timesteps)``. The module knows nothing of
models: callers say how many channels they want and at which rate.

Formats libsndfile reads (wav, flac, ogg, aiff, mp3) go through ``soundfile``; anything else
(m4a, mp4, aac, the mixture of a stem .mp4), and mp3 files libsndfile cannot open, are decoded by
``ffmpeg`` when it is installed.

Every input file is treated as hostile:

- Only regular files are read: a named pipe, a device or a socket is refused before it is
  opened (reading one would block or never end).
- A file whose first bytes announce no format libsndfile reads is not handed to it (its MPEG
  decoder prints noise on stderr); ffmpeg tries it, else it is "not decodable audio".
- Truncation policy: a file must hold all the audio its header declares, or it is refused with
  the declared and held durations, whether the whole file or an excerpt is read. Declared
  lengths are the data chunk's size in WAV, RF64 and BW64 (ds64); COMM's frame count in AIFF
  (SSND's size in compressed AIFF-C); STREAMINFO's total samples in FLAC (checked by decoding
  the last frame, so at once); and the Xing/Info tag's frame count in mp3 files that have one
  (checked against its byte count at once, then exactly by decoding to the end, within one
  MPEG frame). Where nothing is declared, what decodes is the audio: ogg, mp3 without tag, WAV
  written to a pipe (size 0xFFFFFFFF), FLAC with 0 total samples, and formats read by ffmpeg.
- No buffer is sized from a declared length before the file was found to hold it: files whose
  length is not checked are decoded block by block, and a read needing more memory than the
  machine has is refused.

Excerpts given in seconds become frames as open-unmix computes them, by truncation:
``int(seconds * sample_rate)`` (:func:`seconds_to_frames`); ffmpeg's output is cut with the same
rule, so excerpts are sample-exact in every format.

Paths in messages go through :func:`display_path`, so that a file name that is not valid UTF-8
or holds control characters still gives a printable, one-line message.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from umx.errors import UmxError

MAX_CHANNELS = 2
"""umx separates mono or stereo audio; files with more channels need ``downmix``."""

RESAMPLE_QUALITY = "VHQ"
"""soxr quality recipe used by :func:`resample`."""

SUBTYPES = {
    "wav": ("PCM_16", "PCM_24", "FLOAT"),
    "flac": ("PCM_16", "PCM_24"),
    "mp3": ("MPEG_LAYER_III",),
}
"""Writable extensions and the libsndfile subtypes each accepts."""

DEFAULT_SUBTYPE = {extension: subtypes[0] for extension, subtypes in SUBTYPES.items()}
"""The subtype written when none is asked for, per extension."""

CLIP_POLICIES = ("rescale", "clamp", "none")
"""How samples beyond [-1, 1] are handled when writing: see :class:`AudioWriter`."""

_CLIP_ACTIONS = {"rescale": "rescaled", "clamp": "clamped", "none": "none"}

RESCALE_PEAK = 32767 / 32768
"""Peak of a rescaled signal: the largest 16-bit sample, just below 1.0."""

BLOCK_SECONDS = 1.0
"""Length of the blocks a staged signal is converted in, so it never sits whole in memory."""

FFMPEG_MP3_QUALITY = "2"
"""LAME VBR quality (``-q:a``) when ffmpeg encodes mp3: about 190 kbit/s."""

_LIBSNDFILE_HAS_MP3 = "MP3" in soundfile.available_formats()
_LIBSNDFILE_EXTENSIONS = frozenset({"wav", "flac", "ogg", "aif", "aiff"}) | (
    {"mp3"} if _LIBSNDFILE_HAS_MP3 else set()
)
_FFMPEG_MISSING = "ffmpeg is not installed (apt-get install ffmpeg)"


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""What :func:`display_path` escapes: controls, line separators, bidi overrides, surrogates."""


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\ufffd" if "\ud800" <= char <= "\udfff" else repr(char)[1:-1]


def display_path(path: str | bytes | os.PathLike) -> str:
    """A path as printable, one-line text for messages.

    Bytes the file system encoding cannot decode (kept by :func:`os.fsdecode` as surrogate
    escapes) become U+FFFD, and control characters, line separators and bidirectional overrides
    are escaped (``\\n``, ``\\x1b``, ``\\u202e``): the text can be printed or logged to any UTF-8
    stream and stays on one line. Ordinary paths are returned as ``str(path)``.

    Args:
        path: a path as ``str``, ``bytes`` or path-like object.

    Returns:
        The text to show.
    """
    return _UNPRINTABLE.sub(_escape, os.fsdecode(path))


@contextlib.contextmanager
def _user_error(message: str) -> Iterator[None]:
    """Turns libsndfile and operating-system errors into an :class:`UmxError` with ``message``."""
    try:
        yield
    except soundfile.LibsndfileError as error:
        raise UmxError(f"{message} ({_libsndfile_reason(error)})") from error
    except OSError as error:
        raise UmxError(f"{message} ({error.strerror or error})") from error


def _libsndfile_reason(error: soundfile.LibsndfileError) -> str:
    return error.error_string.strip().rstrip(".")


def _undecodable(path: Path, reason: str) -> UmxError:
    return UmxError(f"{display_path(path)} is not decodable audio ({reason})")


def _truncated(path: Path, declared: float, held: float, about: bool = False) -> UmxError:
    """The error for a file holding ``held`` of the ``declared`` seconds its header declares."""
    return UmxError(
        f"{display_path(path)} is truncated: its header declares {declared:.2f} s but the file "
        f"holds {'about ' if about else ''}{min(held, declared):.2f} s"
    )


class _Undecodable(Exception):
    """libsndfile cannot open a file; the reason is the exception's message."""


# --- Regular files --------------------------------------------------------------------------------

_SPECIAL_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular(path: Path, mode: int) -> None:
    """Refuses anything but a regular file: pipes and devices block or never end."""
    if not stat.S_ISREG(mode):
        kind = next((kind for test, kind in _SPECIAL_FILES if test(mode)), "a special file")
        raise UmxError(f"{display_path(path)} is {kind}, not a regular audio file")


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[tuple[int, int]]:
    """Opens a regular file for reading; yields its descriptor and size.

    The file is checked with :func:`os.stat` before it is opened, and again on the descriptor
    (opened non-blocking, so a file swapped for a pipe in between cannot block the open).
    """
    try:
        _check_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UmxError(f"{display_path(path)} does not exist") from None
    except OSError as error:
        raise UmxError(f"{display_path(path)} cannot be read ({error.strerror})") from None
    try:
        status = os.fstat(fd)
        _check_regular(path, status.st_mode)
        yield fd, status.st_size
    finally:
        os.close(fd)


def _pread(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset``; fewer, or none, at the end of the file."""
    return os.pread(fd, size, offset) if offset >= 0 else b""


# --- Headers --------------------------------------------------------------------------------------

_MAX_CHUNKS = 1024
"""Chunks parsed before a WAV or AIFF file's data chunk, at most; beyond, libsndfile decides."""

_UNDECLARED_SIZES = frozenset({0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})
"""Data sizes that streaming writers leave when they cannot seek back: no length declared."""

_OTHER_LIBSNDFILE_MAGIC = frozenset({b"riff", b"caff", b".snd", b"dns."})
"""Wave64, CAF and AU files, which libsndfile reads whatever their name."""

_AIFC_SAMPLE_BYTES = {
    b"NONE": None,  # None: from COMM's sample size
    b"twos": None,
    b"sowt": None,
    b"raw ": None,
    b"in24": 3,
    b"in32": 4,
    b"fl32": 4,
    b"FL32": 4,
    b"fl64": 8,
    b"FL64": 8,
    b"ulaw": 1,
    b"ULAW": 1,
    b"alaw": 1,
    b"ALAW": 1,
}
"""Bytes per sample of AIFF-C's uncompressed encodings; other encodings are compressed."""

_MP3_FRAME = 1152
"""Samples in an MPEG-1 layer III frame: the slack allowed on an mp3's declared length."""


_MPEG_BITRATES = {  # kbit/s by (MPEG-1, layer bits) for bitrate indices 1 to 14
    (True, 3): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 1): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 3): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 1): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def _is_mpeg_header(head: bytes) -> bool:
    """Whether ``head`` starts with a valid MPEG audio frame header."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 15 and rate != 3


def _mpeg_frame(head: bytes) -> tuple[int, int, int] | None:
    """An MPEG audio frame header's sample rate, samples per frame and length in bytes.

    Returns:
        ``None`` when ``head`` is no valid header, or a free-format one (of unknown length).
    """
    if not _is_mpeg_header(head) or not head[2] >> 4:
        return None
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3  # version 3: MPEG-1; layer 1: III
    mpeg1, padding = version == 3, (head[2] >> 1) & 1
    rate = (44100, 48000, 32000)[(head[2] >> 2) & 3] >> {3: 0, 2: 1, 0: 2}[version]
    bitrate = 1000 * _MPEG_BITRATES[mpeg1, layer][(head[2] >> 4) - 1]
    if layer == 3:
        return rate, 384, (12 * bitrate // rate + padding) * 4
    samples = 1152 if layer == 2 or mpeg1 else 576
    return rate, samples, samples // 8 * bitrate // rate + padding


def _is_mpeg_stream(fd: int, offset: int) -> bool:
    """Whether three MPEG frames follow each other from ``offset``, as in an mp3 file.

    One header alone is no proof: random bytes start with one about once in 3000 files.
    """
    for index in range(3):
        head = _pread(fd, 4, offset)
        if index and not head:  # the file ends after whole frames
            return True
        frame = _mpeg_frame(head)
        if frame is None:
            return False
        offset += frame[2]
    return True


def _sniff(fd: int) -> tuple[str | None, int]:
    """The container a file's first bytes announce, and where its audio header starts.

    Returns:
        ``("wav" | "aiff" | "flac" | "ogg" | "mp3" | "other" | None, offset)``: ``"other"`` is a
        container libsndfile reads (Wave64, CAF, AU), ``None`` one it does not; ``offset`` is
        past an ID3v2 tag.
    """
    head = _pread(fd, 12, 0)
    offset = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7
        offset = 10 + (size | head[9] & 0x7F) + (10 if head[5] & 0x10 else 0)
        head = _pread(fd, 12, offset)
        return ("flac" if head[:4] == b"fLaC" else "mp3"), offset
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav", 0
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff", 0
    kinds = {b"fLaC": "flac", b"OggS": "ogg"}
    if head[:4] in kinds:
        return kinds[head[:4]], 0
    if _is_mpeg_stream(fd, 0):
        return "mp3", 0
    return ("other" if head[:4] in _OTHER_LIBSNDFILE_MAGIC else None), 0


def _chunks(fd: int, start: int, order: str) -> Iterator[tuple[bytes, int, int]]:
    """``(id, size, offset of the body)`` of the RIFF/IFF chunks from ``start``, in file order."""
    offset = start
    for _ in range(_MAX_CHUNKS):
        header = _pread(fd, 8, offset)
        if len(header) < 8:
            return
        size = struct.unpack(order + "I", header[4:])[0]
        yield header[:4], size, offset + 8
        offset += 8 + size + (size & 1)


def _wav_extent(fd: int, file_size: int) -> tuple[int, int, float] | None:
    """A WAV, RF64 or BW64 file's data chunk: declared bytes, bytes held and bytes per second.

    Returns:
        ``None`` when the header declares no data size or is not understood.
    """
    head = _pread(fd, 4, 0)
    order = ">" if head == b"RIFX" else "<"
    wide_size, byte_rate = None, 0
    for chunk, size, body in _chunks(fd, 12, order):
        if chunk == b"ds64" and head in (b"RF64", b"BW64"):
            fields = _pread(fd, 16, body)
            if len(fields) == 16:
                wide_size = struct.unpack("<QQ", fields)[1]
        elif chunk == b"fmt ":
            fields = _pread(fd, 14, body)
            if len(fields) < 14:
                return None
            _, _, rate, byte_rate, block_align = struct.unpack(order + "HHIIH", fields)
            byte_rate = byte_rate or rate * block_align
        elif chunk == b"data":
            if size == 0xFFFFFFFF and wide_size is not None:
                size = wide_size
            if size in _UNDECLARED_SIZES or not byte_rate:
                return None
            return size, max(0, file_size - body), float(byte_rate)
    return None


def _extended(data: bytes) -> float:
    """An IEEE 754 80-bit extended float (AIFF's sample rate); 0.0 when invalid or negative."""
    exponent, mantissa = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:10], "big")
    if exponent & 0x8000 or exponent == 0x7FFF:
        return 0.0
    try:
        return math.ldexp(mantissa, exponent - 16383 - 63)
    except OverflowError:
        return 0.0


def _aiff_extent(fd: int, file_size: int) -> tuple[int, int, float] | None:
    """An AIFF or AIFF-C file's sound data: declared bytes, bytes held and bytes per second.

    The declared length is COMM's frame count, or for compressed AIFF-C the SSND chunk's size.

    Returns:
        ``None`` when the header is not understood.
    """
    compressed = _pread(fd, 4, 8) == b"AIFC"
    comm = ssnd = None
    for chunk, size, body in _chunks(fd, 12, ">"):
        if chunk == b"COMM":
            comm = _pread(fd, 22, body)
        elif chunk == b"SSND":
            ssnd = (size, body)
        if comm is not None and ssnd is not None:
            break
    if comm is None or ssnd is None or len(comm) < 18 + 4 * compressed:
        return None
    channels, frames, bits = struct.unpack(">HIH", comm[:8])
    rate = _extended(comm[8:18])
    sample_bytes = _AIFC_SAMPLE_BYTES.get(comm[18:22], 0) if compressed else None
    ssnd_size, body = ssnd
    offset = struct.unpack(">I", _pread(fd, 4, body).rjust(4, b"\0"))[0]
    held = max(0, file_size - (body + 8 + offset))
    if rate <= 0 or not channels:
        return None
    if sample_bytes != 0:  # uncompressed: COMM's frame count declares the length
        frame_bytes = channels * (sample_bytes or (bits + 7) // 8)
        return (frames * frame_bytes, held, rate * frame_bytes) if frame_bytes else None
    declared = max(0, ssnd_size - 8 - offset)
    if not frames or not declared:
        return None
    return declared, held, declared * rate / frames


def _check_declared_size(path: Path, fd: int, file_size: int, kind: str | None) -> bool:
    """Refuses a WAV or AIFF file holding fewer bytes than its header declares.

    Returns:
        Whether the declared length was checked (the file holds it).

    Raises:
        UmxError: the file is truncated.
    """
    extents = {"wav": _wav_extent, "aiff": _aiff_extent}
    extent = extents[kind](fd, file_size) if kind in extents else None
    if extent is None:
        return False
    declared, held, byte_rate = extent
    if held < declared:
        raise _truncated(path, declared / byte_rate, held / byte_rate)
    return True


@dataclass(frozen=True)
class _XingTag:
    """The Xing or Info tag in an mp3's first frame: its frame count and stream bytes."""

    nb_frames: int
    nb_bytes: int | None
    seconds: float


def _xing_tag(fd: int, offset: int) -> _XingTag | None:
    """The Xing or Info tag of the MPEG frame at ``offset``, if it has one with a frame count.

    libsndfile's length of an mp3 is this count (less the encoder's delay and padding); without
    one it is an estimate from the file's size.
    """
    head = _pread(fd, 4, offset)
    frame = _mpeg_frame(head)
    if frame is None:
        return None
    rate, samples, _ = frame
    mpeg1, mono = (head[1] >> 3) & 3 == 3, head[3] >> 6 == 3
    side_info = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    position = offset + 4 + side_info
    tag = _pread(fd, 16, position)
    if len(tag) < 12 or tag[:4] not in (b"Xing", b"Info") or not tag[7] & 1:
        return None
    flags, nb_frames = tag[7], int.from_bytes(tag[8:12], "big")
    nb_bytes = int.from_bytes(tag[12:16], "big") if flags & 2 and len(tag) == 16 else None
    # the LAME tag, after the Xing fields present, holds the encoder's delay and padding
    fields = 4 * sum(bool(flags & bit) for bit in (1, 2, 8)) + 100 * bool(flags & 4)
    lame, length = _pread(fd, 24, position + 8 + fields), nb_frames * samples
    if len(lame) == 24 and lame[:4].isalpha():
        trimmed = (lame[21] << 4 | lame[22] >> 4) + ((lame[22] & 0xF) << 8 | lame[23])
        length -= trimmed if trimmed < length else 0
    return _XingTag(nb_frames, nb_bytes, length / rate)


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


def _read_block(file: soundfile.SoundFile, strict: bool = True) -> np.ndarray:
    """The next frames, at most :data:`_BLOCK_FRAMES`, shape ``(nb_block, nb_channels)``.

    This calls libsndfile's ``sf_readf_float`` itself: soundfile seeks to where it thinks the
    file is after every read, and that seek fails in FLAC files declaring no length and makes
    libsndfile's MPEG decoder return silence in some files (those its own encoder writes).
    A decoding error raises, unless ``strict`` is false and some frames decoded before it.
    """
    out = np.empty((_BLOCK_FRAMES, file.channels), np.float32)
    pointer = soundfile._ffi.cast("float *", out.__array_interface__["data"][0])
    count = soundfile._snd.sf_readf_float(file._file, pointer, _BLOCK_FRAMES)
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
        with _user_error(f"{display_path(self.path)} is not decodable audio"):
            if self.length is None:
                return self._read_blocks(first, count)
            first = min(first, self.length)
            count = self.length - first if count is None else min(count, self.length - first)
            _check_memory(self.path, count, self.nb_channels, self.rate)
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


def _ffmpeg_failure(stderr: bytes, returncode: int, source: str | None = None) -> str:
    """The last line ffmpeg printed, less the ``source`` it names, or its exit status."""
    lines = stderr.strip().splitlines()
    if not lines:
        return f"exit status {returncode}"
    line, prefix = lines[-1], os.fsencode(source or "") + b": "
    if source is not None and line.startswith(prefix):
        line = line[len(prefix) :]
    return _UNPRINTABLE.sub(_escape, line.decode(errors="replace"))


def _ffmpeg_probe(path: Path, ffprobe: str, failure: str | None = None) -> tuple[int, int]:
    """The channels and sample rate of a file's first audio stream.

    Args:
        failure: the reason given if ffprobe fails; ``None`` gives ffprobe's.
    """
    source = f"file:{path}"
    command = [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries"]
    command += ["stream=channels,sample_rate", "-of", "json", "-i", source]
    result = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        failure = failure or f"ffmpeg: {_ffmpeg_failure(result.stderr, result.returncode, source)}"
        raise _undecodable(path, failure)
    try:
        stream = json.loads(result.stdout)["streams"][0]
        nb_channels, rate = int(stream["channels"]), int(stream["sample_rate"])
    except (ValueError, KeyError, IndexError, TypeError):
        nb_channels = rate = 0
    if nb_channels <= 0 or rate <= 0:
        raise UmxError(f"{display_path(path)} has no audio stream")
    return nb_channels, rate


def _ffmpeg_decode(
    path: Path, ffmpeg: str, nb_channels: int, rate: int, first: int, count: int | None
) -> np.ndarray:
    """Frames ``[first, first + count)`` of the first audio stream; as `_Libsndfile.read`.

    ffmpeg decodes from the start and the excerpt is cut from its samples, as libsndfile's are:
    seeking in ffmpeg (``-ss``) is sample-exact for neither AAC nor mp3. Only the excerpt is
    kept, and ffmpeg is stopped once it is complete.
    """
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

    libsndfile reads the files whose name and first bytes say wav, aiff, flac, ogg or mp3.
    ffmpeg, when installed, reads the others and the mp3 files libsndfile cannot open.

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
    if path.suffix.lower().lstrip(".") not in _LIBSNDFILE_EXTENSIONS:
        if tools is None:
            raise needs_ffmpeg
        return None, None
    kind, offset = _sniff(fd)
    if kind is None or (kind == "mp3" and not _LIBSNDFILE_HAS_MP3):
        if tools is not None:
            return None, _UNKNOWN_FORMAT if kind is None else None
        if kind == "mp3":
            raise needs_ffmpeg
        raise _undecodable(path, "no WAV, AIFF, FLAC, Ogg or MP3 header")
    try:
        return _Libsndfile(path, fd, file_size, kind, offset), None
    except _Undecodable as error:
        if tools is None or kind != "mp3":
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
                return decoder.read(*excerpt(decoder.rate)), decoder.rate
        ffmpeg, ffprobe = _ffmpeg_tools() or ("ffmpeg", "ffprobe")
        nb_channels, rate = _ffmpeg_probe(path, ffprobe, failure)
        return _ffmpeg_decode(path, ffmpeg, nb_channels, rate, *excerpt(rate)), rate


@dataclass(frozen=True)
class AudioFileInfo:
    """What a file says of its audio, read without decoding it all.

    Attributes:
        sample_rate: in Hz.
        nb_channels: the channel count (of the first audio stream, for ffmpeg's formats).
        nb_frames: the length in frames; ``None`` where it is not known without decoding the
            whole file (mp3 without Xing/Info tag, FLAC declaring no length, ffmpeg's formats).
    """

    sample_rate: float
    nb_channels: int
    nb_frames: int | None


def audio_info(path: str | os.PathLike) -> AudioFileInfo:
    """Reads a file's sample rate, channels and length, with the checks of :func:`read_audio`.

    The file must be a regular file, decodable, and hold the length its header declares (see
    the module's truncation policy; an mp3's Xing length is only checked by decoding it).

    Args:
        path: the file, in any format :func:`read_audio` reads.

    Returns:
        Its description.

    Raises:
        UmxError: the file is missing, not a regular file, not audio or truncated.
    """
    path = Path(path)
    with _open_regular(path) as (fd, file_size):
        decoder, failure = _decoder(path, fd, file_size)
        if decoder is not None:
            with decoder:
                return AudioFileInfo(float(decoder.rate), decoder.nb_channels, decoder.nb_frames)
        _, ffprobe = _ffmpeg_tools() or ("ffmpeg", "ffprobe")
        nb_channels, rate = _ffmpeg_probe(path, ffprobe, failure)
        return AudioFileInfo(float(rate), nb_channels, None)


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
        UmxError: the file is missing, not a regular file, not audio or truncated.
    """
    if start < 0 or (nb_frames is not None and nb_frames < 0):
        raise ValueError(f"start and nb_frames must not be negative, not {start}, {nb_frames}")
    audio, rate = _read(Path(path), lambda _: (start, nb_frames))
    return torch.from_numpy(np.ascontiguousarray(audio.T)), float(rate)


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
        sample_rate: resample to this rate (soxr); ``None`` keeps the file's rate.
        nb_channels: the channel count wanted, 1 or 2. Mono input is duplicated to stereo and
            stereo is averaged to mono; ``None`` keeps the file's channels.
        downmix: average files with more than two channels to mono instead of refusing them.

    Returns:
        The audio, shape ``(nb_channels, nb_timesteps)``, and its sample rate.

    Raises:
        UmxError: the file is missing, not a regular file, not audio, truncated, empty (or the
            excerpt is), too long for memory, holds NaN or infinite samples, has more than two
            channels without ``downmix``, or the excerpt is invalid.
    """
    path = Path(path)
    if nb_channels not in (None, 1, 2):
        raise ValueError(f"nb_channels must be 1, 2 or None, not {nb_channels}")
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
        length = "" if duration is None else f" for {duration} s"
        raise UmxError(f"{display_path(path)} has no audio from {start} s{length}")
    if not np.isfinite(audio).all():
        raise UmxError(f"{display_path(path)} contains NaN or infinite samples")
    waveform = _channel_policy(torch.from_numpy(audio.T), nb_channels, downmix, path)
    if sample_rate is None:
        return waveform, float(rate)
    return resample(waveform, rate, sample_rate), float(sample_rate)


def resample(audio: torch.Tensor, orig_rate: float, new_rate: float) -> torch.Tensor:
    """Resamples with soxr at very high quality.

    Args:
        audio: shape ``(..., nb_timesteps)``, float32 or float64.
        orig_rate: its sample rate.
        new_rate: the rate wanted.

    Returns:
        Shape ``(..., floor(nb_timesteps * new_rate / orig_rate + ½))``, same dtype and device;
        ``audio`` itself when the rates are equal.
    """
    if orig_rate == new_rate:
        return audio
    frames = np.ascontiguousarray(audio.detach().cpu().reshape(-1, audio.shape[-1]).numpy().T)
    resampled = soxr.resample(frames, orig_rate, new_rate, quality=RESAMPLE_QUALITY)
    resampled = torch.from_numpy(np.ascontiguousarray(resampled.T)).to(audio.device)
    return resampled.reshape(*audio.shape[:-1], -1)


def _resampled_length(nb_timesteps: int, orig_rate: float, new_rate: float) -> int:
    """The length soxr gives a whole signal: ``floor(nb_timesteps * new_rate / orig_rate + ½)``."""
    return int(nb_timesteps * new_rate / orig_rate + 0.5)


class StreamResampler:
    """Resamples a signal block by block, as :func:`resample` does the whole signal.

    Wraps ``soxr.ResampleStream`` with the quality of :func:`resample`. The concatenation of
    what :meth:`process` returns for each block and of what :meth:`flush` returns at the end
    equals :func:`resample` of the whole signal, in values and in length. The filter delays the
    output: a block's output covers less time than the block until :meth:`flush`.

    Args:
        orig_rate: the blocks' sample rate.
        new_rate: the rate wanted.
        nb_channels: the channel count of every block.
    """

    def __init__(self, orig_rate: float, new_rate: float, nb_channels: int) -> None:
        if orig_rate <= 0 or new_rate <= 0:
            raise ValueError(f"sample rates must be positive, not {orig_rate} and {new_rate}")
        self.orig_rate, self.new_rate, self.nb_channels = orig_rate, new_rate, nb_channels
        self._stream: soxr.ResampleStream | None = None
        self._dtype, self._device = torch.float32, torch.device("cpu")
        self._nb_in = self._nb_out = 0

    def process(self, block: torch.Tensor) -> torch.Tensor:
        """Resamples the next block.

        Args:
            block: shape ``(nb_channels, nb_block)``, float32 or float64, on any device.

        Returns:
            Shape ``(nb_channels, nb_out)``, same dtype and device; ``nb_out`` may be 0.
        """
        if block.ndim != 2 or block.shape[0] != self.nb_channels:
            raise ValueError(
                f"expected a block of shape ({self.nb_channels}, nb_block), "
                f"got {tuple(block.shape)}"
            )
        self._dtype, self._device = block.dtype, block.device
        self._nb_in += block.shape[1]
        if self.orig_rate == self.new_rate:
            self._nb_out += block.shape[1]
            return block
        if self._stream is None:
            dtype = "float64" if block.dtype == torch.float64 else "float32"
            self._stream = soxr.ResampleStream(
                self.orig_rate, self.new_rate, self.nb_channels, dtype, RESAMPLE_QUALITY
            )
        frames = block.detach().cpu().numpy().T
        return self._output(self._stream.resample_chunk(np.ascontiguousarray(frames)))

    def flush(self) -> torch.Tensor:
        """The rest of the output, once every block was processed.

        Returns:
            Shape ``(nb_channels, nb_out)``: the total output length is then that of
            :func:`resample` on the whole signal.
        """
        expected = _resampled_length(self._nb_in, self.orig_rate, self.new_rate)
        dtype = np.float64 if self._dtype == torch.float64 else np.float32
        rest = np.zeros((0, self.nb_channels), dtype)
        if self._stream is not None:
            rest = self._stream.resample_chunk(rest, last=True)
        # soxr gives the whole signal's length; the pad or cut only guards against a drift
        missing = expected - self._nb_out - len(rest)
        if missing > 0:
            rest = np.concatenate([rest, np.zeros((missing, self.nb_channels), rest.dtype)])
        elif missing < 0:
            rest = rest[: max(0, len(rest) + missing)]
        return self._output(rest)

    def _output(self, frames: np.ndarray) -> torch.Tensor:
        self._nb_out += len(frames)
        audio = torch.from_numpy(np.ascontiguousarray(frames.T))
        return audio.to(device=self._device, dtype=self._dtype)


def _can_write_mp3() -> bool:
    return _LIBSNDFILE_HAS_MP3 or shutil.which("ffmpeg") is not None


def audio_formats() -> list[str]:
    """The extensions :func:`write_audio` can write here: wav, flac and, when possible, mp3."""
    return [extension for extension in SUBTYPES if extension != "mp3" or _can_write_mp3()]


@dataclass(frozen=True)
class WriteReport:
    """What writing did to fit the signal into the file's range.

    Attributes:
        path: the file written.
        peak: the largest absolute sample before the clip policy.
        action: ``"none"``, ``"rescaled"`` or ``"clamped"``.
        gain: the factor the whole signal was multiplied by (1.0 unless rescaled).
    """

    path: Path
    peak: float
    action: str
    gain: float


NAME_MAX = 255
"""The longest file name in bytes, where the file system does not say (Linux's limit)."""


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


def _hidden_names(path: Path, name_max: int) -> tuple[Path, Path]:
    """Two temporary names beside ``path``, for the file being written and the staged signal.

    They are ``.{stem}.{token}.tmp{suffix}`` and ``.{stem}.{token}.stage.wav``, the stem cut so
    both fit in ``name_max`` bytes: any valid target name gives valid temporary names.
    """
    token, tails = secrets.token_hex(4), (f".tmp{path.suffix}", ".stage.wav")
    room = name_max - len(f"..{token}") - max(len(os.fsencode(tail)) for tail in tails)
    stem = path.stem
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    hidden = f".{stem}.{token}"
    return path.with_name(hidden + tails[0]), path.with_name(hidden + tails[1])


def _remove(paths: tuple[Path, ...]) -> None:
    """Removes each file that exists, the others too when an exception interrupts one."""
    if paths:
        try:
            with contextlib.suppress(OSError):
                paths[0].unlink()
        finally:
            _remove(paths[1:])


class _FfmpegMp3Sink:
    """Encodes float32 frames to mp3 through ffmpeg, for libsndfile builds without MPEG."""

    def __init__(self, target: Path, sample_rate: int, nb_channels: int, path: Path) -> None:
        self._path = path
        command = [shutil.which("ffmpeg") or "ffmpeg", "-v", "error", "-y", "-f", "f32le"]
        command += ["-ar", str(sample_rate), "-ac", str(nb_channels), "-i", "pipe:0"]
        command += ["-codec:a", "libmp3lame", "-q:a", FFMPEG_MP3_QUALITY, "-f", "mp3"]
        command += [f"file:{target}"]
        # stderr goes to a file, as a full pipe would block ffmpeg; close() or abort() closes it
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=self._errors)
        except BaseException:
            self._errors.close()
            raise

    def write(self, frames: np.ndarray) -> None:
        try:
            self._process.stdin.write(frames.astype("<f4").tobytes())
        except BrokenPipeError:
            self.close()
            raise

    def close(self) -> None:
        """Lets ffmpeg finish the file."""
        with self._errors:
            self._process.communicate()
            if self._process.returncode != 0:
                self._errors.seek(0)
                failure = _ffmpeg_failure(self._errors.read(), self._process.returncode)
                raise UmxError(f"ffmpeg could not write {display_path(self._path)} ({failure})")

    def abort(self) -> None:
        """Stops ffmpeg at once, without letting it finish the file."""
        try:
            self._process.kill()
            with contextlib.suppress(OSError):
                self._process.stdin.close()
            self._process.wait()
        finally:
            self._errors.close()


class AudioWriter:
    """Writes a long signal block by block, into a temporary file renamed into place at the end.

    Used as a context manager: on a clean exit the file appears whole, and :attr:`report` says
    what the clip policy did; on an exception (a signal's included) every temporary file is
    removed and nothing is written. The checks a user can fail (existing file, unwritable
    directory, bad options, a name too long) run at construction, before any long computation.

    The temporary files are hidden beside the target (so the final rename stays on one file
    system), with names bounded to the file system's name length.

    Clip policies, for samples beyond [-1, 1]: ``"rescale"`` multiplies the whole signal so its
    peak is :data:`RESCALE_PEAK` (this needs the global peak, so blocks are staged as float32 in
    a temporary file first); ``"clamp"`` clips to [-1, 1]; ``"none"`` writes the samples as they
    are and is only valid for the ``FLOAT`` subtype.

    Args:
        path: the file to write; its extension (``.wav``, ``.flac``, ``.mp3``) sets the format.
        sample_rate: in Hz.
        nb_channels: the channel count of every block.
        subtype: libsndfile subtype (see :data:`SUBTYPES`); ``None`` uses
            :data:`DEFAULT_SUBTYPE`.
        clip: one of :data:`CLIP_POLICIES`.
        force: overwrite an existing file.

    Raises:
        UmxError: the file exists without ``force``, its directory is missing or unwritable, its
            name is too long, or the format, subtype or clip policy is not supported.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: float,
        nb_channels: int,
        *,
        subtype: str | None = None,
        clip: str = "rescale",
        force: bool = False,
    ) -> None:
        self.path = Path(path)
        self.sample_rate = round(sample_rate)
        self.nb_channels = nb_channels
        self.extension = self.path.suffix.lower().lstrip(".")
        self.subtype = subtype or DEFAULT_SUBTYPE.get(self.extension)
        self.clip = clip
        self.force = force
        self.report: WriteReport | None = None
        name_max = self._check()
        self._peak = 0.0
        self._target, self._staged = _hidden_names(self.path, name_max)
        self._sink: soundfile.SoundFile | _FfmpegMp3Sink | None = None
        self._staging: soundfile.SoundFile | None = None

    def _check(self) -> int:
        """Runs the checks a user can fail; returns the directory's longest name in bytes."""
        path, directory, shown = self.path, self.path.parent, display_path(self.path)
        if self.extension not in SUBTYPES:
            raise UmxError(f"cannot write {shown}: use one of the extensions {', '.join(SUBTYPES)}")
        if self.extension == "mp3" and not _can_write_mp3():
            raise UmxError(f"cannot write {shown}: libsndfile lacks mp3 and {_FFMPEG_MISSING}")
        if self.subtype not in SUBTYPES[self.extension]:
            allowed = ", ".join(SUBTYPES[self.extension])
            raise UmxError(f"cannot write {shown} as {self.subtype}: use one of {allowed}")
        if self.clip not in CLIP_POLICIES or (self.clip == "none" and self.subtype != "FLOAT"):
            raise UmxError(
                f"cannot write {shown} with clip={self.clip!r}: use rescale or clamp "
                "(none only with the FLOAT subtype)"
            )
        name_max, length = _name_max(directory), len(os.fsencode(path.name))
        if length > name_max:
            raise UmxError(
                f"cannot write {shown}: its name is {length} bytes long, more than the "
                f"{name_max} the file system allows"
            )
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as error:
            raise UmxError(f"cannot write {shown} ({error.strerror})") from None
        if mode is not None and stat.S_ISDIR(mode):
            raise UmxError(f"cannot write {shown}: it is a directory")
        if mode is not None and not self.force:
            raise UmxError(f"{shown} already exists (use --force to overwrite)")
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise UmxError(
                f"cannot write {shown}: directory {display_path(directory)} is missing or "
                "unwritable"
            )
        return name_max

    def __enter__(self) -> AudioWriter:
        try:
            with _user_error(f"cannot write {display_path(self.path)}"):
                self._open()
        except BaseException:
            self._discard()
            raise
        return self

    def _open(self) -> None:
        if self.extension == "mp3" and not _LIBSNDFILE_HAS_MP3:
            self._sink = _FfmpegMp3Sink(self._target, self.sample_rate, self.nb_channels, self.path)
        else:
            self._sink = soundfile.SoundFile(
                os.fsencode(self._target),
                "w",
                samplerate=self.sample_rate,
                channels=self.nb_channels,
                subtype=self.subtype,
                format=self.extension.upper(),
            )
        if self.clip == "rescale":
            self._staging = soundfile.SoundFile(
                os.fsencode(self._staged),
                "w",
                samplerate=self.sample_rate,
                channels=self.nb_channels,
                subtype="FLOAT",
                format="RF64",
            )

    def write(self, block: torch.Tensor | np.ndarray) -> None:
        """Appends a block.

        Args:
            block: shape ``(nb_channels, nb_block)``, any float dtype.

        Raises:
            UmxError: the block holds NaN or infinite samples, or the disk write fails.
        """
        if isinstance(block, torch.Tensor):
            block = block.detach().cpu().numpy()
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[0] != self.nb_channels:
            raise ValueError(
                f"expected a block of shape ({self.nb_channels}, nb_block), got {block.shape}"
            )
        frames = block.T
        if not np.isfinite(frames).all():
            raise UmxError(
                f"cannot write {display_path(self.path)}: the audio holds NaN or infinite samples"
            )
        self._peak = max(self._peak, float(np.abs(frames).max(initial=0.0)))
        with _user_error(f"cannot write {display_path(self.path)}"):
            if self._staging is not None:
                self._staging.write(frames)
            elif self.clip == "clamp":
                self._sink.write(np.clip(frames, -1.0, 1.0))
            else:
                self._sink.write(frames)

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                with _user_error(f"cannot write {display_path(self.path)}"):
                    self._finish()
        finally:
            if self.report is None:  # failed, here or in the with block
                self._discard()

    def _finish(self) -> None:
        """Applies the rescaling if staged, closes the file and renames it into place."""
        overflow = self._peak > 1.0
        gain = RESCALE_PEAK / self._peak if overflow and self.clip == "rescale" else 1.0
        if self._staging is not None:
            self._staging.close()
            self._staging = None
            block_size = max(1, round(BLOCK_SECONDS * self.sample_rate))
            with soundfile.SoundFile(os.fsencode(self._staged)) as staged:
                for frames in staged.blocks(block_size, dtype="float32"):
                    self._sink.write(frames * np.float32(gain))
            self._staged.unlink()
        self._sink.close()
        self._sink = None
        os.replace(self._target, self.path)
        action = _CLIP_ACTIONS[self.clip] if overflow else "none"
        self.report = WriteReport(self.path, self._peak, action, gain)

    def _discard(self) -> None:
        """Stops writing and removes every temporary file.

        Safe to call again, and written so that an exception raised inside it (by a signal
        handler, say) still leaves no file: ffmpeg is stopped before its file is removed (it
        might create it later), and the files are removed before anything slower happens.
        """
        sink, staging = self._sink, self._staging
        self._sink = self._staging = None
        try:
            if isinstance(sink, _FfmpegMp3Sink):
                sink.abort()
        finally:
            try:
                _remove((self._target, self._staged))
            finally:
                for handle in (staging, sink):
                    if isinstance(handle, soundfile.SoundFile):
                        with contextlib.suppress(Exception):
                            handle.close()


def write_audio(
    path: str | os.PathLike,
    audio: torch.Tensor | np.ndarray,
    sample_rate: float,
    *,
    subtype: str | None = None,
    clip: str = "rescale",
    force: bool = False,
) -> WriteReport:
    """Writes a whole signal at once; see :class:`AudioWriter` for formats and clip policies.

    Args:
        path: the file to write; its extension sets the format.
        audio: shape ``(nb_channels, nb_timesteps)``.
        sample_rate: in Hz.
        subtype: libsndfile subtype; ``None`` uses :data:`DEFAULT_SUBTYPE`.
        clip: one of :data:`CLIP_POLICIES`.
        force: overwrite an existing file.

    Returns:
        What the clip policy did.

    Raises:
        UmxError: as :class:`AudioWriter`, or the audio holds NaN or infinite samples.
    """
    with AudioWriter(
        path, sample_rate, audio.shape[0], subtype=subtype, clip=clip, force=force
    ) as writer:
        writer.write(audio)
    return writer.report
