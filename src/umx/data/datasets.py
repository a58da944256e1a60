"""Training datasets: each item is a `(mixture, target)` pair of waveforms.

Every waveform is a float32 tensor `(nb_channels, nb_timesteps)`. The sample rate is a property of
the data (`dataset.sample_rate`, read from the files); all files of a dataset must share it.

Training items are excerpts of `seq_duration` seconds at random positions; an excerpt of a file
shorter than that starts at the file's beginning and is zero-padded at the end (nothing is
skipped). Each source is augmented, then converted to `nb_channels` (mono is duplicated, stereo
averaged), then mixed. Validation items (`seq_duration=None`) are whole tracks, unaugmented and
in a fixed order; `eval_view()` turns a training set into such a deterministic view, on which the
trainer computes its input statistics.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from umx.audio import audio_info, display_path, match_channels, read_frames, seconds_to_frames
from umx.data.augment import Augmentation
from umx.data.layout import split_dir, track_dirs
from umx.errors import UmxError

MUSDB_MIXTURE = "mixture.wav"  # a MUSDB18-HQ track's mixture file
MUSDB_SETUP = "setup.yaml"  # a dataset's own musdb set-up file, e.g. written by `umx synth`
VALID_FRACTION = 0.1  # of the train tracks held out when a folder has no official MUSDB18 split
MAX_CHANNELS = 2


# --- audio files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioInfo:
    """An audio file: where it is, its rate, channels and length (frames)."""

    path: Path
    sample_rate: int
    nb_channels: int
    nb_frames: int

    @classmethod
    def read(cls, path: str | os.PathLike) -> AudioInfo:
        """Read a file's header (`umx.audio.audio_info`), decoding the file only where the
        header does not give its length (mp3 without Xing tag, formats read by ffmpeg).

        Raises:
            UmxError: the file is missing, not a regular file, not audio, truncated, empty or
                has more than two channels.
        """
        path = Path(path)
        info = audio_info(path)
        nb_frames = info.nb_frames
        if nb_frames is None:
            nb_frames = read_frames(path)[0].shape[1]
        if nb_frames <= 0:
            raise UmxError(f"{display_path(path)} contains no audio")
        if info.nb_channels > MAX_CHANNELS:
            raise UmxError(
                f"{display_path(path)} has {info.nb_channels} channels; umx trains on mono or "
                "stereo"
            )
        return cls(path, int(info.sample_rate), info.nb_channels, nb_frames)

    def load(self, start: int = 0, length: int | None = None) -> Tensor:
        """Read `length` frames from `start` (all to the end if None), zero-padded past the end.

        Returns:
            `(nb_channels, length)` float32.
        """
        stop = self.nb_frames if length is None else min(start + length, self.nb_frames)
        audio, _ = read_frames(self.path, start, max(0, stop - start))
        return _fit(audio, length)


@dataclass(frozen=True)
class StemInfo(AudioInfo):
    """One stream of a MUSDB18 stem file (`.stem.mp4`), decoded through the `musdb` package."""

    stem: Any = field(default=None, compare=False, repr=False)  # a musdb Source or MultiTrack

    def load(self, start: int = 0, length: int | None = None) -> Tensor:
        track = getattr(self.stem, "multitrack", self.stem)
        track.chunk_start = start / self.sample_rate
        track.chunk_duration = None if length is None else length / self.sample_rate
        try:
            frames = self.stem.audio
        except Exception as error:  # stempeg/ffmpeg raise many kinds of errors
            raise UmxError(f"{display_path(self.path)} could not be decoded ({error})") from None
        audio = torch.as_tensor(frames, dtype=torch.float32).T.contiguous()
        return _fit(audio, self.nb_frames - start if length is None else length)  # AAC pads


def _fit(audio: Tensor, length: int | None) -> Tensor:
    """Cut or zero-pad `(nb_channels, nb_timesteps)` audio to `length` frames (if given)."""
    if length is None or audio.shape[1] == length:
        return audio
    if audio.shape[1] > length:
        return audio[:, :length]
    return torch.nn.functional.pad(audio, (0, length - audio.shape[1]))


def check_rate(info: AudioInfo, sample_rate: float) -> None:
    """Refuse a file whose sample rate is not the dataset's."""
    if info.sample_rate != sample_rate:
        raise UmxError(
            f"{display_path(info.path)} has a sample rate of {info.sample_rate} Hz but the "
            f"dataset's is {sample_rate:g} Hz"
        )


