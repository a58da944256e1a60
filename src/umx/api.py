"""The Python API: separate audio in memory or files with a named or local model."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path, PurePath
from string import Formatter

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from umx.aggregate import check_aggregate, parse_aggregate  # noqa: F401 (re-exported)
from umx.audio import (
    SUBTYPES,
    AudioBlocks,
    AudioWriter,
    StreamResampler,
    WriteReport,
    check_samples,
    display_path,
    finish_together,
    float_samples,
    match_channels,
    peak,
    resample,
)
from umx.defaults import DEFAULT_TEMPLATE, LONG_NAMES_HINT, TEMPLATE_FIELDS
from umx.devices import resolve_device
from umx.errors import (
    MAX_RATE,
    MIN_RATE,
    UmxError,
    check_excerpt,
    check_flags,
    check_number,
    check_targets,
)
from umx.folders import output_folders
from umx.onnx.options import is_export_folder
from umx.options import OutputOptions, SeparationOptions, ext_conflict
from umx.separator import OVERLAP, SEGMENT, Separator, check_options
from umx.zoo import load_separator
from umx.zoo.registry import require_causal_model

TIME_MAJOR_HINT = "; it looks time-major: pass audio.T"
TELL_APART = (
    "tell them apart in --filename with {parent} (the input's folder) or {trackext} (its extension)"
)
"""The advice for two inputs whose stems would be written to one file."""


def check_audio(audio: object, rate: object) -> Tensor:
    """A mixture given to the API, checked and as a float32 tensor.

    Args:
        audio: `(nb_channels, nb_timesteps)` or `(nb_samples, nb_channels, nb_timesteps)`, real
            floating-point samples (a tensor or a numpy array), 1 or 2 channels.
        rate: its sample rate in Hz.

    Returns:
        the audio as a float32 tensor of the same shape.

    Raises:
        TypeError: not an array of real floating-point numbers.
        UmxError: wrong shape, no samples, samples that are not audio (NaN, infinite or
            beyond ±10,000: see `umx.audio.samples`), or a bad rate.
    """
    audio = float_samples(audio, "audio")
    check_number("rate", rate, minimum=MIN_RATE, maximum=MAX_RATE)
    shape = tuple(audio.shape)
    if len(shape) not in (2, 3):
        raise UmxError(
            "audio must be (nb_channels, nb_timesteps) or (nb_samples, nb_channels, "
            f"nb_timesteps), got shape {shape}"
        )
    if not 1 <= shape[-2] <= 2:
        hint = TIME_MAJOR_HINT if shape[-1] in (1, 2) else ""
        raise UmxError(f"audio must have 1 or 2 channels (axis -2), got shape {shape}{hint}")
    if shape[-1] == 0 or shape[0] == 0:
        raise UmxError(f"audio holds no samples (shape {shape})")
    audio = audio.detach().to("cpu", torch.float32)
    check_samples(audio, 0.0, rate, "audio")
    return audio


def separate(
    audio: Tensor | np.ndarray,
    rate: float,
    model: str | os.PathLike | Separator | None = None,
    *,
    targets: Sequence[str] | None = None,
    niter: int = 1,
    softmask: bool = False,
    residual: str | None = None,
    aggregate: Mapping[str, Sequence[str]] | None = None,
    segment: float | None = SEGMENT,
    overlap: float = OVERLAP,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Separate a mixture into named stems.

    Args:
        audio: mixture, `(nb_channels, nb_timesteps)` or `(nb_samples, nb_channels,
            nb_timesteps)`, real floating-point samples, 1 or 2 channels; mono is duplicated
            for stereo models, and one-channel models separate stereo as the reference does
            (see `Separator`), so the stems always have the mixture's channels.
        rate: sample rate of `audio`; it is resampled to the model's rate and back.
        model: a model name (see `umx.zoo.list_models`), a model directory, or a `Separator`;
            None for the default model (see `umx.zoo.load_separator`).
        targets, niter, softmask, residual: as `umx.zoo.load_separator`; a `Separator` given
            as `model` has its own, and these must be left at their defaults.
        aggregate: groups of targets to sum, e.g. `{"accompaniment": ["drums", "bass", "other"]}`.
        segment: chunk length in seconds (bounded memory); None separates the whole track at once.
        overlap: cross-fade between chunks in seconds.
        device: where the models run: `cpu`, `cuda`, `cuda:N`, `mps`, `auto` or a `torch.device`;
            None for the CPU, or a `Separator`'s own (it is not moved: another is refused).

    Returns:
        `{target: stem}`, each stem shaped like `audio` and at `rate`.

    Raises:
        TypeError: `audio` is not an array of real floating-point samples.
        UmxError: a bad shape, sample, rate, device or option, or the model cannot be loaded.
    """
    audio = check_audio(audio, rate)
    check_options(
        niter=niter, segment=segment, overlap=overlap, softmask=softmask, residual=residual
    )
    targets = check_targets(targets)
    model = _api_separator(model, targets, niter, softmask, residual, device)
    check_aggregate(aggregate, model)
    model.check_segment(segment)
    model.check_ready()
    batch = audio if audio.dim() == 3 else audio[None]
    nb_channels = batch.shape[1]
    mix = model_input(batch, rate, model, "audio")
    # checked as audio: not again by the separator
    separated = torch.cat(list(model.iter_unchecked(mix, segment, overlap)), dim=-1)
    model.check_stems(peak(mix), peak(separated), "audio")
    stems = model.to_dict(separated, aggregate)
    out = {}
    for name, stem in stems.items():
        stem = match_channels(resample(stem, model.sample_rate, rate), nb_channels)
        # resampling there and back may change the length by a sample
        stem = F.pad(stem, (0, max(0, batch.shape[-1] - stem.shape[-1])))[..., : batch.shape[-1]]
        out[name] = stem if audio.dim() == 3 else stem[0]
    return out


