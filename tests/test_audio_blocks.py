"""umx.audio.AudioBlocks: a file read block by block gives `read_audio`'s samples exactly, is
refused as `read_audio` refuses it (the same line), and is never held whole."""

import os
import shutil
import struct
import subprocess
import tracemalloc

import numpy as np
import pytest
import soundfile
import torch

from umx import audio
from umx.audio import AudioBlocks, BlockWindow, read_audio, write_audio
from umx.errors import UmxError

RATE = 8000
SMALL_BLOCK = 1000
"""Frames decoded at a time in most tests, so that short files span many blocks."""
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(audio.blocks, "BLOCK_FRAMES", SMALL_BLOCK)


def music(nb_channels: int = 2, seconds: float = 3.0, rate: int = RATE) -> np.ndarray:
    """A deterministic music-like signal, `(nb_timesteps, nb_channels)`, peak below 1."""
    t = np.arange(round(seconds * rate)) / rate
    rows = [0.3 * np.sin(2 * np.pi * (110 * (c + 1) * t + 40 * t**2)) for c in range(nb_channels)]
    return np.stack(rows, axis=1).astype(np.float32)


def read_blocks(path, **options) -> tuple[torch.Tensor, list[int], AudioBlocks]:
    """The blocks of `path` joined, their lengths, and the reader."""
    with AudioBlocks(path, **options) as blocks:
        read = list(blocks)
    return torch.cat(read, dim=-1), [block.shape[-1] for block in read], blocks


def ffmpeg(source, target, *options: str) -> None:
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), *options, str(target)]
    subprocess.run(command, check=True)


def make_wav(tmp_path):
    soundfile.write(tmp_path / "a.wav", music(), RATE, subtype="FLOAT")
    return tmp_path / "a.wav"


def make_flac_mono(tmp_path):
    soundfile.write(tmp_path / "a.flac", music(1), RATE, subtype="PCM_24")
    return tmp_path / "a.flac"


def make_three_channels(tmp_path):
    soundfile.write(tmp_path / "three.wav", music(3), RATE, subtype="FLOAT")
    return tmp_path / "three.wav"


def make_ogg(tmp_path):
    soundfile.write(tmp_path / "a.ogg", music(), RATE, format="OGG", subtype="VORBIS")
    return tmp_path / "a.ogg"


def make_mp3(tmp_path):
    write_audio(tmp_path / "a.mp3", torch.from_numpy(music(seconds=2.0, rate=44100).T), 44100)
    return tmp_path / "a.mp3"


def make_mp3_without_xing(tmp_path):
    soundfile.write(tmp_path / "a.wav", music(), RATE)
    ffmpeg(tmp_path / "a.wav", tmp_path / "plain.mp3", "-c:a", "libmp3lame", "-write_xing", "0")
    return tmp_path / "plain.mp3"


def make_m4a(tmp_path):
    soundfile.write(tmp_path / "a.wav", music(), RATE)
    ffmpeg(tmp_path / "a.wav", tmp_path / "a.m4a", "-c:a", "aac")
    return tmp_path / "a.m4a"


def make_caf(tmp_path):
    soundfile.write(tmp_path / "a.caf", music(), RATE, format="CAF", subtype="FLOAT")
    return tmp_path / "a.caf"


def make_mka(tmp_path, frames: np.ndarray | None = None, rate: int = RATE):
    """Float samples in Matroska: a lossless format only ffmpeg reads."""
    soundfile.write(tmp_path / "a.wav", music() if frames is None else frames, rate, "FLOAT")
    ffmpeg(tmp_path / "a.wav", tmp_path / "a.mka", "-c:a", "pcm_f32le")
    return tmp_path / "a.mka"


def make_chained_ogg(tmp_path):
    one = make_ogg(tmp_path).read_bytes()
    (tmp_path / "chained.ogg").write_bytes(one + one)
    return tmp_path / "chained.ogg"


def make_flac_without_length(tmp_path):
    path = make_flac_mono(tmp_path)
    data = bytearray(path.read_bytes())
    fields = int.from_bytes(data[18:26], "big")  # STREAMINFO's total samples: 0, none declared
    data[18:26] = (fields & ~(2**36 - 1)).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def make_g721(tmp_path):
    """A wav libsndfile reads but cannot seek in."""
    soundfile.write(tmp_path / "g721.wav", music(1)[:, 0], RATE, subtype="G721_32")
    return tmp_path / "g721.wav"


def without_libsndfile_mp3(monkeypatch):
    monkeypatch.setattr(audio.reading, "_LIBSNDFILE_HAS_MP3", False)


