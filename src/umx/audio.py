"""Audio files in and out: reading, writing, resampling and the channel policy.

Every waveform here has the shape ``(nb_channels, nb_timesteps)``. The module knows nothing of
models: callers say how many channels they want and at which rate.

Formats libsndfile reads (wav, flac, ogg, aiff, mp3) go through ``soundfile``; anything else
(m4a, mp4, aac, the mixture of a stem .mp4) is decoded by ``ffmpeg`` when it is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
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
# libsndfile's MPEG decoder returns silence after a seek in some files (those its own encoder
# writes, for one), and soundfile seeks after every read, so these are decoded in a single read.
_UNRELIABLE_SEEK_FORMATS = frozenset({"MP3"})
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
    except (soundfile.LibsndfileError, OSError) as error:
        raise UmxError(f"{message} ({error})") from error


def _ffmpeg_failure(stderr: bytes, returncode: int) -> str:
    """The last line ffmpeg printed, or its exit status when it printed nothing."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {returncode}"


def _run_ffmpeg(command: list[str], path: Path) -> bytes:
    """Runs ffmpeg or ffprobe and returns its standard output, or raises naming ``path``."""
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        failure = _ffmpeg_failure(result.stderr, result.returncode)
        raise UmxError(f"{path} could not be decoded by ffmpeg ({failure})")
    return result.stdout


def _read_libsndfile(path: Path, start: float, duration: float | None) -> tuple[np.ndarray, int]:
    """Reads an excerpt with soundfile; returns ``(nb_timesteps, nb_channels)`` and the rate."""
    with _user_error(f"{path} could not be read as audio"), soundfile.SoundFile(path) as file:
        rate = file.samplerate
        first = min(round(start * rate), file.frames)
        wanted = file.frames - first
        if duration is not None:
            wanted = min(round(duration * rate), wanted)
        if file.format in _UNRELIABLE_SEEK_FORMATS:
            audio = file.read(first + wanted, dtype="float32", always_2d=True)[first:]
        else:
            file.seek(first)
            audio = file.read(wanted, dtype="float32", always_2d=True)
    if len(audio) < wanted:
        raise UmxError(f"{path} is truncated: {len(audio)} of {wanted} expected frames decoded")
    return audio, rate


