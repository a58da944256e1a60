"""Methods, which turn a track into estimates: a separation model, estimates on disk, or a
baseline (oracle masks or the mixture)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from umx.api import separate
from umx.audio import audio_info, read_audio
from umx.defaults import AUDIO_EXTENSIONS, BASELINES
from umx.errors import UmxError
from umx.evaluate.tracks import SOURCES, TARGETS
from umx.files import sha256_bytes, sha256_file
from umx.separator import OVERLAP, SEGMENT, Separator
from umx.transforms import N_FFT, N_HOP, istft, stft
from umx.weights import hash_weights
from umx.zoo import MODELS

if TYPE_CHECKING:
    import musdb


IRM_POWER = 1.0
"""Exponent α of the ideal ratio mask |S_j|^α / Σ_k |S_k|^α: 1 is sigsep's IRM1 (magnitudes)."""
EPS = 1e-10
Estimates = dict[str, np.ndarray]
"""Target name → estimate `(nb_timesteps, nb_channels)` at the track's rate."""
Method = Callable[["musdb.MultiTrack"], Estimates]
"""Turns a track into estimates; must be picklable for `jobs > 1`. It may have a `name` (for
reports), a `settings()` method (what makes its estimates, see `ModelMethod.settings`) and a
`track_settings(track)` method (what makes one track's, see `EstimatesMethod.track_settings`)."""
Settings = dict[str, object]
"""What makes a method's estimates, as JSON values: name → value."""


def oracle(
    kind: str,
    mixture: torch.Tensor,
    sources: Mapping[str, torch.Tensor],
    *,
    n_fft: int = N_FFT,
    n_hop: int = N_HOP,
    power: float = IRM_POWER,
) -> dict[str, torch.Tensor]:
    """Oracle masks computed from the true sources and applied to the mixture's STFT.

    `irm`: the ideal ratio mask |S_j|^power / Σ_k |S_k|^power, the upper bound of mask-based
    models such as Open-Unmix. `ibm`: the ideal binary mask, each time-frequency bin given whole
    to the loudest source. Both masks sum to one over the sources, so the estimates add up to the
    mixture.

    Args:
        kind: `irm` or `ibm`.
        mixture: `(nb_channels, nb_timesteps)`.
        sources: name → `(nb_channels, nb_timesteps)`, the true sources.
        n_fft, n_hop: the STFT, by default the one of the Open-Unmix models.
        power: the exponent of the ratio mask.

    Returns:
        name → estimate, `(nb_channels, nb_timesteps)`.
    """
    if kind not in ("irm", "ibm"):
        raise ValueError(f"unknown oracle {kind!r}: use irm or ibm")
    mix_stft = stft(mixture, n_fft, n_hop)  # (nb_channels, nb_bins, nb_frames)
    magnitudes = (stft(source, n_fft, n_hop).abs() for source in sources.values())
    if kind == "irm":
        weights = [magnitude**power for magnitude in magnitudes]
        total = sum(weights).clamp_min(EPS)
        masks = (weight / total for weight in weights)
    else:
        loudest = torch.stack(list(magnitudes)).argmax(dim=0)
        masks = ((loudest == index).to(mix_stft.real.dtype) for index in range(len(sources)))
    # One source at a time: the spectrograms of a whole song are large.
    return {
        name: istft(mask * mix_stft, mixture.shape[-1], n_fft, n_hop)
        for name, mask in zip(sources, masks, strict=True)
    }


def _check_groups(groups: Mapping[str, Sequence[str]], available: Sequence[str]) -> None:
    unknown = sorted({name for group in groups.values() for name in group} - set(available))
    if unknown:
        raise UmxError(
            f"cannot aggregate {', '.join(unknown)}: the sources are {', '.join(available)}"
        )


