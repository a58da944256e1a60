"""Model directories: reading, checking and writing the official Open-Unmix layout.

A model directory holds the official Open-Unmix layout, which `umx train` writes too::

    mymodel/
      separator.json    {"sample_rate": 44100.0, "nfft": 4096, "nhop": 1024, "nb_channels": 2}
      vocals.json       {"args": {...}, ...}  (optional when loading)
      vocals.pth        state dict of one `OpenUnmix` (or vocals-<8 hex>.pth)
      ...

Model directories are untrusted input: every field of their json files is checked, their target
names must be safe file names (stems are written under them), and weights must be finite. Every
file is written atomically (temporary file + rename). Which directory a model name stands for is
`umx.zoo`'s job; loading and checking one target's weights file is `umx.weights`'.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umx.defaults import (  # noqa: F401 (re-exported)
    ACCOMPANIMENT_WORDS,
    EXPORT_JSON,
    HASH_DIGITS,
    HASHED_NAME,
)
from umx.errors import MAX_RATE, MIN_RATE, UmxError, check_target_name, display_path, short
from umx.files import torch_save_atomic, write_json_atomic
from umx.model import CrossUnmixTarget, OpenUnmix
from umx.separator import Separator
from umx.transforms import check_stft
from umx.weights import check_state_dict, load_target_model, read_torch_file, target_args

SEPARATOR_JSON = "separator.json"
WEIGHTS_SUFFIX = ".pth"

# Bounds of what a model directory may say.
MAX_JSON_BYTES = 1 << 20
MAX_NFFT = 65536
MAX_MODEL_SIZE = 1 << 16  # hidden_size, nb_layers, max_bin in a target json

RESERVED_TARGETS = {"xumx": "X-UMX model (xumx.pth)", "separator": f"settings ({SEPARATOR_JSON})"}
"""Names an Open-Unmix target cannot have, in any case: a model directory's other files (a
folder holding `xumx.pth` is loaded as X-UMX; `separator.json` is no target's json)."""


# --- one target model -----------------------------------------------------------------------------


def save_target_model(
    model: OpenUnmix,
    directory: str | os.PathLike,
    target: str,
    *,
    sample_rate: float,
    n_fft: int,
    n_hop: int,
    args: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write `<target>.pth` and `<target>.json` into a model directory, each atomically.

    Args:
        model: the target model; its state dict is saved on the CPU.
        directory: the model directory, created if needed.
        target: the target name.
        sample_rate, n_fft, n_hop: the STFT the model works with.
        args: further training arguments for the json's `args`; the model's architecture and
            STFT (see `target_args`) override any of the same name, `bandwidth` excepted.
        metadata: further top-level json fields, e.g. `best_loss`, `epochs_trained`.

    Returns:
        the path of the weights file.

    Raises:
        UmxError: `target` cannot be an Open-Unmix target's name (see
            `check_open_unmix_target`).
    """
    check_open_unmix_target(target, "the model to save", "save it under another target name")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    own = target_args(model, sample_rate=sample_rate, n_fft=n_fft, n_hop=n_hop)
    bandwidth = own.pop("bandwidth")
    all_args = {"bandwidth": bandwidth, **(args or {}), **own}
    weights = directory / f"{target}{WEIGHTS_SUFFIX}"
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    torch_save_atomic(state, weights)
    write_json_atomic(directory / f"{target}.json", {**(metadata or {}), "args": all_args})
    return weights


# --- reading model directories --------------------------------------------------------------------


def select_targets(available: Sequence[str], wanted: Sequence[str] | None, owner: str) -> list[str]:
    """The targets `wanted` (all `available` if None), in the order given, without repeats.

    Raises:
        UmxError: one is not available (the message names `owner` and its targets), or none is
            wanted.
    """
    if wanted is None:
        return list(available)
    selected = list(dict.fromkeys(wanted))
    unknown = [target for target in selected if target not in available]
    if unknown:
        rest = ""  # the mixture without the vocals, which is no target but what is left
        if unknown[0] in ACCOMPANIMENT_WORDS and "vocals" in available:
            rest = (
                f" ({unknown[0]}, the rest of the mixture, is written by --two-stems vocals, "
                f"or --targets vocals --residual {unknown[0]})"
            )
        raise UmxError(
            f"{owner} has no target {short.repr(unknown[0])}; its targets are "
            f"{', '.join(available)}{rest}"
        )
    if not selected:
        raise UmxError(f"no targets selected from {owner}")
    return selected


def _read_json(path: Path) -> Any:
    """A small JSON file; too large, too deeply nested or invalid files are refused."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_JSON_BYTES + 1)
    except OSError as error:
        raise UmxError(f"could not read {path} ({error.strerror or error})") from None
    if len(data) > MAX_JSON_BYTES:
        raise UmxError(f"{path} is too large for a model json (over {MAX_JSON_BYTES} bytes)")
    try:
        return json.loads(data)
    except RecursionError:
        raise UmxError(f"{path} is not a model json: it is nested too deeply") from None
    except ValueError as error:  # UnicodeDecodeError included
        raise UmxError(f"{path} is not valid JSON ({short.repr(str(error))})") from None


