"""A teacher that umx does not run: stems another separator made of the user's music
(`umx distill --teacher-stems DIR`), matched to the songs, checked against them and imported
into the work folder, so that the training set is built from them as from a teacher model's.

`DIR` holds a folder per song, named after the song with or without its extension, at its
path relative to the music folder, in a folder named as the song's, or at the top (Demucs,
Spleeter and `umx separate` write `DIR/<song>/<stem>.<ext>`); each audio file in it is a
stem, named by its file name (but `mixture`, the song itself). A song's
stems must be every stem its teacher made: they must add up to the song (`MIN_SUM_SNR`), which
also tells stems of another song, or out of time with it, from the right ones.

Imported stems are `WORK/teacher/imported/<track>/<stem>.wav` (`teacher.track_name`): float
wav at the stems' rate, cut or padded to the song's length, with `imported.json` beside them,
written last, recording the files they came from (sizes and times), so that a later run
imports a song again only where its files changed.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from umx.audio import audio_info, display_path, read_audio, write_audio
from umx.defaults import AUDIO_EXTENSIONS
from umx.distill.teacher import (
    MIXTURE_FILE,
    TEACHER_DIR,
    TeacherPass,
    TeacherTrack,
    file_signature,
    read_json,
    track_name,
)
from umx.errors import UmxError
from umx.files import write_json_atomic
from umx.messages import plural, shown
from umx.modeldir import check_open_unmix_target

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("umx")

IMPORTED_DIR = "imported"
IMPORTED_FILE = "imported.json"
MIN_SUM_SNR = 6.0
"""How close, in dB (song to difference), a song's stems must add up to it."""
LENGTH_TOLERANCE = 0.05
"""The most, in seconds, by which a song's stems may be longer or shorter than the song (cut
or padded with silence at the end): encoders' padding, not a shift in time."""
HEADER_TOLERANCE = 1.0
"""The most, in seconds, by which the durations in the headers of a song and of its stems may
differ before the stems are decoded (headers of compressed files may be approximate)."""
MAX_LAG = 1.0
"""The widest shift in time, in seconds, that a refusal measures and names."""
MAX_NAMED = 5
"""How many songs without stems are named one by one; the others are counted."""
LAG_WINDOW = 30.0
"""The seconds in the middle of a song over which a shift is measured."""


@dataclass(frozen=True)
class StemsMatch:
    """The songs whose stems were found in a teacher's stems folder.

    Attributes:
        folder: the stems folder, absolute.
        targets: the stems' names, sorted.
        songs: per song (absolute path, in input order), its stem files by name.
        missing: how many songs have no stems there.
    """

    folder: Path
    targets: list[str]
    songs: dict[str, dict[str, Path]]
    missing: int


def find_teacher_stems(songs: Sequence[str], bases: Sequence[str], folder: Path) -> StemsMatch:
    """Find each song's stem folder in `folder` (see the module's docstring): the first of
    `folder/<parent>/<name>`, with or without the song's extension, where the parent is the
    song's folder under the first of `bases` that holds it, then the name of its folder (umx's
    `{parent}`), then none. A song without one, or whose folder another song also matched, is
    left out with a warning.

    A song whose stems are not those most songs have is left out too, with a warning.

    Raises:
        UmxError: no song has stems there, or a stem is named so that it cannot be a target.
    """
    found = {song: _stems_folder(song, bases, folder) for song in songs}
    without = [song for song, stems_folder in found.items() if stems_folder is None]
    for song in without[:MAX_NAMED]:
        logger.warning("%s has no stems in %s", display_path(song), display_path(folder))
    if len(without) > MAX_NAMED:
        logger.warning(
            "%d more songs have no stems in %s", len(without) - MAX_NAMED, display_path(folder)
        )
    claimed: dict[Path, list[str]] = {}
    for song, stems_folder in found.items():
        if stems_folder is not None:
            claimed.setdefault(stems_folder, []).append(song)
    matched: dict[str, dict[str, Path]] = {}
    for stems_folder, owners in claimed.items():
        if len(owners) > 1:
            named = [display_path(owner) for owner in owners[:2]]
            if len(owners) > 2:
                named = [", ".join(named), plural(len(owners) - 2, "more song")]
            one_folder = len({Path(owner).parent for owner in owners}) == 1
            advice = (
                "name each song's folder of stems with its extension (song.wav/, song.flac/)"
                if one_folder
                else "give each song's stems in a folder at its path relative to the music folder"
            )
            logger.warning(
                "%s are left out: their stems are in the one folder %s (%s)",
                " and ".join(named),
                display_path(stems_folder),
                advice,
            )
            continue
        stems = _stem_files(stems_folder)
        if stems:
            matched[owners[0]] = stems
        else:
            logger.warning("%s holds no audio files", display_path(stems_folder))
    if not matched:
        raise UmxError(
            f"--teacher-stems {display_path(folder)} holds no stems of the "
            f"{plural(len(songs), 'song')}: it needs a folder of stems per song, named after "
            "the song (e.g. DIR/<song>/vocals.wav)"
        )
    targets = _same_stems(matched)
    return StemsMatch(folder, targets, matched, len(songs) - len(matched))


