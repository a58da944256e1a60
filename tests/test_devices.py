"""Device selection."""

import subprocess
import sys

import pytest
import torch

from umx import devices
from umx.cli import main
from umx.devices import parse_device, resolve_device
from umx.errors import UmxError
from umx.options import SeparationOptions


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


@pytest.fixture
def no_gpu(monkeypatch):
    """A CUDA build of torch on a machine without a GPU."""
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_missing_gpu_is_a_clear_error(no_gpu):
    with pytest.raises(UmxError, match="no CUDA GPU"):
        resolve_device("cuda:1")


def test_a_missing_gpu_names_the_option_and_what_to_give_instead(no_gpu, tmp_path, capsys):
    song = tmp_path / "song.wav"
    song.write_bytes(b"")  # refused for the device, before it is read
    assert main([str(song), "--device", "cuda", "--outdir", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        "umx: error: --device cuda: no CUDA GPU is available here; leave out --device (auto: "
        "what this machine has) or give --device cpu\n"
    )


def test_a_cpu_only_torch_says_so_and_what_to_install(monkeypatch, tmp_path, capsys):
    """The set-up's torch is the CPU build: no driver or GPU would help, a CUDA build would."""
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    song = tmp_path / "song.wav"
    song.write_bytes(b"")  # refused for the device, before it is read
    assert main([str(song), "--device", "cuda:0", "--outdir", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        "umx: error: --device cuda:0: this torch (2.13.0+cpu) is built without CUDA; install a "
        "CUDA build (pytorch.org/get-started) or give --device cpu\n"
    )


@pytest.mark.parametrize(
    ("name", "device"),
    [("gpu", "cuda"), ("GPU", "cuda"), ("CUDA", "cuda"), ("Gpu:1", "cuda:1"), ("CPU", "cpu")],
)
def test_device_names_are_read_in_any_case_and_gpu_is_cuda(name, device, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_device(name) == torch.device(device)
    assert resolve_device(name) == torch.device(
        device if ":" in device or device == "cpu" else "cuda:0"
    )
    assert SeparationOptions(device=name).device == device
    assert resolve_device(" AUTO ") == torch.device("cuda", 0)


@pytest.mark.parametrize("command", [["song.wav"], ["batch", "music"], ["stream", "song.wav"]])
def test_gpu_as_an_option_is_told_device_cuda(command, capsys):
    """`--gpu` is no abbreviation of batch's --gpus-per-worker."""
    with pytest.raises(SystemExit) as stop:
        main([*command, "--gpu"])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "unrecognized arguments: --gpu; did you mean --device cuda?" in line


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