def check_model_target(name: object, source: str) -> str:
    """Refuse a name that cannot be a model's target: not a safe file-name stem
    (`check_target_name`), or with a dot, which torch's module names cannot hold (a separator
    keeps its target models by name).

    Returns:
        the name.

    Raises:
        UmxError: naming `source` and what to do.
    """
    check_target_name(name, source)
    if "." in name:
        raise UmxError(
            f"{source} has a target name with a dot, {short.repr(name)}: a model's target "
            "names cannot hold one; rename the target (e.g. its files) without dots"
        )
    return name


def check_open_unmix_target(name: object, source: str, remedy: str) -> str:
    """Refuse a name that cannot be an Open-Unmix target's in a model directory: one that
    `check_model_target` refuses, or one of `RESERVED_TARGETS`, whose files would be taken for
    the directory's own.

    Args:
        name: the name, from untrusted input.
        source: where it comes from, for the message, e.g. an option.
        remedy: what to do instead, for the message.

    Returns:
        the name.

    Raises:
        UmxError: naming `source`, why and `remedy`.
    """
    reserved = RESERVED_TARGETS.get(check_model_target(name, source).lower())
    if reserved is not None:
        raise UmxError(
            f"{source} has the target name {short.repr(name)}, which a model directory keeps for "
            f"its {reserved}: {remedy}"
        )
    return name


def _check_number(
    source: str, key: str, value: object, low: float, high: float, *, integer: bool
) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "a whole number" if integer else "a finite number"
        raise UmxError(f"{source} has a bad {key!r}: {short.repr(value)} is not {kind}")
    if not low <= value <= high:
        raise UmxError(f"{source} has a bad {key!r}: {value!r} is not in [{low:g}, {high:g}]")


def _check_stft_fields(source: str, fields: Mapping[str, Any], required: bool) -> None:
    """Check `sample_rate`, `nfft`, `nhop` and `nb_channels` (those present unless required)."""
    rules = (
        ("sample_rate", MIN_RATE, MAX_RATE, False),
        ("nfft", 2, MAX_NFFT, True),
        ("nhop", 1, MAX_NFFT, True),
        ("nb_channels", 1, 2, True),
    )
    for key, low, high, integer in rules:
        if fields.get(key) is None:
            if required:
                raise UmxError(f"{source} lacks {key!r}")
            continue
        _check_number(source, key, fields[key], low, high, integer=integer)
    if fields.get("nfft") is not None and fields.get("nhop") is not None:
        try:
            check_stft(fields["nfft"], fields["nhop"])
        except UmxError as error:
            raise UmxError(f"{source} is not usable: {error}") from None


