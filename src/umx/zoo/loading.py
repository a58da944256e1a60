"""Separators loaded by name or from a folder, and the default model's offline fallback.

The default model is the published `umxl`. When its weights are neither in the cache nor
downloadable (no network, `$UMX_OFFLINE` set, a failed download), `load_separator(None)` falls
back to the bundled `umxsynth` with one warning; a model asked for by name never falls back.

`load_separator` is the one loader of separators, from a name or a model directory; reading and
writing model directories is `umx.modeldir`'s job.
"""

from __future__ import annotations

import errno
import logging
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umx.defaults import DEFAULT_MODEL, FALLBACK_MODEL, WIENER_WIN_LEN
from umx.errors import UmxError, check_flag, check_targets, short
from umx.zoo.download import (
    Unavailable,
    checked_targets,
    download_command,
    fetch_targets,
    is_offline,
    probe,
)
from umx.zoo.registry import MIRROR_ENV, MODELS, ZooEntry, known_name, model_targets

if TYPE_CHECKING:  # torch, and modeldir which imports it, load only when a model does
    import torch

    from umx.modeldir import ModelFiles
    from umx.separator import Separator

logger = logging.getLogger(__name__)
_NOTICED: set[str] = set()
"""The named models whose notice this process has logged (each is logged once)."""


def _read_config(directory: Path, entry: ZooEntry) -> tuple[dict[str, Any], str]:
    """`separator.json`, which only a named model may lack: its registry entry stands in."""
    from umx.modeldir import SEPARATOR_JSON, read_separator_json

    path = directory / SEPARATOR_JSON
    if path.is_file():
        return read_separator_json(path), str(path)
    config = {
        "sample_rate": entry.sample_rate,
        "nfft": entry.n_fft,
        "nhop": entry.n_hop,
        "nb_channels": entry.nb_channels,
    }
    return config, f"the registry entry of {entry.name!r}"


def _downloaded_files(
    entry: ZooEntry, selected: Sequence[str], progress: bool, offline: bool
) -> ModelFiles:
    """The files of a downloaded model for the targets `selected` (see `model_targets`)."""
    from umx.modeldir import ModelFiles

    directory = fetch_targets(entry, selected, progress, offline)
    config, source = _read_config(directory, entry)
    weights = {target: directory / entry.weights[target] for target in selected}
    return ModelFiles(weights, config, source)


def _named_files(
    entry: ZooEntry, targets: Sequence[str] | None, progress: bool, offline: bool
) -> ModelFiles:
    from umx.modeldir import directory_files

    selected = checked_targets(entry, targets, offline)  # named as the user named the model
    if entry.bundled:  # never touches the network
        config = _read_config(entry.directory, entry)
        return directory_files(entry.directory, selected, config=config, available=entry.targets)
    return _downloaded_files(entry, selected, progress, offline)


def _default_or_why_not(selected: Sequence[str], offline: bool) -> str | None:
    """None if the default model's weights of the targets `selected` (see `model_targets`) are
    cached or reachable, else why they are not, in a few words (the full reason is logged at
    debug level).

    Only looks at the cache and, when files are missing and not offline, probes the download
    host for up to `PROBE_TIMEOUT_S` seconds; nothing is downloaded or verified.
    """
    entry = MODELS[DEFAULT_MODEL]
    missing = entry.missing(selected)
    if not missing:
        return None
    if offline:
        return "offline mode is on"
    url = entry.url(missing[0])
    reason = probe(url)
    if reason is None:
        return None
    logger.debug("%s cannot be reached: %s", url, reason)
    if urllib.parse.urlsplit(url).scheme.lower() == "file":  # a folder, not a host: say what
        if reason in (os.strerror(errno.ENOENT), os.strerror(errno.ENOTDIR)):
            return f"its weights are missing from {MIRROR_ENV}"
        return f"{MIRROR_ENV}: {reason}"  # Permission denied, ...
    return "its download host cannot be reached"


