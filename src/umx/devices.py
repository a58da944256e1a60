"""The hardware computations run on: choosing the torch device, and host memory settings."""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING, Any

from umx.defaults import AUTO
from umx.errors import UmxError, printable

if TYPE_CHECKING:  # imported where a device is resolved: the memory settings need no torch
    import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")
"""The kinds of device umx runs on; others torch knows (meta, xpu, ...) are refused."""
# glibc mallopt parameters, and the values keep_freed_memory sets (bytes). Blocks above the
# mmap threshold (whole-track buffers of long tracks) are still mapped and unmapped: kept in the
# heap they would fragment it (a 10-minute whole-track separation peaked 2.6 GB higher at 1 GiB).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 256 * 2**20
TRIM_THRESHOLD = (1 << 31) - 1


def device_name(name: str) -> str:
    """A device name as torch writes it: case and spaces left out, `gpu` (`gpu:N`) read as
    `cuda` (`cuda:N`); torch-free, for checks made before torch is imported."""
    if not isinstance(name, str):
        return name
    lower = name.strip().lower()
    return "cuda" + lower[3:] if lower == "gpu" or lower.startswith("gpu:") else lower


def resolve_device(name: str = AUTO, local_rank: int = 0) -> torch.device:
    """The device named by a user, checked to be present.

    Args:
        name: `auto` (CUDA if present, else MPS if present, else the CPU), `cpu`, `cuda`,
            `cuda:N` or `mps`, in any case; `gpu` is `cuda` (see `device_name`).
        local_rank: the GPU that `auto` and a bare `cuda` mean, one per process under torchrun.

    Raises:
        UmxError: the name is not a device, or the device is not available here.
    """
    import torch

    if device_name(name) == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = parse_device(name)
    if device.type == "cuda":
        if torch.version.cuda is None:  # the CPU-only build, which the set-up installs
            raise UmxError(
                f"--device {printable(name)}: this torch ({torch.__version__}) is built without "
                "CUDA; install a CUDA build (pytorch.org/get-started) or give --device cpu"
            )
        if not torch.cuda.is_available():
            raise UmxError(
                f"--device {printable(name)}: no CUDA GPU is available here; leave out --device "
                "(auto: what this machine has) or give --device cpu"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UmxError(
            f"--device {printable(name)}: MPS is not available here; leave out --device (auto: "
            "what this machine has) or give --device cpu"
        )
    return device


def parse_device(name: str) -> torch.device:
    """The device a name (not `auto`) means, whether or not this machine has it.

    Raises:
        UmxError: the name is not one of cpu, cuda, cuda:N or mps (any case; gpu for cuda).
    """
    import torch

    try:
        device = torch.device(device_name(name))
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise UmxError(f"unknown device {name!r} (use auto, cpu, cuda or gpu, cuda:N or mps)")
    return device


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


WORKERS_PER_CORE = 4
"""The most worker processes or threads per core an option may ask for: more than one can keep
a GPU or a slow disk busy, more than a few only share the cores, and each holds its own model
(99999999 started workers until the machine ran out of processes or memory)."""


def check_cores(name: str, count: int, per_core: int = 1) -> None:
    """Refuse a count of threads (`per_core` 1) or workers (`WORKERS_PER_CORE`) above what the
    cores this process may run on can use.

    Args:
        name: the option, as the user wrote it (`--jobs`).
        count: its value, a whole number already checked to be positive.
        per_core: how many may share a core.

    Raises:
        UmxError: the count exceeds `per_core` times `available_cores()`.
    """
    cores = available_cores()
    if count > cores * per_core:
        limit = (
            f"{cores}, the cores" if per_core == 1 else f"{cores * per_core}, {per_core} per core"
        )
        raise UmxError(f"{name} must be at most {limit} umx may use here, not {count}")


def threads_per_worker(jobs: int, cores: int | None = None) -> int:
    """torch threads for each of `jobs` worker processes: the cores shared out, at least one
    (`umx batch`, `umx evaluate --jobs`)."""
    return max(1, (cores or available_cores()) // jobs)


def keep_freed_memory() -> bool:
    """Let the C allocator keep freed memory for reuse instead of returning it to the system.

    Separation allocates and frees tensors of tens of megabytes for every chunk. By default
    glibc maps each such block from the system afresh and unmaps it when freed, so every page
    of it is faulted in again: about a fifth of the CPU time of a separation. Raising glibc's
    mmap threshold (to 256 MiB) and trim threshold makes freed blocks reusable; the process
    keeps its peak memory until it exits. Process-wide: the `umx` command
    calls it, Python callers may. Returns whether it applied (False where the C library has
    no `mallopt`, e.g. on macOS and Windows).
    """
    return _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def one_malloc_arena() -> bool:
    """Let every thread of the process allocate from one glibc malloc arena.

    With `keep_freed_memory` each arena keeps the memory freed in it; by default glibc gives
    threads their own arenas as they contend, and a server's threads (`umx serve`'s worker and
    HTTP thread pool) would each come to keep some: measured there, the RSS grew by a quarter
    over 20 songs, and by 5 % with one arena. Returns whether it applied (False where the C
    library has no `mallopt`).
    """
    return _mallopt(M_ARENA_MAX, 1)


def release_freed_memory() -> bool:
    """Give the memory the C allocator keeps (see `keep_freed_memory`) back to the system, e.g.
    when a server goes idle between jobs: the next job faults its pages in once again. Returns
    whether any was released (False where the C library has no `malloc_trim`)."""
    trim = _libc("malloc_trim", ctypes.c_size_t)
    return trim is not None and bool(trim(0))


def _mallopt(parameter: int, value: int) -> bool:
    """glibc's `mallopt(parameter, value)`; False where the C library has none."""
    mallopt = _libc("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and bool(mallopt(parameter, value))


def _libc(name: str, *argtypes: type) -> Any:
    """A function of the C library, or None where it has no such function."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError, TypeError):
        return None
    function.argtypes = list(argtypes)
    return function
