"""An export folder (`umx export`) as a separator: `--model EXPORT_DIR` with onnxruntime.

The folder's `umx-onnx.json` is read as untrusted input: every field umx uses is checked
(numbers finite and in range, target names safe, graph files plain names inside the folder, a
SHA-256 recorded for each graph), and each graph is run only if its bytes match the SHA-256
that `umx export` recorded, its inputs have the sizes the JSON states, and the settings it
records in its metadata (`umx.onnx.export.graph_metadata`) are the JSON's. A damaged folder is
refused with one line that says which file and what to do; nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from umx.audio import display_path
from umx.defaults import EXPORT_JSON
from umx.errors import MAX_RATE, MIN_RATE, UmxError, check_number
from umx.files import being_written
from umx.modeldir import (
    MAX_MODEL_SIZE,
    MAX_NFFT,
    _read_json,
    check_model_target,
    select_targets,
    short,
)
from umx.onnx.export import (
    FORMAT_VERSION,
    INPUT,
    METADATA_PREFIX,
    OUTPUT,
    STATE_INPUTS,
    STATE_OUTPUTS,
    graph_metadata,
    quantize_graph,
)
from umx.onnx.graphs import SHA256, GraphFile, graph_bytes, plain_name
from umx.onnx.options import QUANTIZATIONS
from umx.onnx.runtime import OnnxModel
from umx.separator import WIENER_WIN_LEN, Separator
from umx.transforms import check_stft


def _graph_file(folder: Path, source: str, target: str, entry: Mapping, key: str) -> GraphFile:
    """The graph file `entry[key]` of `target`, a plain name in `folder`, with its SHA-256
    `entry[key + "_sha256"]`."""
    name, digest = entry.get(key), entry.get(f"{key}_sha256")
    if not plain_name(name):
        raise UmxError(
            f"{source} gives {target!r} the {key} {short.repr(name)}: it must be the name of a "
            "file in the export folder"
        )
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise UmxError(
            f"{display_path(path)} points outside the export folder {display_path(folder)} "
            "(umx runs only the graphs in it)"
        )
    if not isinstance(digest, str) or not SHA256.match(digest):
        raise UmxError(f"{source} records no SHA-256 of {name}")
    return GraphFile(path, digest)


def _check_size(source: str, name: str, value: object, maximum: int) -> int:
    """`value`, a whole number from 1 to `maximum` (the message names `source` and `name`)."""
    check_number(f"{source}: {name}", value, minimum=1, maximum=maximum, integer=True)
    return cast(int, value)


def read_export(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked description of an export folder.

    Returns:
        `model` (the exported model's name, printable; "MODEL" if unknown), `sample_rate`,
        `nb_channels`, `n_fft`, `n_hop`, `quantize` and `targets`: per target,
        in the export's order, its `graph` and `stream_graph` (`GraphFile`s, the second None
        for bidirectional models), `nb_bins`, `hidden_size` and `nb_layers`.

    Raises:
        UmxError: the JSON is missing, invalid, of another format or version, or a field is
            missing or out of range; the message ends in what to do (export the model again).
    """
    folder = Path(folder)
    model = "MODEL"
    try:
        data = _read_json(folder / EXPORT_JSON)
        if isinstance(data, dict) and isinstance(data.get("model"), str) and data["model"]:
            model = display_path(data["model"])
        return {"model": model, **_check_export(folder, data)}
    except UmxError as error:
        if not os.path.lexists(folder / EXPORT_JSON) and being_written(folder / EXPORT_JSON):
            raise UmxError(
                f"{display_path(folder)} is being exported again (umx export --force) right "
                "now: run this once it has ended"
            ) from None
        raise UmxError(f"{error}; {_export_again(folder, model)}") from None


