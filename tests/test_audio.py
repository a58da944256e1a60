"""Tests of umx.audio: round trips, excerpts, resampling, channel policy, errors, clipping."""

import contextlib
import errno
import io
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from processes import file_size_limit, read_only_folder
from umx import audio
from umx.audio import (
    DEFAULT_SUBTYPE,
    RESCALE_PEAK,
    AudioFileInfo,
    AudioWriter,
    StreamResampler,
    audio_formats,
    audio_info,
    display_path,
    leftover_temporaries,
    peak,
    read_audio,
    read_frames,
    resample,
    seconds_to_frames,
    write_audio,
)
from umx.audio.writing import SILENCED_BELOW, finish_together
from umx.errors import UmxError
from umx.files import hold_lock

RATE = 44100
MP3_FRAME = 1152  # samples per MPEG-1 layer III frame: the decoders' length slack
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def without_libsndfile_mp3(monkeypatch):
    """As if libsndfile lacked MPEG support: mp3 files are read and written by ffmpeg."""
    for module in (audio.reading, audio.writing):
        monkeypatch.setattr(module, "_LIBSNDFILE_HAS_MP3", False)


def tone(nb_channels: int = 2, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    """A deterministic music-like signal, shape (nb_channels, nb_timesteps), peak below 1."""
    t = np.arange(round(seconds * rate)) / rate
    rows = [
        0.4 * np.sin(2 * np.pi * (220 * (c + 1) * t + 30 * t**2)) * (0.6 + 0.4 * np.cos(3 * t))
        for c in range(nb_channels)
    ]
    return np.stack(rows).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    nb = min(a.shape[-1], b.shape[-1])
    return float(np.corrcoef(a[..., :nb].ravel(), b[..., :nb].ravel())[0, 1])


def ffmpeg_encode(source, target, *inputs: str) -> None:
    """Encodes ``source`` (plus more ``inputs``, one stream each) into ``target`` with ffmpeg."""
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(source)]
    for extra in inputs:
        command += ["-i", str(extra)]
    for index in range(1 + len(inputs)):
        command += ["-map", f"{index}:a"]
    subprocess.run([*command, "-c:a", "aac", "-b:a", "192k", str(target)], check=True)


def only_files(directory) -> list[str]:
    return sorted(os.listdir(directory))


# Round trips


@pytest.mark.parametrize(
    ("extension", "subtype", "tolerance"),
    [
        ("wav", "PCM_16", 2**-15),
        ("wav", "PCM_24", 2**-23),
        ("wav", "FLOAT", 0.0),
        ("flac", "PCM_16", 2**-15),
        ("flac", "PCM_24", 2**-23),
    ],
)
def test_lossless_round_trip(tmp_path, extension, subtype, tolerance):
    signal = tone()
    path = tmp_path / f"out.{extension}"
    report = write_audio(path, torch.from_numpy(signal), RATE, subtype=subtype)
    assert (report.action, report.gain) == ("none", 1.0)
    assert report.peak == pytest.approx(np.abs(signal).max())
    assert soundfile.info(path).subtype == subtype
    decoded, rate = read_audio(path)
    assert rate == RATE
    assert decoded.dtype == torch.float32
    assert decoded.shape == signal.shape
    np.testing.assert_allclose(decoded.numpy(), signal, rtol=0, atol=tolerance)


def test_default_subtypes(tmp_path):
    for extension in ("wav", "flac"):
        write_audio(tmp_path / f"out.{extension}", tone(), RATE)
        assert soundfile.info(tmp_path / f"out.{extension}").subtype == DEFAULT_SUBTYPE[extension]


def test_mp3_round_trip(tmp_path):
    signal = tone(seconds=2.0)
    path = tmp_path / "out.mp3"
    write_audio(path, signal, RATE)
    decoded, rate = read_audio(path)
    assert rate == RATE
    assert abs(decoded.shape[1] - signal.shape[1]) <= 2 * MP3_FRAME
    assert correlation(decoded.numpy(), signal) > 0.99


@needs_ffmpeg
def test_mp3_written_by_ffmpeg_without_libsndfile_mpeg(tmp_path, monkeypatch):
    without_libsndfile_mp3(monkeypatch)
    signal = tone(seconds=2.0)
    path = tmp_path / "out.mp3"
    report = write_audio(path, signal * 4, RATE)
    assert report.action == "rescaled"
    assert only_files(tmp_path) == ["out.mp3"]
    decoded, _ = read_audio(path)
    assert abs(decoded.shape[1] - signal.shape[1]) <= 2 * MP3_FRAME
    assert correlation(decoded.numpy(), signal) > 0.99


def test_failing_ffmpeg_encoder_leaves_nothing(tmp_path, monkeypatch):
    without_libsndfile_mp3(monkeypatch)
    false = shutil.which("false")  # an "ffmpeg" that fails at once
    monkeypatch.setattr(shutil, "which", lambda _: false)
    with pytest.raises(UmxError) as error:
        write_audio(tmp_path / "out.mp3", tone(seconds=2.0), RATE)
    assert str(tmp_path / "out.mp3") in str(error.value)
    assert only_files(tmp_path) == []


def test_mp3_refused_without_any_encoder(tmp_path, monkeypatch):
    without_libsndfile_mp3(monkeypatch)
    monkeypatch.setattr(shutil, "which", lambda _: None)
    assert audio_formats() == ["wav", "flac"]
    with pytest.raises(UmxError, match="apt-get install ffmpeg"):
        AudioWriter(tmp_path / "out.mp3", RATE, 2)


@needs_ffmpeg
def test_m4a_through_ffmpeg(tmp_path):
    signal = tone(seconds=2.0)
    write_audio(tmp_path / "source.wav", signal, RATE, subtype="FLOAT")
    ffmpeg_encode(tmp_path / "source.wav", tmp_path / "song.m4a")
    decoded, rate = read_audio(tmp_path / "song.m4a")
    assert rate == RATE
    assert decoded.shape == signal.shape  # the encoder's priming and padding are left out
    assert correlation(decoded.numpy(), signal) > 0.99  # in time: the priming is not kept
    excerpt, _ = read_audio(tmp_path / "song.m4a", start=0.5, duration=0.25)
    first = round(0.5 * RATE)
    np.testing.assert_allclose(excerpt, decoded[:, first : first + round(0.25 * RATE)], atol=1e-6)


@needs_ffmpeg
def test_stem_mp4_reads_the_mixture(tmp_path):
    mixture, other = tone(seconds=1.0), tone(seconds=1.0)[::-1].copy() * 0.5
    write_audio(tmp_path / "mixture.wav", mixture, RATE, subtype="FLOAT")
    write_audio(tmp_path / "vocals.wav", other, RATE, subtype="FLOAT")
    ffmpeg_encode(tmp_path / "mixture.wav", tmp_path / "track.stem.mp4", tmp_path / "vocals.wav")
    decoded, _ = read_audio(tmp_path / "track.stem.mp4")
    assert correlation(decoded.numpy(), mixture) > 0.99


def test_ffmpeg_missing_is_named(tmp_path, monkeypatch):
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\0" * 64)
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(UmxError, match="apt-get install ffmpeg") as error:
        read_audio(path)
    assert str(path) in str(error.value)


# Excerpts and resampling


@pytest.mark.parametrize("extension", ["wav", "flac", "mp3"])
def test_excerpt_equals_slice_of_full_read(tmp_path, extension):
    path = tmp_path / f"song.{extension}"
    write_audio(path, tone(seconds=2.0), RATE)
    full, _ = read_audio(path)
    excerpt, _ = read_audio(path, start=0.75, duration=0.5)
    first = round(0.75 * RATE)
    torch.testing.assert_close(excerpt, full[:, first : first + round(0.5 * RATE)])
    tail, _ = read_audio(path, start=1.5)
    torch.testing.assert_close(tail, full[:, round(1.5 * RATE) :])