def _stems_folder(song: str, bases: Sequence[str], folder: Path) -> Path | None:
    """The folder of `song`'s stems in `folder`, the deepest first, or None."""
    name = Path(song).name
    parents = [Path(Path(song).parent.name), Path()]  # umx's {parent}, and none
    for base in bases:
        base = os.path.abspath(base)
        if os.path.isdir(base) and song.startswith(base.rstrip(os.sep) + os.sep):
            parents.insert(0, Path(os.path.relpath(os.path.dirname(song), base)))
            break
    for parent in dict.fromkeys(parents):
        for candidate in (folder / parent / Path(name).stem, folder / parent / name):
            if candidate.is_dir():
                return candidate
    return None


def _stem_files(folder: Path) -> dict[str, Path]:
    """The audio files in a song's stem folder by name (their file names without extension),
    but a `mixture` file: the song itself, as in a MUSDB18 track folder.

    Raises:
        UmxError: a name that cannot be a target, or two files of one name.
    """
    extensions = {f".{extension}" for extension in AUDIO_EXTENSIONS}
    stems: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in extensions:
            continue
        if path.stem.lower() == Path(MIXTURE_FILE).stem:
            continue
        name = check_open_unmix_target(
            path.stem, f"the stem {display_path(path)}", "rename the stem's file"
        )
        if name in stems:
            raise UmxError(
                f"{display_path(folder)} holds two stems named {name} ({stems[name].name} and "
                f"{path.name}): keep one"
            )
        stems[name] = path
    return stems


def _same_stems(matched: dict[str, dict[str, Path]]) -> list[str]:
    """The stems most songs have, sorted (the first song's, of sets as common); a song with
    others is left out of `matched`, with a warning.
    """
    counts = collections.Counter(tuple(sorted(stems)) for stems in matched.values())
    names = list(counts.most_common(1)[0][0])
    for song, stems in list(matched.items()):
        if sorted(stems) != names:
            logger.warning(
                "%s is left out: its stems (%s) are not those most songs have (%s); give every "
                "song the same stems, all those the teacher made",
                display_path(song),
                ", ".join(sorted(stems)),
                ", ".join(names),
            )
            del matched[song]
    return names


def stems_rate(match: StemsMatch) -> float | None:
    """The sample rate of the stems, which the training set is written at, read from every
    stem's header before any is imported: the rate of most songs' stems (of rates as common,
    the first song's). A song whose stems differ from each other in rate, or whose header
    cannot be read, is left to the import, which leaves it out saying why.

    Returns:
        the rate, or None where no song's stems can be read.

    Raises:
        UmxError: a song's stems at another rate (training would fail on it after every song
            was imported), naming its first stem, its rate and the others'.
    """
    rates: dict[str, tuple[float, Path]] = {}
    for song, stems in match.songs.items():
        found: dict[float, Path] = {}
        try:
            for path in stems.values():
                found.setdefault(audio_info(path).sample_rate, path)
        except UmxError:
            continue
        if len(found) == 1:
            rates[song] = next(iter(found.items()))
    if not rates:
        return None
    counts = collections.Counter(rate for rate, _ in rates.values())
    expected, count = counts.most_common(1)[0]
    for rate, path in rates.values():
        if rate != expected:
            raise UmxError(
                f"--teacher-stems: {shown(os.fsdecode(path))} is at {rate:g} Hz, but the stems "
                f"of {plural(count, 'song')} are at {expected:g} Hz: give every song's stems at "
                f"{expected:g} Hz"
            )
    return expected


def import_teacher_stems(match: StemsMatch, work: Path) -> TeacherPass:
    """Import the stems of every matched song into `work/teacher/imported` (see the module's
    docstring); a song imported before is kept while its files are unchanged. A song whose
    stems cannot be read, last longer or shorter than it by more than `LENGTH_TOLERANCE`,
    or do not add up to it is left out with a warning naming why.

    Raises:
        UmxError: no song could be imported.
    """
    tracks, failed = [], match.missing
    for song, stems in match.songs.items():
        folder = work / TEACHER_DIR / IMPORTED_DIR / track_name(song)
        try:
            tracks.append(TeacherTrack(song, _import_song(song, stems, folder)))
        except UmxError as error:
            logger.warning("%s is left out: %s", display_path(song), error)
            failed += 1
    if not tracks:
        raise UmxError(
            f"none of the {plural(len(match.songs), 'song')} with stems in --teacher-stems "
            f"{display_path(match.folder)} could be used (see the warnings above)"
        )
    if failed:
        logger.warning(
            "the student learns from %s; %d had no stems that could be used",
            plural(len(tracks), "song"),
            failed,
        )
    return TeacherPass({"stems_folder": str(match.folder)}, match.targets, tracks, failed)


