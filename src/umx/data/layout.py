"""The folders of a training set: a split's folder under the root, its track folders, each
refused with the layout expected, and with `umx distill` where the folder holds plain songs;
a MUSDB18 stem file without its sources (`umx train` and `umx evaluate` refuse it alike)."""

from __future__ import annotations

import os
from pathlib import Path

from umx.audio import display_path
from umx.defaults import AUDIO_EXTENSIONS, SOURCES
from umx.errors import UmxError
from umx.messages import plural

NO_STEMS = "; to train on songs without stems: umx distill (docs/distillation.md)"
"""What a folder of plain songs is told: `umx train` needs each source's stem."""


def split_dir(root: str | os.PathLike, split: str, layout: str) -> Path:
    """The folder of `split` under a dataset's `root`, refused (naming the expected `layout`)
    when missing."""
    given, root = root, Path(root).expanduser()
    if not root.is_dir():
        raise UmxError(
            f"--root {display_path(given)} does not exist or is not a folder: give the folder "
            "of the training set"
        )
    directory = root / split
    if not directory.is_dir():
        hint = NO_STEMS if holds_songs(root) else ""
        raise UmxError(f"{display_path(directory)} does not exist: {layout}{hint}")
    return directory


def track_dirs(directory: Path, layout: str) -> list[Path]:
    """The track folders of a split's folder, refused when there are none."""
    tracks = sorted(path for path in directory.iterdir() if path.is_dir())
    if not tracks:
        hint = NO_STEMS if holds_songs(directory) else ""
        raise UmxError(f"{display_path(directory)} holds no track folders: {layout}{hint}")
    return tracks


def holds_songs(directory: Path) -> bool:
    """Whether `directory` holds audio files itself (songs, not a dataset's folders)."""
    try:
        return any(
            path.suffix.lower()[1:] in AUDIO_EXTENSIONS and path.is_file()
            for path in directory.iterdir()
        )
    except OSError:
        return False


def check_stem_streams(path: str | os.PathLike, nb_audio_streams: int) -> None:
    """Refuse a MUSDB18 stem file (`.stem.mp4`) whose `nb_audio_streams` are fewer than the
    mixture and the sources (musdb then fails with an IndexError).

    Raises:
        UmxError: naming the file, its streams and what to do.
    """
    if nb_audio_streams < 1 + len(SOURCES):
        raise UmxError(
            f"{display_path(path)} has {plural(nb_audio_streams, 'audio stream')}, not the "
            f"mixture and {len(SOURCES)} sources of a MUSDB18 stem file: replace it, or move it "
            "out of the folder"
        )