def test_resample_keeps_frequency_and_length_ratio():
    orig_rate, new_rate, frequency = 48000, 44100, 1000.0
    t = torch.arange(orig_rate, dtype=torch.float64) / orig_rate
    sine = torch.sin(2 * torch.pi * frequency * t).repeat(2, 1).float()
    resampled = resample(sine, orig_rate, new_rate)
    assert resampled.shape == (2, new_rate)
    assert resampled.dtype == torch.float32
    spectrum = np.abs(np.fft.rfft(resampled[0].numpy()))
    peak_frequency = np.argmax(spectrum) * new_rate / resampled.shape[1]
    assert peak_frequency == pytest.approx(frequency, abs=1.0)
    expected = np.sin(2 * np.pi * frequency * np.arange(new_rate) / new_rate)
    middle = slice(1000, -1000)  # away from the filter's edges
    np.testing.assert_allclose(resampled[0, middle], expected[middle], atol=1e-3)
    assert resample(sine, orig_rate, orig_rate) is sine


def test_read_resamples_to_the_requested_rate(tmp_path):
    path = tmp_path / "song.wav"
    write_audio(path, tone(rate=48000), 48000, subtype="FLOAT")
    decoded, rate = read_audio(path, sample_rate=RATE)
    assert rate == RATE
    assert decoded.shape == (2, RATE)


# Channel policy


def test_mono_is_duplicated_for_a_stereo_model(tmp_path):
    signal = tone(nb_channels=1)
    write_audio(tmp_path / "mono.wav", signal, RATE, subtype="FLOAT")
    decoded, _ = read_audio(tmp_path / "mono.wav", nb_channels=2)
    np.testing.assert_array_equal(decoded.numpy(), np.repeat(signal, 2, axis=0))


def test_stereo_is_averaged_for_a_mono_model(tmp_path):
    signal = tone(nb_channels=2)
    write_audio(tmp_path / "stereo.wav", signal, RATE, subtype="FLOAT")
    decoded, _ = read_audio(tmp_path / "stereo.wav", nb_channels=1)
    np.testing.assert_allclose(decoded.numpy(), signal.mean(axis=0, keepdims=True), atol=1e-7)
    unchanged, _ = read_audio(tmp_path / "stereo.wav")
    np.testing.assert_array_equal(unchanged.numpy(), signal)


def test_six_channels_refused_unless_downmixed(tmp_path):
    signal = tone(nb_channels=6)
    path = tmp_path / "surround.wav"
    write_audio(path, signal, RATE, subtype="FLOAT")
    with pytest.raises(UmxError, match=r"6 channels.*--downmix") as error:
        read_audio(path, nb_channels=2)
    assert str(path) in str(error.value)
    mean = signal.mean(axis=0, keepdims=True)
    stereo, _ = read_audio(path, nb_channels=2, downmix=True)
    np.testing.assert_allclose(stereo.numpy(), np.repeat(mean, 2, axis=0), atol=1e-7)
    mono, _ = read_audio(path, nb_channels=1, downmix=True)
    np.testing.assert_allclose(mono.numpy(), mean, atol=1e-7)


# Bad input


def write_raw(path, frames: np.ndarray, subtype: str = "FLOAT") -> None:
    soundfile.write(path, frames, RATE, subtype=subtype)