def exported_from(folder: str | os.PathLike) -> str:
    """The model an `umx export` folder was exported from, as its JSON says, in words: what
    to give where a PyTorch model is needed."""
    try:
        source = json.loads((Path(folder) / EXPORT_JSON).read_bytes()).get("model")
    except (OSError, ValueError, RecursionError, AttributeError):
        source = None
    if isinstance(source, str):
        return f"the model it was exported from ({display_path(source)})"
    return "the PyTorch model directory or name it was exported from"


def read_separator_json(path: Path) -> dict[str, Any]:
    """The values of a `separator.json`, checked (see `_check_stft_fields`)."""
    if not path.is_file():
        if (path.parent / EXPORT_JSON).is_file():
            raise UmxError(
                f"{path.parent} is an ONNX export (umx export), which only umx separate, stream, "
                f"batch, evaluate and serve run: give {exported_from(path.parent)}"
            )
        if next(path.parent.glob("*.onnx"), None) is not None:
            shown = display_path(path.parent)
            raise UmxError(
                f"{shown} holds ONNX graphs but no {EXPORT_JSON}, as an export cut short leaves "
                f"it: export it again with `umx export MODEL {shlex.quote(shown)} --force`"
            )
        raise UmxError(f"{path} is missing: a model directory needs one")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise UmxError(f"{path} does not hold a JSON object")
    _check_stft_fields(str(path), config, required=True)
    if "targets" in config:
        targets = config["targets"]
        if not isinstance(targets, list) or not targets:
            raise UmxError(f"{path} has a bad 'targets': it must be a non-empty list of names")
        for target in targets:
            check_model_target(target, str(path))
        if len(set(targets)) != len(targets):
            raise UmxError(f"{path} has a bad 'targets': it names a target twice")
    return config


def _read_target_args(path: Path) -> dict[str, Any] | None:
    """The `args` of a target json, checked, or None when there is no json or it has no args."""
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise UmxError(f"{path} does not hold a JSON object")
    args = data.get("args")
    if args is None:
        return None
    if not isinstance(args, dict):
        raise UmxError(f"{path} has a bad 'args': it must be a JSON object")
    source = f"the args of {path}"
    _check_stft_fields(source, args, required=False)
    for key in ("hidden_size", "nb_layers", "max_bin"):
        if args.get(key) is not None:
            _check_number(source, key, args[key], 1, MAX_MODEL_SIZE, integer=True)
    if args.get("unidirectional") is not None and not isinstance(args["unidirectional"], bool):
        raise UmxError(f"{source} has a bad 'unidirectional': it must be true or false")
    return args


def _weight_files(directory: Path) -> dict[str, list[Path]]:
    """Target → weights files (`<target>.pth`, `<target>-<hash>.pth`) in a directory.

    Hidden files (e.g. the `._vocals.pth` that macOS leaves) are not weights.
    """
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.glob(f"*{WEIGHTS_SUFFIX}")):
        if path.name.startswith("."):
            continue
        match = HASHED_NAME.match(path.name)
        found.setdefault(match["target"] if match else path.stem, []).append(path)
    return found


def directory_targets(directory: Path, config: Mapping[str, Any]) -> list[str]:
    """The targets of a model directory, in output order.

    `separator.json` may list them under `targets` (umx writes it); otherwise they are the
    targets with weights or with a `<target>.json` holding `args`, sorted by name.

    Raises:
        UmxError: there are none, or one has a name unsafe as a file name.
    """
    if "targets" in config:
        return list(config["targets"])  # checked by read_separator_json
    names = set(_weight_files(directory))
    for path in directory.glob("*.json"):
        hidden = path.name.startswith(".")
        if path.name != SEPARATOR_JSON and not hidden and _read_target_args(path) is not None:
            names.add(path.stem)
    if not names:
        raise UmxError(
            f"{directory} holds no target models: no <target>.pth files, and no 'targets' in "
            f"its {SEPARATOR_JSON}"
        )
    return [check_model_target(name, f"model directory {directory}") for name in sorted(names)]


