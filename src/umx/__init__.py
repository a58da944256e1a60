"""umx: Open-Unmix music source separation.

The public API: `separate` (one call, in memory), `load_separator` (a named model or a model
directory), `Separator` (waveforms → stems), `OpenUnmix` (the spectrogram model), and for
causal models `StreamingSeparator` (block-by-block separation of a stream) and `separate_causal`
(the same separation of a whole recording).

The names are imported on first use (PEP 562), so that `import umx.cli` and `umx --help` do not
load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from umx.lazy import lazy_exports

if TYPE_CHECKING:
    from umx.api import separate, separate_file
    from umx.errors import UmxError
    from umx.model import OpenUnmix
    from umx.separator import Separator
    from umx.stream.engine import StreamingSeparator, separate_causal
    from umx.zoo import list_models, load_separator

__version__ = "0.1.0"

__all__ = [
    "OpenUnmix",
    "Separator",
    "StreamingSeparator",
    "UmxError",
    "__version__",
    "list_models",
    "load_separator",
    "separate",
    "separate_causal",
    "separate_file",
]

__getattr__, __dir__ = lazy_exports(
    globals(), ("errors", "zoo", "api", "model", "separator", "stream.engine")
)
