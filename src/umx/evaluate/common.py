"""What the evaluation's modules share: the import of the `evaluate` extra when first needed, and
atomic file writes."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO

from umx.errors import UmxError
from umx.files import write_atomic


def _extra(name: str) -> ModuleType:
    """Import a module of the `evaluate` extra, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        package = name.split(".")[0]
        raise UmxError(f"umx evaluate needs {package}: pip install 'umx[evaluate]'") from None


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Create `path` (and its folder) atomically: see `umx.files.write_atomic`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, write)


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda file: file.write(text.encode()))
