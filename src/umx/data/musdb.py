"""MUSDB18 for training: MUSDB18 (stem `.mp4` files) or MUSDB18-HQ through the `musdb` package,
and the split of a MUSDB18-style train folder into training and validation tracks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from umx.audio import display_path
from umx.data.augment import Augmentation
from umx.data.datasets import (
    MUSDB_MIXTURE,
    MUSDB_SETUP,
    VALID_FRACTION,
    AudioInfo,
    StemInfo,
    Track,
    TrackDataset,
)
from umx.data.layout import NO_STEMS, check_stem_streams, holds_songs, split_dir
from umx.defaults import MUSDB_SAMPLES_PER_TRACK, SOURCES
from umx.errors import UmxError
from umx.messages import shown


def musdb_split(
    names: Sequence[str], official_valid: Sequence[str], valid_tracks: int | None = None
) -> tuple[list[str], list[str]]:
    """Split the names of a MUSDB18-style train folder into training and validation tracks.

    The listed validation tracks (MUSDB18's official ones, or those of the dataset's own
    `setup.yaml`) are used when `valid_tracks` is None and the folder holds any of them.
    Otherwise the last `valid_tracks` tracks by name are held out (by default a tenth of them,
    at least one).

    Returns:
        the training names and the validation names, each sorted.

    Raises:
        UmxError: fewer than two tracks, or `valid_tracks` leaves no training track.
    """
    names = sorted(names)
    official = set(official_valid)
    if valid_tracks is None and official & set(names):
        return [n for n in names if n not in official], [n for n in names if n in official]
    count = max(1, round(VALID_FRACTION * len(names))) if valid_tracks is None else valid_tracks
    if not 1 <= count < len(names):
        raise UmxError(
            f"cannot hold out {count} of {len(names)} tracks for validation: at least one "
            "validation and one training track are needed"
        )
    return names[:-count], names[-count:]


def _unreadable_stem_file(directory: Path) -> UmxError:
    """The error of a MUSDB18 folder holding a `.stem.mp4` file that ffprobe cannot read
    (empty, cut short, not a stem file), naming the first such file and what ffprobe said."""
    import ffmpeg
    import stempeg

    for path in sorted(directory.glob("*.stem.mp4")):
        try:
            stempeg.Info(str(path))
        except ffmpeg.Error as error:
            said = (error.stderr or b"").decode(errors="replace").strip().splitlines()
            reason = said[-1].rpartition(": ")[2] if said else "no reason given"
            return UmxError(
                f"{display_path(path)} is not a readable stem file (ffprobe: {shown(reason)}); "
                "replace it, or move it out of the folder"
            )
    return UmxError(f"a stem file of {display_path(directory)} cannot be read by ffprobe")


def _check_track_folders(directory: Path, layout: str) -> None:
    """Refuse a folder inside a MUSDB18-HQ track folder of `directory`: musdb walks every
    folder below it and takes each for a track of its own (`<track>/bass.wav/` was said to be a
    missing `bass.wav/vocals.wav`).

    Raises:
        UmxError: naming the first such folder.
    """
    files = {MUSDB_MIXTURE, *(f"{source}.wav" for source in SOURCES)}
    for track in sorted(path for path in directory.iterdir() if path.is_dir()):
        for inner in sorted(path for path in track.iterdir() if path.is_dir()):
            if inner.name in files:
                raise UmxError(f"{display_path(inner)} is a directory, not a file: {layout}")
            raise UmxError(
                f"{display_path(inner)} is a folder inside a track folder, which musdb would take "
                f"for a track: move it out ({layout})"
            )


def _unreadable_folder(directory: Path, is_wav: bool, error: Exception) -> UmxError:
    """The error of a train folder that musdb could not read: a MUSDB18-HQ mixture file that
    is empty or not audio (which ffprobe gives no length of), a stem file that ffprobe cannot
    read, or else a bad set-up file (`error` is what musdb raised)."""
    import ffmpeg

    if is_wav:
        for path in sorted(directory.glob(f"*/{MUSDB_MIXTURE}")):
            try:
                AudioInfo.read(path)
            except UmxError as refused:
                return refused
    if isinstance(error, ffmpeg.Error):
        return _unreadable_stem_file(directory)
    setup = directory.parent / MUSDB_SETUP
    return UmxError(f"{display_path(setup)} is not a valid musdb set-up file ({error})")


class MUSDBDataset(TrackDataset):
    """`musdb`: MUSDB18 (stem `.mp4` files) or MUSDB18-HQ (`is_wav`) through the `musdb` package.

    Tracks come from `<root>/train`: `<track>.stem.mp4`, or with `is_wav` the folders
    `<track>/{mixture,vocals,drums,bass,other}.wav`. A `<root>/setup.yaml` replaces musdb's own
    set-up (and its validation tracks). See `musdb_split` for the validation split.
    Training mixtures are sums of the sources; with `random_track_mix`, each interferer comes
    from a random track at a random position. Validation uses the tracks' own mixtures.

    Args:
        root: the MUSDB18 folder.
        target: one of `SOURCES`.
        split: `train` or `valid`.
        is_wav: read MUSDB18-HQ wav folders instead of stems.
        valid_tracks: see `musdb_split`.
        seq_duration, nb_channels, samples_per_track, augment: see `TrackDataset`.
        random_track_mix: mix interferers of random tracks (training only).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        target: str = "vocals",
        *,
        split: str,
        is_wav: bool = False,
        valid_tracks: int | None = None,
        seq_duration: float | None,
        nb_channels: int,
        samples_per_track: int = MUSDB_SAMPLES_PER_TRACK,
        augment: Augmentation | None = None,
        random_track_mix: bool = False,
    ) -> None:
        try:
            import ffmpeg  # musdb probes stem files with ffmpeg-python, through stempeg
            import musdb
            import yaml  # musdb reads its set-up files with it
        except ImportError:
            raise UmxError(
                "the musdb dataset needs the musdb package: pip install 'umx[train]'"
            ) from None
        if target not in SOURCES:
            raise UmxError(
                f"MUSDB18 has no source {target!r}; the sources are {', '.join(SOURCES)}"
            )
        if split not in ("train", "valid"):
            raise ValueError(f"split must be train or valid, not {split!r}")
        layout = (
            "MUSDB18-HQ holds <root>/train/<track>/{mixture,vocals,drums,bass,other}.wav"
            if is_wav
            else "MUSDB18 holds <root>/train/<track>.stem.mp4 (use --is-wav for wav folders)"
        )
        directory = split_dir(root, "train", layout)
        if is_wav:
            _check_track_folders(directory, layout)
        try:
            db = musdb.DB(
                root=str(directory.parent),
                is_wav=is_wav,
                subsets="train",
                setup_file=MUSDB_SETUP if (directory.parent / MUSDB_SETUP).is_file() else None,
            )
        except (ffmpeg.Error, OSError, KeyError, TypeError, yaml.YAMLError) as error:
            raise _unreadable_folder(directory, is_wav, error) from None
        if not db.tracks:
            hint = NO_STEMS if holds_songs(directory) else ""
            raise UmxError(f"{display_path(directory)} holds no MUSDB18 tracks: {layout}{hint}")
        by_name = {track.name: track for track in db.tracks}
        train_names, valid_names = musdb_split(
            list(by_name), db.setup["validation_tracks"], valid_tracks
        )
        names = train_names if split == "train" else valid_names
        tracks = [
            self._track(by_name[name], target, mixture=split == "valid", is_wav=is_wav)
            for name in names
        ]
        super().__init__(
            tracks,
            seq_duration=seq_duration,
            nb_channels=nb_channels,
            samples_per_track=samples_per_track,
            augment=augment,
            random_mix=random_track_mix,
        )

    @staticmethod
    def _track(track: Any, target: str, *, mixture: bool, is_wav: bool) -> Track:
        """A `Track` of a musdb MultiTrack; wav files are read with `umx.audio` directly."""
        folder = Path(track.path).parent if is_wav else Path(track.path)
        missing = [name for name in SOURCES if name not in track.sources]
        if missing:
            raise UmxError(f"{display_path(folder / (missing[0] + '.wav'))} does not exist")

        if not is_wav:
            check_stem_streams(folder, track.info.nb_audio_streams)

        def info(stem: Any, path: str, stem_id: int) -> AudioInfo:
            if is_wav:
                return AudioInfo.read(path)
            nb_channels = track.info.channels(stem_id)
            return StemInfo(Path(path), int(track.rate), nb_channels, track.samples, stem)

        sources = {
            name: info(source, source.path, source.stem_id)
            for name, source in track.sources.items()
        }
        return Track(
            str(folder),
            target=sources[target],
            interferers=tuple(sources[n] for n in SOURCES if n != target),
            mixture=info(track, track.path, track.stem_id) if mixture else None,
        )