def truncate(path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def make_missing(tmp_path):
    return tmp_path / "missing.wav", {}


def make_directory(tmp_path):
    (tmp_path / "folder.wav").mkdir()
    return tmp_path / "folder.wav", {}


def make_text_wav(tmp_path):
    (tmp_path / "notes.wav").write_text("not audio at all\n" * 20)
    return tmp_path / "notes.wav", {}


def make_text_m4a(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    (tmp_path / "notes.m4a").write_text("not audio at all\n" * 20)
    return tmp_path / "notes.m4a", {}


def make_truncated_flac(tmp_path):
    write_audio(tmp_path / "cut.flac", tone(seconds=2.0), RATE)
    truncate(tmp_path / "cut.flac", 0.5)
    return tmp_path / "cut.flac", {}


def make_truncated_mp3(tmp_path):
    write_audio(tmp_path / "cut.mp3", tone(seconds=2.0), RATE)
    truncate(tmp_path / "cut.mp3", 0.5)
    return tmp_path / "cut.mp3", {}


def make_empty(tmp_path):
    write_raw(tmp_path / "empty.wav", np.zeros((0, 2), np.float32))
    return tmp_path / "empty.wav", {}


def make_start_beyond_end(tmp_path):
    write_raw(tmp_path / "short.wav", tone().T)
    return tmp_path / "short.wav", {"start": 5.0}


def make_excerpt_of_nothing(tmp_path):
    write_raw(tmp_path / "short.wav", tone().T)
    return tmp_path / "short.wav", {"duration": 1e-6}


def make_nan(tmp_path):
    frames = tone().T.copy()
    frames[100, 0] = np.nan
    write_raw(tmp_path / "nan.wav", frames)
    return tmp_path / "nan.wav", {}


def make_inf(tmp_path):
    frames = tone().T.copy()
    frames[100, 1] = -np.inf
    write_raw(tmp_path / "inf.wav", frames)
    return tmp_path / "inf.wav", {}


def make_pcm_values_as_float(tmp_path):
    write_raw(tmp_path / "int-scale.wav", tone().T * 32768)
    return tmp_path / "int-scale.wav", {}


def make_rate_of_one_hertz(tmp_path):
    soundfile.write(tmp_path / "slow.wav", tone(seconds=0.01).T, 1, subtype="FLOAT")
    return tmp_path / "slow.wav", {}


def make_negative_start(tmp_path):
    write_raw(tmp_path / "song.wav", tone().T)
    return tmp_path / "song.wav", {"start": -1.0}


def make_negative_duration(tmp_path):
    write_raw(tmp_path / "song.wav", tone().T)
    return tmp_path / "song.wav", {"duration": -0.5}


def make_infinite_start(tmp_path):
    write_raw(tmp_path / "song.wav", tone().T)
    return tmp_path / "song.wav", {"start": float("inf")}


def make_nan_duration(tmp_path):
    write_raw(tmp_path / "song.wav", tone().T)
    return tmp_path / "song.wav", {"duration": float("nan")}


def make_truncated_wav_header(tmp_path):
    (tmp_path / "header.wav").write_bytes(wav_bytes()[:30])
    return tmp_path / "header.wav", {}


@pytest.mark.parametrize(
    "make",
    [
        make_missing,
        make_directory,
        make_text_wav,
        make_text_m4a,
        make_truncated_flac,
        make_truncated_mp3,
        make_empty,
        make_start_beyond_end,
        make_excerpt_of_nothing,
        make_nan,
        make_inf,
        make_pcm_values_as_float,
        make_rate_of_one_hertz,
        make_negative_start,
        make_negative_duration,
        make_infinite_start,
        make_nan_duration,
        make_truncated_wav_header,
    ],
)
def test_bad_input_names_the_path(tmp_path, make):
    path, options = make(tmp_path)
    with pytest.raises(UmxError) as error:
        read_audio(path, **options)
    assert str(path) in str(error.value)


def test_samples_that_are_not_audio_are_refused_where_they_are(tmp_path):
    """Float samples beyond ±10,000 (16-bit values stored as float) are refused by every reader,
    naming the file and the time of the first one; 10,000 itself is audio."""
    frames = tone().T.copy()
    frames[RATE // 2, 1] = 20000.0
    write_raw(tmp_path / "spike.wav", frames)
    for read in (read_audio, read_frames):
        with pytest.raises(UmxError) as error:
            read(tmp_path / "spike.wav")
        assert str(error.value) == (
            f"{tmp_path / 'spike.wav'}: the sample 2e+04 at 0.500 s is not audio (samples must "
            "be finite and within ±10000, full scale being ±1)"
        )
    with pytest.raises(UmxError, match=r"at 0\.500 s"):  # the time in the file, not in the excerpt
        read_audio(tmp_path / "spike.wav", start=0.25)
    frames[RATE // 2, 1] = 10000.0
    write_raw(tmp_path / "loud.wav", frames)
    audio, _ = read_audio(tmp_path / "loud.wav")
    assert float(audio.abs().max()) == 10000.0


def test_peak_is_the_largest_magnitude_and_keeps_nan():
    audio = torch.tensor([[0.25, -0.75], [0.5, 0.0]])
    assert peak(audio) == 0.75
    assert peak(torch.zeros(2, 0)) == 0.0
    audio[1, 1] = math.nan
    assert math.isnan(peak(audio))  # so that the checks built on it do not pass NaN


@pytest.mark.parametrize(("rate", "accepted"), [(999, False), (1000, True), (768000, True)])
def test_sample_rates_outside_what_umx_separates_are_refused(tmp_path, rate, accepted):
    path = tmp_path / "rate.wav"
    soundfile.write(path, np.zeros((2000, 2), np.float32), rate, subtype="FLOAT")
    if accepted:
        assert audio_info(path).sample_rate == rate
        assert read_audio(path)[1] == rate
        return
    for read in (audio_info, read_audio, read_frames):
        with pytest.raises(UmxError) as error:
            read(path)
        assert str(error.value) == (
            f"{path}: a sample rate of 999 Hz is not one umx separates (it takes 1000 to 768000 Hz)"
        )


# Writing: clip policies, refusals, temporary files, streaming


def test_rescale_keeps_peak_below_one(tmp_path):
    signal = tone() * 5
    peak = float(np.abs(signal).max())
    report = write_audio(tmp_path / "loud.wav", signal, RATE, subtype="PCM_24")
    assert report.action == "rescaled"
    assert report.peak == pytest.approx(peak)
    assert report.gain == pytest.approx(RESCALE_PEAK / peak)
    decoded, _ = read_audio(tmp_path / "loud.wav")
    assert decoded.abs().max() < 1.0
    np.testing.assert_allclose(decoded.numpy(), signal * report.gain, atol=2**-23 + 1e-7)


def test_clamp_clips_to_unit_range(tmp_path):
    signal = tone() * 3
    report = write_audio(tmp_path / "loud.wav", signal, RATE, subtype="FLOAT", clip="clamp")
    assert (report.action, report.gain) == ("clamped", 1.0)
    decoded, _ = read_audio(tmp_path / "loud.wav")
    np.testing.assert_array_equal(decoded.numpy(), np.clip(signal, -1, 1))


@pytest.mark.parametrize(
    ("subtype", "level", "action"),
    [("PCM_16", 2e-5, "silenced"), ("PCM_16", 4e-5, "none"), ("PCM_24", 1e-7, "silenced"),
     ("PCM_24", 2e-7, "none"), ("FLOAT", 1e-30, "none")],
)  # fmt: skip
def test_a_signal_too_quiet_for_the_subtype_is_said(tmp_path, subtype, level, action):
    """Written as zeros and single steps, which the report says, rather than silently (a stem
    of quiet music in 16-bit PCM)."""
    signal = tone() / np.abs(tone()).max() * level
    report = write_audio(tmp_path / "quiet.wav", signal, RATE, subtype=subtype)
    assert report.action == action
    decoded, _ = read_audio(tmp_path / "quiet.wav")
    step = SILENCED_BELOW.get(subtype, 0.0)
    assert (float(decoded.abs().max()) <= step) == (action == "silenced")


def test_clip_none_only_for_float(tmp_path):
    signal = tone() * 3
    report = write_audio(tmp_path / "loud.wav", signal, RATE, subtype="FLOAT", clip="none")
    assert (report.action, report.gain) == ("none", 1.0)
    decoded, _ = read_audio(tmp_path / "loud.wav")
    np.testing.assert_array_equal(decoded.numpy(), signal)
    with pytest.raises(UmxError, match="FLOAT"):
        write_audio(tmp_path / "loud16.wav", signal, RATE, clip="none")


def test_existing_file_refused_at_construction_and_overwritten_with_force(tmp_path):
    path = tmp_path / "vocals.wav"
    write_audio(path, tone(), RATE)
    with pytest.raises(UmxError, match=r"already exists.*--force") as error:
        AudioWriter(path, RATE, 2)
    assert str(path) in str(error.value)
    write_audio(path, tone() * 0.5, RATE, subtype="FLOAT", force=True)
    decoded, _ = read_audio(path)
    np.testing.assert_array_equal(decoded.numpy(), tone() * 0.5)
    assert only_files(tmp_path) == ["vocals.wav"]


def no_hard_links(*_: object, **__: object) -> None:
    raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_file_that_appears_while_writing_is_kept_without_force(tmp_path, monkeypatch, hard_links):
    """Another run may write the same file while this one separates: without force, the finished
    file does not replace it, and the refusal is the one the check at construction gives."""
    if not hard_links:  # a file system without them (FAT, some network ones)
        monkeypatch.setattr(os, "link", no_hard_links)
    path = tmp_path / "vocals.wav"
    with pytest.raises(UmxError) as error, AudioWriter(path, RATE, 2) as writer:
        writer.write(tone())
        write_audio(path, tone() * 0.5, RATE, subtype="FLOAT")  # the other run's
    assert str(error.value) == f"{path} already exists (use --force to overwrite)"
    assert only_files(tmp_path) == ["vocals.wav"]
    np.testing.assert_array_equal(read_audio(path)[0].numpy(), tone() * 0.5)
    with AudioWriter(path, RATE, 2, subtype="FLOAT", force=True) as writer:
        writer.write(tone() * 0.25)
        write_audio(path, tone() * 0.5, RATE, force=True)
    assert only_files(tmp_path) == ["vocals.wav"]
    np.testing.assert_array_equal(read_audio(path)[0].numpy(), tone() * 0.25)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("out.ogg", {}, "extensions"),
        ("out.flac", {"subtype": "FLOAT"}, "FLOAT"),
        ("out.wav", {"clip": "fold"}, "fold"),
        ("no/such/dir/out.wav", {}, "does not exist"),
    ],
)
def test_bad_write_options_name_the_path(tmp_path, name, options, message):
    path = tmp_path / name
    with pytest.raises(UmxError, match=message) as error:
        write_audio(path, tone(), RATE, **options)
    assert str(path) in str(error.value)
    assert not path.exists()


def test_rates_a_format_cannot_hold_are_refused_with_what_to_do(tmp_path):
    """libsndfile said only "(Error : flac does not support this sample rate)"."""
    for name, rate, refusal in [
        (
            "vocals.mp3",
            192000,
            "mp3 takes only 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100 or 48000 Hz",
        ),
        ("vocals.flac", 700000, "flac takes at most 655350 Hz"),
    ]:
        with pytest.raises(UmxError) as error:
            AudioWriter(tmp_path / name, rate, 2)
        assert str(error.value) == (
            f"cannot write {tmp_path / name} at {rate} Hz: {refusal}; use --ext wav, or leave "
            "out --match-input to write at the model's rate"
        )
    assert only_files(tmp_path) == []
    write_audio(tmp_path / "high.flac", tone(seconds=0.1, rate=655350), 655350)
    write_audio(tmp_path / "low.mp3", tone(seconds=0.1, rate=8000), 8000)
    assert audio_info(tmp_path / "high.flac").sample_rate == 655350


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UmxError) as error:
        write_audio(locked / "out.wav", tone(), RATE)
    assert str(error.value) == (
        f"cannot write {locked / 'out.wav'}: its folder {locked} is not writable (Permission "
        "denied; check its permissions, or write elsewhere)"
    )


def test_a_read_only_or_missing_folder_is_said_with_what_to_do(tmp_path, monkeypatch):
    """It said "cannot write ro/out.wav: directory ro is missing or unwritable"."""
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only_folder(monkeypatch, read_only)
    with pytest.raises(UmxError) as error:
        AudioWriter(read_only / "out.wav", RATE, 2)
    assert str(error.value) == (
        f"cannot write {read_only / 'out.wav'}: its folder {read_only} is not writable "
        "(Read-only file system; write elsewhere)"
    )
    with pytest.raises(UmxError) as error:
        AudioWriter(tmp_path / "missing" / "out.wav", RATE, 2)
    assert str(error.value) == (
        f"cannot write {tmp_path / 'missing' / 'out.wav'}: its folder {tmp_path / 'missing'} "
        "does not exist; create it, or write elsewhere"
    )


@pytest.mark.parametrize("clip", ["rescale", "clamp"])
def test_failed_writes_leave_nothing_behind(tmp_path, clip):
    with (
        pytest.raises(RuntimeError, match="separation failed"),
        AudioWriter(tmp_path / "vocals.flac", RATE, 2, clip=clip) as writer,
    ):
        writer.write(tone())
        raise RuntimeError("separation failed")
    assert only_files(tmp_path) == []

    broken = tone()
    broken[1, 10] = np.nan
    with pytest.raises(UmxError, match="NaN") as error:
        write_audio(tmp_path / "vocals.wav", broken, RATE, clip=clip)
    assert str(tmp_path / "vocals.wav") in str(error.value)
    assert only_files(tmp_path) == []


def test_a_full_disk_is_told_where_libsndfile_says_only_system_error(tmp_path, monkeypatch):
    """libsndfile's reason for any failed write is "System error"; where the disk has almost
    no space left, the message says the disk is full, and nothing is left behind."""
    path = tmp_path / "vocals.wav"
    with file_size_limit(4096), pytest.raises(UmxError) as error:
        write_audio(path, tone(), RATE)
    assert str(error.value) == f"cannot write {path} (System error)"  # the disk has room
    full = shutil.disk_usage(tmp_path)._replace(free=2**20)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: full)
    with file_size_limit(4096), pytest.raises(UmxError) as error:
        write_audio(path, tone(), RATE)
    assert str(error.value) == (
        f"cannot write {path} (System error: the disk is full (1.0 MB free); free some space, "
        "or write elsewhere)"
    )
    assert only_files(tmp_path) == []


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from umx.audio import AudioWriter

