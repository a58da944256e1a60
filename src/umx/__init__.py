"""umx: Open-Unmix music source separation.

The public API: `separate` (one call, in memory), `load_separator` (a named model or a model
directory), `Separator` (waveforms → stems) and `OpenUnmix` (the spectrogram model).
"""

from umx.api import separate, separate_file
from umx.errors import UmxError
from umx.model import OpenUnmix
from umx.separator import Separator
from umx.zoo import list_models, load_separator

__version__ = "0.1.0"

__all__ = [
    "OpenUnmix",
    "Separator",
    "UmxError",
    "__version__",
    "list_models",
    "load_separator",
    "separate",
    "separate_file",
]
