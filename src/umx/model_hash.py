"""What identifies the weights a separator runs, for the jobs of `umx batch` and `umx serve`:
`model_sha256` (torch weights, as loaded), `export_sha256` (an export folder's graphs, as its
`umx-onnx.json` records them), `job_sha256` (the one of the two a job records, kept once per
loaded separator by `loaded_sha256`), and `folder_state`, a stat of a model folder's files that
tells cheaply when it changed (retrained, replaced) and its weights must be loaded and hashed
again.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from umx.separator import Separator
from umx.weights import hash_weights

if TYPE_CHECKING:
    from umx.options import SeparationOptions

FolderState = tuple[tuple[str, int, int], ...]
"""The name, size and modification time (ns) of each file of a model folder, by name."""

_hashes: weakref.WeakKeyDictionary[Separator, str] = weakref.WeakKeyDictionary()


def model_sha256(separator: Separator) -> str:
    """A SHA-256 of a separator's weights: target names, parameter names, dtypes, shapes and
    values, in order. Two separators with the same weights have the same hash, whatever files
    they were loaded from.

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256()
    for target, model in separator.target_models.items():
        digest.update(f"{target}\0".encode())
        hash_weights(digest, model)
    return digest.hexdigest()


def export_sha256(folder: str | os.PathLike, targets: Iterable[str]) -> str:
    """A SHA-256 of what an export folder (`umx export`) runs for `targets`: each target's
    name and the SHA-256 of its graphs that `umx-onnx.json` records (loading the folder checks
    every graph's bytes against them), with the export's rate, channels, STFT and quantisation.

    Returns:
        64 hex digits.

    Raises:
        UmxError: the folder's `umx-onnx.json` is damaged (see `umx.onnx.folder.read_export`).
    """
    from umx.onnx.folder import read_export

    export = read_export(folder)
    digest = hashlib.sha256(b"umx-onnx\0")
    for key in ("sample_rate", "nb_channels", "n_fft", "n_hop", "quantize"):
        digest.update(f"{key}={export[key]}\0".encode())
    for target in targets:
        graphs = export["targets"][target]
        stream = graphs["stream_graph"].sha256 if graphs["stream_graph"] is not None else ""
        digest.update(f"{target}\0{graphs['graph'].sha256}\0{stream}\0".encode())
    return digest.hexdigest()


def job_sha256(separator: Separator, separation: SeparationOptions) -> str:
    """The weights' hash a batch job records and every worker checks, and that the id of a job
    of `umx serve` with a model folder holds: `export_sha256` for an export folder run by
    onnxruntime, else `model_sha256`."""
    from umx.onnx.options import is_export_folder

    if separation.backend == "onnxruntime" and is_export_folder(separation.model):
        return export_sha256(separation.model, separator.target_models)
    return model_sha256(separator)


def loaded_sha256(separator: Separator, separation: SeparationOptions) -> str:
    """`job_sha256` of a separator loaded with `separation`, computed once per separator (ask
    right after loading it: an export folder's hash is read from its `umx-onnx.json`).

    Raises:
        UmxError: an export folder's `umx-onnx.json` is damaged.
    """
    digest = _hashes.get(separator)
    if digest is None:
        digest = _hashes[separator] = job_sha256(separator, separation)
    return digest


def folder_state(model: str | os.PathLike) -> FolderState | None:
    """The state of a model folder's files (`FolderState`; a file that goes while it is read
    is left out), which changes when a file is written, replaced, added or removed; None for a
    model of the zoo (its files are verified by their SHA-256 when downloaded), or a model that
    is not a folder."""
    from umx.zoo import MODELS

    if str(model) in MODELS:
        return None
    try:
        entries = sorted(os.scandir(Path(model)), key=lambda entry: entry.name)
    except OSError:
        return None
    state = []
    for entry in entries:
        try:
            if entry.is_file():
                stat = entry.stat()
                state.append((entry.name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            continue
    return tuple(state)
