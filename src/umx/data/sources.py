"""Training on one folder of files per source, mixed at random (e.g. speech + noise)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from umx.audio import display_path
from umx.data.augment import Augmentation
from umx.data.datasets import (
    AudioInfo,
    UnmixDataset,
    check_rate,
    check_source_names,
    random_int,
    random_start,
)
from umx.data.layout import split_dir
from umx.errors import UmxError


class SourceFolderDataset(UnmixDataset):
    """`sourcefolder`: one folder of files per source, mixed at random (e.g. speech + noise).

    Layout: `<root>/<split>/<target_dir>/*<ext>` and `<root>/<split>/<interferer_dir>/*<ext>`.
    Each item draws one random file per folder and a random excerpt of each, augments them and
    sums them. Items are excerpts of `seq_duration` seconds in training and validation alike;
    with `deterministic`, item `i` draws from a generator seeded with `i`, so it is the same in
    every epoch (validation).

    Args:
        root: the dataset folder.
        split: `train` or `valid`.
        target_dir: the target's folder name.
        interferer_dirs: the interferers' folder names.
        nb_samples: items per epoch.
        ext: extension of the audio files.
        deterministic: seed each item's choices with its index.
        seq_duration, nb_channels, augment: see `UnmixDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        target_dir: str,
        interferer_dirs: Sequence[str],
        nb_samples: int,
        seq_duration: float,
        nb_channels: int,
        ext: str = ".wav",
        augment: Augmentation | None = None,
        deterministic: bool = False,
    ) -> None:
        check_source_names(
            [("--target-dir", target_dir)]
            + [("--interferer-dirs", name) for name in interferer_dirs],
            "folder",
        )
        names = ",".join([target_dir, *interferer_dirs])
        layout = f"the sourcefolder dataset expects <root>/{split}/{{{names}}}/*{ext}"
        directory = split_dir(root, split, layout)
        self.pools: list[list[AudioInfo]] = []
        for name in [target_dir, *interferer_dirs]:
            folder = directory / name
            if not folder.is_dir():
                raise UmxError(f"{display_path(folder)} does not exist: {layout}")
            files = sorted(folder.glob(f"*{ext}"))
            if not files:
                raise UmxError(f"{display_path(folder)} holds no {ext} files")
            self.pools.append([AudioInfo.read(path) for path in files])
        if seq_duration is None:
            raise UmxError("the sourcefolder dataset needs an excerpt duration (--seq-dur)")
        if nb_samples < 1:
            raise UmxError(f"the number of samples must be at least 1, not {nb_samples}")
        super().__init__(
            sample_rate=self.pools[0][0].sample_rate,
            seq_duration=seq_duration,
            nb_channels=nb_channels,
            augment=augment,
        )
        for pool in self.pools:
            for info in pool:
                check_rate(info, self.sample_rate)
        self.nb_samples = nb_samples
        self.deterministic = deterministic

    def __len__(self) -> int:
        return self.nb_samples

    @property
    def longest(self) -> int:
        return max(info.nb_frames for pool in self.pools for info in pool)

    def eval_view(self) -> SourceFolderDataset:
        view = copy.copy(self)
        view.augment, view.deterministic = None, True
        return view

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        generator = torch.Generator().manual_seed(index) if self.deterministic else None
        length = self.seq_len
        sources = []
        for pool in self.pools:
            info = pool[random_int(len(pool), generator)]
            start = random_start(info.nb_frames, length, generator)
            sources.append(self._source(info, start, length))
        return torch.stack(sources).sum(0), sources[0]