writer = AudioWriter(sys.argv[1], 8000, 2).__enter__()
writer.write(np.zeros((2, 100), np.float32))
print("writing", flush=True)
sys.stdin.readline()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_writer_of_the_file(tmp_path):
    """SIGKILL (the out-of-memory killer) leaves a writer no time to remove its temporary files:
    the next writer of the same file removes them, but never those of a writer still writing,
    nor other files."""
    path = tmp_path / "vocals.wav"
    others = [tmp_path / ".vocals_x.0123abcd.tmp.wav", tmp_path / ".vocals.tmp.wav"]
    for other in others:  # another stem's, and a name no writer makes
        other.write_bytes(b"")
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout.readline() == "writing\n"
    temporaries = sorted(set(tmp_path.iterdir()) - set(others))
    assert len(temporaries) == 2  # the file being written, and the signal staged for rescale
    assert leftover_temporaries(path) == []  # its writer holds them
    writer.communicate("\n", timeout=60)
    assert writer.returncode == -signal.SIGKILL
    assert leftover_temporaries(path) == temporaries
    write_audio(path, tone(), RATE)
    assert sorted(tmp_path.iterdir()) == sorted([path, *others])


def test_failed_overwrite_keeps_the_old_file(tmp_path):
    path = tmp_path / "vocals.wav"
    write_audio(path, tone(), RATE, subtype="FLOAT")
    with pytest.raises(KeyboardInterrupt), AudioWriter(path, RATE, 2, force=True) as writer:
        writer.write(tone() * 0.1)
        raise KeyboardInterrupt
    assert only_files(tmp_path) == ["vocals.wav"]
    np.testing.assert_array_equal(read_audio(path)[0].numpy(), tone())


@pytest.mark.parametrize(("extension", "clip"), [("wav", "rescale"), ("flac", "clamp")])
def test_streaming_equals_whole_write(tmp_path, extension, clip):
    signal = np.concatenate([tone(seconds=1.3), tone(seconds=0.9) * 4, tone(seconds=0.4)], axis=1)
    whole = write_audio(tmp_path / f"whole.{extension}", signal, RATE, clip=clip)
    with AudioWriter(tmp_path / f"streamed.{extension}", RATE, 2, clip=clip) as writer:
        for start in range(0, signal.shape[1], 10000):
            writer.write(torch.from_numpy(signal[:, start : start + 10000]))
    assert writer.report.action == whole.action != "none"
    assert (writer.report.peak, writer.report.gain) == (whole.peak, whole.gain)
    torch.testing.assert_close(
        read_audio(tmp_path / f"streamed.{extension}")[0],
        read_audio(tmp_path / f"whole.{extension}")[0],
        rtol=0,
        atol=0,
    )
    assert only_files(tmp_path) == sorted([f"streamed.{extension}", f"whole.{extension}"])


def test_audio_formats_lists_writable_extensions():
    assert audio_formats()[:2] == ["wav", "flac"]
    assert set(audio_formats()) <= set(DEFAULT_SUBTYPE)


def test_match_channels_on_batches():
    from umx.audio import match_channels

    stereo = torch.randn(3, 2, 100)
    mono = match_channels(stereo, 1)
    assert mono.shape == (3, 1, 100)
    torch.testing.assert_close(mono[:, 0], stereo.mean(dim=1))
    torch.testing.assert_close(match_channels(mono, 2), mono.repeat(1, 2, 1))
    assert match_channels(stereo, 2) is stereo


def test_resample_of_nothing_is_nothing():
    for shape in ((2, 0), (3, 2, 0)):
        empty = resample(torch.zeros(shape), 48000, 44100)
        assert empty.shape == shape and empty.dtype == torch.float32


def test_resample_keeps_leading_dimensions():
    audio = torch.randn(2, 3, 2, 4800)
    out = resample(audio, 48000, 44100)
    assert out.shape == (2, 3, 2, 4410)
    torch.testing.assert_close(out[1, 2], resample(audio[1, 2], 48000, 44100))


# Streaming resampler