def check_source_names(
    names: Sequence[tuple[str, str]], kind: str = "file", *, distinct: bool = True
) -> None:
    """Refuse the names of a dataset's sources that are not plain names of a `kind` (file or
    folder) inside each track folder (or split), and, if `distinct`, a name given twice.

    A path (absolute, with folders, `.` or `..`) would take a source of another track for every
    track, and a name given twice would train a source against itself (an input that is its own
    output, a target that is also an interferer): both wrong data, silently.

    Args:
        names: `(option, name)` pairs, the option as the command line names it
            (`--input-file`).
        kind: what a name names, for messages: `file` or `folder`.
        distinct: also refuse a name given twice.

    Raises:
        UmxError: one sentence naming the option and the name.
    """
    seen: dict[str, str] = {}
    for option, name in names:
        plain = PurePosixPath(name).name == name == PureWindowsPath(name).name
        if not plain or name in ("", ".", ".."):
            where = "each track folder" if kind == "file" else "train/ and valid/"
            raise UmxError(
                f"{option} takes the name of a {kind} inside {where}, not {name!r}: give a "
                "plain name without folders"
            )
        if distinct and name in seen:
            raise UmxError(
                f"{option} {name} is given twice: name each {kind} once"
                if seen[name] == option
                else f"{option} {name} is also the {seen[name]}: they must name different {kind}s"
            )
        seen[name] = option


def random_int(high: int, generator: torch.Generator | None) -> int:
    """A random integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator))


def random_start(nb_frames: int, length: int, generator: torch.Generator | None) -> int:
    """A random excerpt start; 0 when the file is not longer than the excerpt."""
    return random_int(nb_frames - length + 1, generator) if nb_frames > length else 0


# --- the base class -------------------------------------------------------------------------------


class UnmixDataset(Dataset):
    """A dataset of `(mixture, target)` waveform pairs, `(nb_channels, nb_timesteps)` each.

    Args:
        sample_rate: the rate of every file, in Hz.
        seq_duration: excerpt length in seconds; None yields whole tracks.
        nb_channels: channels of the yielded audio (1 or 2).
        augment: applied to each source before mixing, in training only.
    """

    def __init__(
        self,
        *,
        sample_rate: float,
        seq_duration: float | None,
        nb_channels: int,
        augment: Augmentation | None,
    ) -> None:
        if nb_channels not in (1, 2):
            raise ValueError(f"nb_channels must be 1 or 2, not {nb_channels}")
        if seq_duration is not None and seq_duration <= 0:
            raise UmxError(f"the excerpt duration must be positive, not {seq_duration}")
        self.sample_rate = float(sample_rate)
        self.seq_duration = seq_duration
        self.nb_channels = nb_channels
        self.augment = augment

    @property
    def seq_len(self) -> int | None:
        """Excerpt length in frames; None for whole tracks."""
        if self.seq_duration is None:
            return None
        return seconds_to_frames(self.seq_duration, self.sample_rate)

    def eval_view(self) -> UnmixDataset:
        """A deterministic, unaugmented copy of this dataset (whole tracks where it has tracks)."""
        raise NotImplementedError

    @property
    def longest(self) -> int:
        """Frames of the longest track (or file): longer excerpts are zero padding only."""
        raise NotImplementedError

    def _source(
        self, info: AudioInfo, start: int, length: int | None, augment: bool = True
    ) -> Tensor:
        """One source excerpt, augmented (if `augment` and the dataset has augmentations) and
        converted to the dataset's channels."""
        audio = info.load(start, length)
        if augment and self.augment is not None:
            audio = self.augment(audio)
        return match_channels(audio, self.nb_channels)