def _find_weights(directory: Path, target: str, candidates: Mapping[str, list[Path]]) -> Path:
    paths = candidates.get(target, [])
    if not paths:
        raise UmxError(
            f"{directory / (target + WEIGHTS_SUFFIX)} is missing: the model directory has no "
            f"weights for target {target!r}"
        )
    if len(paths) > 1:
        names = ", ".join(path.name for path in paths)
        raise UmxError(f"{directory} holds several weights files for {target!r} ({names})")
    return paths[0]


@dataclass(frozen=True)
class ModelFiles:
    """What a separator is built from."""

    weights: dict[str, Path]  # target → weights file, in output order
    config: dict[str, Any]  # the values of separator.json
    config_source: str  # where they come from, for error messages


def directory_files(
    directory: Path,
    targets: Sequence[str] | None,
    *,
    config: tuple[dict[str, Any], str] | None = None,
    available: Sequence[str] | None = None,
) -> ModelFiles:
    """The files of a model directory that a separator of `targets` is built from.

    Args:
        directory: a model directory in the official layout.
        targets: the targets wanted, in output order; all of the directory's if None.
        config: the values `separator.json` would hold and where they come from, when known
            otherwise (a named model's registry entry); None reads `separator.json`.
        available: the targets the directory holds, when known otherwise; None reads them off
            the directory (see `directory_targets`).

    Raises:
        UmxError: a file is missing, invalid or ambiguous, or a target is unknown.
    """
    if config is None:
        path = directory / SEPARATOR_JSON
        config = read_separator_json(path), str(path)
    fields, source = config
    if available is None:
        available = directory_targets(directory, fields)
    selected = select_targets(available, targets, f"model directory {directory}")
    candidates = _weight_files(directory)
    weights = {target: _find_weights(directory, target, candidates) for target in selected}
    return ModelFiles(weights, fields, source)


def _check_json_stft(json_path: Path, args: Mapping[str, Any] | None, files: ModelFiles) -> None:
    """Refuse a target json whose `args` record another sample rate or STFT than the config.

    A model only works with the sample rate, STFT size and hop it was trained with; what a
    json does not record is not checked.

    Raises:
        UmxError: naming both files and the values.
    """
    for key in ("sample_rate", "nfft", "nhop"):
        value = (args or {}).get(key)
        if value is not None and value != files.config[key]:
            raise UmxError(
                f"{json_path} says {key} {value!r} but {files.config_source} says "
                f"{files.config[key]!r}: a model only works with the STFT it was trained with"
            )


def build_separator(files: ModelFiles, options: Mapping[str, Any]) -> Separator:
    """A `Separator` of the target models in `files`, loaded and checked against its config.

    Args:
        files: the weights and STFT of the model.
        options: further keyword arguments of `Separator`, e.g. its Wiener filtering options.

    Raises:
        UmxError: a weights file is unusable, or it or its json does not fit the STFT of the
            config.
    """
    n_fft, nb_channels = int(files.config["nfft"]), int(files.config["nb_channels"])
    if not files.weights:
        raise UmxError(f"{files.config_source} describes a model without targets")
    models = {}
    for target, path in files.weights.items():
        json_path = path.parent / f"{target}.json"
        args = _read_target_args(json_path)
        _check_json_stft(json_path, args, files)
        model = load_target_model(path, args)
        if model.nb_output_bins != n_fft // 2 + 1 or model.nb_channels != nb_channels:
            raise UmxError(
                f"{path} holds a {model.nb_channels}-channel model of {model.nb_output_bins} bins "
                f"but {files.config_source} says {nb_channels} channels and nfft {n_fft}"
            )
        models[target] = model
    return Separator(
        models,
        sample_rate=float(files.config["sample_rate"]),
        n_fft=n_fft,
        n_hop=int(files.config["nhop"]),
        nb_channels=nb_channels,
        **options,
    )


# --- writing model directories --------------------------------------------------------------------


def _is_model_directory(directory: Path) -> bool:
    return (directory / SEPARATOR_JSON).exists() or any(directory.glob(f"*{WEIGHTS_SUFFIX}"))


