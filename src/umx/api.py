"""The Python API: separate audio in memory or files with a named or local model."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from umx.audio import AudioWriter, WriteReport, match_channels, read_audio, resample
from umx.errors import UmxError
from umx.separator import OVERLAP, SEGMENT, Separator
from umx.zoo import DEFAULT_MODEL, load_separator

DEFAULT_TEMPLATE = "{track}/{target}.{ext}"


def separate(
    audio: Tensor | np.ndarray,
    rate: float,
    model: str | os.PathLike | Separator = DEFAULT_MODEL,
    *,
    targets: Sequence[str] | None = None,
    niter: int = 1,
    softmask: bool = False,
    residual: str | None = None,
    aggregate: Mapping[str, Sequence[str]] | None = None,
    segment: float | None = SEGMENT,
    overlap: float = OVERLAP,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Separate a mixture into named stems.

    Args:
        audio: mixture, `(nb_channels, nb_timesteps)` or `(nb_samples, nb_channels,
            nb_timesteps)`, float; mono is duplicated for stereo models and stereo averaged
            for mono models.
        rate: sample rate of `audio`; it is resampled to the model's rate and back.
        model: a model name (see `umx.zoo.list_models`), a model directory, or a `Separator`.
        targets, niter, softmask, residual: as `umx.zoo.load_separator`; a `Separator` given
            as `model` has its own, and these must be left at their defaults.
        aggregate: groups of targets to sum, e.g. `{"accompaniment": ["drums", "bass", "other"]}`.
        segment: chunk length in seconds (bounded memory); None separates the whole track at once.
        overlap: cross-fade between chunks in seconds.
        device: where the models run.

    Returns:
        `{target: stem}`, each stem shaped like `audio` and at `rate`.
    """
    audio = torch.as_tensor(audio, dtype=torch.float32)
    if audio.dim() not in (2, 3):
        raise UmxError(
            f"audio must be (nb_channels, nb_timesteps) or (nb_samples, nb_channels, "
            f"nb_timesteps), got shape {tuple(audio.shape)}"
        )
    if isinstance(model, Separator):
        if targets is not None or residual is not None or softmask or niter != 1:
            raise UmxError(
                "targets, niter, softmask and residual belong to the Separator given as model: "
                "set them with load_separator"
            )
    else:
        model = load_separator(
            model,
            targets=targets,
            niter=niter,
            softmask=softmask,
            residual=residual,
            device=device,
        )
    batch = audio if audio.dim() == 3 else audio[None]
    nb_channels = batch.shape[1]
    mix = resample(match_channels(batch, model.nb_channels), rate, model.sample_rate)
    stems = model.to_dict(model.separate(mix, segment=segment, overlap=overlap), aggregate)
    out = {}
    for name, stem in stems.items():
        stem = match_channels(resample(stem, model.sample_rate, rate), nb_channels)
        # resampling there and back may change the length by a sample
        stem = F.pad(stem, (0, max(0, batch.shape[-1] - stem.shape[-1])))[..., : batch.shape[-1]]
        out[name] = stem if audio.dim() == 3 else stem[0]
    return out


def output_paths(
    input_path: str | os.PathLike,
    names: Sequence[str],
    outdir: str | os.PathLike,
    filename: str = DEFAULT_TEMPLATE,
    ext: str = "wav",
) -> dict[str, Path]:
    """Where the stems of one input go: `outdir / filename` with `{track}` (the input's name
    without extension), `{target}` and `{ext}` filled in."""
    track = Path(input_path).stem
    try:
        paths = {
            name: Path(outdir) / filename.format(track=track, target=name, ext=ext)
            for name in names
        }
    except (KeyError, IndexError, ValueError) as error:
        raise UmxError(
            f"--filename {filename!r} is not a valid template ({error}); "
            "use {track}, {target} and {ext}"
        ) from None
    if len(set(paths.values())) < len(paths):
        raise UmxError(f"--filename {filename!r} gives every target the same path; use {{target}}")
    return paths


def separate_file(
    input_path: str | os.PathLike,
    separator: Separator,
    *,
    outdir: str | os.PathLike,
    filename: str = DEFAULT_TEMPLATE,
    ext: str = "wav",
    subtype: str | None = None,
    clip: str = "rescale",
    start: float = 0.0,
    duration: float | None = None,
    downmix: bool = False,
    segment: float | None = SEGMENT,
    overlap: float = OVERLAP,
    aggregate: Mapping[str, Sequence[str]] | None = None,
    force: bool = False,
    on_progress: Callable[[float], None] | None = None,
) -> list[WriteReport]:
    """Separate an audio file and write one file per stem, at the model's sample rate.

    Stems are streamed to temporary files chunk by chunk and renamed when complete, so memory
    does not grow with the track's length (except with `segment=None`) and a failure leaves
    no partial file. Existing files are refused unless `force`.

    Args:
        input_path: the mixture, any format `umx.audio.read_audio` reads.
        separator: the loaded models.
        outdir, filename, ext: output location, see `output_paths`.
        subtype, clip: sample format and clipping policy, see `umx.audio.AudioWriter`.
        start, duration: excerpt of the input to separate, in seconds.
        downmix: average inputs with more than two channels instead of refusing them.
        segment, overlap: chunking, see `Separator.separate`.
        aggregate: groups of targets to write instead of the targets.
        force: overwrite existing files.
        on_progress: called with the fraction of the track done after each chunk.

    Returns:
        one report per written file (path, peak, clipping action).
    """
    audio, _ = read_audio(
        input_path,
        start=start,
        duration=duration,
        sample_rate=separator.sample_rate,
        nb_channels=separator.nb_channels,
        downmix=downmix,
    )
    names = list(aggregate) if aggregate is not None else separator.targets
    paths = output_paths(input_path, names, outdir, filename, ext)
    for directory in {path.parent for path in paths.values()}:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UmxError(
                f"cannot create output directory {directory}: {error.strerror}"
            ) from None
    mix = audio[None]
    if segment is None:
        chunks = iter([separator.separate(mix, segment=None)])
    else:
        chunks = separator.iter_chunks(mix, segment, overlap)
    with ExitStack() as stack:
        writers = {
            name: stack.enter_context(
                AudioWriter(
                    path,
                    separator.sample_rate,
                    separator.nb_channels,
                    subtype=subtype,
                    clip=clip,
                    force=force,
                )
            )
            for name, path in paths.items()
        }
        done = 0
        for chunk in chunks:
            for name, stem in separator.to_dict(chunk, aggregate).items():
                writers[name].write(stem[0])
            done += chunk.shape[-1]
            if on_progress is not None:
                on_progress(done / mix.shape[-1])
    return [writer.report for writer in writers.values()]


def parse_aggregate(text: str | None) -> dict[str, list[str]] | None:
    """`--aggregate` as JSON text or a JSON file: `{name: [target, ...]}`."""
    if text is None:
        return None
    path = Path(text)
    try:
        value = json.loads(path.read_text() if path.is_file() else text)
    except (OSError, json.JSONDecodeError) as error:
        raise UmxError(f"--aggregate is not valid JSON or a JSON file: {error}") from None
    if not (
        isinstance(value, dict)
        and all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in value.values())
    ):
        raise UmxError('--aggregate must map names to lists of targets, e.g. {"acc": ["bass"]}')
    return value
