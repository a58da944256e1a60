"""`umx.api.separate_file` decodes its input block by block as the chunks need it: the stems
are those of the whole read sample for sample, every refusal of the input is the same line and
leaves no file, and memory does not grow with the input's length."""

import copy
import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest
import soundfile
import torch
from torch.nn import functional as F

import umx
from umx import audio
from umx.api import model_input, separate_file
from umx.audio import match_channels, read_audio, resample
from umx.separator import Separator

pytestmark = pytest.mark.usefixtures("one_thread")

RATE = 16000  # the small separator's
SEGMENT, OVERLAP = 1.0, 0.25  # chunks of 15872 frames at 16 kHz, starting every 11904
BLOCK = 3000
"""Frames decoded at a time: block and chunk boundaries fall apart."""


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(audio.blocks, "BLOCK_FRAMES", BLOCK)


def music(nb_frames: int, nb_channels: int = 2, seed: int = 0) -> np.ndarray:
    """Noise with a pitch sweep, `(nb_timesteps, nb_channels)`, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(nb_frames)[:, None] / RATE
    sweep = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t * np.arange(1, nb_channels + 1))
    return (sweep + 0.05 * rng.standard_normal((nb_frames, nb_channels))).astype(np.float32)


def whole_read(path, separator: Separator, match_input: bool = False, **options) -> dict:
    """The stems of `path` as separate_file computed them before it decoded in blocks: the
    input read whole, made the model's input whole, and separated chunk by chunk."""
    segment, overlap = options.pop("segment", SEGMENT), options.pop("overlap", OVERLAP)
    audio, rate = read_audio(path, **options)
    mix = model_input(audio, rate, separator, str(path))[None]
    stems = torch.cat(list(separator.iter_unchecked(mix, segment, overlap)), dim=-1)
    named = separator.to_dict(stems)
    if not match_input:
        return {name: stem[0] for name, stem in named.items()}
    out = {}
    for name, stem in named.items():
        stem = match_channels(resample(stem[0], separator.sample_rate, rate), audio.shape[0])
        out[name] = F.pad(stem, (0, max(0, audio.shape[-1] - stem.shape[-1])))[
            ..., : audio.shape[-1]
        ]
    return out


def written(folder, names) -> dict:
    stems = {}
    for name in names:
        frames, _ = soundfile.read(folder / f"{name}.wav", dtype="float32", always_2d=True)
        stems[name] = torch.from_numpy(frames.T.copy())
    return stems


