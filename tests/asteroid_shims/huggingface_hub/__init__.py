"""Test-only stand-in for `huggingface_hub`, which asteroid imports at module level.

The tests build asteroid's X-UMX from random weights and never download, so only the names
asteroid reads at import time exist here.
"""

HUGGINGFACE_CO_URL_HOME = "https://huggingface.co/"
PYTORCH_WEIGHTS_NAME = "pytorch_model.bin"
