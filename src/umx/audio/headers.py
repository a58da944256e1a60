"""The lengths audio files declare, read from their headers without decoding them.

Truncation policy: a file must hold all the audio its header declares, or it is refused with
the declared and held durations, whether the whole file or an excerpt is read. Declared
lengths are the data chunk's size in WAV, RF64 and BW64 (ds64); COMM's frame count in AIFF
(SSND's size in compressed AIFF-C); STREAMINFO's total samples in FLAC (checked by decoding
the last frame, so at once); and the Xing/Info tag's frame count in mp3 files that have one
(checked against its byte count at once, then exactly by decoding to the end, within one
MPEG frame). Where nothing is declared, what decodes is the audio: ogg, mp3 without tag, WAV
written to a pipe (size 0xFFFFFFFF), FLAC with 0 total samples, and formats read by ffmpeg.

Audio beyond what libsndfile decodes is not dropped: a chained Ogg file (logical streams one
after another, as ``cat a.ogg b.ogg`` makes) and mp3 files joined after one whose Xing tag
declares its length (``cat a.mp3 b.mp3``) end, for libsndfile, with their first stream or
file. :func:`_audio_beyond_declared` finds them from their pages and frame headers, so that
ffmpeg decodes them whole.

Here are the checks the headers alone allow (WAV and AIFF sizes against the file's size) and
the parsing of the mp3 Xing tag; the checks that decode (FLAC, mp3) are in
:mod:`umx.audio.reading`. Here too is the sniffing of a file's first bytes for its container,
so that libsndfile is only handed files it reads.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from umx.audio.messages import _truncated


def _pread(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset``; fewer, or none, at the end of the file."""
    return os.pread(fd, size, offset) if offset >= 0 else b""


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
    return _frames_follow(lambda at, size: _pread(fd, size, offset + at), _mpeg_length)


def _mpeg_length(head: bytes) -> int | None:
    """The length in bytes of the MPEG audio frame ``head`` starts; None if it starts none."""
    frame = _mpeg_frame(head)
    return None if frame is None else frame[2]


def _adts_length(head: bytes) -> int | None:
    """The length in bytes of the ADTS frame (raw AAC, `.aac`) that ``head`` starts (its
    first 7 bytes or more); None if it starts none."""
    if len(head) < 7 or head[0] != 0xFF or head[1] & 0xF6 != 0xF0 or (head[2] >> 2) & 15 > 12:
        return None
    length = (head[3] & 3) << 11 | head[4] << 3 | head[5] >> 5
    return length if length >= 7 else None


def _frames_follow(
    read: Callable[[int, int], bytes], length_of: Callable[[bytes], int | None]
) -> bool:
    """Whether three frames follow each other from the start of what ``read(offset, size)``
    reads, each's length given by ``length_of`` its first bytes (None: no frame)."""
    offset = 0
    for index in range(3):
        head = read(offset, 7)
        if index and not head:  # the data ends after whole frames
            return True
        length = length_of(head)
        if length is None:
            return False
        offset += length
    return True


def _id3v2_size(head: bytes) -> int:
    """The bytes of the ID3v2 tag ``head`` starts (its first 10 bytes or more); 0 for none."""
    if head[:3] != b"ID3" or len(head) < 10:
        return 0
    size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7
    return 10 + (size | head[9] & 0x7F) + (10 if head[5] & 0x10 else 0)


def _sniff(fd: int) -> tuple[str | None, int]:
    """The container a file's first bytes announce, and where its audio header starts.

    Returns:
        ``("wav" | "aiff" | "flac" | "ogg" | "mp3" | "other" | None, offset)``: ``"other"`` is a
        container libsndfile reads (Wave64, CAF, AU), ``None`` one it does not; ``offset`` is
        past an ID3v2 tag.
    """
    head = _pread(fd, 12, 0)
    offset = _id3v2_size(head)
    if offset:
        head = _pread(fd, 12, offset)
        return ("flac" if head[:4] == b"fLaC" else "mp3"), offset
    kind = magic_container(head)
    if kind is None and _is_mpeg_stream(fd, 0):
        return "mp3", 0
    return kind, 0