# --- track datasets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    """The files of one track.

    Args:
        name: the track's folder (or MUSDB18 name), for messages.
        target: the target source; None for a silent target.
        interferers: the other sources.
        mixture: the mixture file, when the mixture is not the sum of the sources; such a
            track is never remixed.
    """

    name: str
    target: AudioInfo | None
    interferers: tuple[AudioInfo, ...]
    mixture: AudioInfo | None = None

    @property
    def files(self) -> list[AudioInfo]:
        return [f for f in (self.mixture, self.target, *self.interferers) if f is not None]

    @property
    def nb_frames(self) -> int:
        return self.files[0].nb_frames


def check_track(track: Track, sample_rate: float) -> None:
    """Check that a track's files share the dataset's rate and each other's channels and length.

    Raises:
        UmxError: naming the first file that differs.
    """
    files = track.files
    if not files:
        raise UmxError(f"{display_path(track.name)} holds no audio files")
    first = files[0]
    for info in files:
        check_rate(info, sample_rate)
        if info.nb_channels != first.nb_channels:
            raise UmxError(
                f"{display_path(info.path)} has {info.nb_channels} channels but "
                f"{display_path(first.path.name)} of the same track has {first.nb_channels}"
            )
        if info.nb_frames != first.nb_frames:
            raise UmxError(
                f"{display_path(info.path)} is {info.nb_frames} frames long but "
                f"{display_path(first.path.name)} of the same track is {first.nb_frames}: the "
                "sources of a track must be aligned"
            )


class TrackDataset(UnmixDataset):
    """Tracks of aligned sources; the mixture is the sum of the sources (or a mixture file).

    Training (`seq_duration` set): item `i` is an excerpt of track `i // samples_per_track`,
    one start for all its files. With `random_mix`, the interferers come from random tracks at
    random starts instead: one random track per interferer (`independent_interferers`, for
    datasets whose tracks have the same sources) or one random track for all of them.

    Args:
        tracks: the tracks, checked with `check_track`.
        seq_duration, nb_channels, augment: see `UnmixDataset`.
        samples_per_track: training items per track and epoch.
        random_mix: draw the interferers from random tracks.
        independent_interferers: see above.
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        *,
        seq_duration: float | None,
        nb_channels: int,
        samples_per_track: int = 1,
        augment: Augmentation | None = None,
        random_mix: bool = False,
        independent_interferers: bool = True,
    ) -> None:
        if not tracks:
            raise UmxError("the dataset holds no tracks")
        if samples_per_track < 1:
            raise UmxError(f"samples per track must be at least 1, not {samples_per_track}")
        super().__init__(
            sample_rate=tracks[0].files[0].sample_rate,
            seq_duration=seq_duration,
            nb_channels=nb_channels,
            augment=augment,
        )
        for track in tracks:
            check_track(track, self.sample_rate)
        self.tracks = list(tracks)
        self.samples_per_track = samples_per_track
        self.random_mix = random_mix
        self.independent_interferers = independent_interferers

    def __len__(self) -> int:
        if self.seq_duration is None:
            return len(self.tracks)
        return len(self.tracks) * self.samples_per_track

    @property
    def longest(self) -> int:
        return max(track.nb_frames for track in self.tracks)

    def eval_view(self) -> TrackDataset:
        view = copy.copy(self)
        view.seq_duration, view.samples_per_track = None, 1
        view.augment, view.random_mix = None, False
        return view

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        mixture, sources = self._item(index, all_sources=False)
        return mixture, sources[0]

    def sources(self, index: int) -> tuple[Tensor, Tensor]:
        """Item `index` with every source (drawn as `__getitem__` draws them).

        Returns:
            the mixture, `(nb_channels, nb_timesteps)`, and the sources, `(nb_sources,
            nb_channels, nb_timesteps)`: the target, then the interferers in track order.
        """
        return self._item(index, all_sources=True)

    def _item(self, index: int, *, all_sources: bool) -> tuple[Tensor, Tensor]:
        """The mixture and the stacked sources of item `index`; only the target unless
        `all_sources` when the track has its own mixture."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        length = self.seq_len
        if length is None:
            track, start = self.tracks[index], 0
        else:
            track = self.tracks[index // self.samples_per_track]
            start = random_start(track.nb_frames, length, None)
        if track.target is None:
            target = torch.zeros(self.nb_channels, length or track.nb_frames)
        else:
            target = self._source(track.target, start, length)
        if track.mixture is not None:
            mixture = self._source(track.mixture, start, length, augment=False)
            interferers = [
                self._source(info, start, length, augment=False)
                for info in (track.interferers if all_sources else ())
            ]
            return mixture, torch.stack([target, *interferers])
        if not self.random_mix or length is None:
            interferers = [self._source(info, start, length) for info in track.interferers]
        elif self.independent_interferers:
            interferers = []
            for slot in range(len(track.interferers)):
                other = self.tracks[random_int(len(self.tracks), None)]
                other_start = random_start(other.nb_frames, length, None)
                interferers.append(self._source(other.interferers[slot], other_start, length))
        else:
            other = self.tracks[random_int(len(self.tracks), None)]
            other_start = random_start(other.nb_frames, length, None)
            interferers = [self._source(info, other_start, length) for info in other.interferers]
        sources = torch.stack([target, *interferers])
        return sources.sum(0), sources


class SourcesDataset(Dataset):
    """Every source of a `TrackDataset`'s items, for models that estimate all of them at once.

    Item `i` is `(mixture, sources)`: `(nb_channels, nb_timesteps)` and `(nb_sources,
    nb_channels, nb_timesteps)`, the sources in the order of `names` (the dataset's target,
    then its interferers).

    Args:
        tracks: the track dataset.
        names: the sources' names.
    """

    def __init__(self, tracks: TrackDataset, names: Sequence[str]) -> None:
        self.tracks = tracks
        self.names = list(names)
        self.sample_rate = tracks.sample_rate

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.tracks.sources(index)

    def eval_view(self) -> SourcesDataset:
        """The same sources of `tracks.eval_view()` (whole tracks, unaugmented)."""
        return SourcesDataset(self.tracks.eval_view(), self.names)


class AlignedDataset(TrackDataset):
    """`aligned`: track folders holding an input and an output file, e.g. noisy/clean pairs.

    Layout: `<root>/<split>/<track>/<input_file>` and `.../<output_file>`. The input is the
    mixture and the output the target; no augmentation, no mixing.

    Args:
        root: the dataset folder.
        split: `train` or `valid`.
        input_file, output_file: the file names inside each track folder.
        seq_duration, nb_channels, samples_per_track: see `TrackDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        input_file: str,
        output_file: str,
        seq_duration: float | None,
        nb_channels: int,
        samples_per_track: int = 1,
    ) -> None:
        check_source_names([("--input-file", input_file), ("--output-file", output_file)])
        names = f"{input_file},{output_file}"
        layout = f"the aligned dataset expects <root>/{split}/<track>/{{{names}}}"
        directory = split_dir(root, split, layout)
        tracks = [
            Track(
                str(path),
                target=AudioInfo.read(path / output_file),
                interferers=(),
                mixture=AudioInfo.read(path / input_file),
            )
            for path in track_dirs(directory, layout)
        ]
        super().__init__(
            tracks,
            seq_duration=seq_duration,
            nb_channels=nb_channels,
            samples_per_track=samples_per_track,
        )


class FixedSourcesTrackFolderDataset(TrackDataset):
    """`trackfolder_fix`: track folders that all hold the same source files.

    Layout: `<root>/<split>/<track>/<target_file>` and `.../<interferer_file>` for each
    interferer; the mixture is their sum. With `random_track_mix`, each interferer comes from a
    random track at a random position.

    Args:
        root: the dataset folder.
        split: `train` or `valid`.
        target_file: the target's file name.
        interferer_files: the interferers' file names.
        seq_duration, nb_channels, samples_per_track, augment: see `TrackDataset`.
        random_track_mix: mix interferers of random tracks (training only).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        target_file: str,
        interferer_files: Sequence[str],
        seq_duration: float | None,
        nb_channels: int,
        samples_per_track: int = 1,
        augment: Augmentation | None = None,
        random_track_mix: bool = False,
    ) -> None:
        check_source_names(
            [("--target-file", target_file)]
            + [("--interferer-files", name) for name in interferer_files]
        )
        names = ",".join([target_file, *interferer_files])
        layout = f"the trackfolder_fix dataset expects <root>/{split}/<track>/{{{names}}}"
        directory = split_dir(root, split, layout)
        tracks = [
            Track(
                str(path),
                target=AudioInfo.read(path / target_file),
                interferers=tuple(AudioInfo.read(path / name) for name in interferer_files),
            )
            for path in track_dirs(directory, layout)
        ]
        super().__init__(
            tracks,
            seq_duration=seq_duration,
            nb_channels=nb_channels,
            samples_per_track=samples_per_track,
            augment=augment,
            random_mix=random_track_mix,
        )


class VariableSourcesTrackFolderDataset(TrackDataset):
    """`trackfolder_var`: track folders with any number of sources besides the target.

    Layout: `<root>/<split>/<track>/<target_file>` plus any other `*<ext>` files, the
    interferers; the mixture is the sum of all (so no mixture file may lie among them). A track
    without the target file is an error, or with `silence_missing` has a silent target. With
    `random_interferer_mix`, all interferers come from one random track at a random position.

    Args:
        root: the dataset folder.
        split: `train` or `valid`.
        target_file: the target's file name.
        ext: extension of the source files, e.g. `.wav`.
        silence_missing: use silence for tracks lacking the target file.
        seq_duration, nb_channels, samples_per_track, augment: see `TrackDataset`.
        random_interferer_mix: take the interferers from random tracks (training only).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        target_file: str,
        ext: str = ".wav",
        silence_missing: bool = False,
        seq_duration: float | None,
        nb_channels: int,
        samples_per_track: int = 1,
        augment: Augmentation | None = None,
        random_interferer_mix: bool = False,
    ) -> None:
        check_source_names([("--target-file", target_file)])
        layout = f"the trackfolder_var dataset expects <root>/{split}/<track>/*{ext}"
        directory = split_dir(root, split, layout)
        tracks = []
        for path in track_dirs(directory, layout):
            target = path / target_file
            if not target.is_file() and not silence_missing:
                raise UmxError(
                    f"{display_path(target)} does not exist (use --silence-missing for silence)"
                )
            others = sorted(p for p in path.glob(f"*{ext}") if p.name != target_file)
            for other in others:
                if other.stem.lower() == "mixture":  # MUSDB18-HQ's: mixed in, a double mix
                    raise UmxError(
                        f"{display_path(other)} is a mixture: trackfolder_var sums every {ext} "
                        "file of a track, so move it out of the track folder (or use "
                        "trackfolder_fix and name the sources)"
                    )
            tracks.append(
                Track(
                    str(path),
                    target=AudioInfo.read(target) if target.is_file() else None,
                    interferers=tuple(AudioInfo.read(p) for p in others),
                )
            )
        super().__init__(
            tracks,
            seq_duration=seq_duration,
            nb_channels=nb_channels,
            samples_per_track=samples_per_track,
            augment=augment,
            random_mix=random_interferer_mix,
            independent_interferers=False,
        )
