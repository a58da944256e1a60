"""Batch throughput: `umx batch` with --jobs 1 and 2 and on Ray with 1 and 2 workers, on the same
short files, and Ray's overhead over local mode.

Run by hand (not part of the test suite), from the repository root:

    .venv/bin/python benchmarks/batch.py                   # 20 files of 30 s, bundled umxsynth
    .venv/bin/python benchmarks/batch.py --repeat 2        # each case twice, the fastest kept
    .venv/bin/python benchmarks/batch.py --ray-address auto   # an existing cluster instead

Each case is the whole `umx batch` command in a fresh process, on a fresh job directory, with one
torch thread per worker, timed from start to exit: files per hour = files / wall time. The Ray
cases run on a head node that the benchmark starts on this machine beforehand with `ray start
--head --num-cpus=2` (as a user's cluster would be running already) and stops afterwards by
killing that node's processes only; a last case, `--ray` without an address, also pays
for starting a Ray instance. A Markdown table goes to
`benchmarks/results/<date>-<time>-<host>-batch.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from separation import SAMPLE_RATE, music_like  # noqa: E402

CACHE = HERE / ".cache"
RESULTS = HERE / "results"
UMX = Path(sys.executable).parent / "umx"
RAY = Path(sys.executable).parent / "ray"
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def inputs(count: int, seconds: float) -> Path:
    """`count` different music-like stereo files of `seconds`, 16-bit WAV, made once."""
    import soundfile as sf

    folder = CACHE / f"batch-{count}x{seconds:g}s"
    if len(list(folder.glob("*.wav"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        sf.write(folder / f"song{n:02d}.wav", music_like(seconds, seed=n), SAMPLE_RATE, "PCM_16")
    return folder


@contextlib.contextmanager
def ray_head(cpus: int):
    """A Ray head node on 127.0.0.1 in its own process group and temporary folder; yields its
    address; afterwards that group's processes and the raylet's workers are killed (no other
    Ray instance is touched).

    The node stays in the benchmark's session on purpose: Linux's autogroup scheduler shares
    the CPUs between sessions, so a node in a session of its own would get a separate share
    on a busy machine, and the Ray cases more CPU than the local ones.
    """
    temp = tempfile.mkdtemp(prefix="umxray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(RAY), "start", "--head", f"--port={port}", f"--num-cpus={cpus}"]
    command += ["--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--include-dashboard=false"]
    head = subprocess.Popen(
        command,
        env={**os.environ, **RAY_ENV},
        process_group=0,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if head.wait(timeout=120) != 0:
            raise SystemExit("ray start --head failed")
        yield f"127.0.0.1:{port}"
    finally:
        daemons = [pid for pid, (_, pgid) in processes().items() if pgid == head.pid]
        workers = [pid for pid, (ppid, _) in processes().items() if ppid in daemons]
        for pid in workers + daemons:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def processes() -> dict[int, tuple[int, int]]:
    """Every process's parent and process group, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


def run_case(folder: Path, model: str, jobs: int, ray: str | None) -> dict:
    """One `umx batch` command on a fresh job; its wall time and the manifest's figures."""
    work = Path(tempfile.mkdtemp(prefix="umxbatch"))
    command = [str(UMX), "batch", str(folder), "--outdir", str(work / "out"), "--model", model]
    command += ["--jobs", str(jobs), "--threads", "1", "-q"]
    if ray is not None:
        command += ["--ray"] + ([ray] if ray else [])
    env = {**os.environ, **RAY_ENV, "UMX_OFFLINE": "1"}
    epoch, begun = time.time(), time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - begun
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    lines = (work / "out" / ".umx-job" / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    finished = [r for r in records if r["status"] == "done"]
    first = min(r["started"] for r in records if r["status"] == "running")
    shutil.rmtree(work)
    return {
        "wall": wall,
        "files": len(finished),
        "per_file": statistics.median(r["seconds"] for r in finished),
        "audio": sum(r["audio_seconds"] for r in finished),
        "startup": first - epoch,
        "span": max(r["finished"] for r in finished) - first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each file")
    parser.add_argument("--model", default="umxsynth")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case, fastest kept")
    parser.add_argument("--ray-address", help="an existing cluster instead of a new head node")
    parser.add_argument("--no-ray", action="store_true", help="local cases only")
    options = parser.parse_args()

    folder = inputs(options.files, options.seconds)
    load_start = os.getloadavg()
    cases = [("local, --jobs 1", 1, None), ("local, --jobs 2", 2, None)]
    if not options.no_ray:
        cases += [("Ray, 1 worker", 1, "cluster"), ("Ray, 2 workers", 2, "cluster")]
        cases += [("Ray, 2 workers, Ray started by the command", 2, "")]
    best: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        address = options.ray_address
        if not options.no_ray and address is None:
            address = stack.enter_context(ray_head(2))
        for _ in range(options.repeat):
            for name, jobs, ray in cases:
                result = run_case(folder, options.model, jobs, address if ray else ray)
                print(f"{name}: {result['wall']:.1f} s", flush=True)
                if name not in best or result["wall"] < best[name]["wall"]:
                    best[name] = result
    load_end = os.getloadavg()

    rows = [
        "| case | wall (s) | files/hour | first file handed out (s) | files/hour after it "
        "| per file (s, median) |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in best.items():
        rows.append(
            f"| {name} | {result['wall']:.1f} | {result['files'] / result['wall'] * 3600:.0f} "
            f"| {result['startup']:.1f} | {result['files'] / result['span'] * 3600:.0f} "
            f"| {result['per_file']:.2f} |"
        )
    notes = []
    one, two = best["local, --jobs 1"], best["local, --jobs 2"]
    notes.append(
        f"--jobs 2 over --jobs 1: {one['wall'] / two['wall']:.2f}x the files per hour "
        f"({one['span'] / two['span']:.2f}x after the first file is handed out)"
    )
    for workers, local in ((1, one), (2, two)):
        ray_case = best.get(f"Ray, {workers} worker{'s' * (workers > 1)}")
        if ray_case:
            overhead = ray_case["wall"] / local["wall"] - 1
            notes.append(f"Ray's overhead over local mode, {workers} worker(s): {overhead:+.1%}")
    started = best.get("Ray, 2 workers, Ray started by the command")
    if started:
        extra = started["wall"] - best["Ray, 2 workers"]["wall"]
        notes.append(f"starting a Ray instance with the command: {extra:+.1f} s")
    audio = one["audio"] / one["files"]
    text = "\n".join(
        [
            f"# umx batch: {options.files} files of {audio:.0f} s, {options.model}, 1 thread per "
            "worker",
            "",
            f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {socket.gethostname()}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; load average at the start "
            + ", ".join(f"{x:.1f}" for x in load_start)
            + ", at the end "
            + ", ".join(f"{x:.1f}" for x in load_end)
            + f"; fastest of {options.repeat} run(s) per case.",
            "",
            *rows,
            "",
            *[f"- {note}" for note in notes],
            "",
        ]
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{datetime.datetime.now():%Y-%m-%d-%H%M}-{socket.gethostname()}-batch.md"
    path.write_text(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