# The stems: those of the whole read, sample for sample (float32 files, clip none)
MATCHED_DOWNMIX = {"match_input": True, "downmix": True}
CASES = {
    "shorter-than-a-chunk": (5000, 2, RATE, {}),
    "one-chunk-exactly": (11904 + 4000, 2, RATE, {}),
    "a-frame-past-one-chunk": (11904 + 4000 + 1, 2, RATE, {}),
    "two-chunks-exactly": (2 * 11904 + 4000, 2, RATE, {}),
    "long": (5 * RATE + 17, 2, RATE, {}),
    "mono": (3 * RATE, 1, RATE, {}),
    "three-channels-downmixed": (3 * RATE, 3, RATE, {"downmix": True}),
    "excerpt": (5 * RATE, 2, RATE, {"start": 0.3, "duration": 2.7}),
    "match-input-mono": (3 * RATE, 1, RATE, {"match_input": True}),
    "48-kHz": (3 * 48000 + 5, 2, 48000, {}),
    "48-kHz-match-input-excerpt": (3 * 48000, 2, 48000, {"match_input": True, "start": 0.5}),
    "22.05-kHz": (3 * 22050, 2, 22050, {}),
    "22.05-kHz-match-input-downmixed": (3 * 22050, 4, 22050, MATCHED_DOWNMIX),
    "whole-track": (2 * RATE, 2, RATE, {"segment": None}),
}


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("case", CASES)
def test_stems_are_those_of_the_whole_read_sample_for_sample(small_music_separator, tmp_path, case):
    """torch.equal, not a tolerance: the blocks hold the samples of the whole read (libsndfile
    and ffmpeg decode alike in blocks), a `StreamResampler` gives what `resample` gives the whole
    signal, and the chunks are cut from the same frames. So at other rates too (48 and 22.05
    kHz) the difference measured is 0."""
    nb_frames, nb_channels, rate, options = CASES[case]
    path = tmp_path / "song.wav"
    soundfile.write(path, music(nb_frames, nb_channels), rate, subtype="FLOAT")
    options = {"segment": SEGMENT, "overlap": OVERLAP, **options}
    out = tmp_path / "out"
    separate_file(path, small_music_separator, outdir=out, subtype="FLOAT", clip="none", **options)
    expected = whole_read(path, small_music_separator, **options)
    stems = written(out / "song", expected)
    for name, stem in expected.items():
        assert stems[name].shape == stem.shape and torch.equal(stems[name], stem), name


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("extension", ["flac", "ogg", "mp3", "m4a"])
def test_compressed_formats_give_the_stems_of_the_whole_read(
    small_music_separator, tmp_path, extension
):
    wav = tmp_path / "song.wav"
    soundfile.write(wav, music(3 * RATE), RATE)
    path = tmp_path / f"song.{extension}"
    if extension == "m4a":
        if shutil.which("ffmpeg") is None:
            pytest.skip("ffmpeg not installed")
        command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-c:a", "aac", str(path)]
        subprocess.run(command, check=True)
    elif extension == "ogg":
        soundfile.write(path, music(3 * RATE), RATE, format="OGG", subtype="VORBIS")
    else:
        umx.audio.write_audio(path, torch.from_numpy(music(3 * RATE).T), RATE)
    out = tmp_path / "out"
    options = {"segment": SEGMENT, "overlap": OVERLAP, "start": 0.2}
    separate_file(path, small_music_separator, outdir=out, subtype="FLOAT", clip="none", **options)
    expected = whole_read(path, small_music_separator, **options)
    for name, stem in written(out / "song", expected).items():
        assert torch.equal(stem, expected[name]), name


# Refusals: read_audio's line, and no file left


def refused(path, separator, tmp_path, **options) -> tuple[str, list[float]]:
    """The one line `separate_file` refuses `path` with (its --outdir is then left absent), and
    the seconds separated each time progress was told before."""
    progress = []
    with pytest.raises(umx.UmxError) as error:
        separate_file(
            path,
            separator,
            outdir=tmp_path / "out",
            segment=SEGMENT,
            overlap=OVERLAP,
            on_progress=lambda done, total: progress.append(done),
            **options,
        )
    assert not (tmp_path / "out").exists()
    assert "\n" not in str(error.value)
    return str(error.value), progress


