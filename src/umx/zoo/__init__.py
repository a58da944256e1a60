"""Model names → weights on disk → separators: the zoo of named models.

Named models are either downloaded into the cache (`$UMX_CACHE`, else `$XDG_CACHE_HOME/umx`,
else `~/.cache/umx`, one folder per model) or bundled with the package under
`umx/pretrained/<name>/` in the official layout (see `umx.modeldir`). The default model is the
published `umxl`; when it cannot be had, `load_separator(None)` falls back to the bundled
`umxsynth` with one warning.

Its modules, one job each (their docstrings hold the details):

- :mod:`umx.zoo.registry`: the named models (`MODELS`, `ZooEntry`), where their files are (the
  cache or the package) and what `umx --list-models` shows (`list_models`).
- :mod:`umx.zoo.download`: weights into the cache: download, SHA-256 verification at each
  use, offline mode (`download_model`, `download_models`, `is_offline`).
- :mod:`umx.zoo.loading`: a name or a folder to a loaded separator, and the default model's
  offline fallback (`load_separator`, `resolve_model`).

The public names are re-exported here: ``from umx.zoo import load_separator``. None of the
modules imports torch until a model is loaded.
"""

from typing import TYPE_CHECKING

from umx.lazy import lazy_exports

if TYPE_CHECKING:
    from umx.defaults import DEFAULT_MODEL, FALLBACK_MODEL
    from umx.zoo.download import download_model, download_models, is_offline
    from umx.zoo.loading import load_separator, resolve_model
    from umx.zoo.registry import (
        BUNDLED,
        CACHE_ENV,
        CACHED,
        MODELS,
        NOT_DOWNLOADED,
        PARTIAL,
        ModelInfo,
        ZooEntry,
        cache_dir,
        list_models,
    )

__all__ = [
    "BUNDLED",
    "CACHED",
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "FALLBACK_MODEL",
    "MODELS",
    "NOT_DOWNLOADED",
    "PARTIAL",
    "ModelInfo",
    "ZooEntry",
    "cache_dir",
    "download_model",
    "download_models",
    "is_offline",
    "list_models",
    "load_separator",
    "resolve_model",
]

__getattr__, __dir__ = lazy_exports(globals(), ("registry", "download", "loading"))