def _fallback_warning(why: str) -> str:
    """The one short line saying that the default model could not be had and which model
    separates instead; where the weights come from and where they go are `umx download`'s and
    `umx --list-models`'s to say. Where `$UMX_OFFLINE` turns offline mode on, the command it
    gives turns it off (`umx download` refuses to download in offline mode)."""
    return (
        f"{DEFAULT_MODEL} is not available ({why}), so the bundled demo model {FALLBACK_MODEL} "
        f"separates instead: run `{download_command(DEFAULT_MODEL)}` to get it"
    )


def _default_targets(targets: Sequence[str] | None, offline: bool) -> list[str]:
    """The default model's `targets` (see `model_targets`); a refusal names the fallback, the
    model that runs, when offline the default is not in the cache."""
    try:
        return model_targets(MODELS[DEFAULT_MODEL], targets)
    except UmxError:
        if offline and MODELS[DEFAULT_MODEL].missing():
            model_targets(MODELS[FALLBACK_MODEL], targets)
        raise


def _default_files(
    targets: Sequence[str] | None, progress: bool, offline: bool
) -> tuple[ModelFiles, str]:
    """The files of the default model, or of the fallback (with a warning) when the default's
    cannot be had; and the name of the model they are of."""
    default = MODELS[DEFAULT_MODEL]
    if default.bundled:  # nothing to download: no fallback
        return _named_files(default, targets, progress, offline), DEFAULT_MODEL
    selected = _default_targets(targets, offline)
    reason = _default_or_why_not(selected, offline)
    if reason is None:
        try:
            return _downloaded_files(default, selected, progress, offline), DEFAULT_MODEL
        except Unavailable as error:
            logger.debug("downloading %s failed: %s", DEFAULT_MODEL, error)
            reason = "its download failed"
    logger.warning(_fallback_warning(reason))
    return _named_files(MODELS[FALLBACK_MODEL], targets, progress, offline), FALLBACK_MODEL


def resolve_model(
    model: str | os.PathLike | None = None,
    *,
    targets: Sequence[str] | None = None,
    offline: bool | None = None,
) -> str:
    """The model `load_separator(model)` would load, without loading or downloading anything.

    For the default (`model` None) this is `DEFAULT_MODEL` when its weights are in the cache, or
    when they are not, offline mode is off and the download host answers within
    `PROBE_TIMEOUT_S` seconds; otherwise `FALLBACK_MODEL`. `load_separator` decides the same
    way by itself (and also falls back when the download then fails), so call this only to know
    beforehand.

    Args:
        model: a name of `MODELS`, a model directory, an X-UMX checkpoint (see
            `umx.xumx_checkpoints`), or None for the default.
        targets: the targets wanted: the default counts as cached when these are.
        offline: never touch the network; None reads `$UMX_OFFLINE`.

    Returns:
        a name of `MODELS`, or the directory (or X-UMX checkpoint) as a string.

    Raises:
        UmxError: `model` is neither a known name nor a directory.
    """
    if model is None:
        selected = _default_targets(targets, is_offline(offline))
        reason = _default_or_why_not(selected, is_offline(offline))
        return DEFAULT_MODEL if reason is None else FALLBACK_MODEL
    if not isinstance(model, str | os.PathLike) or model == "":
        raise UmxError(f"a model is a name or a directory, not {short.repr(model)}")
    if known_name(model) is not None:  # in any case: `UMXL`
        return known_name(model)
    if Path(model).is_dir():
        return str(model)
    from umx.xumx_checkpoints import xumx_file  # torch: only for a model that is not a folder

    if xumx_file(model) is not None:
        return str(model)
    raise UmxError(
        f"unknown model {short.repr(str(model))}: not a directory, and not one of the known "
        f"models {', '.join(MODELS)}"
    )


def _check_one_architecture(path: Path) -> None:
    """Refuse a folder holding an X-UMX checkpoint (`xumx.pth`) and Open-Unmix target models
    too (two trainings into one folder): which of them separates would be a guess.

    Raises:
        UmxError: naming the folder and one Open-Unmix model in it.
    """
    from umx.modeldir import WEIGHTS_SUFFIX
    from umx.xumx_checkpoints import XUMX_FILE

    if not path.is_dir():
        return
    others = sorted(p.name for p in path.glob(f"*{WEIGHTS_SUFFIX}") if p.name != XUMX_FILE)
    if others:
        raise UmxError(
            f"{path} holds an X-UMX model ({XUMX_FILE}) and Open-Unmix models ({others[0]}"
            f"{', ...' * (len(others) > 1)}): give a folder holding one of them (move the "
            "other away)"
        )