def _api_separator(
    model: str | os.PathLike | Separator | None,
    targets: Sequence[str] | None,
    niter: int,
    softmask: bool,
    residual: str | None,
    device: str | torch.device | None,
) -> Separator:
    """The separator of `separate` (see its arguments): `model` loaded, or as given."""
    if device is not None:  # the check of --device: a missing GPU is one line
        device = resolve_device(str(device) if isinstance(device, torch.device) else device)
    if not isinstance(model, Separator):
        return load_separator(
            model,
            targets=targets,
            niter=niter,
            softmask=softmask,
            residual=residual,
            device=device or "cpu",
        )
    if targets is not None or residual is not None or softmask or niter != 1:
        raise UmxError(
            "targets, niter, softmask and residual belong to the Separator given as model: "
            "set them with load_separator"
        )
    if device is not None and device != model.device:
        raise UmxError(
            f"device {str(device)!r} given with a Separator on {model.device}: move it with "
            "separator.to(device), or leave device out"
        )
    return model


def model_input(audio: Tensor, rate: float, separator: Separator, source: str) -> Tensor:
    """A mixture as the separator takes it: with its channels (`Separator.channels_for`), at
    its rate, in its floating-point type (`Separator.dtype`).

    Args:
        audio: `(..., nb_channels, nb_timesteps)` at `rate`.
        source: how the user knows the audio, for the message.

    Returns:
        `(..., nb_model_channels, nb_model_timesteps)` at `separator.sample_rate`.

    Raises:
        UmxError: the audio is shorter than one sample at the separator's rate.
    """
    mix = match_channels(audio, separator.channels_for(audio.shape[-2]))
    mix = resample(mix, rate, separator.sample_rate)
    if mix.shape[-1] == 0:
        raise too_short(source, audio.shape[-1], rate, separator.sample_rate)
    return mix.to(separator.dtype)