def _check_export(folder: Path, data: Any) -> dict[str, Any]:
    """`read_export`'s description of the JSON `data` of `folder`, but its `model`."""
    source = display_path(folder / EXPORT_JSON)
    if not isinstance(data, dict) or data.get("format") != "umx-onnx":
        raise UmxError(f'{source} does not describe an umx export (no "format": "umx-onnx")')
    if data.get("version") != FORMAT_VERSION:
        raise UmxError(
            f"{source} is version {short.repr(data.get('version'))} of the export format, this "
            f"umx reads version {FORMAT_VERSION}"
        )
    rate = data.get("sample_rate")
    check_number(f"{source}: sample_rate", rate, minimum=MIN_RATE, maximum=MAX_RATE)
    nb_channels = _check_size(source, "nb_channels", data.get("nb_channels"), 2)
    stft = data.get("stft") if isinstance(data.get("stft"), dict) else {}
    n_fft = _check_size(source, "stft n_fft", stft.get("n_fft"), MAX_NFFT)
    n_hop = _check_size(source, "stft n_hop", stft.get("n_hop"), MAX_NFFT)
    try:
        check_stft(n_fft, n_hop)
    except UmxError as error:
        raise UmxError(f"{source} is not usable: {error}") from None
    quantize = data.get("quantize")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UmxError(f"{source} has an unknown quantize {short.repr(quantize)}")
    entries = data.get("targets")
    if not isinstance(entries, dict) or not entries:
        raise UmxError(f"{source} has no targets: it needs an object of target graphs")
    return {
        "sample_rate": float(cast(float, rate)),
        "nb_channels": nb_channels,
        "n_fft": n_fft,
        "n_hop": n_hop,
        "quantize": quantize,
        "targets": {
            target: _check_target(folder, target, entry, n_fft) for target, entry in entries.items()
        },
    }


def _check_target(folder: Path, target: str, entry: object, n_fft: int) -> dict[str, Any]:
    """The checked description of `target` (`read_export`'s), from its `entry` in the JSON of
    `folder`."""
    source = display_path(folder / EXPORT_JSON)
    check_model_target(target, source)
    if not isinstance(entry, dict):
        raise UmxError(f"{source} describes the target {target!r} with no object")
    nb_bins = entry.get("nb_bins")
    if type(nb_bins) is not int or nb_bins != n_fft // 2 + 1:
        raise UmxError(
            f"{source} gives {target!r} nb_bins {short.repr(nb_bins)}: it must be the whole "
            f"number n_fft // 2 + 1 = {n_fft // 2 + 1}"
        )
    stream_graph = None
    if entry.get("stream_graph") is not None:
        stream_graph = _graph_file(folder, source, target, entry, "stream_graph")
    if entry.get("unidirectional") is not (stream_graph is not None):
        raise UmxError(
            f"{source}: a target has a stream_graph if and only if it is unidirectional, "
            f"which {target!r} contradicts"
        )
    return {
        "graph": _graph_file(folder, source, target, entry, "graph"),
        "stream_graph": stream_graph,
        "nb_bins": nb_bins,
        "hidden_size": _check_size(
            source, f"{target} hidden_size", entry.get("hidden_size"), MAX_MODEL_SIZE
        ),
        "nb_layers": _check_size(
            source, f"{target} nb_layers", entry.get("nb_layers"), MAX_MODEL_SIZE
        ),
    }


def _sizes(session: Any) -> dict[str, list]:
    """A session's inputs and outputs and their sizes; None for a dynamic axis."""
    return {
        node.name: [size if isinstance(size, int) else None for size in node.shape]
        for node in [*session.get_inputs(), *session.get_outputs()]
    }


def _export_again(folder: Path, model: str) -> str:
    """What to do about a damaged export folder, for the end of a message."""
    return f"export the model again (umx export {model} {display_path(folder)} --force)"


def _export_model(
    folder: Path, export: Mapping[str, Any], target: str, quantize: str | None
) -> OnnxModel:
    """The `OnnxModel` of `target` from its checked graphs (`export`: `read_export`'s), each
    checked by `_check_graph` before it is quantised in memory (with `quantize`)."""
    model = _load_model(folder, export, target, None)
    _check_graph(folder, export, target, export["targets"][target]["graph"], model.session)
    if model.stream_session is not None:
        stream_graph = export["targets"][target]["stream_graph"]
        _check_graph(folder, export, target, stream_graph, model.stream_session)
    return model if quantize is None else _load_model(folder, export, target, quantize)


