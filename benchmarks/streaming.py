"""Streaming separation speed, latency and memory: `umx.stream.engine` block by block, one thread.

Run by hand (not part of the test suite), from the repository root:

    .venv/bin/python benchmarks/streaming.py            # 60 s per block size, 3 min, 1 and 10 min
    .venv/bin/python benchmarks/streaming.py --quick    # 20 s per block size, 1 min, 1 and 3 min

It measures, with the models of the bundled causal model `umxsynth-rt` when it is there, or
else four umxsynth-size target models (hidden 128, 3 unidirectional LSTM layers, nb_bins 2049,
bandwidth 16 kHz, stereo, 4096/1024 STFT at 44.1 kHz) with fixed random weights:

- per block size (256, 512, 1024, 2048 samples), for the 4 targets and for vocals only (vocals
  and the residual, the karaoke set-up: Wiener EM needs two sources), the compute time of each
  `StreamingSeparator.process` call on a deterministic music-like signal: median and 99th
  percentile against the block's duration, and the algorithmic latency;
- the real-time factor (compute time over audio duration) of a 3-minute stream in blocks of
  1024, through the same calls;
- the peak RSS of the whole `umx stream - --stdout` command (raw f32le in from a pipe, karaoke
  out to /dev/null) for a 1-minute and a 10-minute stream, each in its own process.

Everything runs with `torch.set_num_threads(1)` (the command's default). A Markdown table is
written to `benchmarks/results/<date>-<time>-<host>-streaming.md` and printed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from separation import SAMPLE_RATE, SEED, TARGETS, music_like  # noqa: E402

BLOCKS = (256, 512, 1024, 2048)
PROGRAM = ".venv/bin/python benchmarks/streaming.py"
KARAOKE = '{"karaoke": ["drums", "bass", "other"]}'


def model_dir() -> tuple[Path | str, str]:
    """The bundled causal model if it loads, else umxsynth-size random unidirectional models."""
    import torch

    from umx.errors import UmxError
    from umx.model import OpenUnmix
    from umx.modeldir import save_separator
    from umx.separator import Separator
    from umx.transforms import bandwidth_to_max_bin
    from umx.zoo import load_separator

    try:
        load_separator("umxsynth-rt", progress=False)
        return "umxsynth-rt", "umxsynth-rt (bundled, trained)"
    except UmxError:
        pass
    directory = CACHE / "model-umxsynth-rt-random"
    if not (directory / "separator.json").exists():
        models = {}
        for k, target in enumerate(TARGETS):
            torch.manual_seed(SEED + k)
            model = OpenUnmix(
                nb_bins=2049,
                nb_channels=2,
                hidden_size=128,
                unidirectional=True,
                max_bin=bandwidth_to_max_bin(SAMPLE_RATE, 4096, 16000),
            )
            with torch.no_grad():
                model.input_scale.fill_(1.0)
                model.output_mean.uniform_(-0.5, 1.0)
            models[target] = model.freeze()
        save_separator(Separator(models), directory, force=True)
    return directory, "umxsynth-size random weights (umxsynth-rt not bundled yet)"


def time_blocks(model, targets, block: int, seconds: float) -> tuple[np.ndarray, int]:
    """Compute time of each `process` call over `seconds` of music in blocks of `block`, and
    the stream's latency in samples."""
    import torch

    from umx.stream.engine import StreamingSeparator
    from umx.zoo import load_separator

    residual = "accompaniment" if targets == ["vocals"] else None
    separator = load_separator(model, targets=targets, residual=residual, progress=False)
    stream = StreamingSeparator(separator, block_multiple=block)
    audio = torch.from_numpy(music_like(seconds).T.copy())
    times = []
    for start in range(0, audio.shape[-1] - block + 1, block):
        piece = audio[:, start : start + block]
        began = time.perf_counter()
        stream.process(piece)
        times.append(time.perf_counter() - began)
    return np.array(times), stream.latency