def write_with(tmp_path, frames: np.ndarray, name: str = "song.wav", rate: int = RATE):
    soundfile.write(tmp_path / name, frames, rate, subtype="FLOAT")
    return tmp_path / name


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize(
    ("name", "where"), [("nan", 0.1), ("nan", 4.9), ("inf", 2.5), ("huge", 4.0)]
)
def test_samples_that_are_not_audio_are_refused_with_no_file_left_however_late(
    small_music_separator, tmp_path, name, where
):
    """A NaN at 4.9 s of 5 s is found after the chunks before it were separated (the input is
    decoded as it is separated), and refused as read_audio refuses it, before any stem is put
    in place."""
    frames = music(5 * RATE)
    frames[int(where * RATE), 0] = {"nan": np.nan, "inf": np.inf, "huge": 3e4}[name]
    path = write_with(tmp_path, frames)
    with pytest.raises(umx.UmxError) as whole:
        read_audio(path)
    message, progress = refused(path, small_music_separator, tmp_path)
    assert message == str(whole.value)
    # chunk i, frames [11904 i, 11904 i + 15904), is separated once the frame after it was
    # decoded, so before the refusal only if the block with the bad sample starts past it
    block_start = int(where * RATE) // BLOCK * BLOCK
    assert len(progress) == max(0, (block_start - 15905) // 11904 + 1)
    assert where < 1 or progress


def make_empty(tmp_path):
    return write_with(tmp_path, np.zeros((0, 2), np.float32)), {}


def make_past_the_end(tmp_path):
    return write_with(tmp_path, music(RATE)), {"start": 2.0}


def make_truncated(tmp_path):
    path = tmp_path / "cut.flac"
    soundfile.write(path, music(3 * RATE), RATE)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, {}


def make_three_channels(tmp_path):
    return write_with(tmp_path, music(RATE, 3)), {}


def make_not_audio(tmp_path):
    (tmp_path / "notes.wav").write_text("not audio\n" * 50)
    return tmp_path / "notes.wav", {}


@pytest.mark.parametrize(
    "make", [make_empty, make_past_the_end, make_truncated, make_three_channels, make_not_audio]
)
def test_refusals_of_the_input_are_read_audios(small_music_separator, tmp_path, make):
    path, options = make(tmp_path)
    with pytest.raises(umx.UmxError) as whole:
        read_audio(path, **options)
    assert refused(path, small_music_separator, tmp_path, **options)[0] == str(whole.value)


def test_stems_all_silent_are_refused_once_the_input_shows_audible_at_its_end(
    small_music_separator, tmp_path
):
    """The mixture's peak is kept as it is decoded: an input inaudible (-120 dBFS) but in its
    last second, separated by a model that gives nothing, is refused at its end, no file left."""
    silent = {}
    for name, model in small_music_separator.target_models.items():
        silent[name] = copy.deepcopy(model)
        with torch.no_grad():
            silent[name].output_mean.fill_(-100.0)
    separator = Separator(silent, sample_rate=RATE, n_fft=512, n_hop=128)
    frames = music(4 * RATE) * 1e-6
    frames[-RATE:] *= 1e5
    message, progress = refused(write_with(tmp_path, frames), separator, tmp_path)
    assert message.endswith(
        "every stem came out silent from audible input: the model gives nothing (are its "
        "weights broken?)"
    )
    assert len(progress) == 6  # every chunk was separated before it was known


# Memory


def traced_peak(path, separator, outdir) -> int:
    """The peak of memory allocated through Python's allocators (numpy arrays, bytes) while
    `path` is separated: what holds the decoded input (the separation's tensors are torch's)."""
    tracemalloc.start()
    try:
        separate_file(path, separator, outdir=outdir, segment=SEGMENT, overlap=OVERLAP)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_input(small_music_separator, tmp_path):
    """Separating 25 s takes no more memory than 5 s: the 20 s more (2.6 MB of float32 stereo
    at 16 kHz) are never held at once, where the whole read held them."""
    short = write_with(tmp_path, music(5 * RATE), "short.wav")
    long = write_with(tmp_path, music(25 * RATE), "long.wav")
    traced_peak(short, small_music_separator, tmp_path / "warm")  # imports, caches
    peaks = [traced_peak(path, small_music_separator, tmp_path / "out") for path in (short, long)]
    assert peaks[1] - peaks[0] < 200_000, peaks


def test_progress_tells_the_declared_length_then_the_read_one(small_music_separator, tmp_path):
    path = write_with(tmp_path, music(3 * RATE + 5))
    calls = []
    separate_file(
        path,
        small_music_separator,
        outdir=tmp_path / "out",
        segment=SEGMENT,
        overlap=OVERLAP,
        on_progress=lambda done, total: calls.append((done, total)),
    )
    assert [total for _, total in calls] == [(3 * RATE + 5) / RATE] * len(calls)
    assert calls[-1][0] == calls[-1][1]