@pytest.mark.parametrize(
    ("orig_rate", "new_rate"), [(44100, 48000), (48000, 44100), (44100, 22050)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stream_resampler_equals_whole_resample(orig_rate, new_rate, dtype):
    signal = torch.from_numpy(tone(seconds=0.5, rate=orig_rate)).to(dtype)
    whole = resample(signal, orig_rate, new_rate)
    resampler = StreamResampler(orig_rate, new_rate, 2)
    blocks = [resampler.process(signal[:, i : i + 3001]) for i in range(0, signal.shape[1], 3001)]
    streamed = torch.cat([*blocks, resampler.flush()], dim=1)
    assert streamed.dtype == dtype
    # soxr's stream and one-shot resamplers are the same filter: measured identical (0.0)
    assert streamed.shape == whole.shape == (2, int(signal.shape[1] * new_rate / orig_rate + 0.5))
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-6)


def test_stream_resampler_flushes_to_the_length_asked():
    signal = torch.from_numpy(tone(1, seconds=0.5, rate=48000))
    whole = resample(signal, 48000, 16000)
    for length in (whole.shape[-1] - 3, whole.shape[-1] + 2):
        resampler = StreamResampler(48000, 16000, 1)
        blocks = [resampler.process(block) for block in signal.split(5000, dim=-1)]
        out = torch.cat([*blocks, resampler.flush(length)], dim=-1)
        assert out.shape[-1] == length
        common = min(length, whole.shape[-1])
        torch.testing.assert_close(out[:, :common], whole[:, :common], atol=1e-6, rtol=0)
        assert not out[:, common:].any()  # padded with silence


def test_stream_resampler_at_equal_rates_passes_blocks_through():
    block = torch.randn(1, 100)
    resampler = StreamResampler(RATE, RATE, 1)
    assert resampler.process(block) is block
    assert resampler.flush().shape == (1, 0)


def test_resample_rounds_half_lengths_up_like_soxr():
    # 5 samples at half the rate: 2.5 -> 3 (Python's round would give 2)
    assert resample(torch.zeros(1, 5), 44100, 22050).shape == (1, 3)


# Paths shown in messages


def test_display_path_is_printable_on_one_line():
    undecodable = os.fsdecode(b"/music/\xff\xfe.wav")
    assert display_path(undecodable) == "/music/\ufffd\ufffd.wav"
    assert display_path(b"/music/\xff.wav") == "/music/\ufffd.wav"
    assert display_path("a\nb\x1b[31m\u202e.wav") == "a\\nb\\x1b[31m\\u202e.wav"
    assert display_path("/music/déjà vu.flac") == "/music/déjà vu.flac"
    display_path(undecodable).encode("utf-8")  # printable: no UnicodeEncodeError


# Hostile input: special files, truncation, huge headers, undecodable files


def call_with_timeout(function, *args, timeout: float = 10.0):
    """Runs ``function(*args)`` in a thread; fails the test instead of hanging if it blocks."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return thread.is_alive(), outcome


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        (math.nan, "sample_rate must be a finite number, not nan"),
        (math.inf, "sample_rate must be a finite number, not inf"),
        (1e12, "sample_rate must be at most 768000, not 1000000000000"),
        (0, "sample_rate must be at least 1000, not 0"),
        ("16000", "sample_rate must be a number, not '16000'"),
    ],
)
def test_a_rate_to_resample_to_that_is_no_rate_is_refused(tmp_path, rate, message):
    # NaN spun a core forever in soxr; inf and 1e12 raised MemoryError
    write_audio(tmp_path / "song.wav", tone(seconds=0.1), RATE)
    blocked, outcome = call_with_timeout(
        lambda: read_audio(tmp_path / "song.wav", sample_rate=rate)
    )
    assert not blocked
    assert isinstance(outcome.get("error"), UmxError) and str(outcome["error"]) == message


@pytest.mark.parametrize("rates", [(math.nan, RATE), (RATE, math.nan), (RATE, math.inf), (0, RATE)])
def test_resampling_from_or_to_no_rate_is_a_value_error(rates):
    blocked, outcome = call_with_timeout(resample, torch.zeros(2, 100), *rates)
    assert not blocked and isinstance(outcome.get("error"), ValueError)
    with pytest.raises(ValueError, match="finite and positive"):
        StreamResampler(*rates, 2)


def unblock_fifo(path) -> None:
    """Opens a FIFO for writing and closes it, so that a reader blocked on it returns."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("function", [read_audio, audio_info])
def test_named_pipe_is_refused_without_blocking(tmp_path, function):
    fifo = tmp_path / "song.wav"
    os.mkfifo(fifo)
    blocked, outcome = call_with_timeout(function, fifo, timeout=10.0)
    unblock_fifo(fifo)
    assert not blocked, "reading a named pipe blocked"
    assert isinstance(outcome.get("error"), UmxError)
    assert str(outcome["error"]) == f"{fifo} is a named pipe, not a regular audio file"


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_character_devices_are_refused(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} missing")
    blocked, outcome = call_with_timeout(read_audio, device, timeout=10.0)
    assert not blocked
    assert str(outcome["error"]) == f"{device} is a character device, not a regular audio file"
    with pytest.raises(UmxError, match="character device"):
        audio_info(device)


def test_socket_is_refused(tmp_path):
    path = tmp_path / "s.wav"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(UmxError, match=r"s\.wav is a socket, not a regular audio file"):
            read_audio(path)


def wav_bytes(seconds: float = 2.0, rate: int = 8000, format: str = "WAV") -> bytes:
    """A stereo PCM_16 file of ``seconds`` in ``format``, as bytes."""
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(seconds=seconds, rate=rate).T, rate, "PCM_16", format=format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "format"), [("cut.wav", "WAV"), ("cut.wav", "RF64"), ("cut.aiff", "AIFF")]
)
@pytest.mark.parametrize("excerpt", [{}, {"start": 0.0, "duration": 0.1}])
def test_truncated_pcm_file_is_refused_with_the_missing_length(tmp_path, name, format, excerpt):
    data = wav_bytes(2.0, format=format)
    header = len(data) - 2 * 8000 * 4  # 2 s of 16-bit stereo at 8 kHz follow the header
    path = tmp_path / name
    path.write_bytes(data[: header + round(1.2 * 8000) * 4])
    with pytest.raises(UmxError) as error:
        read_audio(path, **excerpt)
    assert str(error.value) == (
        f"{path} is truncated: its header declares 2.00 s but the file holds 1.20 s"
    )
    with pytest.raises(UmxError, match="truncated"):
        audio_info(path)


def test_truncated_flac_is_refused_even_for_an_excerpt(tmp_path):
    path = tmp_path / "cut.flac"
    write_audio(path, tone(seconds=2.0), RATE)
    truncate(path, 0.5)
    for excerpt in ({}, {"start": 0.0, "duration": 0.1}):
        with pytest.raises(UmxError, match=r"cut\.flac is truncated: its header declares 2\.00 s"):
            read_audio(path, **excerpt)


def test_truncated_mp3_is_refused_even_for_an_excerpt(tmp_path, capfd):
    path = tmp_path / "cut.mp3"
    write_audio(path, tone(seconds=2.0), RATE)
    truncate(path, 0.5)
    for read in (read_audio, audio_info, lambda p: read_audio(p, duration=0.1)):
        with pytest.raises(UmxError, match=r"is truncated: its header declares 2\.00 s"):
            read(path)
    assert capfd.readouterr().err == ""  # refused before the MPEG decoder warns


@pytest.mark.parametrize("suffix", ["wav", "flac", "mp3"])
@pytest.mark.parametrize("name", ["input", "song.bin"])  # an upload, a name ffmpeg would take
def test_truncation_is_found_by_content_whatever_the_name(tmp_path, suffix, name):
    whole = tmp_path / f"whole.{suffix}"
    write_audio(whole, tone(seconds=2.0), RATE)
    path = tmp_path / name
    path.write_bytes(whole.read_bytes())
    decoded, _ = read_audio(path)
    assert decoded.shape[-1] == pytest.approx(2 * RATE, abs=1200)  # mp3 adds encoder delay
    truncate(path, 0.5)
    for read in (read_audio, audio_info):
        with pytest.raises(UmxError, match=rf"^{re.escape(str(path))} is truncated: its header"):
            read(path)


def test_wav_streamed_with_undeclared_size_is_read_whole(tmp_path):
    data = bytearray(wav_bytes(1.0))
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"  # RIFF and data sizes as ffmpeg leaves on a pipe
    assert data[36:40] == b"data"
    (tmp_path / "piped.wav").write_bytes(bytes(data))
    decoded, _ = read_audio(tmp_path / "piped.wav")
    assert decoded.shape == (2, 8000)