def _import_song(song: str, stems: Mapping[str, Path], folder: Path) -> dict[str, Path]:
    """Import one song's stems into `folder`, unless they are there from the same files.

    Returns:
        the imported stems by name.

    Raises:
        UmxError: why the song's stems cannot be used.
    """
    imported = {name: folder / f"{name}.wav" for name in stems}
    sources = {name: file_signature(path) for name, path in {**stems, "": Path(song)}.items()}
    record = folder / IMPORTED_FILE
    if read_json(record) == sources and all(path.is_file() for path in imported.values()):
        return imported
    _check_durations(song, stems)
    audio = {name: read_audio(path) for name, path in stems.items()}
    rates = {rate for _, rate in audio.values()}
    channels = {signal.shape[0] for signal, _ in audio.values()}
    if len(rates) > 1 or len(channels) > 1:
        raise UmxError("its stems differ in sample rate or channels: give stems of one format")
    rate = rates.pop()
    mixture, _ = read_audio(song, sample_rate=rate, nb_channels=channels.pop())
    length = mixture.shape[1]
    for name, (signal, _) in audio.items():
        _check_length(stems[name], signal.shape[1] / rate, length / rate, LENGTH_TOLERANCE)
    signals = {name: _fit(signal, length) for name, (signal, _) in audio.items()}
    _check_sum(mixture, list(signals.values()), rate)
    folder.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)  # written again once every stem is
    for name, signal in signals.items():
        write_audio(imported[name], signal, rate, subtype="FLOAT", clip="none", force=True)
    write_json_atomic(record, sources)
    return imported


def _check_durations(song: str, stems: Mapping[str, Path]) -> None:
    """Refuse, from their headers and before decoding any, stems that last more than
    `HEADER_TOLERANCE` longer or shorter than the song (a stem of hours would fill the memory
    to be refused after); the exact check follows the decoding.

    Raises:
        UmxError: naming the stem.
    """
    song_info = audio_info(song)
    seconds = song_info.nb_frames / song_info.sample_rate
    for path in stems.values():
        info = audio_info(path)
        _check_length(path, info.nb_frames / info.sample_rate, seconds, HEADER_TOLERANCE)


def _check_length(stem: Path, seconds: float, song: float, tolerance: float) -> None:
    """Refuse a stem that lasts more than `tolerance` seconds longer or shorter than its song.

    Raises:
        UmxError: naming the stem and both durations.
    """
    if abs(seconds - song) > tolerance:
        raise UmxError(
            f"its stem {display_path(stem)} lasts {seconds:.2f} s, the song {song:.2f} s: are "
            "they of this song, and whole?"
        )


def _fit(signal: torch.Tensor, length: int) -> torch.Tensor:
    """`signal` cut, or padded with silence at its end, to `length` frames."""
    import torch

    if signal.shape[1] >= length:
        return signal[:, :length]
    return torch.nn.functional.pad(signal, (0, length - signal.shape[1]))


def _check_sum(mixture: torch.Tensor, stems: Sequence[torch.Tensor], rate: float) -> None:
    """Refuse stems that do not add up to the mixture within `MIN_SUM_SNR` dB; a silent
    mixture is left to the training set's rule for silent songs.

    Raises:
        UmxError: saying by how much, and how far out of time the stems are where they are.
    """
    total = sum(stems)
    power = float(mixture.double().square().sum())
    if power == 0.0:
        return
    error = float((mixture - total).double().square().sum())
    snr = 10 * math.log10(power / error) if error else math.inf
    if snr >= MIN_SUM_SNR:
        return
    start = max(0, (mixture.shape[1] - int(LAG_WINDOW * rate)) // 2)
    window = slice(start, start + int(LAG_WINDOW * rate))
    lag = _lag(mixture.mean(0)[window], total.mean(0)[window], int(MAX_LAG * rate))
    if lag:
        raise UmxError(
            f"its stems are {abs(lag) / rate * 1000:.0f} ms {'late' if lag > 0 else 'early'} "
            "against the song: give stems in time with it"
        )
    raise UmxError(
        f"its stems add up to the song only within {round(snr, 1) + 0:.1f} dB (at least "
        f"{MIN_SUM_SNR:g} dB "
        "is needed): give all the stems the teacher made of this song"
    )


def _lag(mixture: torch.Tensor, total: torch.Tensor, widest: int) -> int:
    """By how many frames `total` is late against `mixture` (negative: early), where a shift
    within `widest` frames makes them alike (a correlation of 0.5 or more); else 0.

    Shapes: `mixture` and `total` are `(nb_timesteps,)`.
    """
    import torch

    size = 1 << (2 * mixture.shape[0] - 1).bit_length()
    spectrum = torch.fft.rfft(total.double(), size) * torch.fft.rfft(mixture.double(), size).conj()
    correlation = torch.fft.irfft(spectrum, size)
    lags = torch.cat([correlation[: widest + 1], correlation[size - widest :]])
    shifts = torch.cat([torch.arange(widest + 1), torch.arange(-widest, 0)])
    best = int(lags.argmax())
    scale = float(mixture.double().norm() * total.double().norm())
    return int(shifts[best]) if scale and float(lags[best]) >= 0.5 * scale else 0