def too_short(source: str, frames: int, rate: float, model_rate: float) -> UmxError:
    """The error for audio of `frames` frames at `rate` that resamples to nothing at the
    model's rate `model_rate`."""
    return UmxError(
        f"{source} is too short: {frames} frame{'s' * (frames != 1)} at {rate:g} Hz "
        f"{'are' if frames != 1 else 'is'} less than one sample at the model's rate "
        f"({model_rate:g} Hz)"
    )


def load_model(
    options: SeparationOptions, *, device: str = "cpu", progress: bool = True
) -> Separator:
    """`options.model` as it is (a name, a directory, or None for the default), with the other
    separation options and its chunks checked against it (`Separator.check_segment`): with
    the onnxruntime backend, an export folder's graphs (`umx.onnx.folder`, quantised as
    `options.quantize` asks); else the target models on `device`, a download showing a
    progress bar with `progress`.
    """
    if options.backend == "onnxruntime" and is_export_folder(options.model):
        from umx.onnx.folder import load_export

        separator = load_export(options.model, **options.filter_options, quantize=options.quantize)
    else:
        separator = load_separator(
            options.model, **options.filter_options, device=device, progress=progress
        )
    separator.check_segment(options.chunk_seconds)  # before any input, once
    return separator


def separator_for(
    options: SeparationOptions, *, progress: bool = True, causal: bool = False
) -> Separator:
    """The separator that runs `options` (`load_model`): with the onnxruntime backend the target
    models are exported and run by onnxruntime (`umx.onnx.runtime`), and an export folder's
    graphs are run as they are. With `causal` (for a stream), a named model that is not causal
    is refused before it is downloaded or loaded.
    """
    if causal:
        require_causal_model(options.model)
    onnx = options.backend == "onnxruntime"
    device = "cpu" if onnx else resolve_device(options.device)
    separator = load_model(options, device=device, progress=progress)
    if not onnx or is_export_folder(options.model):
        return separator
    from umx.onnx.runtime import onnx_separator

    return onnx_separator(separator, quantize=options.quantize)


def output_paths(
    input_path: str | os.PathLike,
    names: Sequence[str],
    outdir: str | os.PathLike,
    filename: str = DEFAULT_TEMPLATE,
    ext: str = "wav",
) -> dict[str, Path]:
    """Where the stems of one input go: `outdir / filename` with the `TEMPLATE_FIELDS` filled in.

    Raises:
        UmxError: the template is invalid, gives two stems one path, gives a name without an
            audio format's extension or with one other than an `ext` other than wav (wav is the
            default, which a template's own extension overrides), or a path would leave
            `outdir` (an absolute template, `..`, or a track or stem named `..`).
    """
    fields = {
        "track": Path(input_path).stem,
        "trackext": Path(input_path).suffix.lstrip("."),
        "parent": Path(os.path.abspath(input_path)).parent.name,
        "ext": ext,
    }
    try:
        used = {field for _, field, _, _ in Formatter().parse(filename) if field is not None}
    except ValueError as error:
        raise UmxError(f"--filename {filename!r} is not a valid template ({error})") from None
    unknown = sorted(used - set(TEMPLATE_FIELDS))
    if unknown == ["stem"]:  # demucs's name for the field
        fixed = filename.replace("{stem}", "{target}")
        raise UmxError(f"--filename: demucs's {{stem}} is umx's {{target}}: --filename '{fixed}'")
    if unknown:
        raise UmxError(
            f"--filename {filename!r} uses unknown fields {', '.join(unknown)}; "
            f"use {', '.join('{' + field + '}' for field in TEMPLATE_FIELDS)}"
        )
    paths = {}
    for name in names:
        relative = PurePath(filename.format(target=name, **fields))
        if (
            relative.is_absolute()
            or relative.drive
            or any(part in ("", ".", "..") for part in relative.parts)
            or relative == PurePath()
        ):
            raise UmxError(
                f"--filename {filename!r} gives {str(relative)!r} for {display_path(input_path)} "
                f"and stem {name!r}: every output must stay inside --outdir (no absolute paths, "
                "no .. and no track or stem named ..)"
            )
        if relative.suffix.lower().lstrip(".") not in SUBTYPES:
            raise UmxError(
                f"--filename {filename!r} gives {str(relative)!r} for {display_path(input_path)}, "
                f"but stems are written as .{', .'.join(SUBTYPES)}: end the template with .{{ext}}"
            )
        suffix = relative.suffix.lower().lstrip(".")
        if "ext" not in used and ext != "wav" and suffix != ext:  # wav, the default: not chosen
            raise ext_conflict(filename, suffix, ext)
        paths[name] = Path(outdir) / relative
    if len(set(paths.values())) < len(paths):
        raise UmxError(f"--filename {filename!r} gives every target the same path; use {{target}}")
    return paths


