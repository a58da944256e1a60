"""Writing audio files: wav, flac, mp3; the clip policy; files that appear whole or not at all.

Blocks go to a hidden temporary file beside the target, renamed into place once complete;
on an error or an interruption every temporary file is removed. mp3 is written by libsndfile
where it has MPEG support, else by ``ffmpeg``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from umx.audio.messages import _FFMPEG_MISSING, _ffmpeg_failure, display_path, io_errors
from umx.audio.reading import _LIBSNDFILE_HAS_MP3
from umx.defaults import CLIP_POLICIES, SUBTYPES
from umx.errors import UmxError, already_exists, os_reason
from umx.files import HeldLock, hold_lock, rename_no_replace, unheld
from umx.folders import unwritable
from umx.workers import stops_deferred

DEFAULT_SUBTYPE = {extension: subtypes[0] for extension, subtypes in SUBTYPES.items()}
"""The subtype written when none is asked for, per extension."""

_CLIP_ACTIONS = {"rescale": "rescaled", "clamp": "clamped", "none": "none"}
SILENCED_BELOW = {"PCM_16": 2.0**-15, "PCM_24": 2.0**-23}
"""The step of each integer subtype: a signal that never reaches it is written as zeros and
single steps, all but silence."""

RESCALE_PEAK = 32767 / 32768
"""Peak of a rescaled signal: the largest 16-bit sample, just below 1.0."""

BLOCK_SECONDS = 1.0
"""Length of the blocks a staged signal is converted in, so it never sits whole in memory."""

FFMPEG_MP3_QUALITY = "2"
"""LAME VBR quality (``-q:a``) when ffmpeg encodes mp3: about 190 kbit/s."""


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
        action: ``"none"``, ``"rescaled"``, ``"clamped"``, or ``"silenced"``: the signal was
            quieter than one step of the file's integer subtype, which holds all but silence.
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


_TOKEN_BYTES = 4
"""Random bytes in a temporary name (written as twice as many hex digits)."""


def _hidden_stem(path: Path, name_max: int) -> tuple[str, tuple[str, str]]:
    """The stem and the two endings of ``path``'s temporary names (see :func:`_hidden_names`)."""
    tails = (f".tmp{path.suffix}", ".stage.wav")
    room = name_max - len("..") - 2 * _TOKEN_BYTES - max(len(os.fsencode(tail)) for tail in tails)
    stem = path.stem
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return stem, tails


def _hidden_names(path: Path, name_max: int) -> tuple[Path, Path]:
    """Two temporary names beside ``path``, for the file being written and the staged signal.

    They are ``.{stem}.{token}.tmp{suffix}`` and ``.{stem}.{token}.stage.wav``, the stem cut so
    both fit in ``name_max`` bytes: any valid target name gives valid temporary names.
    """
    stem, tails = _hidden_stem(path, name_max)
    hidden = f".{stem}.{secrets.token_hex(_TOKEN_BYTES)}"
    return path.with_name(hidden + tails[0]), path.with_name(hidden + tails[1])