@dataclass(frozen=True)
class BaselineMethod:
    """A baseline: `irm` or `ibm` oracle masks (see `oracle`), or `mix`, the mixture itself as
    every estimate (the floor any method should beat).

    Args:
        kind: one of `BASELINES`.
        aggregate: groups of sources to estimate instead, e.g. `{"vocals": ["vocals"],
            "accompaniment": ["drums", "bass", "other"]}`; the oracle estimates of a group are
            summed, and `mix` gives the mixture for each group.
    """

    kind: str
    aggregate: Mapping[str, Sequence[str]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in BASELINES:
            raise UmxError(f"unknown baseline {self.kind!r}: use one of {', '.join(BASELINES)}")
        if self.aggregate is not None:
            _check_groups(self.aggregate, SOURCES)

    @property
    def name(self) -> str:
        """The baseline's name in reports: its kind."""
        return self.kind

    def settings(self) -> Settings:
        """What makes its estimates besides its name (see `ModelMethod.settings`): the groups."""
        return {"aggregate": self.aggregate}

    def __call__(self, track: musdb.MultiTrack) -> Estimates:
        if self.kind == "mix":
            return {name: track.audio.copy() for name in self.aggregate or SOURCES}
        mixture = torch.from_numpy(track.audio.T).float()
        sources = {name: torch.from_numpy(track.sources[name].audio.T).float() for name in SOURCES}
        estimates = {name: e.numpy().T for name, e in oracle(self.kind, mixture, sources).items()}
        if self.aggregate is None:
            return estimates
        return {name: sum(estimates[s] for s in group) for name, group in self.aggregate.items()}


def model_display_name(model_name: str | None) -> str | None:
    """How reports name a model: a zoo name as it is, a model directory by its own name."""
    if model_name is None or model_name in MODELS:
        return model_name
    return Path(model_name).resolve().name or model_name


def model_sha256(separator: Separator) -> str:
    """The SHA-256 of a separator's models as they run: each target's weights (the graphs of
    one run by onnxruntime), its rate, STFT and channels. The same for the same model however
    it was loaded or named; it reads every weight once.
    """
    sizes = (separator.sample_rate, separator.n_fft, separator.n_hop, separator.nb_channels)
    digest = hashlib.sha256(repr(sizes).encode())
    for target in sorted(separator.target_models):
        model = separator.target_models[target]
        digest.update(f"\0{target}".encode())
        graphs = getattr(model, "graphs", None)  # an `umx.onnx.runtime.OnnxModel`'s graphs
        if graphs is not None:
            for graph in filter(None, graphs):  # bytes, or a file with its recorded SHA-256
                digest.update((getattr(graph, "sha256", None) or sha256_bytes(graph)).encode())
            continue
        hash_weights(digest, model)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelMethod:
    """Separation with a `Separator`, chunk by chunk (memory bounded by the segment length).

    Args:
        separator: the models, e.g. from `umx.zoo.load_separator`.
        aggregate: groups of targets to estimate instead, see `Separator.to_dict`.
        segment, overlap: chunking in seconds, see `Separator.separate`; `segment=None`
            separates each track whole, as the reference implementation does.
    """

    separator: Separator
    aggregate: Mapping[str, Sequence[str]] | None = None
    segment: float | None = SEGMENT
    overlap: float = OVERLAP

    @property
    def name(self) -> str | None:
        """The model's name in reports: the zoo name or the model directory's name loaded
        (`separator.model_name`); None for a separator built by hand."""
        return model_display_name(self.separator.model_name)

    def settings(self) -> Settings:
        """What makes its estimates besides its name, recorded with the scores so that a
        resumed evaluation reuses only scores made the same way: the model (`model_sha256`),
        its targets and Wiener filter, the groups and the chunking."""
        separator = self.separator
        return {
            "model sha256": model_sha256(separator),
            "targets": sorted(separator.targets),
            "niter": separator.niter,
            "softmask": separator.softmask,
            "wiener_win_len": separator.wiener_win_len,
            "aggregate": self.aggregate,
            "segment": self.segment,
            "overlap": self.overlap,
        }

    def __call__(self, track: musdb.MultiTrack) -> Estimates:
        stems = separate(
            track.audio.T,
            track.rate,
            self.separator,
            aggregate=self.aggregate,
            segment=self.segment,
            overlap=self.overlap,
        )
        return {name: stem.cpu().numpy().T for name, stem in stems.items()}


@dataclass(frozen=True)
class EstimatesMethod:
    """Estimates already on disk, in museval's layout `<directory>/<subset>/<track>/<target>.wav`
    (the layout `--outdir` writes), read as wav files.

    Every track is scored on the same targets: the MUSDB18 targets estimated for any of the
    tracks in `<directory>/<subset>/` (a file named after the target). A track lacking one fails,
    naming the missing file, rather than being scored as a smaller problem (fewer sources score
    higher, and the medians would mix both); so does a track whose estimate of a target is in
    another format (`vocals.flac`), which would otherwise go unread.

    Args:
        directory: the estimates folder.
        tracks: the names of the tracks evaluated, whose folders say which targets are scored;
            None: every folder of the subset.
    """

    directory: Path
    tracks: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        """The estimates' name in reports: their directory's name."""
        return Path(self.directory).resolve().name

    def settings(self) -> Settings:
        """What makes its estimates besides its name: the directory, as an absolute path."""
        return {"estimates": str(Path(self.directory).resolve())}

    def track_settings(self, track: musdb.MultiTrack) -> Settings:
        """What makes one track's estimates: the SHA-256 of each of its files (`<target>.wav
        sha256`), so that scores of files changed, added or removed since are not reused.

        Raises:
            UmxError: the track's estimates are not complete (see `_paths`).
        """
        return {f"{path.name} sha256": sha256_file(path) for path in self._paths(track)[1]}

    def _paths(self, track: musdb.MultiTrack) -> tuple[Path, list[Path]]:
        """A track's folder of estimates, and its wav file of each target estimated for any
        of the tracks of its subset, in `TARGETS` order.

        Raises:
            UmxError: the folder holds no estimates, or lacks one of those targets or holds it
                in another format than wav: naming the file and what to do.
        """
        folder = Path(self.directory) / track.subset / track.name
        files = _estimate_files(folder)
        if not files:
            raise UmxError(f"{folder} holds no estimates ({', '.join(TARGETS)} .wav)")
        paths = []
        subset = Path(self.directory) / track.subset
        for target, elsewhere in _estimated_targets(subset, self.tracks).items():
            wav = folder / f"{target}.wav"
            if target not in files:
                raise UmxError(
                    f"{wav} is missing, but {elsewhere} exists: every track is scored on the "
                    f"same targets (estimate {target} for this track too, or move the other "
                    f"tracks' {target} estimates away)"
                )
            if files[target] != wav:
                raise UmxError(
                    f"{files[target]} is not read: estimates are read as wav files, so this "
                    f"track has no {target} estimate (save it as {wav.name})"
                )
            paths.append(wav)
        return folder, paths

    def __call__(self, track: musdb.MultiTrack) -> Estimates:
        _, paths = self._paths(track)
        length, channels = track.audio.shape
        estimates = {}
        for path in paths:
            # The header first: read_audio refuses more than two channels advising --downmix,
            # an option of umx separate, where an estimate needs its track's channels.
            info = audio_info(path)
            if info.sample_rate != track.rate:
                raise UmxError(
                    f"{path} is at {info.sample_rate:g} Hz but the track at {track.rate:g} Hz"
                )
            if info.nb_channels != channels:
                raise UmxError(
                    f"{path} has {info.nb_channels} channels, the track {channels}: an estimate "
                    "has the channels of its track"
                )
            audio, _ = read_audio(path)
            if audio.shape[1] != length:
                raise UmxError(f"{path} has {audio.shape[1]} samples, the track {length}")
            estimates[path.stem] = audio.numpy().T
        return estimates


def _estimate_files(folder: Path) -> dict[str, Path]:
    """A track's estimates on disk: target → its file, `<target>.wav`, else a file named after
    the target in another audio format (`vocals.flac`); none if the folder does not exist."""
    try:
        others = sorted(
            path
            for path in folder.iterdir()
            if path.stem in TARGETS and path.suffix.lower()[1:] in AUDIO_EXTENSIONS
        )
    except (FileNotFoundError, NotADirectoryError):
        return {}
    files = {}
    for target in TARGETS:
        wav = folder / f"{target}.wav"
        found = [wav] if wav.is_file() else [p for p in others if p.stem == target and p.is_file()]
        if found:
            files[target] = found[0]
    return files


def _estimated_targets(subset: Path, tracks: Sequence[str] | None) -> dict[str, Path]:
    """The targets estimated for any of these tracks (None: any) in a subset's folder of
    estimates, in `TARGETS` order: target → the first such track's file of it."""
    folders = subset.iterdir() if tracks is None else (subset / name for name in tracks)
    first: dict[str, Path] = {}
    for folder in sorted(path for path in folders if path.is_dir()):
        for target, path in _estimate_files(folder).items():
            first.setdefault(target, path)
    return {target: first[target] for target in TARGETS if target in first}