def check_outdir(outdir: str | os.PathLike) -> None:
    """Refuse an output folder that is a file, before any work.

    Raises:
        UmxError: `outdir` exists and is not a folder, or is a broken symbolic link.
    """
    if os.path.islink(outdir) and not os.path.exists(outdir):
        raise UmxError(
            f"--outdir {display_path(outdir)} is a broken symbolic link (to "
            f"{display_path(os.readlink(outdir))}): remove it, or give another folder"
        )
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise UmxError(f"--outdir {display_path(outdir)} is a file: give a folder for the stems")


def plan_outputs(
    inputs: Sequence[str | os.PathLike],
    names: Sequence[str],
    outdir: str | os.PathLike,
    filename: str = DEFAULT_TEMPLATE,
    ext: str = "wav",
) -> list[dict[str, Path]]:
    """The output paths of several inputs (`output_paths` each), checked together so that no
    stem would replace an input or another input's stem.

    Raises:
        UmxError: `outdir` is a file, an output path is an input (even with --force), or two
            inputs (or one given twice) would write the same file; the message says how to
            tell them apart.
    """
    check_outdir(outdir)
    plans = [output_paths(path, names, outdir, filename, ext) for path in inputs]
    real_inputs = {os.path.realpath(path): path for path in inputs}
    owners: dict[str, str | os.PathLike] = {}
    for path, plan in zip(inputs, plans, strict=True):
        for output in plan.values():
            real = os.path.realpath(output)
            if real in real_inputs:
                raise UmxError(
                    f"the stem {display_path(output)} would replace the input "
                    f"{display_path(real_inputs[real])}; choose another --outdir or --filename"
                )
            if real in owners:
                raise UmxError(
                    f"{display_path(owners[real])} and {display_path(path)} would both write "
                    f"{display_path(output)}; {TELL_APART}"
                    if os.path.realpath(owners[real]) != os.path.realpath(path)
                    else f"{display_path(path)} is given twice: its stems have one name, so give "
                    "it once (two excerpts of it: one run each, with its own --outdir)"
                )
            owners[real] = path
    return plans