def _model_files(
    model: str | os.PathLike | None,
    targets: Sequence[str] | None,
    progress: bool,
    offline: bool,
) -> tuple[str, ModelFiles | None, Sequence[str] | None]:
    """What `load_separator(model)` loads: the name of the model (or its directory as a string),
    the files of its `targets` and all the targets it has; no files (and targets) for an X-UMX
    checkpoint, one file for all targets."""
    from umx.modeldir import directory_files, directory_targets
    from umx.xumx_checkpoints import xumx_file

    if model is None:
        files, name = _default_files(targets, progress, offline)
        return name, files, MODELS[name].targets
    name = resolve_model(model)
    if name in MODELS and isinstance(model, str):
        entry = MODELS[name]
        if entry.notice and name not in _NOTICED:  # once: a server loads it per stem mode
            _NOTICED.add(name)
            logger.info(entry.notice)
        return name, _named_files(entry, targets, progress, offline), entry.targets
    if xumx_file(model) is None:
        files = directory_files(Path(model), targets)
        return name, files, directory_targets(Path(model), files.config)
    _check_one_architecture(Path(model))
    return name, None, None


def load_separator(
    model: str | os.PathLike | None = None,
    *,
    targets: Sequence[str] | None = None,
    niter: int = 1,
    softmask: bool = False,
    residual: str | None = None,
    wiener_win_len: int | None = WIENER_WIN_LEN,
    device: str | torch.device = "cpu",
    progress: bool = True,
    offline: bool | None = None,
) -> Separator:
    """Load a `Separator` from a model name or a model directory.

    With `model` None the default, `DEFAULT_MODEL` (umxl), is used when its weights are in the
    cache or can be downloaded; when they cannot (offline, the host does not answer within
    `PROBE_TIMEOUT_S` seconds, the download fails), the bundled `FALLBACK_MODEL` (umxsynth) is
    used instead and one warning says why and how to get umxl. A model named explicitly never
    falls back. `separator.model_name` says which model was loaded.

    Args:
        model: a name of `MODELS` (downloaded into the cache if needed), a directory in the
            official layout, an X-UMX checkpoint in asteroid's format (a `.pth` file, or a
            directory holding `xumx.pth`), or None for the default. A string naming a known
            model wins over a directory of that name; write `./umxl` for the directory.
        targets: the targets to load, in output order; all of the model's if None.
        niter, softmask, residual, wiener_win_len: Wiener filtering options of `Separator`.
        device: where the models run.
        progress: show download progress bars.
        offline: never touch the network; None reads `$UMX_OFFLINE` (see `is_offline`). Bundled
            models and model directories never touch it anyway.

    Returns:
        the separator, in evaluation mode, on `device`, with `model_name` set to the name
        loaded (e.g. `umxsynth` after a fallback) or the directory as a string.

    Raises:
        UmxError: unknown name or target, missing, corrupt or invalid files, failed download of
            a named model, offline with a named model not in the cache; before any of that,
            options `Separator` refuses, targets that are not a list of names (text, say), or
            a `softmask`, `progress` or `offline` that is not a bool.
    """
    import torch

    from umx.modeldir import build_separator
    from umx.separator import check_options
    from umx.xumx_checkpoints import xumx_separator

    # before any download
    check_options(niter=niter, wiener_win_len=wiener_win_len, softmask=softmask, residual=residual)
    targets = check_targets(targets)
    check_flag("progress", progress)
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise UmxError(f"unknown device {short.repr(str(device))} ({error})") from None
    name, files, available = _model_files(model, targets, progress, is_offline(offline))
    options = {
        "niter": niter,
        "softmask": softmask,
        "residual": residual,
        "wiener_win_len": wiener_win_len,
    }
    if files is None:
        separator = xumx_separator(model, targets, **options)
    else:
        separator = build_separator(files, {**options, "model_targets": available})
    separator = separator.to(device).eval()
    separator.model_name = name
    return separator
