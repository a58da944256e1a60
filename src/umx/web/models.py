"""The models of `umx serve`: their targets, what a job's id holds of its model, and the
separator a job runs, checked against the weights its id names.

A downloaded model of the zoo is named by its name alone: its files are verified by their
SHA-256 when downloaded, and an upload must not wait for a download. A bundled model is named
by its name and the SHA-256 of its weights, which change with umx's version (a server's data
folder outlives an upgrade). A model folder (a model directory, or an export folder of `umx
export`) is named by its resolved path and the SHA-256 of the weights it holds
(`umx.model_hash.job_sha256`, that of `umx batch`'s records), so a folder retrained or
replaced, or another folder of the same name (another working directory), makes other jobs; a
folder is loaded and hashed again only when its files changed (`umx.model_hash.folder_state`,
a stat of each)."""

from __future__ import annotations

from pathlib import Path

from umx.audio import display_path
from umx.errors import UmxError
from umx.jobs import loaded_separator
from umx.model_hash import loaded_sha256
from umx.modeldir import directory_files
from umx.onnx.options import is_export_folder
from umx.options import SeparationOptions
from umx.separator import Separator
from umx.zoo import MODELS


def model_targets(model: str) -> list[str]:
    """The targets of a named model, a model directory or an export folder (as its
    `umx-onnx.json` lists them), without loading it (none where the folder cannot be read: its
    jobs then fail with the loader's sentence)."""
    if model in MODELS:
        return list(MODELS[model].targets)
    try:
        if is_export_folder(model):
            from umx.onnx.folder import read_export

            return list(read_export(model)["targets"])
        return list(directory_files(Path(model), None).weights)
    except UmxError:
        return []


def model_identity(separation: SeparationOptions) -> dict[str, str]:
    """What a job's id holds of the model that separates it with `separation`, beside its
    name as given: for a model folder, its resolved path (`model`) and the SHA-256 of the
    weights it holds now (`model_sha256`, of the separator loaded, again where the folder
    changed, for the job's stems); for a bundled model, that SHA-256; nothing for a downloaded
    model of the zoo.

    Raises:
        UmxError: the folder's model cannot be loaded.
    """
    model = str(separation.model)
    entry = MODELS.get(model)
    if entry is not None and not entry.bundled:
        return {}
    separator = loaded_separator(separation, reload_changed=True)
    digest = loaded_sha256(separator, separation)
    if entry is not None:
        return {"model_sha256": digest}
    return {"model": str(Path(model).resolve()), "model_sha256": digest}


def job_separator(separation: SeparationOptions, name: str, weights: str | None) -> Separator:
    """The separator a job runs: loaded again where its model folder changed (see
    `umx.jobs.loaded_separator`), and refused unless its weights are those the job's id names.

    Args:
        separation: the job's options.
        name: the song's name, for the message.
        weights: the `model_sha256` of the job's id; None for a downloaded model (and a job
            an older umx serve queued, whose id names no weights).

    Raises:
        UmxError: the model cannot be loaded, or its weights changed since the song was
            uploaded (retrained or replaced): upload it again to separate it with them.
    """
    separator = loaded_separator(separation, reload_changed=True)
    if weights is not None and loaded_sha256(separator, separation) != weights:
        raise UmxError(
            f"the model {display_path(separation.model)} changed (retrained or replaced) "
            f"since {name} was uploaded; upload it again to separate it with the new weights"
        )
    return separator