def separate_file(
    input_path: str | os.PathLike,
    separator: Separator | str | os.PathLike | None,
    *,
    outdir: str | os.PathLike,
    filename: str = DEFAULT_TEMPLATE,
    ext: str = "wav",
    subtype: str | None = None,
    clip: str = "rescale",
    start: float = 0.0,
    duration: float | None = None,
    downmix: bool = False,
    match_input: bool = False,
    segment: float | None = SEGMENT,
    overlap: float = OVERLAP,
    aggregate: Mapping[str, Sequence[str]] | None = None,
    force: bool = False,
    on_progress: Callable[[float, float], None] | None = None,
) -> list[WriteReport]:
    """Separate an audio file and write one file per stem.

    Stems are written at the model's sample rate with the channels the separator works on (see
    `Separator.channels_for`), or with `match_input` at the input's rate and channel count.
    The input is decoded block by block as the chunks need it (`umx.audio.AudioBlocks`: the
    samples of `read_audio`), the stems streamed to temporary files and renamed when complete:
    memory does not grow with the track's length (but with `segment=None`, the whole track at
    once) and a failure, even one found late in the input (a NaN, a truncation), leaves no
    partial file. Existing files are refused unless `force`; no stem replaces the input.

    Args:
        input_path: the mixture, any format `umx.audio.read_audio` reads.
        separator: the loaded models; or as `separate`'s `model`, a model name, a model
            directory or None for the default, loaded with `umx.zoo.load_separator`'s defaults.
        outdir, filename, ext: output location, see `output_paths`.
        subtype, clip: sample format and clipping policy, see `umx.audio.AudioWriter`.
        start, duration: excerpt of the input to separate, in seconds.
        downmix: average inputs with more than two channels instead of refusing them.
        match_input: write the stems at the input's sample rate and channel count.
        segment, overlap: chunking, see `Separator.separate`.
        aggregate: groups of targets to write instead of the targets.
        force: overwrite existing files.
        on_progress: called after each chunk with the seconds of audio done and in all.

    Returns:
        one report per written file (path, peak, clipping action).

    Raises:
        UmxError: a bad option (checked as `OutputOptions` and `umx` check theirs, before any
            model loads), an input that cannot be read or separated, or a stem not written.
    """
    check_flags({"--downmix": downmix, "--match-input": match_input})
    OutputOptions(outdir, filename, ext, subtype, clip, force)  # checked as the CLI's
    check_excerpt(start, duration)
    separator = _file_separator(separator, aggregate, segment, overlap)
    (paths,) = plan_outputs([input_path], separator.output_names(aggregate), outdir, filename, ext)
    with ExitStack() as stack:
        # the header's refusals and an empty input come here, before any folder or file is made
        audio = stack.enter_context(
            AudioBlocks(input_path, start=start, duration=duration, downmix=downmix)
        )
        mix = _DecodedMix(audio, separator, display_path(input_path))
        output = (audio.rate, audio.nb_channels) if match_input else (separator.sample_rate, None)
        writers = _stem_writers(
            stack, paths, output[0], output[1] or mix.nb_channels, subtype, clip, force
        )
        separated_peak = _write_chunks(
            separator,
            mix,
            writers,
            match_input,
            segment=segment,
            overlap=overlap,
            aggregate=aggregate,
            on_progress=on_progress,
        )
        # once the whole input was read, before the writers put the stems in place, together
        separator.check_stems(mix.peak, separated_peak, mix.source)
        finish_together(writers.values())
    return [writer.report for writer in writers.values()]


def _stem_writers(
    stack: ExitStack,
    paths: Mapping[str, Path],
    rate: float,
    nb_channels: int,
    subtype: str | None,
    clip: str,
    force: bool,
) -> dict[str, AudioWriter]:
    """The open writers of `separate_file`'s stems, by name, entered in `stack` after the
    folders they need (`output_folders`, so left last, once the files are gone)."""
    stack.enter_context(output_folders(paths.values(), LONG_NAMES_HINT))
    return {
        name: stack.enter_context(
            AudioWriter(path, rate, nb_channels, subtype=subtype, clip=clip, force=force)
        )
        for name, path in paths.items()
    }


def _file_separator(
    separator: Separator | str | os.PathLike | None,
    aggregate: Mapping[str, Sequence[str]] | None,
    segment: float | None,
    overlap: float,
) -> Separator:
    """The separator of `separate_file` (loaded if a name, a directory or None is given, once
    the chunk options are checked), checked with its `aggregate` and `segment` and ready to
    separate (`check_ready`)."""
    check_options(segment=segment, overlap=overlap)
    if not isinstance(separator, Separator):
        separator = load_separator(separator)
    check_aggregate(aggregate, separator)
    separator.check_segment(segment)
    separator.check_ready()
    return separator