FILES = {
    "wav": make_wav,
    "flac-mono": make_flac_mono,
    "three-channels": make_three_channels,
    "ogg": make_ogg,
    "mp3": make_mp3,
    "mp3-by-ffmpeg": make_mp3,
    "mp3-without-xing": make_mp3_without_xing,
    "m4a": make_m4a,
    "caf": make_caf,
    "mka-by-ffmpeg": make_mka,
    "chained-ogg-by-ffmpeg": make_chained_ogg,
    "flac-without-length": make_flac_without_length,
    "g721-unseekable": make_g721,
}
EXCERPTS = [
    {},
    {"start": 0.3, "duration": 1.1},
    {"start": 1.0},
    {"duration": SMALL_BLOCK / RATE},  # one block exactly
    {"start": SMALL_BLOCK / RATE, "duration": 2 * SMALL_BLOCK / RATE},  # on block boundaries
]


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("excerpt", EXCERPTS, ids=lambda e: ",".join(map(str, e.values())) or "all")
@pytest.mark.parametrize("name", FILES)
def test_blocks_are_read_audio_sample_for_sample(tmp_path, monkeypatch, name, excerpt):
    ffmpeg_used = name in ("mp3-without-xing", "m4a") or name.endswith("by-ffmpeg")
    if ffmpeg_used and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    if name == "mp3-by-ffmpeg":
        without_libsndfile_mp3(monkeypatch)
    path = FILES[name](tmp_path)
    options = {**excerpt, "downmix": name == "three-channels"}
    whole, rate = read_audio(path, **options)
    joined, lengths, blocks = read_blocks(path, **options)
    assert torch.equal(joined, whole)
    assert blocks.rate == rate and blocks.nb_channels == whole.shape[0]
    assert blocks.nb_read == whole.shape[1]
    assert max(lengths) <= SMALL_BLOCK and len(lengths) >= whole.shape[1] / SMALL_BLOCK
    if name in ("wav", "flac-mono", "three-channels", "ogg", "m4a", "caf"):
        assert blocks.nb_frames == whole.shape[1]  # declared: the progress of a separation


def test_a_window_of_blocks_holds_what_is_asked_and_lets_go_of_the_rest():
    signal = torch.arange(100.0)[None]
    window = BlockWindow(signal.split([30, 0, 25, 45], dim=-1))
    window.fill(40)
    assert (window.first, window.end, window.ended) == (0, 55, False)
    assert torch.equal(window.frames(10, 40), signal[:, 10:40])
    window.drop(35)
    assert window.first == 35 and torch.equal(window.frames(35, 55), signal[:, 35:55])
    window.fill(1000)
    assert (window.end, window.ended) == (100, True)
    assert torch.equal(window.frames(50, 100), signal[:, 50:100])
    with pytest.raises(ValueError, match="one block at least"):
        BlockWindow([]).fill(1)


# Refusals: the same line as read_audio's


def write_frames(path, frames: np.ndarray, rate: int = RATE) -> None:
    soundfile.write(path, frames, rate, subtype="FLOAT")


def bad_sample(value: float, frame: int, tmp_path):
    frames = music()
    frames[frame, 1] = value
    write_frames(tmp_path / "bad.wav", frames)
    return tmp_path / "bad.wav", {}