@needs_ffmpeg
def test_mp3_without_xing_tag_is_not_taken_for_truncated(tmp_path):
    # libsndfile estimates such a file's length from its size, a little too long: not a
    # declaration, so it must not be compared with what decodes
    write_audio(tmp_path / "source.wav", tone(seconds=2.0, rate=8000), 8000)
    path = tmp_path / "plain.mp3"
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(tmp_path / "source.wav")]
    command += ["-c:a", "libmp3lame", "-b:a", "64k", "-write_xing", "0", str(path)]
    subprocess.run(command, check=True)
    assert soundfile.info(path).frames > len(soundfile.read(path)[0])  # the estimate
    decoded, _ = read_audio(path)
    assert decoded.shape[1] == len(soundfile.read(path)[0])
    tail, _ = read_audio(path, start=1.9)
    torch.testing.assert_close(tail, decoded[:, int(1.9 * 8000) :])
    assert audio_info(path).nb_frames is None


def set_flac_total_samples(path, total: int) -> None:
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    fields = int.from_bytes(data[18:26], "big")
    data[18:26] = ((fields & ~(2**36 - 1)) | total).to_bytes(8, "big")
    path.write_bytes(bytes(data))


def test_huge_declared_lengths_are_refused_before_allocating(tmp_path):
    # Were buffers sized from these headers, numpy would fail for lack of memory (MemoryError,
    # not UmxError) or take hundreds of GiB.
    flac = tmp_path / "huge.flac"
    write_audio(flac, tone(seconds=0.5), RATE)
    set_flac_total_samples(flac, 2**36 - 1)
    with pytest.raises(UmxError, match=r"huge\.flac is truncated: .* holds 0\.50 s"):
        read_audio(flac)
    with pytest.raises(UmxError, match="truncated"):
        audio_info(flac)

    rf64 = bytearray(wav_bytes(0.5, format="RF64"))
    ds64 = rf64.index(b"ds64") + 8
    rf64[ds64 + 8 : ds64 + 16] = struct.pack("<Q", 2**40 * 4)  # data size: 2^40 frames
    (tmp_path / "huge.wav").write_bytes(bytes(rf64))
    with pytest.raises(UmxError, match=r"declares 137438953\.47 s but the file holds 0\.50 s"):
        read_audio(tmp_path / "huge.wav", duration=0.1)

    wav = bytearray(wav_bytes(0.5))
    wav[40:44] = struct.pack("<I", 0xFFFFFFF0)
    (tmp_path / "big.wav").write_bytes(bytes(wav))
    with pytest.raises(UmxError, match="truncated"):
        read_audio(tmp_path / "big.wav")


def test_flac_declaring_no_length_is_decoded_block_by_block(tmp_path):
    path = tmp_path / "stream.flac"
    write_audio(path, tone(seconds=0.5), RATE)
    expected, _ = read_audio(path)
    set_flac_total_samples(path, 0)  # libsndfile's length becomes 2^63 - 1
    assert audio_info(path).nb_frames is None
    decoded, _ = read_audio(path)
    torch.testing.assert_close(decoded, expected, rtol=0, atol=0)
    excerpt, _ = read_audio(path, start=0.1, duration=0.2)
    torch.testing.assert_close(excerpt, expected[:, 4410:13230], rtol=0, atol=0)


@pytest.mark.parametrize("extension", ["wav", "mp3"])
def test_reads_beyond_memory_are_refused(tmp_path, monkeypatch, extension):
    path = tmp_path / f"song.{extension}"
    write_audio(path, tone(seconds=2.0), RATE)
    monkeypatch.setattr(audio.reading, "_physical_memory", lambda: 100_000)
    with pytest.raises(UmxError, match=r"song\.\w+ is too long to read at once"):
        read_audio(path)
    assert read_audio(path, duration=0.1)[0].shape == (2, 4410)  # 35 kB fit


def make_random_mp3(path):
    path.write_bytes(np.random.default_rng(0).bytes(20000))


def make_random_wav(path):
    path.write_bytes(np.random.default_rng(1).bytes(20000))


def make_text_mp3(path):
    path.write_text("not audio at all\n" * 100)


def make_empty_file(path):
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("noise.mp3", make_random_mp3, "neither libsndfile nor ffmpeg knows its format"),
        ("noise.wav", make_random_wav, "neither libsndfile nor ffmpeg knows its format"),
        ("notes.mp3", make_text_mp3, "neither libsndfile nor ffmpeg knows its format"),
        ("empty.wav", make_empty_file, "the file is empty"),
        ("empty.mp3", make_empty_file, "the file is empty"),
    ],
)
@pytest.mark.parametrize("ffmpeg", [True, False])
def test_undecodable_files_are_named_without_decoder_noise(
    tmp_path, capfd, monkeypatch, name, make, reason, ffmpeg
):
    if ffmpeg and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    if not ffmpeg:
        monkeypatch.setattr(shutil, "which", lambda _: None)
        if reason.startswith("neither"):
            reason = "no WAV, AIFF, FLAC, Ogg or MP3 header"
    path = tmp_path / name
    make(path)
    for function in (read_audio, audio_info):
        with pytest.raises(UmxError) as error:
            function(path)
        assert str(error.value) == f"{path} is not decodable audio ({reason})"
    assert capfd.readouterr().err == ""


# Excerpt boundaries: int(seconds * rate), as open-unmix


def write_index_ramp(path, rate: int = 8000, nb_frames: int = 8000, **options) -> None:
    """A mono file whose sample i is i / 8192 (exact in float32)."""
    ramp = (np.arange(nb_frames) / 8192).astype(np.float32)
    soundfile.write(path, ramp, rate, subtype="FLOAT", **options)


def excerpt_indices(path, **excerpt) -> tuple[int, int]:
    """The first sample index and the length of an excerpt of an index ramp."""
    audio_excerpt, _ = read_audio(path, **excerpt)
    return round(float(audio_excerpt[0, 0]) * 8192), audio_excerpt.shape[1]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("ramp.wav", {}),
        pytest.param("ramp.caf", {"format": "CAF"}, marks=needs_ffmpeg),  # through ffmpeg
    ],
)
def test_excerpt_boundaries_truncate_like_open_unmix(tmp_path, name, options):
    path = tmp_path / name
    write_index_ramp(path, **options)
    assert excerpt_indices(path, duration=0.33337) == (0, 2666)  # int(2666.96); round: 2667
    assert excerpt_indices(path, start=0.00019, duration=0.1) == (1, 800)  # int(1.52); round: 2
    assert excerpt_indices(path, start=0.99995) == (7999, 1)


@needs_ffmpeg
def test_ffmpeg_excerpts_are_slices_of_the_whole_decode(tmp_path):
    path = tmp_path / "ramp.caf"
    write_index_ramp(path, nb_frames=8000, format="CAF")
    whole, _ = read_audio(path)
    np.testing.assert_array_equal(whole[0].numpy() * 8192, np.arange(8000))
    excerpt, _ = read_audio(path, start=0.5, duration=0.0625)
    torch.testing.assert_close(excerpt, whole[:, 4000:4500], rtol=0, atol=0)


def test_seconds_to_frames_truncates():
    assert seconds_to_frames(0.33337, 8000) == 2666
    assert seconds_to_frames(0.00019, 8000) == 1
    assert seconds_to_frames(6.0, 44100) == 264600


def test_read_frames_and_audio_info(tmp_path):
    signal = tone(seconds=1.0, rate=8000)
    write_audio(tmp_path / "song.flac", signal, 8000)
    assert audio_info(tmp_path / "song.flac") == AudioFileInfo(8000.0, 2, 8000)
    frames, rate = read_frames(tmp_path / "song.flac", 7900, 500)
    assert rate == 8000.0 and frames.is_contiguous()
    np.testing.assert_allclose(frames.numpy(), signal[:, 7900:], atol=2**-15)
    assert read_frames(tmp_path / "song.flac", 9000)[0].shape == (2, 0)
    write_audio(tmp_path / "song.mp3", signal, 8000)
    info = audio_info(tmp_path / "song.mp3")
    assert info.nb_frames == read_audio(tmp_path / "song.mp3")[0].shape[1]