class _DecodedMix:
    """The mixture of `separate_file`, decoded block by block: each block `(1, nb_channels,
    nb_block)` as `model_input` gives the whole, with the separator's channels, at its rate (a
    `StreamResampler` gives what `resample` gives the whole) and in its `dtype`.

    Attributes:
        audio: the input's blocks.
        nb_channels: the mixture's channels (`Separator.channels_for`).
        peak: the largest absolute sample of the blocks so far: the mixture's, once read.
        nb_frames: the frames of the blocks so far.
        ended: whether the last block was given.
    """

    def __init__(self, audio: AudioBlocks, separator: Separator, source: str) -> None:
        self.audio, self.separator, self.source = audio, separator, source
        self.nb_channels = separator.channels_for(audio.nb_channels)
        self.peak, self.nb_frames, self.ended = 0.0, 0, False

    def __iter__(self) -> Iterator[Tensor]:
        """The blocks; after the last, an input too short for the separator's rate is refused."""
        rate = self.separator.sample_rate
        resampler = StreamResampler(self.audio.rate, rate, self.nb_channels)
        for block in self.audio:
            yield self._kept(resampler.process(match_channels(block, self.nb_channels)))
        last = self._kept(resampler.flush())
        if not self.nb_frames:
            raise too_short(self.source, self.audio.nb_read, self.audio.rate, rate)
        self.ended = True
        yield last

    def _kept(self, block: Tensor) -> Tensor:
        block = block.to(self.separator.dtype)[None]
        self.peak = max(self.peak, peak(block))
        self.nb_frames += block.shape[-1]
        return block

    def seconds(self) -> float:
        """The mixture's length in seconds: once read, as long as it is; before, as the input
        declares it (see `AudioBlocks.nb_frames`; at least what was read)."""
        rate, declared = self.separator.sample_rate, self.audio.nb_frames
        if self.ended or declared is None:
            return self.nb_frames / rate
        return max(round(declared * rate / self.audio.rate), self.nb_frames) / rate


def _write_chunks(
    separator: Separator,
    mix: _DecodedMix,
    writers: Mapping[str, AudioWriter],
    match_input: bool,
    *,
    segment: float | None,
    overlap: float,
    aggregate: Mapping[str, Sequence[str]] | None,
    on_progress: Callable[[float, float], None] | None,
) -> float:
    """Separate `mix` chunk by chunk as it is decoded (see `separate_file`) and write each
    stem's chunks to its writer, resampled to the input's rate and matched to its channel count
    with `match_input` (then as long as the input).

    Args:
        separator, segment, overlap, aggregate, on_progress: as `separate_file`.
        mix: the mixture, block by block.
        writers: the open writer of each stem, by name.
        match_input: as `separate_file`.

    Returns:
        the largest absolute sample of the separated sources (before any aggregation).
    """
    audio = mix.audio
    chunks = separator.iter_blocks(mix, segment, overlap)  # the file's samples are checked
    resample_to = audio.rate if match_input and audio.rate != separator.sample_rate else None
    resamplers = {
        name: StreamResampler(separator.sample_rate, resample_to, mix.nb_channels)
        for name in (writers if resample_to is not None else ())
    }

    def write(name: str, stem: Tensor) -> None:
        writers[name].write(match_channels(stem, audio.nb_channels) if match_input else stem)

    done, separated_peak = 0, 0.0
    for chunk in chunks:
        chunk_peak = peak(chunk)
        separator.check_finite(chunk_peak, mix.source)  # refused before it is written
        separated_peak = max(separated_peak, chunk_peak)
        for name, stem in separator.to_dict(chunk, aggregate).items():
            write(name, resamplers[name].process(stem[0]) if resamplers else stem[0])
        done += chunk.shape[-1]
        if on_progress is not None:
            on_progress(done / separator.sample_rate, mix.seconds())
    for name, resampler in resamplers.items():
        write(name, resampler.flush(audio.nb_read))  # the trip there and back may change it
    return separated_peak