def peak_rss_of_command(model, minutes: float) -> tuple[float, float]:
    """Peak RSS (MB) and wall time of `umx stream - --stdout` on `minutes` of raw PCM from a
    pipe, generated block by block here so that this process stays small."""
    command = [
        sys.executable, "-m", "umx.cli", "stream", "-", "--model", str(model),
        "--rate", str(SAMPLE_RATE), "--stdout", "--aggregate", KARAOKE, "-q",
    ]  # fmt: skip
    began = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    chunk = music_like(10.0).astype("<f4").tobytes()  # 10 s repeated
    for _ in range(round(minutes * 6)):
        process.stdin.write(chunk)
    process.stdin.close()
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise RuntimeError(f"umx stream failed with status {status}")
    return usage.ru_maxrss / 1024, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter streams")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    block_seconds, rtf_seconds, rss_minutes = (
        (20.0, 60.0, (1, 3)) if args.quick else (60.0, 180.0, (1, 10))
    )
    model, model_note = model_dir()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = []
    for name, targets in (("4 targets", None), ("vocals + residual", ["vocals"])):
        for block in BLOCKS:
            times, latency = time_blocks(model, targets, block, block_seconds)
            duration = block / SAMPLE_RATE
            med, p99 = np.median(times), np.percentile(times, 99)
            latency_ms = 1000 * latency / SAMPLE_RATE
            rows.append(
                f"| {name} | {block} | {1000 * duration:.1f} | {1000 * med:.2f} | "
                f"{1000 * p99:.2f} | {p99 / duration:.2f} | {latency} ({latency_ms:.1f} ms) |"
            )
            print(rows[-1], flush=True)
    rtf_rows = []
    for name, targets in (("4 targets", None), ("vocals + residual", ["vocals"])):
        times, _ = time_blocks(model, targets, 1024, rtf_seconds)
        total = times.sum()
        rtf_rows.append(
            f"| {name} | {rtf_seconds / 60:g} min | {total:.1f} s | {total / rtf_seconds:.3f} |"
        )
        print(rtf_rows[-1], flush=True)
    rss_rows = []
    for minutes in rss_minutes:
        rss, wall = peak_rss_of_command(model, minutes)
        rss_rows.append(
            f"| {minutes} min | {rss:.0f} MB | {wall:.1f} s | {wall / (60 * minutes):.3f} |"
        )
        print(rss_rows[-1], flush=True)
    host = socket.gethostname()
    report = "\n".join(
        [
            f"# Streaming benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}",
            "",
            f"Command: `{' '.join([PROGRAM, *sys.argv[1:]])}`",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, torch {torch.__version__}, 1 torch thread; "
            f"load average at the start {load}, "
            "at the end " + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + ".",
            f"Models: {model_note}; STFT 4096/1024 at 44.1 kHz, niter 1 (causal EM).",
            "",
            "Per-block compute time (`StreamingSeparator.process`, "
            f"{block_seconds:g} s of music per row); ratio = 99th percentile / block duration "
            "(below 1: real time); latency = algorithmic, "
            "blocks that are multiples of the block size:",
            "",
            "| targets | block (samples) | block (ms) | median (ms) | 99th pct (ms) | ratio "
            "| latency (samples) |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Real-time factor, blocks of 1024 (compute time / audio duration):",
            "",
            "| targets | stream | compute | RTF |",
            "|---|---|---|---|",
            *rtf_rows,
            "",
            f"`umx stream - --rate 44100 --stdout --aggregate '{KARAOKE}'` (raw f32le from a "
            "pipe, to /dev/null), the whole command's peak RSS:",
            "",
            "| stream | peak RSS | wall time | wall / duration |",
            "|---|---|---|---|",
            *rss_rows,
            "",
        ]
    )
    print(report)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{datetime.datetime.now():%Y-%m-%d-%H%M}-{host}-streaming.md"
    path.write_text(report)
    print(f"written {path}")


if __name__ == "__main__":
    main()