@needs_ffmpeg
def test_audio_info_of_an_ffmpeg_format(tmp_path):
    write_audio(tmp_path / "source.wav", tone(nb_channels=1), RATE, subtype="FLOAT")
    ffmpeg_encode(tmp_path / "source.wav", tmp_path / "song.m4a")
    assert audio_info(tmp_path / "song.m4a") == AudioFileInfo(float(RATE), 1, tone().shape[1])
    # raw AAC (ADTS) declares no length: it is known only by decoding
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(tmp_path / "source.wav"), str(tmp_path / "song.aac")],
        check=True,
    )
    assert audio_info(tmp_path / "song.aac") == AudioFileInfo(float(RATE), 1, None)


@needs_ffmpeg
@pytest.mark.parametrize("seconds", [0.01, 1.0, 2.3])
def test_aac_padding_past_the_declared_length_is_dropped(tmp_path, seconds):
    signal = tone(seconds=seconds)
    write_audio(tmp_path / "source.wav", signal, RATE, subtype="FLOAT")
    ffmpeg_encode(tmp_path / "source.wav", tmp_path / "song.m4a")
    whole, _ = read_audio(tmp_path / "song.m4a")
    assert whole.shape == signal.shape
    tail, _ = read_audio(tmp_path / "song.m4a", start=seconds - 0.005, duration=1.0)
    torch.testing.assert_close(tail, whole[:, -tail.shape[1] :], rtol=0, atol=0)
    assert tail.shape[1] == signal.shape[1] - seconds_to_frames(seconds - 0.005, RATE)


# File names at the operating system's limits, signals


@pytest.mark.parametrize("clip", ["rescale", "clamp"])
@pytest.mark.parametrize("stem", ["a" * 251, "é" * 125 + "a"])  # 255 bytes with ".wav"
def test_names_at_name_max_are_written(tmp_path, clip, stem):
    name = f"{stem}.wav"
    assert len(os.fsencode(name)) == 255
    report = write_audio(tmp_path / name, tone() * 4, RATE, clip=clip)
    assert report.action == ("rescaled" if clip == "rescale" else "clamped")
    assert only_files(tmp_path) == [name]
    assert read_audio(tmp_path / name)[0].shape == (2, RATE)


def test_names_beyond_name_max_are_one_line_errors(tmp_path):
    name = "a" * 252 + ".wav"
    with pytest.raises(UmxError) as error:
        write_audio(tmp_path / name, tone(), RATE)
    assert str(error.value) == (
        f"cannot write {tmp_path / name}: its name is 256 bytes long, more than the 255 the "
        "file system allows; give a shorter --filename"
    )
    with pytest.raises(UmxError, match=r"cannot be read \(File name too long\)"):
        read_audio(tmp_path / name)
    with pytest.raises(UmxError, match="File name too long"):
        audio_info(tmp_path / name)
    assert only_files(tmp_path) == []


def test_hidden_names_stay_within_name_max():
    for stem in ("a" * 251, "é" * 125 + "a", os.fsdecode(b"\xff" * 251)):
        for name in audio.writing._hidden_names(Path(f"/music/{stem}.flac"), 255):
            assert len(os.fsencode(name.name)) <= 255
            assert name.name.startswith(".") and name.suffix in (".flac", ".wav")
            name.name.encode("utf-8", "surrogateescape")  # no character cut in half


@pytest.mark.parametrize(
    "extension",
    ["wav", "flac", pytest.param("mp3-ffmpeg", marks=needs_ffmpeg)],
)
def test_non_utf8_names_read_and_write(tmp_path, monkeypatch, extension):
    if extension == "mp3-ffmpeg":
        without_libsndfile_mp3(monkeypatch)
        extension = "mp3"
    path = tmp_path / os.fsdecode(b"\xff\xfe song." + extension.encode())
    write_audio(path, tone(), RATE)
    assert os.listdir(os.fsencode(tmp_path)) == [b"\xff\xfe song." + extension.encode()]
    decoded, _ = read_audio(path)
    assert correlation(decoded.numpy(), tone()) > 0.99
    assert audio_info(path).nb_channels == 2
    with pytest.raises(UmxError) as error:
        write_audio(path, tone(), RATE)
    message = str(error.value)
    message.encode("utf-8")  # printable: no UnicodeEncodeError
    assert (
        message
        == f"{tmp_path}/\ufffd\ufffd song.{extension} already exists (use --force to overwrite)"
    )


def test_messages_about_undecodable_names_are_printable(tmp_path):
    path = tmp_path / os.fsdecode(b"\xe9t\xe9\n.wav")  # Latin-1 bytes and a newline
    path.write_bytes(b"")
    with pytest.raises(UmxError) as error:
        read_audio(path)
    assert (
        str(error.value)
        == f"{tmp_path}/\ufffdt\ufffd\\n.wav is not decodable audio (the file is empty)"
    )


class Terminated(Exception):
    """What a SIGTERM handler of the CLI raises in the main thread."""


def test_signal_raised_exception_leaves_nothing(tmp_path):
    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with pytest.raises(Terminated), AudioWriter(tmp_path / "vocals.wav", RATE, 2) as writer:
            writer.write(tone())
            signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert only_files(tmp_path) == []


def stems_written_together(folder, stop):
    """Write four stems (two of them rescaled) through `finish_together`, calling `stop(kind,
    index)` before each writer's `_complete` (kind "complete") and `_commit` ("commit")."""
    complete, commit = AudioWriter._complete, AudioWriter._commit
    calls = {"complete": 0, "commit": 0}

    def step(kind, method):
        def run(writer):
            stop(kind, calls[kind])
            calls[kind] += 1
            method(writer)

        return run

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AudioWriter, "_complete", step("complete", complete))
        patch.setattr(AudioWriter, "_commit", step("commit", commit))
        with contextlib.ExitStack() as stack:
            writers = [
                stack.enter_context(AudioWriter(folder / f"{name}.wav", RATE, 2))
                for name in ("vocals", "drums", "bass", "other")
            ]
            for index, writer in enumerate(writers):
                writer.write(tone() * (3.0 if index % 2 else 0.5))
            finish_together(writers)
    return writers


def test_stems_finished_together_are_written_once(tmp_path):
    writers = stems_written_together(tmp_path, lambda step, index: None)
    assert only_files(tmp_path) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert [writer.report.action for writer in writers] == ["none", "rescaled"] * 2
    drums, _ = soundfile.read(tmp_path / "drums.wav", always_2d=True)
    assert drums.shape[0] == RATE and abs(float(np.abs(drums).max()) - RESCALE_PEAK) < 1e-4


@pytest.mark.parametrize("kind", ["complete", "commit"])
def test_stems_finished_together_are_all_in_place_or_none(tmp_path, kind):
    """A stop while the stems are being rescaled leaves none of them; a failure between two
    renames removes those renamed before it."""

    def stop(step, index):
        if step == kind and index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stems_written_together(tmp_path, stop)
    assert only_files(tmp_path) == []


def test_a_stop_signal_while_stems_are_renamed_waits_for_the_last(tmp_path):
    """Ctrl-C between two renames is held until every stem is in place."""

    def stop(step, index):
        if step == "commit" and index == 1:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        stems_written_together(tmp_path, stop)
    assert only_files(tmp_path) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    drums, _ = soundfile.read(tmp_path / "drums.wav", always_2d=True)
    assert abs(float(np.abs(drums).max()) - RESCALE_PEAK) < 1e-4  # rescaled, and whole
    assert drums.shape[0] == RATE


