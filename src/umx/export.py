"""ONNX graphs of the target models, an onnxruntime backend for separation, int8 quantisation.

Each target's `OpenUnmix` becomes one ONNX graph of the spectrogram model: mixture magnitudes
`(nb_samples, nb_channels, nb_bins, nb_frames)` in, the target's magnitudes of the same shape
out, with the sample and frame axes dynamic. A unidirectional (causal) model also gets a
streaming graph whose LSTM state `(h, c)` is an explicit input and output, so a host program
can feed it block by block (`OpenUnmix.stream`). `export_onnx` writes the graphs and a JSON
file that describes the STFT, the rate and the targets; `onnx_separator` swaps a `Separator`'s
target models for `OnnxModel`s, which run the same graphs in onnxruntime, so the STFT, the
Wiener filter and the inverse STFT stay those of the one engine.

The backend's graphs are kept in the model cache with their SHA-256 recorded
(`umx.onnx_graphs`), checked before each use and exported again when they do not match; an
export folder records its graphs' SHA-256 in its JSON (`umx.onnx_folder` runs one).

onnx and onnxruntime (the extra `umx[onnx]`) are imported only when used (`require_onnx`).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from umx.audio import display_path
from umx.errors import UmxError, short
from umx.files import sha256_bytes, write_bytes_atomic
from umx.model import LSTMState, OpenUnmix
from umx.modeldir import hash_weights
from umx.onnx_graphs import (
    DamagedGraph,
    GraphFile,
    graph_bytes,
    recorded_graph,
    write_recorded,
)
from umx.onnx_options import EXPORT_JSON, QUANTIZATIONS, check_quantize, require_onnx
from umx.separator import Separator
from umx.zoo import cache_dir, load_separator

logger = logging.getLogger("umx")

FORMATS = ("onnx",)

OPSET = 17
FORMAT_VERSION = 1
GRAPH_SUFFIX = ".onnx"
STREAM_SUFFIX = ".stream.onnx"
INPUT = "mix"
OUTPUT = "target"
STATE_INPUTS = ("h", "c")
STATE_OUTPUTS = ("h_out", "c_out")
QUANTIZED_OPS = ("MatMul", "Gemm", "LSTM")
"""The operators int8 dynamic quantisation rewrites: the linear layers and the LSTM."""
GRAPH_CACHE = "onnx-graphs"
"""The folder of the model cache (`umx.zoo.cache_dir`) that keeps the backend's graphs."""


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


