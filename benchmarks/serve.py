"""`umx serve` against `umx song.mp3`: upload-to-stems time, and the server's memory over 20 songs.

Run by hand (not part of the test suite), from the repository root:

    .venv/bin/python benchmarks/serve.py                  # a 3-minute mp3, 2 runs each; 20 x 20 s
    .venv/bin/python benchmarks/serve.py --quick          # a 1-minute mp3, 1 run each; 20 x 10 s
    .venv/bin/python benchmarks/serve.py --model umxl     # another model, for both sides

It measures, on the same machine in the same run:

- `umx song.mp3` (the command, in its own process: start, model load, decoding, separation,
  16-bit wav stems) against the server's upload-to-stems time: from the first byte of the
  upload (`POST /api/jobs`) to the last byte of the last stem downloaded back (wav), on an
  `umx serve` already running (the page's case: the server is started once). Between runs the
  job is deleted, so that each run separates again. The runs alternate, command then server.
  The page itself then decodes the stems (`decodeAudioData`), which is not counted here.
- the resident memory (VmRSS) of a fresh `umx serve` process after each of 20 consecutive
  separations of different songs (20 s each, 10 s with --quick: 20 three-minute songs would
  take too long here), to check that it stays flat.

Both sides run with UMX_OFFLINE=1 and use the same model (default: what `umx` uses then, the
bundled umxsynth unless umxl is cached). A Markdown report goes to
`benchmarks/results/<date>-<time>-<host>-serve.md` and is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from separation import SAMPLE_RATE, SEED, music_like  # noqa: E402

RESULTS = HERE / "results"
CACHE = HERE / ".cache"
UMX_CLI = Path(sys.executable).parent / "umx"
PROGRAM = ".venv/bin/python benchmarks/serve.py"


def write_song(path: Path, seconds: float, seed: int) -> None:
    """A deterministic music-like song, written in the format of `path`'s extension."""
    from umx.audio import write_audio

    write_audio(path, music_like(seconds, seed).T, SAMPLE_RATE, force=True)


def start_server(data_dir: Path, model: str | None, env: dict[str, str]) -> tuple:
    command = [str(UMX_CLI), "serve", "--port", "0", "--data-dir", str(data_dir), "-q"]
    command += ["--model", model] if model else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    match = re.fullmatch(r"umx serve: (http://\S+/)\n", line)
    if not match:
        process.kill()
        raise SystemExit(f"umx serve did not start: {line!r}")
    return process, match.group(1)


@contextlib.contextmanager
def serving(data_dir: Path, model: str | None, env: dict[str, str]) -> Iterator[tuple]:
    """An `umx serve` process: yields a client and the process id."""
    process, url = start_server(data_dir, model, env)
    try:
        with httpx.Client(base_url=url, timeout=3600) as client:
            yield client, process.pid
    finally:
        process.terminate()
        process.wait(30)


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def separate_on_server(client: httpx.Client, song: Path) -> float:
    """Upload, wait for the job, download every stem; returns the seconds it took."""
    start = time.perf_counter()
    with open(song, "rb") as file:
        response = client.post("api/jobs", params={"name": song.name}, content=file)
    response.raise_for_status()
    job = response.json()
    while job["state"] not in ("done", "failed"):
        time.sleep(0.05)
        job = client.get(f"api/jobs/{job['id']}").json()
    if job["state"] != "done":
        raise SystemExit(f"the job failed: {job['error']}")
    for target in job["targets"]:
        client.get(f"api/jobs/{job['id']}/stems/{target}.wav").raise_for_status()
    seconds = time.perf_counter() - start
    client.delete(f"api/jobs/{job['id']}").raise_for_status()
    return seconds


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--autoplay-policy=no-user-gesture-required",
]


