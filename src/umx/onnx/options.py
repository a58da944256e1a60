"""The options of the onnxruntime backend and of `umx export`, without importing torch or onnx:
which backends and quantisations exist, which backend a command line means, whether a `--model`
is a folder written by `umx export`, `ExportOptions`, and the `umx export` command's arguments
and run (which imports the exporter only once the arguments are parsed: `umx export --help`
imports no torch).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from umx.defaults import EXPORT_JSON
from umx.errors import UmxError, check_flag, check_path, check_targets

logger = logging.getLogger("umx")

BACKENDS = ("torch", "onnxruntime")
QUANTIZATIONS = ("int8",)


def require_onnx() -> tuple[ModuleType, ModuleType]:
    """Import onnx and onnxruntime, or say in one sentence how to get them.

    Returns:
        the modules `onnx` and `onnxruntime`.

    Raises:
        UmxError: one of them is not installed.
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise UmxError(
            f"ONNX export and the onnxruntime backend need the package {error.name or 'onnx'}, "
            "which is not installed: pip install 'umx[onnx]'"
        ) from None
    return onnx, onnxruntime


def check_quantize(quantize: str | None) -> None:
    """Refuse an unknown quantisation (None is none)."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UmxError(
            f"unknown quantisation {quantize!r}; choose {', '.join(QUANTIZATIONS)} (or none)"
        )


@dataclass(frozen=True)
class ExportOptions:
    """What `umx export` exports and where, checked when built (one-line errors naming the
    command line's arguments), before the model loads.

    Attributes:
        model: a zoo name or a model directory.
        outdir: the folder to write the export into.
        quantize: None (float32 graphs) or one of `QUANTIZATIONS`.
        targets: the targets to export; None for all of the model's.
        force: replace an earlier export in `outdir`.

    Raises:
        UmxError: an argument of the wrong type, an unknown quantisation or empty targets.
    """

    model: str | os.PathLike
    outdir: str | os.PathLike
    quantize: str | None = None
    targets: Sequence[str] | None = None
    force: bool = False

    def __post_init__(self) -> None:
        check_path("MODEL", self.model, what="a model name or folder")
        check_path("OUTDIR", self.outdir, what="a folder")
        check_quantize(self.quantize)
        object.__setattr__(self, "targets", check_targets(self.targets))
        check_flag("--force", self.force)


def is_export_folder(model: object) -> bool:
    """Whether `model` (a `--model` value) is a folder that holds an export's `umx-onnx.json`
    and is not also a model directory (with `separator.json`, whose weights torch runs) nor a
    known model's name (as in `umx.zoo.load_separator`: write `./NAME` for the folder)."""
    if not isinstance(model, str | os.PathLike) or not (Path(model) / EXPORT_JSON).is_file():
        return False
    from umx.modeldir import SEPARATOR_JSON  # imports torch: only once a folder is there
    from umx.zoo.registry import known_name

    named = known_name(model) is not None
    return not named and not (Path(model) / SEPARATOR_JSON).exists()


def check_backend(
    backend: str | None, quantize: str | None, device: str | None = None, model: object = None
) -> str:
    """The backend a command line asks for, refusing a backend, quantisation, device and model
    that do not go together, before any model loads (as `umx separate --backend ...
    --quantize ... --device ... --model ...` spells them; `device` None or `"auto"` when not
    given).

    Without `--backend` (`backend` None) it is onnxruntime when `--quantize` is given or the
    model is an export folder (`is_export_folder`), otherwise torch.

    Returns:
        `"torch"` or `"onnxruntime"`.

    Raises:
        UmxError: unknown backend or quantisation, quantisation or an export folder with
            `--backend torch`, onnxruntime on another device than the CPU, or onnxruntime not
            installed.
    """
    if backend is not None and backend not in BACKENDS:
        raise UmxError(f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
    check_quantize(quantize)
    export = is_export_folder(model)
    given = backend is not None
    if backend is None:
        backend = "onnxruntime" if quantize is not None or export else "torch"
    # Imported here: torch is not needed to build the parser.
    from umx.audio import display_path
    from umx.devices import AUTO

    if backend == "torch":
        if quantize is not None:
            raise UmxError(f"--quantize {quantize} runs on onnxruntime: leave out --backend torch")
        if export:
            raise UmxError(
                f"--model {display_path(model)} is an ONNX export (umx export), which runs on "
                "onnxruntime: leave out --backend torch"
            )
        return backend
    if device not in (None, AUTO, "cpu"):
        name = "--backend onnxruntime"
        if not given:
            name = f"--quantize {quantize}" if quantize else f"--model {display_path(model)}"
        raise UmxError(
            f"{name} runs the models with onnxruntime on the CPU, not on {device!r}: "
            "leave out --device or give --device cpu"
        )
    require_onnx()
    return backend


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The argument table of `umx export MODEL OUTDIR`."""
    from umx.cli_options import path_argument  # which imports this module's names

    p.add_argument("model", metavar="MODEL", help="model name (see umx --list-models) or directory")
    p.add_argument(
        "outdir", type=path_argument, metavar="OUTDIR", help="folder to write the export into"
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
    """`umx export`: export the model on the CPU and print the written files (unless
    `--quiet`)."""
    from umx.audio import display_path  # torch: only once the arguments are parsed
    from umx.onnx.export import export_model

    options = ExportOptions(
        args.model, args.outdir, quantize=args.quantize, targets=args.targets, force=args.force
    )
    written = export_model(options, progress=not args.quiet)
    if not args.quiet:
        for path in written:
            print(display_path(path))
    return 0