def _session(graph: bytes | GraphFile, threads: int | None) -> Any:
    """An onnxruntime session on the CPU with `threads` intra-op threads (torch's by default),
    of a serialised graph or of a graph file's checked bytes (`GraphFile.read`)."""
    _, onnxruntime = require_onnx()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # Without the arena each run's buffers go back to the allocator: with it, every target's
    # session kept the peak of its own largest run (a 3-minute track: +1.7 GB over four).
    options.enable_cpu_mem_arena = False
    try:
        return onnxruntime.InferenceSession(
            graph_bytes(graph),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
    except Exception as error:  # onnxruntime's own errors derive from Exception only
        if not type(error).__module__.startswith("onnxruntime"):
            raise
        what = display_path(graph.path) if isinstance(graph, GraphFile) else "an ONNX graph"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise UmxError(f"onnxruntime cannot load {what}: {short.repr(reason)}") from None


class OnnxModel(nn.Module):
    """A target model run by onnxruntime, called as an `OpenUnmix` is.

    `Separator` and `StreamingSeparator` use it unchanged: `forward` takes and returns
    magnitudes as `OpenUnmix.forward` does, and `stream` carries the LSTM state as
    `OpenUnmix.stream` does (causal models). The graphs run on the CPU; tensors on another
    device are copied there and back.

    It pickles (e.g. into the worker processes of `umx evaluate --jobs`) as its graphs, and
    makes its sessions anew when unpickled. A graph file is checked against its recorded
    SHA-256 each time a session is made of it.

    Args:
        graph: the full-sequence graph (`model_graph`, maybe `quantize_graph`), serialised or
            as a file with its recorded SHA-256 (`GraphCache`'s or an export folder's, which
            keeps it out of this process's memory).
        stream_graph: the streaming graph of a unidirectional model; None otherwise.
        nb_channels, nb_bins, hidden_size, nb_layers: the exported model's sizes (`nb_bins`
            is its number of output bins, `n_fft // 2 + 1`).
        threads: intra-op threads of onnxruntime; torch's thread count if None.
        checked: the bytes of `graph` and `stream_graph` when the caller has just read and
            checked their files (`GraphCache.graph`), so that they are not read twice.

    Attributes:
        anchor: an empty float32 parameter, so that the separators, which read their device
            and dtype from their models' parameters, see a CPU float32 model.
    """

    def __init__(
        self,
        graph: bytes | GraphFile,
        stream_graph: bytes | GraphFile | None,
        *,
        nb_channels: int,
        nb_bins: int,
        hidden_size: int,
        nb_layers: int,
        threads: int | None = None,
        checked: tuple[bytes, bytes | None] | None = None,
    ) -> None:
        super().__init__()
        self.nb_channels = nb_channels
        self.nb_output_bins = nb_bins
        self.hidden_size = hidden_size
        self.nb_layers = nb_layers
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self.graphs, self.threads = (graph, stream_graph), threads
        self._start_sessions(checked)

    def _start_sessions(self, checked: tuple[bytes, bytes | None] | None = None) -> None:
        graph, stream_graph = checked or self.graphs
        self.session = _session(graph, self.threads)
        self.stream_session = None if stream_graph is None else _session(stream_graph, self.threads)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "session": None, "stream_session": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._start_sessions()

    @classmethod
    def from_model(
        cls,
        model: OpenUnmix,
        *,
        quantize: str | None = None,
        threads: int | None = None,
        cache: GraphCache | None = None,
    ) -> OnnxModel:
        """Export `model` (and quantise it with `quantize="int8"`) and load it.

        Exporting a large model takes seconds, so the graphs are kept in the model cache
        (`cache`, a new `GraphCache` if None) and later loads of the same weights read them
        from there.
        """
        check_quantize(quantize)
        cache = cache or GraphCache()
        graph, data = cache.graph(model, quantize=quantize)
        stream_graph = stream_data = None
        if model.unidirectional:
            stream_graph, stream_data = cache.graph(model, streaming=True, quantize=quantize)
        return cls(
            graph,
            stream_graph,
            nb_channels=model.nb_channels,
            nb_bins=model.nb_output_bins,
            hidden_size=model.hidden_size,
            nb_layers=model.nb_layers,
            threads=threads,
            checked=(data, stream_data),
        )

    @property
    def unidirectional(self) -> bool:
        return self.stream_session is not None

    def freeze(self) -> OnnxModel:
        """Evaluation mode (the graphs are always in inference mode). Returns the model."""
        return self.eval()

    def forward(self, x: Tensor) -> Tensor:
        """Estimate the target's magnitudes, as `OpenUnmix.forward`.

        Args:
            x: mixture magnitudes, `(nb_samples, nb_channels, nb_bins, nb_frames)`.

        Returns:
            target magnitudes, `(nb_samples, nb_channels, nb_bins, nb_frames)`, on `x`'s device.
        """
        if x.shape[-1] == 0:
            return x.clone()
        (y,) = self.session.run(None, {INPUT: _numpy(x)})
        return torch.from_numpy(y).to(x.device)

    def stream(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """The next frames of a stream, as `OpenUnmix.stream`, with the streaming graph.

        Args:
            x: the next frames' mixture magnitudes, `(nb_samples, nb_channels, nb_bins,
                nb_frames)`; `nb_frames` may be 0.
            state: the `(h, c)` returned for the previous frames, each `(nb_layers,
                nb_samples, hidden_size)`; None at the start.

        Returns:
            the target magnitudes, `(nb_samples, nb_channels, nb_bins, nb_frames)`, and the
            state after the last frame.

        Raises:
            UmxError: the model is bidirectional.
        """
        self.require_causal()
        if state is None:
            zeros = torch.zeros(self.nb_layers, x.shape[0], self.hidden_size)
            state = (zeros, zeros.clone())
        if x.shape[-1] == 0:
            return x.clone(), state
        feed = {INPUT: _numpy(x), STATE_INPUTS[0]: _numpy(state[0])}
        feed[STATE_INPUTS[1]] = _numpy(state[1])
        y, h, c = self.stream_session.run(None, feed)
        return torch.from_numpy(y).to(x.device), (torch.from_numpy(h), torch.from_numpy(c))

    def require_causal(self, name: str = "the model") -> None:
        """Refuse a bidirectional model where only past frames may be used, as `OpenUnmix`."""
        if not self.unidirectional:
            raise UmxError(
                f"{name} has a bidirectional LSTM, which needs the whole future of the signal "
                "and cannot separate a stream; use a causal (unidirectional) model"
            )


class GraphCache:
    """The backend's graphs in the model cache (`umx.zoo.cache_dir`), each beside its recorded
    SHA-256 (`umx.onnx_graphs`).

    A graph file is named by a SHA-256 of everything the graph depends on: the model's sizes
    and parameter values, the kind of graph, the quantisation, the opset and the torch and
    onnxruntime versions. One that does not match its record (damaged, replaced, truncated,
    its record missing) is exported again, with one warning that names it. When the cache
    cannot be written (a file in its place, a read-only disk) graphs are kept in memory, with
    one warning per `GraphCache`. Set `$UMX_CACHE` to move the cache.
    """

    def __init__(self) -> None:
        self.folder = cache_dir() / GRAPH_CACHE
        self.unwritable = False

    def path(self, model: OpenUnmix, *, streaming: bool, quantize: str | None) -> Path:
        """Where the graph of `model` (`streaming`, `quantize` as `graph`) is kept."""
        _, onnxruntime = require_onnx()
        key = hashlib.sha256()
        parts = (
            streaming,
            quantize,
            OPSET,
            torch.__version__,
            onnxruntime.__version__,
            model.nb_output_bins,
            model.nb_bins,
            model.nb_channels,
            model.hidden_size,
            model.nb_layers,
            model.unidirectional,
        )
        key.update(repr(parts).encode())
        hash_weights(key, model)
        return self.folder / f"{key.hexdigest()}{GRAPH_SUFFIX}"

    def graph(
        self, model: OpenUnmix, *, streaming: bool = False, quantize: str | None = None
    ) -> tuple[bytes | GraphFile, bytes]:
        """`model_graph` (quantised with `quantize`) as a checked file of the cache, made
        there unless an earlier call made it, and its bytes.

        Returns:
            the graph file and its checked bytes; the serialised graph twice if the cache
            cannot be written.
        """
        path = self.path(model, streaming=streaming, quantize=quantize)
        try:
            cached = recorded_graph(path)
            if cached is not None:
                return cached, cached.read()
        except DamagedGraph as error:
            logger.warning("%s: rebuilt it", error)
        graph = model_graph(model, streaming=streaming)
        if quantize:
            graph = quantize_graph(graph)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return write_recorded(path, graph), graph
        except OSError as error:
            if not self.unwritable:
                logger.warning(
                    "cannot write the ONNX graph cache %s (%s): the graphs stay in memory and "
                    "are exported again next time",
                    display_path(self.folder),
                    error.strerror or error,
                )
            self.unwritable = True
            return graph, graph


def _numpy(x: Tensor) -> Any:
    """A contiguous float32 CPU array of `x` (a view where it already is one)."""
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


def onnx_separator(
    separator: Separator, *, quantize: str | None = None, threads: int | None = None
) -> Separator:
    """The same separator with each target model run by onnxruntime (`OnnxModel`).

    Args:
        separator: a loaded separator (e.g. from `umx.zoo.load_separator`); left unchanged.
        quantize: `"int8"` for int8 dynamic quantisation of the graphs; None for float32.
        threads: onnxruntime's intra-op threads; torch's thread count if None.

    Returns:
        a new separator with the same STFT, channels, targets and filtering options, on the
        CPU, with `model_name` copied.
    """
    cache = GraphCache()
    models = {
        name: OnnxModel.from_model(model, quantize=quantize, threads=threads, cache=cache)
        for name, model in separator.target_models.items()
    }
    onnx_sep = Separator(
        models,
        sample_rate=separator.sample_rate,
        n_fft=separator.n_fft,
        n_hop=separator.n_hop,
        nb_channels=separator.nb_channels,
        niter=separator.niter,
        softmask=separator.softmask,
        residual=separator.residual,
        wiener_win_len=separator.wiener_win_len,
    ).eval()
    onnx_sep.model_name = separator.model_name
    return onnx_sep


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


def export_onnx(
    separator: Separator,
    outdir: str | os.PathLike,
    *,
    quantize: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Write one ONNX graph per target (and a streaming graph per causal target) and the JSON.

    Every graph is exported, checked and (with `quantize`) quantised in memory before any file
    is written; each file is then written atomically into `outdir`, the JSON last (an earlier
    export's JSON is removed first), and on a failure the files this export created are removed
    again.

    Args:
        separator: the models to export (e.g. from `umx.zoo.load_separator`).
        outdir: the output folder, created if needed.
        quantize: `"int8"` for int8 dynamic quantisation; None for float32.
        force: overwrite the files of an earlier export in `outdir`.

    Returns:
        the written files: `<target>.onnx`, `<target>.stream.onnx` (causal models), then
        `umx-onnx.json` (`EXPORT_JSON`).

    Raises:
        UmxError: `outdir` is a file, holds files of an export and `force` is not set, or
            onnx is missing.
    """
    check_quantize(quantize)
    require_onnx()
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UmxError(f"cannot export into {outdir}: it is a file")
    description = export_description(separator, quantize)
    names = [f for t in description["targets"].values() for f in (t["graph"], t["stream_graph"])]
    names = [name for name in names if name] + [EXPORT_JSON]
    existing = [name for name in names if (outdir / name).exists()]
    if existing and not force:
        raise UmxError(
            f"{outdir / existing[0]} already exists; use --force to overwrite the export"
        )
    files: dict[str, bytes] = {}
    for name, model in separator.target_models.items():
        logger.info("exporting the %r model", name)
        target = description["targets"][name]
        graphs = {target["graph"]: model_graph(model)}
        if target["stream_graph"]:
            graphs[target["stream_graph"]] = model_graph(model, streaming=True)
        for file, graph in graphs.items():
            files[file] = quantize_graph(graph) if quantize else graph
            # What `umx.onnx_folder` checks each graph against before running it.
            key = "graph_sha256" if file == target["graph"] else "stream_graph_sha256"
            target[key] = sha256_bytes(files[file])
    files[EXPORT_JSON] = (json.dumps(description, indent=2) + "\n").encode()
    written: list[Path] = []
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        # Until the new JSON is written the folder holds none: never a mix that claims to be one.
        (outdir / EXPORT_JSON).unlink(missing_ok=True)
        for file, data in files.items():
            path = outdir / file
            write_bytes_atomic(path, data)
            written.append(path)
    except BaseException as error:
        for path in written:
            if path.name not in existing:
                path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise UmxError(f"cannot write the export into {outdir}: {error.strerror}") from None
        raise
    return written


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The argument table of `umx export MODEL OUTDIR`."""
    p.add_argument("model", metavar="MODEL", help="model name (see umx --list-models) or directory")
    p.add_argument("outdir", type=Path, metavar="OUTDIR", help="folder to write the export into")
    p.add_argument(
        "--format", choices=FORMATS, default="onnx", help="export format (default: onnx)"
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="int8 dynamic quantisation of the LSTM and linear layers (default: none, float32)",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        metavar="TARGET",
        help="export only these targets (default: all of the model's)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an earlier export in OUTDIR")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars, messages or file list"
    )


def run_export(args: argparse.Namespace) -> int:
    """`umx export`: load the model on the CPU, export it, print the written files (unless
    `--quiet`)."""
    check_quantize(args.quantize)
    require_onnx()
    separator = load_separator(
        args.model, targets=args.targets, niter=0, device="cpu", progress=not args.quiet
    )
    written = export_onnx(separator, args.outdir, quantize=args.quantize, force=args.force)
    logger.info(
        "%s: %d targets exported to %s%s",
        separator.model_name,
        len(separator.target_models),
        display_path(args.outdir),
        f" ({args.quantize})" if args.quantize else "",
    )
    if not args.quiet:
        for path in written:
            print(display_path(path))
    return 0
