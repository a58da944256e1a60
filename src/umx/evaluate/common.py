"""What the evaluation's modules share: the import of the `evaluate` extra when first needed, and
atomic file writes."""

from __future__ import annotations

import importlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from umx.errors import UmxError


def _extra(name: str) -> ModuleType:
    """Import a module of the `evaluate` extra, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        package = name.split(".")[0]
        raise UmxError(f"umx evaluate needs {package}: pip install 'umx[evaluate]'") from None


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Create `path` through a temporary file beside it, renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text))