def leftover_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files that writers of ``path`` left beside it when they were killed
    before they could clean up (SIGKILL, the out-of-memory killer, a lost machine): an
    :class:`AudioWriter` removes its own on any exception, so these exist only after such a
    death. A live writer holds the lock (``flock``) of each of its files: those are not
    leftovers. Where locks cannot be taken (Windows), none are known to be leftovers.

    Args:
        path: a file that :class:`AudioWriter` writes.

    Returns:
        the hidden temporary files of ``path`` in its folder that no writer holds, sorted; none
        if the folder is missing.
    """
    path = Path(path)
    stem, tails = _hidden_stem(path, _name_max(path.parent))
    pattern = re.compile(
        re.escape(f".{stem}.")
        + f"[0-9a-f]{{{2 * _TOKEN_BYTES}}}"
        + "(?:"
        + "|".join(re.escape(tail) for tail in tails)
        + ")"
    )
    return unheld(path.parent, pattern)


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


MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
"""The sample rates MPEG-1, 2 and 2.5 layer III has, in Hz."""

FLAC_MAX_RATE = 655350
"""The highest sample rate a FLAC file holds, in Hz."""


def _rate_refusal(extension: str, rate: int) -> str | None:
    """What a format says of a sample rate it cannot hold (``None`` when it holds it)."""
    if extension == "mp3" and rate not in MP3_RATES:
        return f"mp3 takes only {', '.join(map(str, MP3_RATES[:-1]))} or {MP3_RATES[-1]} Hz"
    if extension == "flac" and rate > FLAC_MAX_RATE:
        return f"flac takes at most {FLAC_MAX_RATE} Hz"
    return None


class AudioWriter:
    """Writes a long signal block by block, into a temporary file renamed into place at the end.

    Used as a context manager: on a clean exit the file appears whole, and :attr:`report` says
    what the clip policy did; on an exception (a signal's included) every temporary file is
    removed and nothing is written. The checks a user can fail (existing file, unwritable
    directory, bad options, a name too long) run at construction, before any long computation;
    without ``force`` the file is put in place only if none has appeared since (another run's
    is kept, and this one fails as if it had been there at construction).

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
        UmxError: the file exists without ``force``, its folder is missing or unwritable, its
            name is too long, or the format, subtype, sample rate (mp3 has a few, flac none above
            655350 Hz) or clip policy is not supported; on exit,
            the file appeared meanwhile and ``force`` is not set.
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
        self._locks: list[HeldLock] = []

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
        if refusal := _rate_refusal(self.extension, self.sample_rate):  # libsndfile's is cryptic
            raise UmxError(
                f"cannot write {shown} at {self.sample_rate} Hz: {refusal}; use --ext wav, or "
                "leave out --match-input to write at the model's rate"
            )
        if self.clip not in CLIP_POLICIES or (self.clip == "none" and self.subtype != "FLOAT"):
            raise UmxError(
                f"cannot write {shown} with clip={self.clip!r}: use rescale or clamp "
                "(none only with the FLOAT subtype)"
            )
        name_max, length = _name_max(directory), len(os.fsencode(path.name))
        if length > name_max:
            raise UmxError(
                f"cannot write {shown}: its name is {length} bytes long, more than the "
                f"{name_max} the file system allows; give a shorter --filename"
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
            raise already_exists(self.path)
        if not os.path.isdir(directory):
            raise UmxError(
                f"cannot write {shown}: its folder {display_path(directory)} does not exist; "
                "create it, or write elsewhere"
            )
        if (refusal := unwritable(directory)) is not None:
            raise UmxError(
                f"cannot write {shown}: its folder {display_path(directory)} is not writable "
                f"({os_reason(refusal)})"
            )
        return name_max

    def __enter__(self) -> AudioWriter:
        try:
            for leftover in leftover_temporaries(self.path):  # of writers killed outright
                leftover.unlink(missing_ok=True)
            with self._io_errors():
                self._open()
        except BaseException:
            self._discard()
            raise
        return self

    def _open(self) -> None:
        # Each temporary file is created locked, and stays so while this writer lives: one
        # that is not was left by a writer killed outright (see `leftover_temporaries`).
        for path in (self._target, self._staged) if self.clip == "rescale" else (self._target,):
            if (lock := hold_lock(path)) is not None:
                self._locks.append(lock)
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
        with self._io_errors():
            if self._staging is not None:
                self._staging.write(frames)
            elif self.clip == "clamp":
                self._sink.write(np.clip(frames, -1.0, 1.0))
            else:
                self._sink.write(frames)

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None and self.report is None:  # not finished with others already
                with self._io_errors():
                    self._finish()
        finally:
            if self.report is None:  # failed, here or in the with block
                self._discard()

    def _finish(self) -> None:
        """Applies the rescaling if staged, closes the file and renames it into place."""
        self._complete()
        self._commit()

    def _complete(self) -> None:
        """Applies the rescaling if staged and closes the temporary file: all that is left is
        to rename it into place (`_commit`)."""
        if self._staging is not None:
            self._staging.close()
            self._staging = None
            block_size = max(1, round(BLOCK_SECONDS * self.sample_rate))
            with soundfile.SoundFile(os.fsencode(self._staged)) as staged:
                for frames in staged.blocks(block_size, dtype="float32"):
                    self._sink.write(frames * np.float32(self._gain))
            self._staged.unlink()
        self._sink.close()
        self._sink = None

    def _commit(self) -> None:
        """Renames the completed temporary file into place and sets :attr:`report`."""
        try:  # without force, a file another run wrote meanwhile is kept
            (os.replace if self.force else rename_no_replace)(self._target, self.path)
        except FileExistsError:
            raise already_exists(self.path) from None
        self._release()
        action = _CLIP_ACTIONS[self.clip] if self._peak > 1.0 else "none"
        if 0 < self._peak < SILENCED_BELOW.get(self.subtype, 0.0):
            action = "silenced"
        self.report = WriteReport(self.path, self._peak, action, self._gain)

    def _io_errors(self) -> contextlib.AbstractContextManager[None]:
        """`io_errors` of this file: an operating-system or libsndfile error while writing it
        becomes one line, "cannot write PATH: why"."""
        return io_errors(f"cannot write {display_path(self.path)}", self.path.parent)

    @property
    def _gain(self) -> float:
        """What the samples are multiplied by: `RESCALE_PEAK` over the peak when it passed full
        scale and the policy rescales, else 1."""
        return RESCALE_PEAK / self._peak if self._peak > 1.0 and self.clip == "rescale" else 1.0

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
                self._release()
                for handle in (staging, sink):
                    if isinstance(handle, soundfile.SoundFile):
                        with contextlib.suppress(Exception):
                            handle.close()

    def _release(self) -> None:
        """Releases the locks of the temporary files (once they are gone or renamed)."""
        locks, self._locks = self._locks, []
        for lock in locks:
            lock.close()


FOLDER_WAIT = 60.0
"""Seconds `finish_together` waits for the lock of a folder that another run puts files in."""


def finish_together(writers: Iterable[AudioWriter]) -> None:
    """Put the files of open `writers` (the stems of one input) in place all together, or none.

    Call it last in the writers' `with` block. The slow part (a rescaled file is written again
    from its staged samples) is done for every file first; a failure or a stop there leaves
    none, as each writer's exit removes its temporary files. The renames follow, with the stop
    signals held (`umx.workers.stops_deferred`), so a Ctrl-C cannot land between two of them;
    a rename that fails (a file another run wrote meanwhile) removes the files renamed before it.
    They are made holding the lock of every folder they go to (`_folders_held`), so that two
    runs that put the same files in place at once (with `force`) do it one after the other:
    the last one's set is left whole, never a mix of the two.

    Raises:
        UmxError: a file cannot be written, appeared meanwhile without `force`, or another run
            held the lock of its folder for longer than `FOLDER_WAIT`.
    """
    writers = list(writers)
    for writer in writers:
        with writer._io_errors():
            writer._complete()
    renamed: list[AudioWriter] = []
    with _folders_held(writers), stops_deferred():
        try:
            for writer in writers:
                with writer._io_errors():
                    writer._commit()
                renamed.append(writer)
        except BaseException:
            for writer in renamed:
                writer.path.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def _folders_held(writers: list[AudioWriter]) -> Iterator[None]:
    """Hold the lock (`umx.files.hold_lock`) of each folder the `writers`' files go to, for the
    block, waiting for another run that holds one: taken in the same order by every run (by
    device and inode, however the folder is named), so none waits for another for ever.

    Raises:
        UmxError: another run holds one for longer than `FOLDER_WAIT`.
    """
    folders: dict[tuple[int, int], AudioWriter] = {}
    for writer in writers:
        with writer._io_errors():
            found = os.stat(writer.path.parent)
        folders.setdefault((found.st_dev, found.st_ino), writer)
    with contextlib.ExitStack() as held:
        for key in sorted(folders):
            writer = folders[key]
            with writer._io_errors():
                lock = hold_lock(writer.path.parent, wait=FOLDER_WAIT)
            if lock is None:
                raise UmxError(
                    f"cannot write {display_path(writer.path)}: another run has been putting "
                    f"files in {display_path(writer.path.parent)} for over {FOLDER_WAIT:g} s; "
                    "wait for it to end, then run this again"
                )
            held.callback(lock.close)
        yield


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
