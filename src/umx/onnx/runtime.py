"""The onnxruntime backend: `OnnxModel` runs a target's ONNX graph in an onnxruntime session,
`onnx_separator` swaps a `Separator`'s target models for them, so the STFT, the Wiener filter
and the inverse STFT stay those of the one engine.

The backend's graphs are kept in the model cache (`GraphCache`) with their SHA-256 recorded
(`umx.onnx.graphs`), checked before each use and exported again when they do not match.
onnxruntime (the extra `umx[onnx]`) is imported only when used (`require_onnx`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from umx import __version__
from umx.audio import display_path
from umx.errors import UmxError, short
from umx.model import LSTMState, OpenUnmix
from umx.onnx.export import GRAPH_SUFFIX, INPUT, OPSET, STATE_INPUTS, model_graph, quantize_graph
from umx.onnx.graphs import (
    RECORD_SUFFIX,
    DamagedGraph,
    GraphFile,
    graph_bytes,
    record_path,
    recorded_graph,
    write_recorded,
)
from umx.onnx.options import check_quantize, require_onnx
from umx.separator import Separator
from umx.weights import hash_weights
from umx.zoo import cache_dir

logger = logging.getLogger("umx")

GRAPH_CACHE = "onnx-graphs"
"""The folder of the model cache (`umx.zoo.cache_dir`) that keeps the backend's graphs."""
UNUSED_DAYS = 30
"""A cached graph not used for this many days is removed when a new graph is cached
(`GraphCache.prune`): keys change with umx's code and the torch and onnxruntime versions, so
an upgrade leaves the earlier graphs unused (umxl's four take 0.4 GB)."""
CACHED = re.compile(rf"^[0-9a-f]{{64}}{re.escape(GRAPH_SUFFIX)}({re.escape(RECORD_SUFFIX)})?$")
"""The names of the cache's files: a graph, or its record."""
GRAPH_CODE = ("umx.model", "umx.onnx.export")
"""The modules whose code builds the graphs (`OpenUnmix`, `model_graph`, `quantize_graph`):
part of a cached graph's key (`code_digest`)."""


@functools.cache
def code_digest() -> str:
    """A SHA-256 of the files of `GRAPH_CODE`, read once per process, for the key of a cached
    graph (`GraphCache.path`): an upgrade of umx that changes how a graph is built (or what
    `OpenUnmix.forward` computes) exports the graphs again, where umx's version may not have
    changed (a development install) and the weights, torch and onnxruntime have not.

    The files' bytes, whatever they are (the source, or the compiled file a module was
    imported from), so that no change goes unseen: one to a comment costs an export (seconds,
    once), while a stale graph would give other stems than the torch model's. Where a module
    has no file to read (imported from a zip archive), umx's version stands for it.
    """
    digest = hashlib.sha256()
    for name in GRAPH_CODE:
        try:
            code = Path(inspect.getfile(importlib.import_module(name))).read_bytes()
        except (OSError, TypeError):  # TypeError: no file at all
            code = f"umx {__version__}".encode()
        digest.update(f"{name}\0{len(code)}\0".encode() + code)
    return digest.hexdigest()


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
        export: the export folder whose graphs these are, as messages name it
            (`umx.onnx.folder.load_export` sets it); None for other graphs.
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
        self.export: str | None = None
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
        """Refuse a bidirectional model where only past frames may be used, as `OpenUnmix`;
        the model of an export folder (`export`) names it and asks for a causal export."""
        if self.export is not None and not self.unidirectional:
            raise UmxError(
                f"{name} of the export {self.export} has a bidirectional LSTM, which needs the "
                "whole future of the signal and cannot separate a stream: give the export of a "
                "causal model (umx export umxsynth-rt DIR, or of a model trained with "
                "`umx train --unidirectional`)"
            )
        OpenUnmix.require_causal(self, name)  # as the torch model says it


class GraphCache:
    """The backend's graphs in the model cache (`umx.zoo.cache_dir`), each beside its recorded
    SHA-256 (`umx.onnx.graphs`).

    A graph file is named by a SHA-256 of everything the graph depends on: the model's sizes
    and parameter values, the kind of graph, the quantisation, the opset, umx's code that
    builds it (`code_digest`) and the torch and onnxruntime versions. One that does not match
    its record (damaged, replaced, truncated, its record missing) is exported again, with one
    warning that names it. When the cache cannot be written (a file in its place, a read-only
    disk) graphs are kept in memory, with one warning per `GraphCache`. Each use of a graph
    marks it used (its modification time); graphs unused for `UNUSED_DAYS` are removed when a
    new one is cached. Set `$UMX_CACHE` to move the cache.
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
            code_digest(),
            torch.__version__,
            onnxruntime.__version__,
            model.nb_output_bins,
            model.nb_bins,
            model.nb_channels,
            model.hidden_size,
            model.nb_layers,
            model.unidirectional,
            # the views of one X-UMX network share its weights: their targets tell them apart
            type(model).__name__,
            getattr(model, "index", None),
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
                graph = cached.read()
                with contextlib.suppress(OSError):  # a read-only cache is still read
                    os.utime(path)
                return cached, graph
        except DamagedGraph as error:
            logger.warning("%s: rebuilt it", error)
        graph = model_graph(model, streaming=streaming)
        if quantize:
            graph = quantize_graph(graph)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            cached = write_recorded(path, graph)
            self.prune()
            return cached, graph
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

    def prune(self) -> None:
        """Remove the graphs, and their records, not used for `UNUSED_DAYS` (a record without
        its graph by its own time); files the cache did not name stay."""
        cutoff = time.time() - UNUSED_DAYS * 86400
        keys: set[str] = set()
        with contextlib.suppress(OSError):
            keys = {path.name[:64] for path in self.folder.iterdir() if CACHED.match(path.name)}
        for key in keys:
            graph = self.folder / f"{key}{GRAPH_SUFFIX}"
            record = record_path(graph)
            with contextlib.suppress(OSError):
                used = os.lstat(graph if os.path.lexists(graph) else record).st_mtime
                if used < cutoff:
                    graph.unlink(missing_ok=True)
                    record.unlink(missing_ok=True)


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
        model_targets=separator.model_targets,
    ).eval()
    onnx_sep.model_name = separator.model_name
    return onnx_sep
