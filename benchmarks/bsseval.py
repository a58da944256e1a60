"""BSSEval v4 speed and memory: museval 0.4.1 against umx's own (`umx.evaluate.bsseval`).

Run by hand (not part of the test suite), from the repository root:

    .venv/bin/python benchmarks/bsseval.py                    # 30 s and 3 min, 1 and 2 threads
    .venv/bin/python benchmarks/bsseval.py --durations 30     # chosen durations, in seconds
    .venv/bin/python benchmarks/bsseval.py --threads 1        # chosen thread counts

Each track is four stereo 44.1 kHz sources (a chord of harmonic tones, a bass line, noise-burst
drums in both channels alike, as mono stems are stored, and a filtered-noise pad, each with a
-60 dB noise floor, quantised to 16 bits as wav stems are) with estimates that leak
the other sources and add noise. Each implementation scores it as `umx evaluate` does for
MUSDB18 (`museval.evaluate` / `umx.evaluate.bss_eval`: 1 s windows and hops, 512-tap filters
fitted on the whole track) in its own fresh subprocess, with OMP_NUM_THREADS, MKL_NUM_THREADS and
OPENBLAS_NUM_THREADS (and torch's threads) set to the thread count, museval and umx in turn for
each setting. Reported: the wall time of the scoring call alone, the process's peak RSS and its
peak above the RSS once the inputs are loaded, the largest difference between the two
implementations' scores (dB, finite values; the NaN windows must agree), and the load average
before each run, since the machine may be shared. A Markdown table is written to
`benchmarks/results/<date>-<time>-<host>-bsseval.md` and printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
SAMPLE_RATE = 44100
SEED = 20261130
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
IMPLEMENTATIONS = ("museval", "umx")


def sources_and_estimates(duration: float, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Four stereo sources and their estimates, each `(4, nb_timesteps, 2)` float64."""
    rng = np.random.default_rng(seed)
    n = int(duration * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    root = 110.0 * 2 ** (rng.integers(0, 12, size=n // (2 * SAMPLE_RATE) + 1) / 12)
    root = np.repeat(root, 2 * SAMPLE_RATE)[:n]  # a chord every two seconds
    phase = 2 * np.pi * np.cumsum(root) / SAMPLE_RATE
    chord = sum(np.sin(ratio * h * 2 * phase) / h for ratio in (1.0, 1.26, 1.5) for h in (1, 2, 3))
    bass = np.sin(phase / 2) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    drums = rng.standard_normal(n) * np.exp(-(np.arange(n) % (SAMPLE_RATE // 4)) / 600)
    pad = np.convolve(rng.standard_normal(n), np.hanning(64) / 32, mode="same")
    sources = np.empty((4, n, 2))
    for index, (mono, pan) in enumerate(((chord, 0.3), (drums, 0.5), (bass, 0.45), (pad, 0.7))):
        mono = mono / np.abs(mono).max() + 1e-3 * rng.standard_normal(n)  # a -60 dB noise floor
        sources[index, :, 0] = (1 - pan) * mono
        sources[index, :, 1] = pan * mono  # the drums are a mono stem: equal channels
    sources *= 0.25 / np.abs(sources).max(axis=(1, 2), keepdims=True)
    sources = np.round(sources * 32768) / 32768
    estimates = sources + 0.15 * np.roll(sources, 1, axis=0) + 0.05 * np.roll(sources, 2, axis=0)
    estimates += 0.005 * rng.standard_normal(sources.shape)
    return sources, estimates


def rss_mb() -> float:
    """The process's resident memory now, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(implementation: str, inputs: Path, threads: int, scores: Path) -> None:
    """Score the saved track with one implementation; print what was measured as JSON."""
    references = np.load(inputs / "references.npy")
    estimates = np.load(inputs / "estimates.npy")
    if implementation == "museval":
        import museval

        def score():
            return museval.evaluate(references, estimates, win=SAMPLE_RATE, hop=SAMPLE_RATE)
    else:
        import torch

        from umx.evaluate import bss_eval

        torch.set_num_threads(threads)

        def score():
            return bss_eval(references, estimates, window=SAMPLE_RATE, hop=SAMPLE_RATE)

    loaded = rss_mb()
    start = time.perf_counter()
    result = score()
    seconds = time.perf_counter() - start
    np.save(scores, np.stack([np.asarray(metric) for metric in result]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "above_inputs_mb": peak - loaded}))


def run(implementation: str, inputs: Path, threads: int, scores: Path) -> dict:
    env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
    argv = [sys.executable, __file__, "--child", implementation, str(inputs), str(threads)]
    load = os.getloadavg()[0]
    done = subprocess.run([*argv, str(scores)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{implementation} failed:\n{done.stderr}")
    return {**json.loads(done.stdout.splitlines()[-1]), "load": load}


def difference(a: Path, b: Path) -> float:
    """The largest difference between two runs' scores in dB; NaN and inf must agree."""
    first, second = np.load(a), np.load(b)
    if not (np.isnan(first) == np.isnan(second)).all():
        raise SystemExit(f"{a} and {b} leave different windows unscored")
    finite = np.isfinite(first) & np.isfinite(second)
    if not (np.isinf(first) == np.isinf(second)).all():
        raise SystemExit(f"{a} and {b} give infinite ratios in different windows")
    return float(np.abs(first[finite] - second[finite]).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durations", type=float, nargs="+", default=[30.0, 180.0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        implementation, inputs, threads, scores = args.child
        child(implementation, Path(inputs), int(threads), Path(scores))
        return
    rows = []
    for duration in args.durations:
        inputs = CACHE / f"bsseval-{duration:g}s"
        if not (inputs / "estimates.npy").is_file():
            inputs.mkdir(parents=True, exist_ok=True)
            references, estimates = sources_and_estimates(duration)
            np.save(inputs / "references.npy", references)
            np.save(inputs / "estimates.npy", estimates)
            del references, estimates
        for threads in args.threads:
            results = {}
            for implementation in IMPLEMENTATIONS:
                scores = inputs / f"scores-{implementation}-{threads}.npy"
                results[implementation] = run(implementation, inputs, threads, scores)
                print(duration, threads, implementation, results[implementation], flush=True)
            gap = difference(*(inputs / f"scores-{name}-{threads}.npy" for name in IMPLEMENTATIONS))
            rows.append((duration, threads, results, gap))
    lines = [
        f"BSSEval v4 of four stereo sources, 1 s windows, on {socket.gethostname()} "
        f"({os.cpu_count()} CPUs), {datetime.datetime.now():%Y-%m-%d %H:%M}.",
        "",
        "| track | threads | museval | umx | speed-up | museval peak RSS (above inputs) "
        "| umx peak RSS (above inputs) | largest difference | load average (museval, umx) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for duration, threads, results, gap in rows:
        museval, umx = results["museval"], results["umx"]
        lines.append(
            f"| {duration:g} s | {threads} | {museval['seconds']:.1f} s | {umx['seconds']:.1f} s "
            f"| {museval['seconds'] / umx['seconds']:.1f}× "
            f"| {museval['peak_mb']:.0f} MB ({museval['above_inputs_mb']:.0f} MB) "
            f"| {umx['peak_mb']:.0f} MB ({umx['above_inputs_mb']:.0f} MB) "
            f"| {gap:.1e} dB | {museval['load']:.1f}, {umx['load']:.1f} |"
        )
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    stamp = f"{datetime.datetime.now():%Y-%m-%d-%H%M}-{socket.gethostname()}-bsseval.md"
    (RESULTS / stamp).write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