def magic_container(head: bytes) -> str | None:
    """The container that the first 12 bytes of a file name by their magic number: `"wav"`,
    `"aiff"`, `"flac"`, `"ogg"`, `"mp3"` (an ID3 tag; a bare MPEG stream has no magic number),
    `"other"` (Wave64, CAF, AU), or None."""
    if head[:3] == b"ID3":
        return "mp3"
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    kinds = {b"fLaC": "flac", b"OggS": "ogg"}
    return kinds.get(head[:4], "other" if head[:4] in _OTHER_LIBSNDFILE_MAGIC else None)


def piped_container(data: bytes) -> str | None:
    """The kind of audio file that the first bytes of a stream, ``data`` (a few kilobytes),
    begin: those of `magic_container`, and the compressed ones that only ffmpeg reads: `"mp4"`
    (an `ftyp` box: m4a, mp4, mov), `"matroska"` (webm, mkv), `"mp3"` (three MPEG audio frames
    in a row) and `"aac"` (three ADTS frames); None for raw samples."""
    kind = magic_container(data[:12])
    if kind is None and data[4:8] == b"ftyp":
        kind = "mp4"
    elif kind is None and data[:4] == b"\x1aE\xdf\xa3":
        kind = "matroska"
    for name, length_of in (("mp3", _mpeg_length), ("aac", _adts_length)):
        if kind is None and _frames_follow(lambda at, size: data[at : at + size], length_of):
            kind = name
    return kind


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


_SCAN_BYTES = 1 << 20
"""Bytes read at a time when Ogg pages are walked."""


def _ogg_is_chained(fd: int, file_size: int) -> bool:
    """Whether an Ogg file chains logical streams: a page starting a stream (BOS) comes after
    pages of data, where grouped streams would all have started.

    Walks the page headers (27 bytes and a segment table each) from the start, a megabyte of
    the file read at a time; stops, answering no, at anything that is not an Ogg page.
    """
    window, window_start, offset, data_seen = b"", 0, 0, False
    while offset + 27 <= file_size:
        if offset + 27 + 255 > window_start + len(window):
            window, window_start = _pread(fd, _SCAN_BYTES, offset), offset
        page = window[offset - window_start :]
        if page[:4] != b"OggS" or len(page) < 27 or len(page) < 27 + page[26]:
            return False
        if page[5] & 2 and data_seen:
            return True
        data_seen = data_seen or not page[5] & 2
        offset += 27 + page[26] + sum(page[27 : 27 + page[26]])
    return False


_MPEG_SEARCH = 4096
"""Bytes searched for MPEG frames after the length an mp3's Xing tag declares."""


def _mpeg_follows(fd: int, position: int) -> bool:
    """Whether MPEG frames start at ``position`` or within :data:`_MPEG_SEARCH` bytes after it,
    past an ID3v2 tag (another mp3 file's) if one starts there."""
    position += _id3v2_size(_pread(fd, 10, position))
    window = _pread(fd, _MPEG_SEARCH, position)
    start = window.find(b"\xff")
    while start >= 0:
        if _is_mpeg_stream(fd, position + start):
            return True
        start = window.find(b"\xff", start + 1)
    return False


def _audio_beyond_declared(fd: int, kind: str | None, offset: int, file_size: int) -> str | None:
    """What a file is when it holds audio after the first stream libsndfile would decode.

    Args:
        kind, offset: as :func:`_sniff` gives them.

    Returns:
        ``"a chained Ogg file"`` or ``"mp3 files joined together"``; ``None`` for other files.
    """
    if kind == "ogg":
        return "a chained Ogg file" if _ogg_is_chained(fd, file_size) else None
    xing = _xing_tag(fd, offset) if kind == "mp3" else None
    if xing is None or not xing.nb_bytes or offset + xing.nb_bytes >= file_size:
        return None
    return "mp3 files joined together" if _mpeg_follows(fd, offset + xing.nb_bytes) else None