STEMS = ("vocals", "drums", "bass", "other")


def finish_stems(folder, gain: float) -> None:
    """One run's four stems (`tone() * gain`) put in place with `force`, all together."""
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(AudioWriter(folder / f"{name}.wav", RATE, 2, force=True))
            for name in STEMS
        ]
        for writer in writers:
            writer.write(tone() * gain)
        finish_together(writers)


def stem_peaks(folder) -> list[float]:
    return [
        round(float(np.abs(soundfile.read(folder / f"{name}.wav")[0]).max()), 2) for name in STEMS
    ]


def test_a_set_of_stems_waits_while_another_run_puts_files_in_its_folder(tmp_path):
    """Two runs with --force finishing one input's stems at once left a mix of their sets: the
    renames are now made holding the folder's lock (held here as by the other run), so one
    whole set is put in place after the other."""
    finish_stems(tmp_path, 0.5)  # the other run's set
    failures = []

    def finish() -> None:
        try:
            finish_stems(tmp_path, 1.0)
        except BaseException as error:
            failures.append(error)

    lock = hold_lock(tmp_path)
    try:
        thread = threading.Thread(target=finish)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive()  # waiting for the lock
        assert stem_peaks(tmp_path) == [0.2] * 4  # the other run's set, untouched
    finally:
        lock.close()
    thread.join(30)
    assert not thread.is_alive() and not failures
    assert stem_peaks(tmp_path) == [0.4] * 4
    assert only_files(tmp_path) == sorted(f"{name}.wav" for name in STEMS)


def test_a_folder_locked_too_long_is_one_line_and_changes_nothing(tmp_path, monkeypatch):
    finish_stems(tmp_path, 0.5)
    monkeypatch.setattr(audio.writing, "FOLDER_WAIT", 0.2)
    lock = hold_lock(tmp_path)
    try:
        with pytest.raises(UmxError) as caught:
            finish_stems(tmp_path, 1.0)
    finally:
        lock.close()
    assert str(caught.value) == (
        f"cannot write {tmp_path / 'vocals.wav'}: another run has been putting files in "
        f"{tmp_path} for over 0.2 s; wait for it to end, then run this again"
    )
    assert stem_peaks(tmp_path) == [0.2] * 4
    assert only_files(tmp_path) == sorted(f"{name}.wav" for name in STEMS)


def test_discard_twice_is_harmless(tmp_path):
    with pytest.raises(RuntimeError), AudioWriter(tmp_path / "v.flac", RATE, 2) as writer:
        writer.write(tone())
        writer._discard()
        writer._discard()
        raise RuntimeError
    assert only_files(tmp_path) == []


@needs_ffmpeg
def test_interrupted_ffmpeg_encoder_leaves_nothing(tmp_path, monkeypatch):
    without_libsndfile_mp3(monkeypatch)
    with pytest.raises(KeyboardInterrupt), AudioWriter(tmp_path / "v.mp3", RATE, 2) as writer:
        writer.write(tone(seconds=3.0))
        raise KeyboardInterrupt
    assert only_files(tmp_path) == []


def ogg_file(path, frames: np.ndarray, rate: int = RATE) -> None:
    soundfile.write(path, frames.T, rate, format="OGG", subtype="VORBIS")


def found_after(decoded: torch.Tensor, start: int, reference: np.ndarray) -> bool:
    """Whether 0.2 s of ``reference`` (from 0.1 s) are in ``decoded`` within four MPEG frames
    after ``start``: decoders add frames where a joined file starts."""
    piece = reference[:, RATE // 10 : RATE // 10 + RATE // 5]
    return any(
        correlation(decoded[:, start + lag + RATE // 10 :].numpy(), piece) > 0.999
        for lag in range(4 * MP3_FRAME)
    )


@needs_ffmpeg
def test_chained_ogg_is_read_whole(tmp_path):
    # libsndfile stops at the end of the first logical stream: the second half was dropped
    first, second = tone(seconds=1.0), tone(seconds=1.0)[::-1].copy()
    ogg_file(tmp_path / "a.ogg", first)
    ogg_file(tmp_path / "b.ogg", second)
    path = tmp_path / "chained.ogg"
    path.write_bytes((tmp_path / "a.ogg").read_bytes() + (tmp_path / "b.ogg").read_bytes())
    decoded, rate = read_audio(path)
    assert rate == RATE
    assert decoded.shape[1] == pytest.approx(2 * RATE, abs=MP3_FRAME)
    assert correlation(decoded[:, :RATE].numpy(), first) > 0.999
    assert found_after(decoded, RATE - MP3_FRAME, second)
    assert audio_info(path).nb_frames is None  # not known without decoding it all
    single, _ = read_audio(tmp_path / "a.ogg")  # a single stream stays with libsndfile
    assert single.shape == (2, RATE)
    assert audio_info(tmp_path / "a.ogg").nb_frames == RATE


@needs_ffmpeg
def test_joined_mp3_files_are_read_whole(tmp_path, capfd):
    # the first file's Xing tag declares its own length, which libsndfile kept
    first, second = tone(seconds=1.0), tone(seconds=1.0)[::-1].copy()
    write_audio(tmp_path / "a.mp3", first, RATE)
    write_audio(tmp_path / "b.mp3", second, RATE)
    path = tmp_path / "joined.mp3"
    path.write_bytes((tmp_path / "a.mp3").read_bytes() + (tmp_path / "b.mp3").read_bytes())
    decoded, _ = read_audio(path)
    assert decoded.shape[1] == pytest.approx(2 * RATE, abs=4 * MP3_FRAME)
    assert found_after(decoded, RATE, second)
    assert audio_info(path).nb_frames is None
    assert capfd.readouterr().err == ""  # no "Xing stream size off" from libsndfile's decoder


@pytest.mark.parametrize("suffix", ["ogg", "mp3"])
def test_joined_files_without_ffmpeg_are_refused_not_cut(tmp_path, monkeypatch, suffix):
    one = tmp_path / f"one.{suffix}"
    if suffix == "ogg":
        ogg_file(one, tone(seconds=0.5))
    else:
        write_audio(one, tone(seconds=0.5), RATE)
    path = tmp_path / f"joined.{suffix}"
    path.write_bytes(one.read_bytes() * 2)
    monkeypatch.setattr(audio.reading, "_ffmpeg_tools", lambda: None)
    kind = "a chained Ogg file" if suffix == "ogg" else "mp3 files joined together"
    for read in (read_audio, audio_info):
        with pytest.raises(UmxError) as error:
            read(path)
        assert str(error.value) == (
            f"{path} is {kind}: only ffmpeg reads it whole, but ffmpeg is not installed "
            "(apt-get install ffmpeg)"
        )


def test_g721_wav_is_read_though_it_cannot_seek(tmp_path):
    """libsndfile reads G.721 ADPCM but cannot seek in it, not even to the start: the file was
    refused as "not decodable audio (Seek attempted on unseekable file type)"."""
    path = tmp_path / "g721.wav"
    soundfile.write(path, tone(1, seconds=1.0)[0], RATE, subtype="G721_32")
    decoded, rate = read_audio(path)
    assert rate == RATE and decoded.shape[0] == 1
    assert decoded.shape[1] == pytest.approx(RATE, abs=120)  # whole G.721 blocks
    assert correlation(decoded.numpy(), tone(1, seconds=1.0)) > 0.95
    excerpt, _ = read_audio(path, start=0.25, duration=0.5)
    torch.testing.assert_close(excerpt, decoded[:, 11025 : 11025 + 22050], rtol=0, atol=0)
