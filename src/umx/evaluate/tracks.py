"""MUSDB18 test sets: the sources and targets, the tracks read by `musdb`, and their audio held in
memory while a track is evaluated."""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from umx.audio import MAX_CHANNELS, audio_info, read_audio
from umx.data.layout import check_stem_streams
from umx.defaults import SOURCES, SUBSETS
from umx.errors import UmxError
from umx.evaluate.common import _extra

if TYPE_CHECKING:
    import musdb


"""The MUSDB18 sources, whose sum is the mixture."""
TARGETS = (*SOURCES, "accompaniment")
"""The MUSDB18 targets a method may estimate (accompaniment = drums + bass + other)."""


def load_tracks(
    root: str | os.PathLike,
    *,
    subset: str = "test",
    is_wav: bool = False,
    names: Sequence[str] | None = None,
) -> list[musdb.MultiTrack]:
    """The tracks of a MUSDB18 subset, sorted by name.

    Args:
        root: the dataset folder, holding `train/` and `test/`.
        subset: `train` or `test`.
        is_wav: folders of wav files per track (MUSDB18-HQ layout) instead of `.stem.mp4` files.
        names: only these tracks; all if None.

    Returns:
        musdb's tracks; their references are read when used.

    Raises:
        UmxError: the folder is missing or holds no track in that layout, or ffmpeg is missing
            (musdb probes every file with ffprobe).
    """
    root = Path(root)
    if not (root / subset).is_dir():
        raise UmxError(f"{root / subset} does not exist: --root must hold {'/'.join(SUBSETS)}")
    if shutil.which("ffprobe") is None:
        raise UmxError(
            "musdb reads MUSDB18 with ffmpeg, which is not installed (apt-get install ffmpeg)"
        )
    database = _extra("musdb").DB
    try:
        tracks = database(root=str(root), subsets=subset, is_wav=is_wav).tracks
    except Exception as error:  # stempeg reports unreadable files with bare Exceptions
        raise UmxError(f"musdb could not read {root / subset} ({error})") from None
    if not tracks:
        layout = "<track>/mixture.wav folders" if is_wav else "<track>.stem.mp4 files (or --is-wav)"
        raise UmxError(f"{root / subset} holds no MUSDB18 tracks: expected {layout}")
    if names is None:
        return tracks
    unknown = sorted(set(names) - {track.name for track in tracks})
    if unknown:
        raise UmxError(
            f"{root / subset} has no track named {', '.join(map(repr, unknown))}; "
            f"{_some_names(unknown[0], [track.name for track in tracks])}"
        )
    return [track for track in tracks if track.name in set(names)]


SHOWN_TRACKS = 5
"""The most track names a refused `--tracks` lists."""


def _some_names(wanted: str, names: Sequence[str]) -> str:
    """The track names a refused `wanted` is answered with: all, or the first `SHOWN_TRACKS`
    (those closest to `wanted` first)."""
    if len(names) <= SHOWN_TRACKS:
        return f"its tracks: {', '.join(map(repr, names))}"
    close = difflib.get_close_matches(wanted, names, n=SHOWN_TRACKS, cutoff=0.5)
    shown = [*close, *(name for name in names if name not in close)][:SHOWN_TRACKS]
    which = (
        f"{SHOWN_TRACKS} of its {len(names)}, closest first"
        if close
        else (f"first {SHOWN_TRACKS} of its {len(names)}")
    )
    return f"{which}: {', '.join(map(repr, shown))}"


def check_references(track: musdb.MultiTrack) -> None:
    """Raise if a track lacks its mixture or one of the MUSDB18 sources.

    Raises:
        UmxError: naming the missing file.
    """
    path = Path(track.path)
    if not path.is_file():
        raise UmxError(f"{path} is missing: track {track.name!r} has no mixture")
    if track.is_wav:
        for source in SOURCES:
            if source not in track.sources:
                raise UmxError(
                    f"{path.with_name(source + '.wav')} is missing: no {source} reference"
                )
    else:
        check_stem_streams(path, track.info.nb_audio_streams)


@contextlib.contextmanager
def _audio_in_memory(track: musdb.MultiTrack) -> Iterator[None]:
    """Read the mixture and the sources once, and free them afterwards.

    musdb decodes a file with ffmpeg at every access; its setters make it keep the audio instead.
    Wav files are read with soundfile: the samples musdb gives for 16-bit files (24-bit ones keep
    their precision), without two subprocesses per file.
    """
    items = (track, *track.sources.values())
    try:
        for item in items:
            if track.is_wav:
                _check_channels(Path(item.path))
                audio, rate = read_audio(item.path)
                if rate != track.rate:
                    raise UmxError(f"{item.path} is at {rate:g} Hz, its mixture at {track.rate} Hz")
                item.audio = audio.numpy().T
            else:
                audio = item.audio
                item.audio = audio.reshape(len(audio), -1)  # musdb gives mono as (nb_timesteps,)
            _check_shape(item, track)
        yield
    finally:
        for item in items:
            item.audio = None


def _check_channels(path: Path) -> None:
    """Refuse a file of a track with more than two channels, in `umx evaluate`'s words:
    `read_audio` would advise `--downmix`, an option of `umx separate`, not of evaluate.

    Raises:
        UmxError: naming the file.
    """
    nb_channels = audio_info(path).nb_channels
    if nb_channels > MAX_CHANNELS:
        raise UmxError(
            f"{path}: {nb_channels} channels; umx evaluates mono or stereo tracks (convert the "
            "track's files to stereo, as MUSDB18's are)"
        )


def _check_shape(item: musdb.Source | musdb.MultiTrack, track: musdb.MultiTrack) -> None:
    """Refuse a source whose audio, `(nb_timesteps, nb_channels)`, is not shaped as its
    track's mixture (read first): BSSEval compares them sample by sample.

    Raises:
        UmxError: naming the file (or the stem file's source) and both lengths or channel counts.
    """
    (length, channels), (mix_length, mix_channels) = item.audio.shape, track.audio.shape
    where = item.path if track.is_wav else f"{track.path} ({item.name})"
    if length != mix_length:
        raise UmxError(
            f"{where} has {length} samples, its mixture {mix_length}: the files of a track "
            "must have one length"
        )
    if channels != mix_channels:
        raise UmxError(
            f"{where} has {channels} channels, its mixture {mix_channels}: the files of a "
            "track must have one channel count"
        )


def _target_order(targets: Iterable[str]) -> list[str]:
    known = [target for target in TARGETS if target in set(targets)]
    return known + sorted(set(targets) - set(known))