@contextlib.contextmanager
def chromium_page(url: str) -> Iterator[object]:
    """The page in Debian's headless Chromium (through Playwright), or None without them."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        yield None
        return
    if not CHROMIUM.exists():
        yield None
        return
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(3_600_000)
        page.goto(url)
        page.wait_for_selector("#model option", state="attached")
        yield page
        browser.close()


def separate_in_page(page, client: httpx.Client, song: Path) -> float:
    """Drop the song on the page and wait until its player has every stem decoded."""
    start = time.perf_counter()
    page.set_input_files("#files", str(song))
    page.wait_for_selector("#player[data-state=ready]")
    seconds = time.perf_counter() - start
    job_id = page.evaluate("location.hash").removeprefix("#job=")
    page.evaluate("document.querySelector('#player').dataset.state = 'closed'")
    client.delete(f"api/jobs/{job_id}").raise_for_status()
    page.wait_for_selector("#player", state="hidden")
    return seconds


def separate_with_command(
    song: Path, outdir: Path, model: str | None, env: dict
) -> tuple[float, float]:
    """Run `umx song.mp3`; returns its wall time and CPU time in seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    command = [str(UMX_CLI), str(song), "--outdir", str(outdir), "--force", "-q"]
    subprocess.run(
        command + (["--model", model] if model else []),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def time_runs(
    work: Path,
    song: Path,
    model: str | None,
    env: dict[str, str],
    repeat: int,
    times: dict[str, list[float]],
    cpu: dict[str, list[float]],
) -> None:
    """Alternate `umx song.mp3`, the HTTP upload and the page, `repeat` times each."""
    with (
        serving(work / "timing", model, env) as (client, pid),
        chromium_page(str(client.base_url)) as page,
    ):
        for run in range(repeat):
            wall, used = separate_with_command(song, work / "out", model, env)
            times["command"].append(wall)
            cpu["command"].append(used)
            used = cpu_seconds(pid)
            times["server"].append(separate_on_server(client, song))
            cpu["server"].append(cpu_seconds(pid) - used)
            if page is not None:
                times["page"].append(separate_in_page(page, client, song))
            print(
                f"run {run + 1}: "
                + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items() if v)
                + "; CPU "
                + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in cpu.items()),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter song and shorter runs")
    parser.add_argument("--model", help="model of both sides (default: umx's default)")
    parser.add_argument(
        "--repeat", type=int, help="runs of each side (default: 2, quick: 1; 0: memory only)"
    )
    parser.add_argument("--songs", type=int, default=20, help="separations for the memory check")
    args = parser.parse_args()
    seconds, rss_seconds = (60.0, 10.0) if args.quick else (180.0, 20.0)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 2)
    env = {**os.environ, "UMX_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="serve-", dir=CACHE if CACHE.is_dir() else None))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        song = work / "song.mp3"
        write_song(song, seconds, SEED)
        times: dict[str, list[float]] = {"command": [], "server": [], "page": []}
        cpu: dict[str, list[float]] = {"command": [], "server": []}
        if repeat:
            time_runs(work, song, args.model, env, repeat, times, cpu)
        # memory: a fresh server, so that the 3-minute song's peak does not hide any growth
        with serving(work / "memory", args.model, env) as (client, pid):
            model = client.get("api/config").json()["default_model"]
            rss = []
            for index in range(args.songs):
                short = work / f"short-{index}.wav"
                write_song(short, rss_seconds, SEED + 1 + index)
                separate_on_server(client, short)
                rss.append(rss_mb(pid))
                print(f"song {index + 1}: {rss[-1]:.0f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import torch

    growth = 100 * (rss[-1] - rss[0]) / rss[0]
    timing = timing_report(times, cpu) if repeat else []
    report = "\n".join(
        [
            f"# umx serve benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}",
            "",
            f"Command: `{' '.join([PROGRAM, *sys.argv[1:]])}`",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, torch {torch.__version__}; load average at the start "
            f"{load}, at the end " + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + ".",
            f"Model: {model} (UMX_OFFLINE=1). Song: {seconds / 60:g} min stereo 44.1 kHz mp3 "
            "(music-like signal of benchmarks/separation.py).",
            "",
            *timing,
            f"RSS of a fresh server after each of {len(rss)} consecutive separations of "
            f"different {rss_seconds:g} s songs (each uploaded, separated, its stems "
            "downloaded, the job deleted), in MB:",
            "",
            " ".join(f"{value:.0f}" for value in rss),
            "",
            f"First {rss[0]:.0f} MB, last {rss[-1]:.0f} MB, min {min(rss):.0f} MB, max "
            f"{max(rss):.0f} MB: growth from the first to the last {growth:+.1f} % "
            "(target: within 10 %).",
            "",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    name = f"{datetime.datetime.now():%Y-%m-%d-%H%M}-{socket.gethostname()}-serve.md"
    (RESULTS / name).write_text(report)
    print(report)
    print(f"written to {RESULTS / name}")


def timing_report(times: dict[str, list[float]], cpu: dict[str, list[float]]) -> list[str]:
    """The lines of the report on the time from the song to its stems."""
    command_times = times["command"]
    sides = [side for side in ("server", "page") if times[side]]
    rows = []
    for run, command in enumerate(command_times):
        cells = [f"{times[side][run]:.1f} s ({times[side][run] / command:.2f})" for side in sides]
        rows.append(f"| {run + 1} | {command:.1f} s | " + " | ".join(cells) + " |")
    best = min(command_times)
    cells = [f"{min(times[side]):.1f} s ({min(times[side]) / best:.2f})" for side in sides]
    rows.append(f"| best | {best:.1f} s | " + " | ".join(cells) + " |")
    medians = ", ".join(
        f"{side} {statistics.median(times[side]) / statistics.median(command_times):.2f}"
        for side in sides
    )
    headers = {"server": "`umx serve` (HTTP)", "page": "the page (Chromium)"}
    return [
        "Time from the song to its stems, and its ratio to `umx song.mp3` (the whole "
        "process); `umx serve` (HTTP): upload, separation, every wav stem downloaded back; "
        "the page (Chromium): the song dropped on the page until the player has decoded "
        "every stem:",
        "",
        "| run | `umx song.mp3` | " + " | ".join(headers[side] for side in sides) + " |",
        "|---|---|" + "---|" * len(sides),
        *rows,
        "",
        f"Median ratios: {medians} (target: at most 1.3).",
        "",
        "CPU time (user + system; less sensitive than the wall time to other work on the "
        "machine) of `umx song.mp3` and of the server process during each HTTP run:",
        "",
        "| run | `umx song.mp3` | `umx serve` | ratio |",
        "|---|---|---|---|",
        *(
            f"| {run + 1} | {c:.1f} s | {v:.1f} s | {v / c:.2f} |"
            for run, (c, v) in enumerate(zip(cpu["command"], cpu["server"], strict=True))
        ),
        "",
    ]


if __name__ == "__main__":
    main()