def save_separator(
    separator: Separator,
    directory: str | os.PathLike,
    *,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    force: bool = False,
) -> Path:
    """Write a separator's models in the official layout, every file atomically.

    Writes `separator.json` (`sample_rate`, `nfft`, `nhop`, `nb_channels`, plus `targets` in
    output order, which the reference ignores) and per target `<target>.pth` and
    `<target>.json` (see `save_target_model`).

    Args:
        separator: the separator to save; its residual and filtering options are not saved.
        directory: the model directory, created if needed.
        metadata: per target, further json fields; an `args` field is merged into the json's
            `args`.
        force: overwrite an existing model directory (its other weights files of the saved
            targets are removed, so that the directory stays unambiguous).

    Returns:
        the directory.

    Raises:
        UmxError: the directory already holds a model and `force` is not set, or is a file, or
            the separator is an X-UMX one (see `umx.xumx_checkpoints.save_xumx`), or has a
            target name that a model directory cannot hold (`check_open_unmix_target`).
    """
    if any(isinstance(model, CrossUnmixTarget) for model in separator.target_models.values()):
        raise UmxError(
            "an X-UMX separator is one network, not a model per target: save it with "
            "umx.xumx_checkpoints.save_xumx"
        )
    for target in separator.target_models:  # before anything is written
        check_open_unmix_target(target, "the separator to save", "rename the target")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UmxError(f"cannot save the model into {directory}: it is a file")
    if directory.is_dir() and _is_model_directory(directory):
        if not force:
            raise UmxError(f"{directory} already holds a model; use force to overwrite it")
        stale = _weight_files(directory)
        for target in separator.target_models:
            for path in stale.get(target, []):
                if path.name != f"{target}{WEIGHTS_SUFFIX}":
                    path.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    for target, model in separator.target_models.items():
        extra = dict((metadata or {}).get(target, {}))
        save_target_model(
            model,
            directory,
            target,
            sample_rate=separator.sample_rate,
            n_fft=separator.n_fft,
            n_hop=separator.n_hop,
            args=extra.pop("args", None),
            metadata=extra,
        )
    write_json_atomic(
        directory / SEPARATOR_JSON,
        {
            "sample_rate": separator.sample_rate,
            "nfft": separator.n_fft,
            "nhop": separator.n_hop,
            "nb_channels": separator.nb_channels,
            "targets": list(separator.target_models),
        },
    )
    return directory


def export_model(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    half: bool = True,
    metadata: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Copy a trained model directory into a lean one for shipping.

    Only `separator.json` and each target's `.pth` and `.json` are copied (no checkpoints or
    plots). With `half`, weight matrices are stored as float16, which `load_target_model`
    turns back into float32; the per-bin vectors and normalisation statistics stay float32.

    Args:
        source: a model directory in the official layout.
        destination: the directory to write, refused if it exists unless `force`.
        half: store weight matrices as float16, halving the size.
        metadata: top-level fields added to every target's json, e.g. how it was trained.
        force: replace the files of an existing destination.

    Returns:
        the destination directory.
    """
    source, destination = Path(source), Path(destination)
    files = directory_files(source, None)
    if destination.exists() and not force:
        raise UmxError(f"{destination} already exists (use --force to replace it)")
    destination.mkdir(parents=True, exist_ok=True)
    for target, path in files.weights.items():
        state = check_state_dict(path, read_torch_file(path))
        if half:
            state = {
                key: value.half() if value.is_floating_point() and value.dim() > 1 else value
                for key, value in state.items()
            }
        torch_save_atomic(state, destination / f"{target}{WEIGHTS_SUFFIX}")
        info = (
            _read_json(source / f"{target}.json") if (source / f"{target}.json").is_file() else {}
        )
        write_json_atomic(destination / f"{target}.json", {**info, **(metadata or {})})
    write_json_atomic(destination / SEPARATOR_JSON, files.config)
    return destination