def _load_model(
    folder: Path, export: Mapping[str, Any], target: str, quantize: str | None
) -> OnnxModel:
    """The `OnnxModel` of the graphs of `target`, quantised in memory with `quantize`.

    Raises:
        UmxError: a graph that does not match its SHA-256, or that onnxruntime cannot load.
    """
    info = export["targets"][target]
    graphs: list[bytes | GraphFile | None] = [info["graph"], info["stream_graph"]]
    try:
        if quantize is not None:  # a float32 export
            graphs = [graph and quantize_graph(graph_bytes(graph)) for graph in graphs]
        return OnnxModel(
            *graphs,
            nb_channels=export["nb_channels"],
            nb_bins=info["nb_bins"],
            hidden_size=info["hidden_size"],
            nb_layers=info["nb_layers"],
        )
    except UmxError as error:
        raise UmxError(
            f"{error}: the export {display_path(folder)} is damaged; "
            f"{_export_again(folder, export['model'])}"
        ) from None


def _check_graph(
    folder: Path, export: Mapping[str, Any], target: str, graph: GraphFile, session: Any
) -> None:
    """Refuse the session of a graph of `target` whose inputs do not have the sizes of the
    JSON (or outputs of other sizes than `umx.onnx.export.model_graph`'s), or that records
    other settings than the JSON's (`umx.onnx.export.graph_metadata`).

    Raises:
        UmxError: naming the graph, and saying to export the model again.
    """
    info = export["targets"][target]
    streaming = graph == info["stream_graph"]
    magnitudes = [None, export["nb_channels"], info["nb_bins"], None]
    sizes = {INPUT: magnitudes, OUTPUT: magnitudes}
    if streaming:
        state = [info["nb_layers"], None, info["hidden_size"]]
        sizes.update(dict.fromkeys((*STATE_INPUTS, *STATE_OUTPUTS), state))
    shown, again = display_path(graph.path), _export_again(folder, export["model"])
    if _sizes(session) != sizes:
        raise UmxError(
            f"{shown} does not have the inputs and outputs its umx-onnx.json describes "
            f"({', '.join(f'{k} {v}' for k, v in sizes.items())}); {again}"
        )
    recorded = session.get_modelmeta().custom_metadata_map
    if not any(key.startswith(METADATA_PREFIX) for key in recorded):
        raise UmxError(
            f"{shown} records none of the settings it was exported with (its {METADATA_PREFIX}* "
            f"metadata); {again}"
        )
    for key, value in graph_metadata(export, target, streaming=streaming).items():
        if recorded.get(key) != value:
            found = short.repr(recorded[key]) if key in recorded else "nothing"
            raise UmxError(
                f"{display_path(folder / EXPORT_JSON)} does not match {shown}: "
                f"{key.removeprefix(METADATA_PREFIX)} {short.repr(value)} in the JSON, {found} "
                f"in the graph; {again}"
            )


def load_export(
    folder: str | os.PathLike,
    *,
    targets: Sequence[str] | None = None,
    niter: int = 1,
    softmask: bool = False,
    residual: str | None = None,
    wiener_win_len: int | None = WIENER_WIN_LEN,
    quantize: str | None = None,
) -> Separator:
    """A separator that runs an export folder's graphs with onnxruntime, on the CPU.

    Args:
        folder: a folder written by `umx export` (`umx.onnx.export.export_onnx`).
        targets: the targets to load, in output order; all of the export's if None.
        niter, softmask, residual, wiener_win_len: Wiener filtering options of `Separator`.
        quantize: `"int8"` to quantise a float32 export's graphs in memory; an int8 export
            runs as int8 either way.

    Returns:
        the separator, with `model_name` the folder as given (`./umxsynth-rt` stays so, as
        in `umx.zoo.load_separator`: not the bundled model's name).

    Raises:
        UmxError: the folder's JSON or a graph is damaged or does not fit (see
            `read_export`), a target is not in the export, or the residual is named like one.
    """
    name, folder = str(folder), Path(folder)
    export = read_export(folder)
    available = export["targets"]
    selected = select_targets(list(available), targets, f"the export {display_path(folder)}")
    if export["quantize"] is not None:
        quantize = None  # already quantised
    models = {target: _export_model(folder, export, target, quantize) for target in selected}
    for model in models.values():  # named in its refusals (`OnnxModel.require_causal`)
        model.export = display_path(name)
    separator = Separator(
        models,
        sample_rate=export["sample_rate"],
        n_fft=export["n_fft"],
        n_hop=export["n_hop"],
        nb_channels=export["nb_channels"],
        niter=niter,
        softmask=softmask,
        residual=residual,
        wiener_win_len=wiener_win_len,
        model_targets=list(available),
    ).eval()
    separator.model_name = name
    return separator