def _read_ffmpeg(path: Path, start: float, duration: float | None) -> tuple[np.ndarray, int]:
    """Decodes the first audio stream's excerpt with ffmpeg; same return as `_read_libsndfile`.

    The excerpt is cut after decoding (output-side ``-ss``/``-t``): seeking in the input is
    sample-exact for neither AAC nor mp3 in ffmpeg.
    """
    ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
    if ffmpeg is None or ffprobe is None:
        raise UmxError(f"{path} can only be read with ffmpeg, but {_FFMPEG_MISSING}")
    source = f"file:{path}"
    probe = [ffprobe, "-v", "error", "-select_streams", "a:0"]
    probe += ["-show_entries", "stream=channels,sample_rate", "-of", "json", "-i", source]
    streams = json.loads(_run_ffmpeg(probe, path)).get("streams")
    if not streams:
        raise UmxError(f"{path} has no audio stream")
    nb_channels, rate = int(streams[0]["channels"]), int(streams[0]["sample_rate"])
    decode = [
        ffmpeg,
        "-nostdin",
        "-v",
        "error",
        "-i",
        source,
        "-map",
        "0:a:0",
        "-ss",
        f"{start:.6f}",
    ]
    if duration is not None:
        decode += ["-t", f"{duration:.6f}"]
    decode += ["-f", "f32le", "-ac", str(nb_channels), "-ar", str(rate), "pipe:1"]
    raw = _run_ffmpeg(decode, path)
    return np.frombuffer(raw, dtype=np.float32).reshape(-1, nb_channels).copy(), rate


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
                f"{path}: {audio.shape[0]} channels; umx separates mono or stereo audio "
                "(use --downmix to average the channels)"
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
        start: where the excerpt starts, in seconds.
        duration: length of the excerpt in seconds; ``None`` reads to the end.
        sample_rate: resample to this rate (soxr); ``None`` keeps the file's rate.
        nb_channels: the channel count wanted, 1 or 2. Mono input is duplicated to stereo and
            stereo is averaged to mono; ``None`` keeps the file's channels.
        downmix: average files with more than two channels to mono instead of refusing them.

    Returns:
        The audio, shape ``(nb_channels, nb_timesteps)``, and its sample rate.

    Raises:
        UmxError: the file is missing, not audio, truncated, empty (or the excerpt is), holds NaN
            or infinite samples, has more than two channels without ``downmix``, or the excerpt
            is invalid.
    """
    path = Path(path)
    if nb_channels not in (None, 1, 2):
        raise ValueError(f"nb_channels must be 1, 2 or None, not {nb_channels}")
    if start < 0 or (duration is not None and duration <= 0):
        raise UmxError(
            f"{path}: the excerpt needs start >= 0 and duration > 0 (got {start}, {duration})"
        )
    if not path.exists():
        raise UmxError(f"{path} does not exist")
    if path.is_dir():
        raise UmxError(f"{path} is a directory, not an audio file")
    if path.suffix.lower().lstrip(".") in _LIBSNDFILE_EXTENSIONS:
        audio, rate = _read_libsndfile(path, start, duration)
    else:
        audio, rate = _read_ffmpeg(path, start, duration)
    if len(audio) == 0:
        if start == 0 and duration is None:
            raise UmxError(f"{path} contains no audio")
        length = "" if duration is None else f" for {duration} s"
        raise UmxError(f"{path} has no audio from {start} s{length}")
    if not np.isfinite(audio).all():
        raise UmxError(f"{path} contains NaN or infinite samples")
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


class _FfmpegMp3Sink:
    """Encodes float32 frames to mp3 through ffmpeg, for libsndfile builds without MPEG."""

    def __init__(self, target: Path, sample_rate: int, nb_channels: int, path: Path) -> None:
        self._path = path
        command = [shutil.which("ffmpeg") or "ffmpeg", "-v", "error", "-y", "-f", "f32le"]
        command += ["-ar", str(sample_rate), "-ac", str(nb_channels), "-i", "pipe:0"]
        command += ["-codec:a", "libmp3lame", "-q:a", FFMPEG_MP3_QUALITY, "-f", "mp3"]
        command += [f"file:{target}"]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frames: np.ndarray) -> None:
        try:
            self._process.stdin.write(frames.astype("<f4").tobytes())
        except BrokenPipeError:
            self.close()
            raise

    def close(self) -> None:
        _, error = self._process.communicate()
        if self._process.returncode != 0:
            failure = _ffmpeg_failure(error, self._process.returncode)
            raise UmxError(f"ffmpeg could not write {self._path} ({failure})")


class AudioWriter:
    """Writes a long signal block by block, into a temporary file renamed into place at the end.

    Used as a context manager: on a clean exit the file appears whole, and :attr:`report` says
    what the clip policy did; on an exception every temporary file is removed and nothing is
    written. The checks a user can fail (existing file, unwritable directory, bad options) run
    at construction, before any long computation.

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
        UmxError: the file exists without ``force``, its directory is missing or unwritable, or
            the format, subtype or clip policy is not supported.
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
        self._check()
        self._peak = 0.0
        # Hidden names beside the target, so the final rename stays on one file system.
        hidden = f".{self.path.stem}.{secrets.token_hex(4)}"
        self._target = self.path.with_name(f"{hidden}.tmp{self.path.suffix}")
        self._staged = self.path.with_name(f"{hidden}.stage.wav")
        self._sink: soundfile.SoundFile | _FfmpegMp3Sink | None = None
        self._staging: soundfile.SoundFile | None = None

    def _check(self) -> None:
        path, directory = self.path, self.path.parent
        if self.extension not in SUBTYPES:
            raise UmxError(f"cannot write {path}: use one of the extensions {', '.join(SUBTYPES)}")
        if self.extension == "mp3" and not _can_write_mp3():
            raise UmxError(f"cannot write {path}: libsndfile lacks mp3 and {_FFMPEG_MISSING}")
        if self.subtype not in SUBTYPES[self.extension]:
            allowed = ", ".join(SUBTYPES[self.extension])
            raise UmxError(f"cannot write {path} as {self.subtype}: use one of {allowed}")
        if self.clip not in CLIP_POLICIES or (self.clip == "none" and self.subtype != "FLOAT"):
            raise UmxError(
                f"cannot write {path} with clip={self.clip!r}: use rescale or clamp "
                "(none only with the FLOAT subtype)"
            )
        if path.is_dir():
            raise UmxError(f"cannot write {path}: it is a directory")
        if path.exists() and not self.force:
            raise UmxError(f"{path} already exists (use --force to overwrite)")
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise UmxError(f"cannot write {path}: directory {directory} is missing or unwritable")

    def __enter__(self) -> AudioWriter:
        try:
            with _user_error(f"cannot write {self.path}"):
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
                self._target,
                "w",
                samplerate=self.sample_rate,
                channels=self.nb_channels,
                subtype=self.subtype,
                format=self.extension.upper(),
            )
        if self.clip == "rescale":
            self._staging = soundfile.SoundFile(
                self._staged,
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
            raise UmxError(f"cannot write {self.path}: the audio holds NaN or infinite samples")
        self._peak = max(self._peak, float(np.abs(frames).max(initial=0.0)))
        with _user_error(f"cannot write {self.path}"):
            if self._staging is not None:
                self._staging.write(frames)
            elif self.clip == "clamp":
                self._sink.write(np.clip(frames, -1.0, 1.0))
            else:
                self._sink.write(frames)

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            with _user_error(f"cannot write {self.path}"):
                self._finish()
        except BaseException:
            self._discard()
            raise

    def _finish(self) -> None:
        """Applies the rescaling if staged, closes the file and renames it into place."""
        overflow = self._peak > 1.0
        gain = RESCALE_PEAK / self._peak if overflow and self.clip == "rescale" else 1.0
        if self._staging is not None:
            self._staging.close()
            self._staging = None
            block_size = max(1, round(BLOCK_SECONDS * self.sample_rate))
            with soundfile.SoundFile(self._staged) as staged:
                for frames in staged.blocks(block_size, dtype="float32"):
                    self._sink.write(frames * np.float32(gain))
            self._staged.unlink()
        self._sink.close()
        self._sink = None
        os.replace(self._target, self.path)
        action = _CLIP_ACTIONS[self.clip] if overflow else "none"
        self.report = WriteReport(self.path, self._peak, action, gain)

    def _discard(self) -> None:
        """Closes and removes every temporary file; used when writing fails."""
        for handle in (self._staging, self._sink):
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()
        self._staging = self._sink = None
        self._target.unlink(missing_ok=True)
        self._staged.unlink(missing_ok=True)


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
