"""Device selection."""

import pytest
import torch

from umx.devices import resolve_device
from umx.errors import UmxError


def test_auto_and_cpu():
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_gpu_is_a_clear_error():
    with pytest.raises(UmxError, match="no CUDA GPU"):
        resolve_device("cuda:1")


def test_unknown_device():
    with pytest.raises(UmxError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
