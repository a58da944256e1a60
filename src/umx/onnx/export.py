"""ONNX graphs of the target models, int8 quantisation, and export folders (`umx export`).

Each target's `OpenUnmix` becomes one ONNX graph of the spectrogram model: mixture magnitudes
`(nb_samples, nb_channels, nb_bins, nb_frames)` in, the target's magnitudes of the same shape
out, with the sample and frame axes dynamic. A unidirectional (causal) model also gets a
streaming graph whose LSTM state `(h, c)` is an explicit input and output, so a host program
can feed it block by block (`OpenUnmix.stream`). `export_onnx` writes the graphs, each
recording the settings it was exported with (`graph_metadata`), and a JSON file that describes
the STFT, the rate and the targets, with each graph's SHA-256 (`umx.onnx.folder` runs such a
folder; `umx.onnx.runtime` runs the graphs in onnxruntime).

onnx and onnxruntime (the extra `umx[onnx]`) are imported only when used (`require_onnx`).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from umx.defaults import EXPORT_JSON
from umx.errors import UmxError, display_path, os_reason
from umx.files import rename_no_replace, sha256_bytes, written_aside
from umx.folders import output_folders
from umx.messages import plural
from umx.model import OpenUnmix
from umx.modeldir import _read_json
from umx.onnx.graphs import plain_name
from umx.onnx.options import ExportOptions, check_quantize, require_onnx
from umx.separator import Separator
from umx.workers import stops_deferred

logger = logging.getLogger("umx")

OPSET = 17
FORMAT_VERSION = 2
"""The version of the export format umx writes and reads: 2 since the graphs record their
settings (`graph_metadata`); exports of version 1 must be exported again."""
GRAPH_SUFFIX = ".onnx"
STREAM_SUFFIX = ".stream.onnx"
INPUT = "mix"
OUTPUT = "target"
STATE_INPUTS = ("h", "c")
STATE_OUTPUTS = ("h_out", "c_out")
QUANTIZED_OPS = ("MatMul", "Gemm", "LSTM")
"""The operators int8 dynamic quantisation rewrites: the linear layers and the LSTM."""
METADATA_PREFIX = "umx."
"""The prefix of the keys of the settings a graph records (`graph_metadata`)."""
TARGET_SETTINGS = ("nb_bins", "hidden_size", "nb_layers")


class _StreamingGraph(nn.Module):
    """`OpenUnmix.stream` with the LSTM state as plain inputs and outputs, for export."""

    def __init__(self, model: OpenUnmix) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, (h, c) = self.model.stream(x, (h, c))
        return y, h, c


def model_graph(model: OpenUnmix, *, streaming: bool = False) -> bytes:
    """The ONNX graph of one target model, checked by `onnx.checker`.

    Args:
        model: the target model; it is copied to the CPU in float32 and evaluation mode.
        streaming: export `OpenUnmix.stream` instead of `forward`: inputs `mix` and the LSTM
            state `h`, `c`, each `(nb_layers, nb_samples, hidden_size)`; outputs `target` and
            the state after the last frame, `h_out`, `c_out`. Unidirectional models only.

    Returns:
        the serialised ONNX model: input `mix`, `(nb_samples, nb_channels, nb_bins,
        nb_frames)`, output `target` of the same shape, `nb_samples` and `nb_frames` dynamic
        (at least one frame).

    Raises:
        UmxError: a streaming graph of a bidirectional model, or onnx is missing.
    """
    onnx, _ = require_onnx()
    model = copy.deepcopy(model).cpu().float().freeze()
    example = torch.rand(1, model.nb_channels, model.nb_output_bins, 4)
    axes = {0: "nb_samples", 3: "nb_frames"}
    if streaming:
        model.require_causal()
        module: nn.Module = _StreamingGraph(model)
        state = torch.zeros(model.nb_layers, 1, model.hidden_size)
        inputs: tuple[Tensor, ...] = (example, state, state.clone())
        names = ([INPUT, *STATE_INPUTS], [OUTPUT, *STATE_OUTPUTS])
        state_axes = {1: "nb_samples"}
        dynamic = {INPUT: axes, OUTPUT: axes}
        dynamic.update(dict.fromkeys((*STATE_INPUTS, *STATE_OUTPUTS), state_axes))
    else:
        module, inputs = model, (example,)
        names = ([INPUT], [OUTPUT])
        dynamic = {INPUT: axes, OUTPUT: axes}
    buffer = io.BytesIO()
    # Traced with gradients enabled (the parameters need none), `OpenUnmix` takes its plain
    # path, whose layers keep constant weights that the quantiser can rewrite (the inference
    # path folds bn3 into fc3 at run time, from the channel count).
    with warnings.catch_warnings(), torch.enable_grad():
        # The TorchScript exporter: deprecated in favour of torch.export's, which needs the
        # extra package onnxscript; its warnings (and the tracer's) say nothing to a user.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            buffer,
            input_names=names[0],
            output_names=names[1],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    graph = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(graph), full_check=True)
    return graph


def quantize_graph(graph: bytes) -> bytes:
    """int8 dynamic quantisation of a graph's linear layers and LSTMs (onnxruntime's quantiser).

    Weights become int8 with one scale per tensor; activations are quantised on the fly, per
    call, from their own range, so no calibration data is needed.

    Args:
        graph: a serialised ONNX model from `model_graph`.

    Returns:
        the quantised model, serialised.
    """
    onnx, _ = require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="umx-quantize-") as folder:
        source, output = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        # The quantiser logs advice about pre-processing (for static quantisation) to the
        # root logger; it is no concern of a user's.
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(
                source,
                output,
                op_types_to_quantize=list(QUANTIZED_OPS),
                weight_type=QuantType.QInt8,
            )
        finally:
            logging.disable(logging.NOTSET)
        quantized = output.read_bytes()
    onnx.checker.check_model(onnx.load_from_string(quantized), full_check=True)
    return quantized


def graph_metadata(export: Mapping[str, Any], target: str, *, streaming: bool) -> dict[str, str]:
    """The settings a graph of an export records in its ONNX metadata (`metadata_props`, keys
    `umx.*`), so that a JSON edited by hand that the graph's shapes cannot contradict (another
    rate or hop, another target's graph, int8 claimed float32) is refused by
    `umx.onnx.folder`, not run into wrong audio.

    Args:
        export: `sample_rate`, `nb_channels`, `n_fft`, `n_hop`, `quantize` and `targets` (each
            target's `nb_bins`, `hidden_size` and `nb_layers`), as
            `umx.onnx.folder.read_export` gives them.
        target: the graph's target.
        streaming: whether it is the target's streaming graph.

    Returns:
        `umx.target`, `umx.graph` (`full` or `stream`), `umx.sample_rate`, `umx.nb_channels`,
        `umx.n_fft`, `umx.n_hop`, `umx.quantize` and the target's sizes: strings as they are,
        the other values as JSON (`44100.0`, `null`).
    """
    values = {
        "target": target,
        "graph": "stream" if streaming else "full",
        "sample_rate": float(export["sample_rate"]),
        **{key: export[key] for key in ("nb_channels", "n_fft", "n_hop", "quantize")},
        **{key: export["targets"][target][key] for key in TARGET_SETTINGS},
    }
    return {
        METADATA_PREFIX + key: value if isinstance(value, str) else json.dumps(value)
        for key, value in values.items()
    }


def with_metadata(graph: bytes, metadata: Mapping[str, str]) -> bytes:
    """A serialised graph with `metadata` added to its `metadata_props` (the same bytes for
    the same graph and metadata)."""
    onnx, _ = require_onnx()
    model = onnx.load_from_string(graph)
    props = {prop.key: prop.value for prop in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, **metadata})
    return model.SerializeToString()


def export_description(separator: Separator, quantize: str | None) -> dict[str, Any]:
    """The JSON that describes an export: STFT, rate, channels, targets and their graphs (their
    SHA-256 still None)."""
    targets = {}
    for name, model in separator.target_models.items():
        targets[name] = {
            "graph": f"{name}{GRAPH_SUFFIX}",
            "stream_graph": f"{name}{STREAM_SUFFIX}" if model.unidirectional else None,
            "graph_sha256": None,  # set by `export_onnx` once the graphs are made
            "stream_graph_sha256": None,
            "nb_bins": model.nb_output_bins,
            "max_bin": model.nb_bins,
            "hidden_size": model.hidden_size,
            "nb_layers": model.nb_layers,
            "unidirectional": model.unidirectional,
        }
    return {
        "format": "umx-onnx",
        "version": FORMAT_VERSION,
        "model": separator.model_name,
        "sample_rate": separator.sample_rate,
        "nb_channels": separator.nb_channels,
        "stft": {
            "n_fft": separator.n_fft,
            "n_hop": separator.n_hop,
            "window": "hann, periodic",
            "center": True,
            "pad_mode": "reflect",
            "normalized": False,
            "onesided": True,
            "stream_framing": "not centred, n_fft - n_hop zeros before the stream",
        },
        "magnitude": "abs of the STFT, the mean over the channels"
        if separator.nb_channels == 1
        else "abs of the STFT, per channel",
        "inputs": {
            INPUT: "mixture magnitudes, (nb_samples, nb_channels, nb_bins, nb_frames), float32",
            "h, c": "stream graphs only: LSTM state, (nb_layers, nb_samples, hidden_size), "
            "zeros at the start of a stream",
        },
        "outputs": {
            OUTPUT: "target magnitudes, the shape of mix",
            "h_out, c_out": "stream graphs only: the LSTM state after the last frame",
        },
        "opset": OPSET,
        "quantize": quantize,
        "targets": targets,
    }


def export_model(options: ExportOptions, *, progress: bool = True) -> list[Path]:
    """Load the model of `options` on the CPU (with no Wiener filter: exports hold the target
    models) and export it with `export_onnx`, logging what was exported where.

    Args:
        options: the model, the folder and how.
        progress: show a download's progress bar.

    Returns:
        the written files (see `export_onnx`).

    Raises:
        UmxError: onnx is missing, or the model or the folder cannot be had.
    """
    from umx.zoo import load_separator

    require_onnx()  # before a model is downloaded
    separator = load_separator(
        options.model, targets=options.targets, niter=0, device="cpu", progress=progress
    )
    written = export_onnx(separator, options.outdir, quantize=options.quantize, force=options.force)
    logger.info(
        "%s: %s exported to %s%s",
        separator.model_name,
        plural(len(separator.target_models), "target"),
        display_path(options.outdir),
        f" ({options.quantize})" if options.quantize else "",
    )
    return written


def export_onnx(
    separator: Separator,
    outdir: str | os.PathLike,
    *,
    quantize: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Write one ONNX graph per target (and a streaming graph per causal target) and the JSON.

    Every graph is exported, checked and (with `quantize`) quantised in memory, and every file
    is then written to a temporary file beside its place in `outdir` (`written_aside`). Only
    once all are written is an earlier export replaced: its JSON removed, the graphs renamed
    into place, the JSON last. A write that fails (a full disk) removes the temporary files
    and the folders this export made, and leaves an earlier export as it was. A stop signal
    (Ctrl-C, SIGTERM) waits for the writes and renames, which take a moment. (A rename that
    fails, which takes a failing disk, or a process killed outright then leaves the folder
    without a JSON: refused as an export, never run.)

    Args:
        separator: the models to export (e.g. from `umx.zoo.load_separator`).
        outdir: the output folder, created if needed.
        quantize: `"int8"` for int8 dynamic quantisation; None for float32.
        force: overwrite the files of an earlier export in `outdir`; once the new export is in
            place, the graphs its JSON lists that the new one does not have are removed.

    Returns:
        the written files: `<target>.onnx`, `<target>.stream.onnx` (causal models), then
        `umx-onnx.json` (`EXPORT_JSON`).

    Raises:
        UmxError: `outdir` is a file, holds a folder where a file of the export goes, holds
            files of an export and `force` is not set, a file cannot be written, or onnx is
            missing.
    """
    check_quantize(quantize)
    require_onnx()
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UmxError(f"cannot export into {outdir}: it is a file")
    description = export_description(separator, quantize)
    names = [f for t in description["targets"].values() for f in (t["graph"], t["stream_graph"])]
    names = [name for name in names if name] + [EXPORT_JSON]
    for name in names:  # a file can be renamed over a file or a link, not over a folder
        if (outdir / name).is_dir() and not (outdir / name).is_symlink():
            raise UmxError(
                f"cannot write the export into {display_path(outdir)}: "
                f"{display_path(outdir / name)} is a folder; move it away, or write elsewhere"
            )
    existing = [name for name in names if (outdir / name).exists()]
    if existing and not force:
        raise _exists(outdir / existing[0])
    replaced = _listed_graphs(outdir) if force else set()
    files = _export_files(separator, description, quantize)
    written: list[Path] = []
    # a stop halfway through the renames would leave neither export whole: it comes after them
    with stops_deferred(), output_folders([outdir / EXPORT_JSON]):
        try:
            with written_aside({outdir / name: data for name, data in files.items()}) as staged:
                # Until the new JSON is in place the folder holds none: never a mix claiming
                # to be one.
                if force:
                    (outdir / EXPORT_JSON).unlink(missing_ok=True)
                for path, temporary in staged.items():
                    try:  # without force, the files of an export that ended meanwhile are kept
                        (os.replace if force else rename_no_replace)(temporary, path)
                    except FileExistsError:
                        raise _exists(path) from None
                    written.append(path)
        except BaseException as error:
            for path in written:
                if path.name not in existing:
                    path.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise UmxError(
                    f"cannot write the export into {outdir}: {os_reason(error)}"
                ) from None
            raise
    _remove_graphs(outdir, replaced - set(files))
    return written


def _listed_graphs(outdir: Path) -> set[str]:
    """The graph files that the JSON of an earlier export in `outdir` lists: plain names of
    `.onnx` files in the folder (`plain_name`); none without a JSON that umx can read (a
    regular file: a pipe in its place would block)."""
    try:
        data = _read_json(outdir / EXPORT_JSON) if (outdir / EXPORT_JSON).is_file() else None
    except UmxError:
        return set()
    entries = data.get("targets") if isinstance(data, dict) else None
    listed = [
        entry.get(key)
        for entry in (entries.values() if isinstance(entries, dict) else ())
        if isinstance(entry, dict)
        for key in ("graph", "stream_graph")
    ]
    return {name for name in listed if plain_name(name) and name.endswith(GRAPH_SUFFIX)}


def _remove_graphs(outdir: Path, names: set[str]) -> None:
    """Remove the graph files `names` of an export replaced in `outdir` that the new one does
    not have (folders of those names are no graphs, and are left); one warning for a file
    that cannot be removed."""
    for name in sorted(names):
        path = outdir / name
        if path.is_dir() and not path.is_symlink():
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            logger.warning(
                "cannot remove %s, a graph of the export replaced (%s)",
                display_path(path),
                os_reason(error),
            )


def _export_files(
    separator: Separator, description: dict[str, Any], quantize: str | None
) -> dict[str, bytes]:
    """The files of an export by name, in memory: each target's graphs (quantised with
    `quantize`, recording their settings: `graph_metadata`), then the JSON, `description`
    with the graphs' SHA-256 filled in."""
    files: dict[str, bytes] = {}
    settings = {
        **description,
        **{key: description["stft"][key] for key in ("n_fft", "n_hop")},
    }
    for name, model in separator.target_models.items():
        logger.info("exporting the %r model", name)
        target = description["targets"][name]
        graphs = {target["graph"]: model_graph(model)}
        if target["stream_graph"]:
            graphs[target["stream_graph"]] = model_graph(model, streaming=True)
        for file, graph in graphs.items():
            graph = quantize_graph(graph) if quantize else graph
            streaming = file == target["stream_graph"]
            files[file] = with_metadata(graph, graph_metadata(settings, name, streaming=streaming))
            # What `umx.onnx.folder` checks each graph against before running it.
            key = "graph_sha256" if file == target["graph"] else "stream_graph_sha256"
            target[key] = sha256_bytes(files[file])
    files[EXPORT_JSON] = (json.dumps(description, indent=2) + "\n").encode()
    return files


def _exists(path: Path) -> UmxError:
    return UmxError(f"{path} already exists; use --force to overwrite the export")