def truncated(name: str, fraction: float, tmp_path):
    path = tmp_path / name
    if name.endswith(".mp3"):
        path = make_mp3(tmp_path)
    else:
        soundfile.write(path, music(), RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path, {}


def big_rf64(tmp_path):
    """An RF64 file declaring 2^40 frames and holding 0.5 s."""
    buffer = tmp_path / "huge.wav"
    soundfile.write(buffer, music(seconds=0.5), RATE, "PCM_16", format="RF64")
    data = bytearray(buffer.read_bytes())
    ds64 = data.index(b"ds64") + 8
    data[ds64 + 8 : ds64 + 16] = struct.pack("<Q", 2**40 * 4)
    buffer.write_bytes(bytes(data))
    return buffer, {"duration": 0.1}


def text_file(name: str, tmp_path):
    (tmp_path / name).write_text("not audio at all\n" * 20)
    return tmp_path / name, {}


def fifo(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    return tmp_path / "pipe.wav", {}


def empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    return tmp_path / "empty.wav", {}


def no_audio(tmp_path):
    write_frames(tmp_path / "none.wav", np.zeros((0, 2), np.float32))
    return tmp_path / "none.wav", {}


def one_hertz(tmp_path):
    write_frames(tmp_path / "slow.wav", music(seconds=0.01), 1)
    return tmp_path / "slow.wav", {}


def excerpt_of(make, **excerpt):
    return lambda tmp_path: (make(tmp_path), excerpt)


REFUSALS = {
    "missing": lambda tmp_path: (tmp_path / "missing.wav", {}),
    "directory": lambda tmp_path: (tmp_path, {}),
    "named-pipe": fifo,
    "text-wav": lambda tmp_path: text_file("notes.wav", tmp_path),
    "empty-file": empty_file,
    "no-audio": no_audio,
    "start-past-the-end": excerpt_of(make_wav, start=5.0),
    "start-past-the-end-mp3": excerpt_of(make_mp3, start=5.0),
    "excerpt-of-nothing": excerpt_of(make_wav, duration=1e-6),
    "nan-late": lambda tmp_path: bad_sample(np.nan, 2 * RATE + 1234, tmp_path),
    "inf": lambda tmp_path: bad_sample(-np.inf, 10, tmp_path),
    "pcm-values-as-float": lambda tmp_path: bad_sample(20000.0, RATE // 2, tmp_path),
    "nan-in-an-excerpt": excerpt_of(
        lambda tmp_path: bad_sample(np.nan, 2500, tmp_path)[0], start=0.1
    ),
    "one-hertz": one_hertz,
    "three-channels": excerpt_of(make_three_channels),
    "negative-start": excerpt_of(make_wav, start=-1.0),
    "nan-duration": excerpt_of(make_wav, duration=float("nan")),
    "truncated-wav": lambda tmp_path: truncated("cut.wav", 0.6, tmp_path),
    "truncated-flac": lambda tmp_path: truncated("cut.flac", 0.5, tmp_path),
    "truncated-flac-excerpt": excerpt_of(lambda p: truncated("cut.flac", 0.5, p)[0], duration=0.1),
    "truncated-mp3": lambda tmp_path: truncated("cut.mp3", 0.5, tmp_path),
    "huge-declared-length": big_rf64,
    "text-m4a": lambda tmp_path: text_file("notes.m4a", tmp_path),
}


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("name", REFUSALS)
def test_refusals_are_read_audios_in_one_line(tmp_path, name):
    if name == "text-m4a" and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    path, options = REFUSALS[name](tmp_path)
    with pytest.raises(UmxError) as whole:
        read_audio(path, **options)
    with pytest.raises(UmxError) as blocks:
        read_blocks(path, **options)
    assert str(blocks.value) == str(whole.value)
    assert "\n" not in str(blocks.value) and str(path) in str(blocks.value)


def test_an_m4a_without_ffmpeg_is_refused_as_read_audio_refuses_it(tmp_path, monkeypatch):
    (tmp_path / "song.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + bytes(100))
    monkeypatch.setattr(audio.reading, "_ffmpeg_tools", lambda: None)
    with pytest.raises(UmxError) as whole:
        read_audio(tmp_path / "song.m4a")
    with pytest.raises(UmxError) as blocks:
        read_blocks(tmp_path / "song.m4a")
    assert str(blocks.value) == str(whole.value) and "ffmpeg is not installed" in str(whole.value)


@pytest.mark.usefixtures("small_blocks")
def test_a_bad_sample_is_refused_in_its_block_after_the_blocks_before_it(tmp_path):
    path, _ = bad_sample(np.nan, 2 * RATE + 1234, tmp_path)
    read = []
    with pytest.raises(UmxError, match=r"a NaN sample at 2\.154 s"), AudioBlocks(path) as blocks:
        for block in blocks:
            read.append(block.shape[-1])
    assert sum(read) == 17 * SMALL_BLOCK  # the blocks before it


@needs_ffmpeg
@pytest.mark.usefixtures("small_blocks")
def test_ffmpeg_is_stopped_when_the_blocks_are_no_longer_wanted(tmp_path):
    path = make_mka(tmp_path)
    with AudioBlocks(path) as blocks:
        next(iter(blocks))
        process = blocks._blocks.gi_frame.f_locals["process"]
        assert process.poll() is None  # decoding ahead only as far as the pipe holds
    assert process.poll() is not None


# Memory: the decoded input is never held whole


def traced_peak(function, *args, **kwargs) -> int:
    """The peak of memory allocated through Python's allocators (numpy arrays, bytes) while
    `function` runs, above what was held before, in bytes."""
    tracemalloc.start()
    try:
        function(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def drain(path) -> None:
    with AudioBlocks(path) as blocks:
        for _ in blocks:
            pass


@pytest.mark.parametrize("extension", ["wav", pytest.param("mka", marks=needs_ffmpeg)])
def test_reading_in_blocks_holds_one_block_however_long_the_file(tmp_path, extension):
    """Reading a file 5 times longer takes no more memory block by block (through libsndfile or
    ffmpeg's pipe), where read_audio holds it whole (20 s of float32 stereo at 16 kHz: 2.6 MB)."""
    paths = []
    for seconds in (5, 25):
        (tmp_path / str(seconds)).mkdir()
        frames = music(seconds=seconds, rate=16000)
        if extension == "mka":
            paths.append(make_mka(tmp_path / str(seconds), frames, 16000))
        else:
            paths.append(tmp_path / str(seconds) / "a.wav")
            soundfile.write(paths[-1], frames, 16000, subtype="FLOAT")
    short, long = (traced_peak(drain, path) for path in paths)
    assert long - short < 100_000 and long < 2_000_000
    whole = [traced_peak(read_audio, path) for path in paths]
    assert whole[1] - whole[0] > 20 * 16000 * 2 * 4  # what the measure sees of a whole read
