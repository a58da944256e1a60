"""Device selection."""

import subprocess
import sys

import pytest
import torch

from umx import devices
from umx.cli import main
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_names_the_option_and_what_to_give_instead(tmp_path, capsys):
    song = tmp_path / "song.wav"
    song.write_bytes(b"")  # refused for the device, before it is read
    assert main([str(song), "--device", "cuda", "--outdir", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        "umx: error: --device cuda: no CUDA GPU is available here; leave out --device (auto: "
        "what this machine has) or give --device cpu\n"
    )


def test_unknown_device():
    with pytest.raises(UmxError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")


FAULTS_OF_A_REALLOCATION = """
import resource, sys, torch
from umx.devices import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
block = torch.ones(16 * 2**20)  # 64 MiB
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = torch.ones(12 * 2**20)  # 48 MiB, which fits where the first block was
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_keep_freed_memory_avoids_page_faults_on_reallocation():
    def run(mode):
        result = subprocess.run(
            [sys.executable, "-c", FAULTS_OF_A_REALLOCATION, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        applied, faults = result.stdout.split()
        return applied, int(faults)

    pages = 48 * 2**20 // 4096
    applied, kept = run("keep")
    assert applied == "True"
    _, default = run("default")
    assert default > pages / 2  # the block was unmapped and is faulted in again
    assert kept < pages / 20


@pytest.mark.parametrize("name", ["meta", "xpu", "tpu", "", "cuda:x"])
def test_devices_umx_does_not_run_on_are_refused(name):
    with pytest.raises(UmxError, match="unknown device"):
        resolve_device(name)


KEPT_THEN_RELEASED = """
import numpy as np
from umx.devices import keep_freed_memory, release_freed_memory

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096

keep_freed_memory()
blocks = [np.ones(2**20) for _ in range(64)]  # 64 blocks of 8 MiB, below the mmap threshold
before = rss()
del blocks
kept = rss()
released = release_freed_memory()
print(before, kept, released, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_release_freed_memory_gives_back_what_keep_freed_memory_kept():
    result = subprocess.run(
        [sys.executable, "-c", KEPT_THEN_RELEASED], capture_output=True, text=True, check=True
    )
    before, kept, released, after = result.stdout.split()
    assert int(kept) > int(before) - 64 * 2**20  # freed, but kept by the allocator
    assert released == "True"
    assert int(after) < int(kept) - 400 * 2**20  # most of the 512 MiB went back


def test_threads_stop_at_the_cores_and_workers_at_four_per_core(monkeypatch):
    monkeypatch.setattr(devices, "available_cores", lambda: 3)
    devices.check_cores("--threads", 3)
    with pytest.raises(UmxError) as error:
        devices.check_cores("--threads", 4)
    assert str(error.value) == "--threads must be at most 3, the cores umx may use here, not 4"
    devices.check_cores("--jobs", 12, devices.WORKERS_PER_CORE)
    with pytest.raises(UmxError) as error:
        devices.check_cores("--jobs", 99999999, devices.WORKERS_PER_CORE)
    assert (
        str(error.value) == "--jobs must be at most 12, 4 per core umx may use here, not 99999999"
    )
